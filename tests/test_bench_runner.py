"""The benchmark runner: every case ends as a row (ok, oom, error, timeout), a crash or hang never stops
the rest, and the rows are what the report reads. Tiny twins on the CPU; failures are injected."""

import time

import pytest

from lightdiff.bench import case as bench_case
from lightdiff.bench.cases import Group, Item
from lightdiff.bench.rows import problems
from lightdiff.bench.runner import Runner, RunOptions
from lightdiff.reports.load import read_jsonl


def _group(model="tiny-sd15", items=None, **kw):
    base = dict(model=model, variant="lightdiff", weights="twin", device="cpu", steps=1, runs=3)
    base.update(kw)
    return Group(items=items or [Item("speed", 64, 64, 1)], **base)


@pytest.fixture
def inject_ok(monkeypatch):
    monkeypatch.setenv(bench_case.INJECT_ENV, "1")


def test_ok_oom_crash_unknown_and_timeout_all_become_rows(tmp_path, inject_ok):
    out = tmp_path / "results.jsonl"
    quiet = []
    runner = Runner(RunOptions(out=out, timeout_s=120, count_flops=False, echo=quiet.append))
    groups = [
        _group(items=[Item("speed", 64, 64, 1), Item("speed", 64, 64, 1, inject={"oom": True}),
                      Item("speed", 64, 64, 1, inject={"crash": True, "exit_code": 3}),
                      Item("speed", 64, 64, 2)]),
        _group(model="no-such-model"),
    ]
    runner.run(groups)
    t0 = time.monotonic()
    hung = Runner(RunOptions(out=out, timeout_s=2, count_flops=False, echo=quiet.append))
    hung.run([_group(inject={"sleep_s": 60})])
    assert time.monotonic() - t0 < 20  # the hung process group was killed at the timeout, not waited for

    rows = read_jsonl(out)  # the report's own reader accepts every row
    assert [(r["model"], r["batch_size"], r["status"]) for r in rows] == [
        ("tiny-sd15", 1, "ok"), ("tiny-sd15", 1, "oom"), ("tiny-sd15", 1, "error"), ("tiny-sd15", 2, "ok"),
        ("no-such-model", 1, "error"), ("tiny-sd15", 1, "timeout")]
    ok, oom, crash, after, unknown, timeout = rows
    assert ok["sec_per_call"]["median"] > 0 and len(ok["sec_per_call"]["runs"]) == 3
    assert ok["startup"]["total_s"] >= ok["startup"]["import_s"] > 0 and ok["host_ram_peak_gb"] > 0
    assert ok["env"]["torch"] and ok["plan"] and ok["synthetic"] is True and ok["weights"] == "twin"
    assert "out of memory" in oom["reason"].lower() and oom["plan"]
    assert "exited with code 3" in crash["reason"]
    # the item after the crash ran in a fresh process: it carries its own cold start
    assert after["startup"]["total_s"] > 0 and after["images_per_s"] > 0
    assert "no-such-model" in unknown["reason"]
    assert "2 s" in timeout["reason"] and "killed" in timeout["reason"]
    for r in rows:
        assert problems({k: v for k, v in r.items() if k != "_source"}) == []
        assert r["status"] == "ok" or r["reason"]


class _Collect:
    def __init__(self):
        self.rows = []

    def send(self, event, **data):
        if event == "row":
            self.rows.append(data["row"])


def _run_in_process(group):
    events = _Collect()
    bench_case.CaseProcess(group, events, time.time()).run()
    return events.rows


def test_batch_test_halves_the_batch_after_oom_and_baseline_stops(inject_ok):
    batch = Item("batch", 64, 64, 2, images=2, inject={"oom_over_batch": 1})
    mine = _run_in_process(_group(items=[batch, Item("workflow", 64, 64, 1, workflow="no-such-workflow")]))
    plain = _run_in_process(_group(variant="baseline", items=[batch]))

    ours, missing_wf = mine
    assert ours["status"] == "ok" and ours["images_produced"] == ours["images_requested"] == 2
    assert ours["fallbacks"] and "batch size 2" in ours["fallbacks"][0]
    assert plain[0]["status"] == "oom" and plain[0]["images_produced"] == 0
    assert "OOM at image 1" in plain[0]["reason"]
    assert missing_wf["status"] == "error" and missing_wf["reason"] == "workflow not available"


def test_injection_needs_test_mode(monkeypatch):
    monkeypatch.delenv(bench_case.INJECT_ENV, raising=False)
    with pytest.raises(bench_case.InjectedCrash, match="test-only"):
        bench_case.apply_injection({"oom": True}, "call")
