"""`lightdiff bench` as a user runs it: the grid it expands, the rows it writes, and weights timed from disk."""

import json
import subprocess
import sys

from lightdiff.bench.boundary import largest_fitting
from lightdiff.bench.cases import Grid, build_groups
from lightdiff.bench.rows import problems
from lightdiff.cli import main
from lightdiff.reports.load import read_jsonl


def test_baseline_doubles_the_cases_and_keeps_variants_apart(capsys):
    grid = Grid(models=["sd15", "qwen-image-2512"], sizes=[512, 768, 1024], batches=[1, 2, 4])
    mine = build_groups(grid)
    grid.baseline = True
    both = build_groups(grid)
    n = sum(len(g.items) for g in mine)
    assert n == 2 * (3 + 2)  # each size at batch 1, batches 2 and 4 at the first size
    assert sum(len(g.items) for g in both) == 2 * n
    assert {(g.model, g.variant) for g in both} == {(m, v) for m in grid.models for v in ("lightdiff", "baseline")}
    assert all(len({g.model, g.variant}) == 2 for g in both)  # one model and one variant per process
    assert main(["bench", "--models", "sd15", "--sizes", "512,768", "--baseline", "--dry-run"]) == 0
    assert "4 case(s)" in capsys.readouterr().out


def test_the_parent_process_never_imports_torch():
    code = ("import sys, contextlib, io\nfrom lightdiff.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['bench', '--models', 'sd15,qwen-image-2512', '--vram-budget', 'none,24', '--baseline',"
            " '--dry-run'])\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_invalid_grid_is_refused_before_anything_runs(capsys):
    assert main(["bench", "--models", "sd15", "--sizes", "500", "--dry-run"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert main(["bench", "--models", "sd15", "--batch-test", "10by2", "--dry-run"]) == 2
    assert "10x2" in capsys.readouterr().err


def test_bench_times_weights_from_disk_and_writes_rows_the_report_reads(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    rc = main(["bench", "--models", "tiny-sd15", "--sizes", "64", "--steps", "1", "--runs", "3",
               "--weights", "twin-disk", "--baseline", "--disk-read-gb", "0.02", "--device", "cpu",
               "-o", str(out)])
    assert rc == 0
    rows = read_jsonl(out)
    assert [(r["kind"], r["variant"], r["status"]) for r in rows] == [("speed", "lightdiff", "ok"),
                                                                      ("speed", "baseline", "ok")]
    for r in rows:
        assert problems({k: v for k, v in r.items() if k != "_source"}) == []
        start = r["startup"]
        assert start["load_source"] == "disk cache (safetensors)" and start["load_gb"] > 0
        assert start["load_gbps"] > 0 and start["disk_read_gbps"] > 0 and "first read" in start["disk_read_method"]
        assert start["total_s"] >= start["load_s"] + start["warmup_s"]
        assert r["flops_per_image"] > 0 and r["achieved_tflops"] >= 0
        assert r["sec_per_image"] == r["sec_per_call"]["median"]
    cache = tmp_path.parent / "lightdiff-home" / "synthetic" / "tiny-sd15-twin"
    manifest = json.loads((cache / "lightdiff-cache.json").read_text())
    assert manifest["cached"] == ["unet", "vae", "text_encoder"] and list(cache.rglob("*.safetensors"))
    assert "2 row(s) appended" in capsys.readouterr().out


def test_boundary_search_finds_the_largest_fit_with_few_probes():
    probes = []

    def fits_up_to(limit):
        def fits(x):
            probes.append(x)
            return x <= limit
        return fits

    candidates = list(range(1, 65))
    assert largest_fitting(candidates, 0, fits_up_to(37)) == 37
    assert len(probes) == len(set(probes)) <= 12
    assert largest_fitting(candidates, 0, fits_up_to(0)) is None
    assert largest_fitting(candidates, 0, fits_up_to(100)) == 64
    sizes = list(range(64, 2049, 8))
    assert largest_fitting(sizes, sizes.index(1024), fits_up_to(712)) == 712  # searches down from the start
    assert largest_fitting(sizes, sizes.index(512), fits_up_to(1536)) == 1536


def test_the_speed_path_is_measured_only_when_asked_and_each_row_says_what_ran(tmp_path):
    """--fast eager puts the engine's speed path on the benchmarked model (here: Qwen's true CFG batched under a
    streaming plan); the default leaves the memory plan alone, and each lightdiff row records which it was."""
    rows = {}
    for fast in ("off", "eager"):
        out = tmp_path / f"{fast}.jsonl"
        args = ["bench", "--models", "tiny-qwen-image", "--sizes", "64", "--steps", "2", "--runs", "1",
                "--weights", "twin", "--plan", "group-offload", "--device", "cpu", "--no-flops", "-o", str(out)]
        assert main(args + ([] if fast == "off" else ["--fast", fast])) == 0
        (row,) = read_jsonl(out)
        assert row["status"] == "ok" and row["plan"] == "group-offload"
        rows[fast] = row["fast"]
    assert rows["off"] == {"mode": "off"}
    assert rows["eager"] == {"mode": "eager", "cfg": "batched"}


def test_a_step_cache_bench_row_and_its_report_say_the_output_changed(tmp_path, capsys):
    out = tmp_path / "cache.jsonl"
    args = ["bench", "--models", "tiny-qwen-image", "--sizes", "64", "--steps", "6", "--runs", "1", "--weights", "twin",
            "--device", "cpu", "--no-flops", "--baseline", "-o", str(out)]
    assert main(args + ["--step-cache", "taylorseer"]) == 0
    rows = {r["variant"]: r for r in read_jsonl(out)}
    assert rows["lightdiff"]["status"] == "ok"
    assert rows["lightdiff"]["step_cache"] == {"kind": "taylorseer", "changes_output": True}
    assert "step_cache" not in rows["baseline"]  # plain diffusers runs every step
    assert problems({k: v for k, v in rows["lightdiff"].items() if k != "_source"}) == []
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "taylorseer" in text and "not evidence of its quality" in text
    # refused before anything runs: a cache for a UNet model
    assert main(["bench", "--models", "tiny-sd15", "--step-cache", "fbc", "--dry-run"]) == 2
    assert "UNet" in capsys.readouterr().err


def test_the_bench_plans_as_the_engine_does_for_its_device_and_speed_path():
    """A CPU run gets only plans a CPU runs, and fp8 compute (priced compiled) only with --fast auto."""
    from lightdiff import specs
    from lightdiff.bench.cases import Group, Item
    from lightdiff.bench.planner import Hardware, plan_for_item, plan_module

    def plan(model, size, hw, fast, budget=None):
        item = Item("speed", size, size, 1)
        group = Group(model=model, variant="lightdiff", weights="synthetic", items=[item], fast=fast,
                      vram_budget_gb=budget)
        return plan_for_item(plan_module(), specs.get(model), item, group, hw).name

    cpu = Hardware(None, None, 24.0)
    assert {plan("tiny-qwen-image", 64, cpu, fast) for fast in ("off", "auto")} == {"resident"}
    h100 = Hardware("NVIDIA H100 80GB HBM3", 79.6, 500.0)
    assert plan("qwen-image-2512", 1024, h100, "auto", 24) == "fp8-compute"
    assert plan("qwen-image-2512", 1024, h100, "off", 24) != "fp8-compute"
