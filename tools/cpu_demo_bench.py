"""Seconds per image of the demo model on this machine's CPU (128x128, 20 steps, CFG, batch 1).

    python tools/cpu_demo_bench.py -o docs/benchmarks/<date>-cpu/demo-speed.jsonl [--threads 2] [--runs 5]

Writes one JSONL row with the env stamp and the CPU model; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    import os

    import torch

    torch.set_num_threads(args.threads)
    from lightdiff.runtime.device import env_stamp
    from lightdiff.workflows.engine import Engine

    engine = Engine(device="cpu")
    request = {"model": "demo", "prompt": "a large red circle left of a small blue square on a yellow background",
               "seed": 1, "steps": 20}
    t0 = time.perf_counter()
    engine.run(request)
    first = time.perf_counter() - t0
    secs = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        engine.run(request)
        secs.append(time.perf_counter() - t0)
    stamp = {k: v for k, v in env_stamp().items() if k not in ("gpus",)}
    row = {"schema": 1, "kind": "speed", "status": "ok", "model": "demo", "variant": "lightdiff", "plan": "resident",
           "weights": "demo", "synthetic": False, "width": 128, "height": 128, "steps": 20, "guidance": 7.5,
           "batch_size": 1, "device": "cpu", "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
           "first_s": round(first, 3), "sec_per_call": {"median": round(statistics.median(secs), 3),
                                                        "min": round(min(secs), 3), "max": round(max(secs), 3),
                                                        "runs": [round(s, 3) for s in secs]},
           "sec_per_image": round(statistics.median(secs), 3), "env": stamp}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"demo 128x128, 20 steps, batch 1 on {row['cpu']} ({args.threads} threads): "
          f"{row['sec_per_image']:.3f} s/image (median of {args.runs}; first {first:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
