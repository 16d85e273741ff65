"""Multi-GPU rows (issue #10): images per second of `lightdiff batch` on 1 and N GPUs, and seconds per image
on 1 GPU against `--context-parallel N`. tools/scale_bench.sh runs the steps under `timeout`; this file
makes their inputs and rows (docs/bench-rows.md kinds "batch" and "speed", each with the env stamp).

    python tools/scale_bench.py jobs --model sd15 --weights synthetic --size 512 --steps 20 --count 160 -o jobs.jsonl
    python tools/scale_bench.py batch-row --jobs jobs.jsonl --out-dir OUT --devices cuda:0,cuda:1 \\
        --started EPOCH_S --rc RC -o rows.jsonl
    python tools/scale_bench.py latency --model qwen-image-2512 --weights synthetic --size 1024 --steps 20 --runs 3 \\
        [--context-parallel 2 --cp-mode ulysses] -o rows.jsonl
    python tools/scale_bench.py failed --step NAME --model M --size S --steps N --status timeout --reason TEXT -o rows.jsonl
    python tools/scale_bench.py table rows.jsonl

Scaling efficiency is T_N / (N * T_1) against the 1-device row of the same model, size and steps in the
same file: for batch rows on the steady-state rate (after each worker's first image, which carries the model
load, compile and warm-up) and on the rate with loads; for context-parallel rows on warm seconds per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "a lighthouse at dusk, oil painting"  # 16 tokens with the stand-in tokenizer: an even split in 2 or 4


def base(model: str, size: int, steps: int, weights: str, kind: str, variant: str, env: dict) -> dict:
    from lightdiff import specs
    from lightdiff.bench.rows import weights_kind

    spec = specs.get(model)
    w = weights_kind(weights)
    return {"schema": 1, "kind": kind, "status": "ok", "reason": None, "model": model, "family": spec.family,
            "variant": variant, "workflow": "txt2img", "width": size, "height": size, "steps": steps,
            "guidance": spec.defaults.guidance, "batch_size": 1, "plan": "resident", "fallbacks": [],
            "weights": w, "synthetic": w in ("synthetic", "twin"), "vram_budget_gb": None, "env": env}


def write(path: str, row: dict) -> None:
    from lightdiff.bench.rows import RowWriter, problems

    bad = problems(row)
    if bad:
        print(f"row problems: {bad}", file=sys.stderr)
    RowWriter(path).write(row)
    print(json.dumps({k: row.get(k) for k in ("kind", "variant", "status", "devices", "images_per_s",
                                               "steady_images_per_s", "sec_per_image", "scaling")}), flush=True)


def read_rows(path: str) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def env() -> dict:
    from lightdiff.bench.rows import trim_env
    from lightdiff.runtime.device import env_stamp

    return trim_env(env_stamp())


def one_device_row(rows: list[dict], row: dict) -> dict | None:
    """The latest ok or timed-out 1-device row of the same kind, model, size and steps."""
    same = [r for r in rows if r.get("kind") == row["kind"] and r.get("model") == row["model"]
            and r.get("width") == row["width"] and r.get("steps") == row["steps"]
            and len(r.get("devices") or []) == 1 and r.get("status") in ("ok", "timeout")]
    return same[-1] if same else None


# --- steps ----------------------------------------------------------------------------------------


def cmd_jobs(a) -> int:
    line = {"model": a.model, "weights": a.weights, "prompt": a.prompt, "size": a.size, "steps": a.steps,
            "count": a.count, "seed": 1}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(line) + "\n")
    return 0


def cmd_batch_row(a) -> int:
    """A "batch" row from the manifest a `lightdiff batch` run left: rates from completion times."""
    from lightdiff.pipeline.manifest import Manifest

    job = json.loads(Path(a.jobs).read_text().splitlines()[0])
    devices = [d for d in a.devices.split(",") if d]
    n = len(devices)
    row = base(job["model"], job["size"], job["steps"], job["weights"], "batch",
               "lightdiff" if n == 1 else f"lightdiff batch x{n}", env())
    manifest_path = Path(a.out_dir) / "manifest.sqlite"
    t = Manifest(manifest_path).throughput(since=a.started) if manifest_path.is_file() else {"images": 0}
    row.update(devices=devices, images_requested=job["count"], images_produced=t["images"],
               total_s=t.get("wall_s"), images_per_s=t.get("images_per_s"),
               steady_images_per_s=t.get("steady_images_per_s"), steady_images=t.get("steady_images"),
               workers=t.get("workers"), rates_note="images_per_s: from the command's start (imports, model loads, "
               "compile) to the last image; steady: after each worker's first image")
    meta = first_image_meta(manifest_path) if manifest_path.is_file() else {}
    row.update(plan=meta.get("plan") or row["plan"], fast_path=meta.get("fast_path"))
    if a.rc != 0:
        row.update(status="timeout" if a.rc in (124, 137) else "error",
                   reason=f"`lightdiff batch` exited with {a.rc}" + (" (its time limit)" if a.rc in (124, 137) else "")
                   + f" after {t['images']} of {job['count']} images; the rates are from those")
    if n > 1:
        one = one_device_row(read_rows(a.out), row)
        if one is not None:
            row["scaling"] = {"devices": n, "one_device_source": "the 1-device row above in this file",
                              **efficiency("steady_images_per_s", row, one, n),
                              **efficiency("images_per_s", row, one, n)}
    write(a.out, row)
    return 0


def efficiency(key: str, row: dict, one: dict, n: int) -> dict:
    tn, t1 = row.get(key), one.get(key)
    if not tn or not t1:
        return {}
    return {f"{key}_1": t1, f"{key}_efficiency": round(tn / (n * t1), 4)}


def first_image_meta(manifest_path: Path) -> dict:
    from PIL import Image

    from lightdiff.pipeline.manifest import Manifest

    for r in Manifest(manifest_path).rows("done"):
        try:
            with Image.open(r["output"]) as im:
                meta = json.loads(im.info.get("lightdiff", "{}"))
            return {"plan": meta.get("plan"), "fast_path": meta.get("fast_path")}
        except (OSError, ValueError):
            continue
    return {}


def cmd_latency(a) -> int:
    """Seconds per image of one request: load, then --runs runs (the first is the warm-up)."""
    request = {"workflow": "txt2img", "model": a.model, "weights": a.weights, "prompt": a.prompt, "width": a.size,
               "height": a.size, "steps": a.steps, "seed": 1}
    if a.context_parallel:
        from lightdiff.runtime import parallel

        out = parallel.generate(request, a.context_parallel, a.cp_mode, device=a.device, out_dir=a.images,
                                runs=a.runs)
        timings, load_s, cp, meta = out["timings"], out["load_s"], out["context_parallel"], out["metadata"][0]
        devices = cp["devices"]
        ranks = [{"rank": r["rank"], "load_s": r["load_s"], "peak_allocated_gb": r["timings"][-1].get("peak_allocated_gb")}
                 for r in out["ranks"]]
        variant = f"lightdiff cp{a.context_parallel} {a.cp_mode}" + (" uneven" if cp["split"] == "uneven" else "")
    else:
        import torch

        from lightdiff.commands.generate import _timed_runs
        from lightdiff.workflows.engine import Engine

        engine = Engine(device=a.device)
        t0 = time.perf_counter()
        plan, _ = engine.plan_for(request)
        engine.pool.get(a.model, a.weights, plan=plan)
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        load_s = round(time.perf_counter() - t0, 3)
        result, timings = _timed_runs(engine, request, a.runs)
        engine.save(result, a.images)
        meta, cp, ranks, devices, variant = result.metadata[0], None, None, [engine.device], "lightdiff"
    secs = [t["s"] for t in timings]
    warm = secs[1:] or secs
    med = statistics.median(warm)
    last = timings[-1]
    # stamped after the run: the launcher itself never opens a CUDA context beside its ranks
    row = base(a.model, a.size, a.steps, a.weights, "speed", variant, env())
    row.update(plan=meta.get("plan", "resident"), fallbacks=meta.get("fallbacks", []), prompt=a.prompt, seed=1,
               devices=devices, context_parallel=cp, ranks=ranks, startup={"load_s": load_s},
               first_s=secs[0], sec_per_call={"median": round(med, 4), "min": min(warm), "max": max(warm), "runs": warm},
               sec_per_image=round(med, 4), it_per_s=round(a.steps / med, 3), images_per_s=round(1 / med, 4),
               peak_vram={k: last.get(f"peak_{k}") for k in ("allocated_gb", "reserved_gb")} | {
                   "nvml_used_gb": last.get("nvml_used_gb")})
    n = len(devices)
    if n > 1:
        one = one_device_row(read_rows(a.out), row)
        if one is not None and one.get("sec_per_image"):
            t1 = one["sec_per_image"]
            row["scaling"] = {"devices": n, "sec_per_image_1": t1, "speedup": round(t1 / med, 4),
                              "efficiency": round(t1 / (n * med), 4)}
    write(a.out, row)
    return 0


def cmd_failed(a) -> int:
    """A row for a step that ended without writing its own (killed at its time limit, or crashed)."""
    from lightdiff.bench.rows import light_env

    devices = [d for d in a.devices.split(",") if d]
    row = base(a.model, a.size, a.steps, a.weights, a.kind, a.variant, light_env())
    row.update(status=a.status, reason=f"{a.step}: {a.reason}"[:2000], devices=devices)
    write(a.out, row)
    return 0


def cmd_table(a) -> int:
    print(f"{'kind':6} {'variant':26} {'devices':22} {'status':8} {'result':34} scaling")
    for r in read_rows(a.rows):
        if r.get("status") != "ok" and not r.get("images_produced") and not r.get("sec_per_image"):
            res, scale = (r.get("reason") or "")[:60], ""
        elif r.get("kind") == "batch":
            res = (f"{r.get('steady_images_per_s') or 0:.3f} img/s steady, "
                   f"{r.get('images_per_s') or 0:.3f} with loads")
            s = r.get("scaling") or {}
            scale = (f"eff {s.get('steady_images_per_s_efficiency', float('nan')):.1%} steady, "
                     f"{s.get('images_per_s_efficiency', float('nan')):.1%} with loads") if s else ""
        else:
            res = f"{r.get('sec_per_image') or float('nan'):.3f} s/image" + (
                f" ({r['context_parallel']['split']} split)" if r.get("context_parallel") else "")
            s = r.get("scaling") or {}
            scale = f"speedup {s['speedup']:.2f}x, eff {s['efficiency']:.1%}" if s else ""
        print(f"{r.get('kind', ''):6} {r.get('variant') or '':26} {','.join(r.get('devices') or []):22} "
              f"{r.get('status', ''):8} {res:34} {scale}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q):
        q.add_argument("--model", default="sd15")
        q.add_argument("--weights", default="synthetic")
        q.add_argument("--size", type=int, default=512)
        q.add_argument("--steps", type=int, default=20)
        q.add_argument("-o", "--out", required=True, help="the JSONL file rows are appended to")

    q = sub.add_parser("jobs")
    common(q)
    q.add_argument("--count", type=int, default=160)
    q.add_argument("--prompt", default=DEFAULT_PROMPT)
    q = sub.add_parser("batch-row")
    q.add_argument("--jobs", required=True)
    q.add_argument("--out-dir", required=True, help="the folder `lightdiff batch -o` wrote")
    q.add_argument("--devices", required=True)
    q.add_argument("--started", type=float, required=True, help="epoch seconds when the batch command started")
    q.add_argument("--rc", type=int, default=0)
    q.add_argument("-o", "--out", required=True)
    q = sub.add_parser("latency")
    common(q)
    q.add_argument("--runs", type=int, default=3)
    q.add_argument("--prompt", default=DEFAULT_PROMPT)
    q.add_argument("--device", default=None)
    q.add_argument("--context-parallel", type=int)
    q.add_argument("--cp-mode", default="ulysses")
    q.add_argument("--images", default="/tmp/lightdiff-scale/images", help="where the images go")
    q = sub.add_parser("failed")
    common(q)
    q.add_argument("--step", required=True)
    q.add_argument("--kind", default="speed")
    q.add_argument("--variant", default="lightdiff")
    q.add_argument("--devices", default="")
    q.add_argument("--status", default="error", choices=["timeout", "error", "oom"])
    q.add_argument("--reason", required=True)
    q = sub.add_parser("table")
    q.add_argument("rows")
    a = p.parse_args(argv)
    return {"jobs": cmd_jobs, "batch-row": cmd_batch_row, "latency": cmd_latency, "failed": cmd_failed,
            "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
