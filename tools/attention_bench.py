"""Attention at Qwen-Image-2512's shapes: torch's SDPA backends in bf16 against cuDNN's fp8 attention.

Qwen-Image-2512 at 1024x1024 attends over 4,096 image tokens plus the prompt's, 24 heads of 128, once per block
(60 blocks) per forward; attention was 22% of a fast-path step on an H100 (2026-11-28, cuDNN's flash kernel in
bf16 at about 58% of the bf16 peak). cuDNN's fp8 attention (``sdpa_fp8``: Q, K, V and the softmax probabilities
in float8_e4m3 with per-tensor scales, accumulation in float32) runs on Hopper's fp8 tensor cores; this tool
measures whether it pays here before anything is built around it: time per call, FLOP/s and share of the peak,
the cost of quantizing Q, K and V (compiled, as it would be fused before the call), and the output's error
against bf16 on the same inputs. Rows are JSON lines; cuDNN's Python frontend (``nvidia-cudnn-frontend``) is
optional, and its rows say why when it is missing or refuses the graph.

SD1.5's attention has small heads (8 of 40, 80 and 160 over 4,096, 1,024 and 256 tokens at 512x512), where the
kernels run far below the peak (its attention was 24% of a batch-16 step on an H200, at about 23% of the bf16
peak). ``--pad-dims`` also times each backend with the head dimension zero-padded to larger sizes (exact: the zero
columns add nothing to Q K^T, the scale stays the unpadded one, and the output's extra columns are dropped),
the padding itself timed apart, as a compiled projection would write it.

  python tools/attention_bench.py -o attention.jsonl          # a CUDA machine, about a minute
  python tools/attention_bench.py -o a.jsonl --dtype float16 --batch 32 --heads 8 --dim 40 --seqs 4096 \
      --pad-dims 48 64 --no-fp8                               # SD1.5's first level at batch 16 (CFG: 32)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

BF16_PEAK_TFLOPS = 989.4  # dense, H100/H200 SXM datasheets; fp8 twice that
FP8_MAX = 448.0  # float8_e4m3fn


def timed(fn, runs: int) -> float:
    """Median milliseconds of ``fn()`` over ``runs`` calls (CUDA events, after three warm-up calls)."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def attention_flops(batch: int, heads: int, seq: int, dim: int) -> float:
    return 4.0 * batch * heads * seq * seq * dim  # Q K^T and P V, two FLOPs a multiply-add


def quantize(x):
    """``x`` in float8_e4m3fn scaled by its absolute maximum, and the float32 factor that undoes the scale."""
    import torch

    amax = x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * (FP8_MAX / amax)).to(torch.float8_e4m3fn), (amax / FP8_MAX).reshape(1, 1, 1, 1)


class CudnnFp8Attention:
    """One cuDNN graph for fp8 attention over (batch, seq, heads, dim) tensors, its output in bf16, or in fp8
    scaled by ``scale_o`` (cuDNN builds before 9.13 or so take fp8 output only)."""

    def __init__(self, batch: int, heads: int, seq: int, dim: int, scale: float, fp8_out: bool = False,
                 scale_o: float = 1.0):
        import cudnn
        import torch

        self.cudnn = cudnn
        self.handle = cudnn.create_handle()
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        g = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=self.handle)
        dims, strides = (batch, heads, seq, dim), (seq * heads * dim, dim, heads * dim, 1)  # BSHD in memory
        q, k, v = (g.tensor(name=n, dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3) for n in "qkv")
        scalars = {n: g.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.FLOAT)
                   for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
        o, _stats, amax_s, amax_o = g.sdpa_fp8(q=q, k=k, v=v, **scalars, is_inference=True, attn_scale=scale,
                                                use_causal_mask=False)
        out_type = cudnn.data_type.FP8_E4M3 if fp8_out else cudnn.data_type.BFLOAT16
        o.set_output(True).set_dim(dims).set_stride(strides).set_data_type(out_type)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(cudnn.data_type.FLOAT)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph, self.tensors = g, dict(q=q, k=k, v=v, o=o, amax_s=amax_s, amax_o=amax_o, **scalars)
        self.workspace = torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)
        self.out = torch.empty(batch, seq, heads, dim, device="cuda",
                               dtype=torch.float8_e4m3fn if fp8_out else torch.bfloat16)
        self.amax = [torch.empty(1, 1, 1, 1, device="cuda", dtype=torch.float32) for _ in range(2)]
        one = torch.ones(1, 1, 1, 1, device="cuda", dtype=torch.float32)
        # the probabilities lie in [0, 1]: scaled by the e4m3 maximum going in, by its inverse coming out
        self.fixed = {"descale_s": one / FP8_MAX, "scale_s": one * FP8_MAX, "scale_o": one * scale_o}
        self.unscale = 1.0 / scale_o

    def __call__(self, q8, k8, v8, descale_q, descale_k, descale_v):
        t = self.tensors
        pack = {t["q"]: q8, t["k"]: k8, t["v"]: v8, t["descale_q"]: descale_q, t["descale_k"]: descale_k,
                t["descale_v"]: descale_v, t["o"]: self.out, t["amax_s"]: self.amax[0], t["amax_o"]: self.amax[1],
                **{t[n]: value for n, value in self.fixed.items()}}
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.out

    def dequantized(self):
        return self.out.float() * self.unscale


def padded_heads(x, dim: int):
    """``x`` (..., d) with its last dimension zero-padded to ``dim``."""
    import torch.nn.functional as F

    return F.pad(x, (0, dim - x.shape[-1]))


