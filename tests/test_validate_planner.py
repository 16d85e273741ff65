"""tools/validate_planner.py on tiny twins (its --tiny CPU path): the harness the planner's GPU rows come from."""

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "validate_planner.py"


def test_sizes_in_order_with_a_repeat_keep_one_loaded_model(tmp_path):
    # the size-switch check: one engine, sizes as given; --fail-on-reload would fail a size that reloads
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(TOOL), "--tiny", "--models", "qwen-image-2512", "--budgets", "24",
                           "--sizes", "128", "64", "128", "--in-order", "--fail-on-reload", "--runs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["size"] for r in rows] == [128, 64, 128]
    assert all(r["status"] == "ok" and r["warmup_fallbacks"] == [] and r["fallbacks"] == [] for r in rows), rows
    assert "reloading" not in proc.stderr
    # the warm start (weights placed -> first image) belongs to the size that loaded the model, and only to it
    first = rows[0]
    assert 0 <= first["ready_after_load_s"] <= first["warmup_s"]
    assert all("ready_after_load_s" not in r for r in rows[1:])


def test_profile_warmup_writes_where_the_first_request_spends_its_time(tmp_path):
    out, prof = tmp_path / "rows.jsonl", tmp_path / "warmup.txt"
    proc = subprocess.run([sys.executable, str(TOOL), "--tiny", "--models", "sd15", "--budgets", "8", "--sizes", "64",
                           "--runs", "1", "--profile-warmup", str(prof), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text().splitlines()[0])["status"] == "ok"
    table = prof.read_text()
    assert "cumulative" in table and "engine.py" in table  # the engine's run is in it, with its callees
