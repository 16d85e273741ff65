"""Pinning a streamed text encoder's weights: diffusers' per-tensor ``pin_memory()`` (torch's caching host
allocator) against ``runtime.pinned.pin_module`` (one exact-size buffer, registered in place) and against no
pinning at all (the planner's "paged" text encoder: a pass copies every layer in and out), each in its own
process, on a module with the shapes of Qwen-Image's text encoder (Qwen2.5-VL 7B: 28 decoder layers, the
embedding and LM head, a 32-block vision tower; bf16, about 16.6 GB). Then diffusers' group offloading is applied
as lightdiff's planner does for a streamed text encoder, and one forward over every layer is timed.

    python tools/pin_bench.py -o rows.jsonl            # the three ways, a process each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def qwen_text_encoder_shapes() -> list[tuple[int, int]]:
    """(out, in) of every Linear-like weight: the decoder, the vision tower, embedding and LM head."""
    h, kv, ff, vocab = 3584, 512, 18944, 152064
    layer = [(h, h), (kv, h), (kv, h), (h, h), (ff, h), (ff, h), (h, ff)]
    vh, vff = 1280, 3420
    vision = [(3 * vh, vh), (vh, vh), (vff, vh), (vff, vh), (vh, vff)]
    return [(vocab, h)] + layer * 28 + vision * 32 + [(vocab, h)]


def build(scale: float = 1.0):
    import torch

    layers = []
    for out_f, in_f in qwen_text_encoder_shapes():
        lin = torch.nn.Linear(int(in_f * scale) or 1, out_f, bias=True, dtype=torch.bfloat16, device="meta")
        lin.to_empty(device="cpu")
        with torch.no_grad():
            lin.weight.fill_(0.001)
            lin.bias.zero_()
        layers.append(lin)
    return torch.nn.ModuleList(layers)


def host_pinned_bytes() -> int | None:
    import torch

    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None:
        return None
    return int(stats().get("allocated_bytes.current", 0))


def one(way: str, threads: int) -> dict:
    import torch
    from diffusers.hooks import apply_group_offloading

    from lightdiff.runtime import pinned

    torch.cuda.init()
    te = build()
    nbytes = sum(p.numel() * p.element_size() for p in te.parameters())
    row = {"way": way, "tensors": sum(1 for _ in te.parameters()), "weight_gb": round(nbytes / 1e9, 2)}
    t0 = time.perf_counter()
    if way == "pin_module":
        t = time.perf_counter()
        buf = pinned.consolidate(te)
        row["consolidate_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        ptrs = pinned.register(buf, threads)
        row["register_s"] = round(time.perf_counter() - t, 2)
        row["registered_chunks"] = len(ptrs)
        row["first_param_is_pinned"] = bool(next(te.parameters()).is_pinned())
    # as plan_apply._place_text_encoder places it: "streamed" pins whatever is not pinned yet; "paged" pins nothing
    # and copies each layer in and back out synchronously
    stream = way != "paged"
    apply_group_offloading(te, onload_device="cuda", offload_device="cpu", offload_type="leaf_level",
                           use_stream=stream, record_stream=stream)
    row["ready_s"] = round(time.perf_counter() - t0, 2)
    row["host_pinned_allocator_bytes"] = host_pinned_bytes()
    if way == "pin_module":  # group offloading kept our buffer: its host copies are views into it
        row["params_in_buffer"] = all(buf.holds(p.data) for p in te.parameters())
        row["buffer_bytes"] = buf.nbytes
    x = torch.zeros(1, 3584, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        for run in range(2):  # every layer visits the GPU once: streaming bandwidth
            torch.cuda.synchronize()
            t = time.perf_counter()
            for lin in te:
                lin(x[:, :lin.in_features] if lin.in_features <= 3584 else torch.zeros(1, lin.in_features,
                    dtype=torch.bfloat16, device="cuda"))
            torch.cuda.synchronize()
            row[f"stream_pass_{run}_s"] = round(time.perf_counter() - t, 2)
    row["stream_gb_per_s"] = round(nbytes / 1e9 / row["stream_pass_1_s"], 1)  # weight bytes per second of a pass
    if way == "paged":  # its pass also copies every layer back out (plan_model.te_paged_encode_s counts both ways)
        row["note"] = "a pass copies each layer in and back out, from and to pageable memory"
    rss_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
    row["vm_rss_gb"] = round(rss_kb / 2**20, 2)
    return row


WAYS = ("pin_memory", "pin_module", "paged")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--way", choices=WAYS)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args()
    if args.way:
        from lightdiff.runtime.device import env_stamp

        try:
            r = one(args.way, args.threads)
        except Exception as e:  # a result: the row says what failed
            import traceback

            r = {"way": args.way, "status": "error", "error": f"{type(e).__name__}: {e}"[:500],
                 "traceback": traceback.format_exc()[-3000:]}
        r.update({"schema": 1, "kind": "pinning", "threads": args.threads,
                  "env": {k: v for k, v in env_stamp().items() if k not in ("gpus",)}})
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps({k: v for k, v in r.items() if k != "env"}), flush=True)
        return 0
    for way in WAYS:  # a fresh process each: the host allocator's cache starts empty
        subprocess.run([sys.executable, __file__, "-o", args.out, "--way", way, "--threads", str(args.threads)],
                       check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
