"""One engine, one process, several image sizes in turn: does a size change keep the loaded model and its compiled,
CUDA-graphed blocks, and what does each size cost under a VRAM budget?

    python tools/engine_size_switch.py -o rows.jsonl [--model qwen-image-2512] [--budget 24] [--sizes 1024 768 512 1024]

The model is built once with synthetic weights (the real architecture, random values; images are noise). Each size
gets a 2-step warm-up (a new size compiles and records its graphs there) and three timed 20-step runs; one JSON row
per size with the fallbacks the engine's out-of-memory back-off took. A request that would reload the model (a
cheaper plan after an OOM, or a placement the pool does not match) fails the size instead of rebuilding 20B
parameters on the CPU. Needs CUDA. On 2026-11-27 (H100, 24 GB) a 768 request after a 1024 one reloaded the
model: the VAE's half-tile side counted as placement (fixed in runtime/plan.py, `plan_key`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--model", default="qwen-image-2512")
    p.add_argument("--budget", type=float, default=24.0, help="VRAM budget in GB (the allocator is capped to it)")
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 768, 512, 1024])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    import torch

    from lightdiff.runtime import loader
    from lightdiff.runtime.device import GiB
    from lightdiff.workflows.engine import Engine

    if not torch.cuda.is_available():
        raise SystemExit("engine_size_switch needs a CUDA device.")
    built = [loader.load(args.model, "synthetic", device="cuda")]  # fast on the GPU; moved back before the cap
    built[0].pipe.to("cpu")
    built[0].device = "cpu"
    torch.cuda.empty_cache()

    def load_once(spec, weights, device="cpu", dtype=None, allow_unsafe_pickle=None):
        if not built:
            raise RuntimeError(f"the engine asked to reload {spec.id} (a fallback plan or a placement change)")
        loaded = built.pop()
        loaded.pipe.to(device)
        loaded.device = device
        return loaded

    engine = Engine(device="cuda", vram_budget_gb=args.budget, fast="auto", cuda_graph_blocks=True)
    engine.pool.load_fn = load_once
    for size in args.sizes:
        request = {"model": args.model, "weights": "synthetic", "prompt": "a red fox in the snow", "width": size,
                   "height": size, "steps": 20, "seed": 7}
        row = {"model": args.model, "weights": "synthetic", "size": size, "budget_gb": args.budget,
               "gpu": torch.cuda.get_device_name(0)}
        try:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            warm = engine.run({**request, "steps": 2})
            row.update(warmup_s=round(time.perf_counter() - t0, 2),
                       warmup_fallbacks=warm.metadata[0].get("fallbacks", []))
            times = []
            for _ in range(args.runs):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                result = engine.run(request)
                torch.cuda.synchronize()
                times.append(round(time.perf_counter() - t0, 3))
            meta = result.metadata[0]
            row.update(status="ok", times=times, sec_per_image=statistics.median(times), plan=meta.get("plan"),
                       fallbacks=meta.get("fallbacks", []), peak_gb=round(torch.cuda.max_memory_allocated() / GiB, 3),
                       reserved_gb=round(torch.cuda.max_memory_reserved() / GiB, 3))
        except Exception as e:  # recorded as data: the next size still runs
            row.update(status="error", error=f"{type(e).__name__}: {e}"[:800])
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
