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