def bench_shape(batch: int, heads: int, seq: int, dim: int, runs: int, dtype: str = "bfloat16",
                pad_dims=(), fp8: bool = True) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device="cuda").manual_seed(0)
    # (batch, seq, heads, dim) as the Qwen-Image attention processor holds them; scores about N(0, 2)
    q, k, v = (torch.randn(batch, seq, heads, dim, device="cuda", dtype=getattr(torch, dtype), generator=gen) * s
               for s in (1.2, 1.2, 1.0))
    flops = attention_flops(batch, heads, seq, dim)
    shape = {"batch": batch, "heads": heads, "seq": seq, "dim": dim, "dtype": dtype, "gflop": round(flops / 1e9, 1),
             "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
             "date": time.strftime("%Y-%m-%d")}
    rows = []

    def sdpa(backend, q=q, k=k, v=v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  scale=dim ** -0.5)

    reference = sdpa(SDPBackend.CUDNN_ATTENTION).transpose(1, 2).float()
    short = "bf16" if dtype == "bfloat16" else "fp16"
    backends = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION))
    for padded in (dim, *pad_dims):
        qp, kp, vp, extra, suffix = q, k, v, {}, ""
        if padded != dim:  # padded as a compiled projection would write it, that cost timed apart
            pad = torch.compile(lambda a, b, c: tuple(padded_heads(x, padded) for x in (a, b, c)))
            qp, kp, vp = pad(q, k, v)
            extra = {"padded_dim": padded, "pad_qkv_ms": round(timed(lambda: pad(q, k, v), runs), 4)}
            suffix = f"-pad{padded}"
        for name, backend in backends:
            label = f"sdpa-{name}-{short}{suffix}"
            try:
                out = sdpa(backend, qp, kp, vp).transpose(1, 2)[..., :dim].float()
                ms = timed(lambda: sdpa(backend, qp, kp, vp), runs)
                rows.append({**shape, **extra, "backend": label, "ms": round(ms, 4),
                             "tflops": round(flops / ms / 1e9, 1),  # the unpadded FLOPs: what the model needs
                             "share_of_bf16_peak": round(flops / ms / 1e9 / BF16_PEAK_TFLOPS, 3),
                             "relative_l2_error_vs_cudnn": round(((out - reference).norm() / reference.norm()).item(), 6)})
            except Exception as e:  # a backend this build or shape lacks: recorded, the others still run
                rows.append({**shape, **extra, "backend": label, "error": f"{type(e).__name__}: {e}"[:300]})
    if not fp8:
        return rows

    quantize_all = torch.compile(lambda a, b, c: (quantize(a), quantize(b), quantize(c)))
    (q8, dq), (k8, dk), (v8, dv) = quantize_all(q, k, v)
    quant_ms = timed(lambda: quantize_all(q, k, v), runs)
    try:
        import cudnn
    except ImportError as e:
        rows.append({**shape, "backend": "cudnn-fp8", "quantize_qkv_ms": round(quant_ms, 4), "error": str(e)})
        return rows
    for fp8_out in (False, True):
        name = "cudnn-fp8" + ("-fp8-out" if fp8_out else "")
        try:
            attn = CudnnFp8Attention(batch, heads, seq, dim, dim ** -0.5, fp8_out=fp8_out,
                                     scale_o=FP8_MAX / reference.abs().max().item())
            attn(q8, k8, v8, dq, dk, dv)
            out = attn.dequantized()
            err = ((out - reference).norm() / reference.norm()).item()
            ms = timed(lambda: attn(q8, k8, v8, dq, dk, dv), runs)
            rows.append({**shape, "backend": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                         "share_of_bf16_peak": round(flops / ms / 1e9 / BF16_PEAK_TFLOPS, 3),
                         "share_of_fp8_peak": round(flops / ms / 1e9 / (2 * BF16_PEAK_TFLOPS), 3),
                         "quantize_qkv_ms": round(quant_ms, 4), "relative_l2_error_vs_bf16": round(err, 5),
                         "max_abs_error_vs_bf16": round((out - reference).abs().max().item(), 5),
                         "cudnn_backend": cudnn.backend_version(), "cudnn_frontend": getattr(cudnn, "__version__", "")})
        except Exception as e:  # cuDNN refuses this graph on this card or build: recorded
            rows.append({**shape, "backend": name, "quantize_qkv_ms": round(quant_ms, 4),
                         "error": f"{type(e).__name__}: {e}"[:500]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", required=True, help="JSON lines, one row per backend and shape")
    p.add_argument("--batch", type=int, default=1, help="1: the engine's resident plans run true CFG's two "
                                                        "branches as two calls")
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seqs", type=int, nargs="+", default=[4096 + 32, 4096 + 128],
                   help="image tokens (4,096 at 1024x1024) plus the prompt's")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                   help="float16: SD1.5 as the engine runs it")
    p.add_argument("--pad-dims", type=int, nargs="*", default=[],
                   help="also time each backend with the head dimension zero-padded to these sizes")
    p.add_argument("--no-fp8", action="store_true", help="skip cuDNN's fp8 attention rows")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        p.error("attention_bench needs a CUDA device")
    with open(args.out, "a") as f:
        for seq in args.seqs:
            for row in bench_shape(args.batch, args.heads, seq, args.dim, args.runs, args.dtype, args.pad_dims,
                                   fp8=not args.no_fp8):
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
