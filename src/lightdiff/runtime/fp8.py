"""fp8 compute for a transformer denoiser: each Linear's matmul on fp8 tensor cores (torch._scaled_mm).

``Fp8Linear`` keeps its weight in float8 e4m3 (1 byte per parameter, one fp32 scale per output row) and
quantizes its input per row at each call, the scheme of torchao's Float8DynamicActivationFloat8Weight
with PerRow granularity, then multiplies with torch._scaled_mm, which runs fp8 matmuls on Hopper and Ada
instead of upcasting the weights as diffusers' layerwise casting does.

Why not torchao's own tensor subclass (what this module used until 2026-11-27): eager, its per-layer
dispatch made qwen-image-2512 3.3x slower than bf16 (24.57 vs 7.52 s, H100, 2026-11-26; the profile shows
the CPU as the bound: 1.83 s of CPU for 1.07 s of GPU work over two steps), and compiled, the 60 quantized
blocks did not finish compiling in the ~4 minutes a run had left, twice (H100, 2026-11-26 and 27), where the
bf16 blocks compile in 20 s. Plain fp8 tensors are ordinary graph inputs: the blocks compile as one graph, and Inductor fuses the
per-row activation quantization into the ops around it. It also needs nothing beyond torch.

cuBLAS fp8 matmuls need the activation's row count to be a multiple of 16. Qwen-Image's text stream has a
handful of tokens and its modulation layers see one row per image, so the input is padded with zero rows
and the padding dropped after the matmul: rows are independent, so the real rows are unchanged. cuBLAS's
row-wise scaled fp8 matmul has also refused some shapes with few rows: through torchao, Qwen-Image's
feed-forward output Linear(12288 -> 3072) on the text stream failed up to 256 rows and worked from 257
(pytorch/ao#4582; H100, 2026-11-26), where this module's call ran it at 16 rows (2026-11-27). Support is by
shape, layout and cuBLAS version, so ``quantize_denoiser`` asks the card, once per layer shape, for the
fewest rows that work (16, else 272, else 1024); a shape that fails at every count stays in the compute dtype.

Fast accumulation (``fast_accum``): cuBLAS refuses ``use_fast_accum`` with row-wise scales, so this mode
multiplies the same fp8 values with unit per-tensor scales and fast accumulation, and applies the row and
column scales to the bf16 product afterwards (an elementwise step Inductor fuses into what follows). Same
quantization, same scales; only the tensor cores' accumulation differs (Hopper's fast mode keeps fewer bits).

Block scales (``scaling="blockwise"``, opt-in: measured slower): the input gets one scale per 1 x 128 block of a
row and the weight one per 128 x 128 block (DeepSeek-V3's recipe), which torch._scaled_mm runs through cuBLAS on
Hopper (CUDA 12.9+; cuBLAS promotes the accumulator to fp32 at every block, so there is no fast mode to choose).
Why: the row-wise input quantization needs each row's absolute maximum before it can scale any of it, and those
reductions over 3,072- and 12,288-wide rows were 16% of a Qwen-Image step on an H200 (2026-11-28), 3-4x their
memory traffic; a 128-wide block's maximum is local. Elsewhere (the CPU, other GPUs) the same quantized values
are multiplied by dequantizing them, so the tiny twins and tests run the same arithmetic. Measured on an H200
(2026-11-29, Qwen-Image-2512 at 1024, 20 steps, one process): 4.624 s per image against 4.069 s row-wise with fast
accumulation. cuBLAS's block-scaled matmul took 22% longer than the row-wise fast-accumulation one, and the
quantization as Inductor generates it (a per-block maximum, then a separate scaling pass) saved only 8% of its
time; so it stays opt-in, for weights whose outliers a row's scale would flatten.
"""

from __future__ import annotations

import torch

ROW_MULTIPLE = 16
ROW_COUNTS_TO_TRY = (16, 272, 1024)  # 272: the first multiple of 16 above pytorch/ao#4582's 256
E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
AMAX_FLOOR = 1e-12  # an all-zero row gets a tiny scale, not a division by zero
# Layers left in the compute dtype: the first and last projections of the latent (tiny, and the
# ones quantization noise hurts most) and the timestep embedding (two small layers).
KEEP_PRECISE = ("img_in", "proj_out", "norm_out", "time_text_embed")


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric float8 e4m3: (values, fp32 scales of shape (rows, 1)), t ~= values * scales."""
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=AMAX_FLOOR) / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


BLOCK = 128  # the side of a block scale (block scales need every matmul dimension a multiple of it)


def quantize_blocks(t: torch.Tensor, rows_per_block: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric float8 e4m3 with one scale per ``rows_per_block`` x 128 block of a (rows, cols) tensor: values
    (rows, cols) and fp32 scales (rows / rows_per_block, cols / 128); both sides must divide."""
    rows, cols = t.shape
    blocks = t.reshape(rows // rows_per_block, rows_per_block, cols // BLOCK, BLOCK)
    scale = blocks.abs().amax(dim=(1, 3), keepdim=True).float().clamp(min=AMAX_FLOOR) / E4M3_MAX
    values = (blocks.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return values.reshape(rows, cols), scale.reshape(rows // rows_per_block, cols // BLOCK)


def dequantize_blocks(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of a block-quantized tensor (``quantize_blocks``'s inverse, up to fp8 rounding)."""
    rows_per_block = values.shape[0] // scale.shape[0]
    return (values.float() * scale.repeat_interleave(rows_per_block, 0).repeat_interleave(BLOCK, 1))


def padded_rows(rows: int, min_rows: int = 0, multiple: int = ROW_MULTIPLE) -> int:
    """Rows the fp8 matmul sees for ``rows`` real ones: the next multiple, and at least ``min_rows``."""
    return max(rows + (-rows % multiple), min_rows)


SCALINGS = ("rowwise", "blockwise")


def blockable(in_features: int, out_features: int) -> bool:
    """Can a layer of this shape take block scales (both sides whole blocks)?"""
    return in_features % BLOCK == 0 and out_features % BLOCK == 0


def cublas_blocks(device) -> bool:
    """Does torch._scaled_mm multiply 1 x 128 by 128 x 128 block scales on ``device`` (cuBLAS, Hopper)?"""
    return torch.device(device).type == "cuda" and torch.cuda.get_device_capability(torch.device(device))[0] == 9


def quantize_weight(weight: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (out, in) weight in fp8 with the scales an ``Fp8Linear`` keeps: (1, out) per row, as _scaled_mm wants them,
    or (out / 128, in / 128) per block."""
    if scaling == "blockwise":
        return quantize_blocks(weight, BLOCK)
    values, scale = quantize_rows(weight)
    return values, scale.reshape(1, -1)


def _check_scaling(scaling: str, in_features: int, out_features: int) -> None:
    if scaling not in SCALINGS:
        raise ValueError(f"unknown fp8 scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    if scaling == "blockwise" and not blockable(in_features, out_features):
        raise ValueError(f"block scales need both sides a multiple of {BLOCK}: {in_features}x{out_features}")


class Fp8Linear(torch.nn.Module):
    """A Linear computed in fp8: weight quantized once (per output row, or per 128 x 128 block), input at each call
    (per row, or per 1 x 128 block)."""

    def __init__(self, linear: torch.nn.Linear, min_rows: int = ROW_MULTIPLE, fast_accum: bool = False,
                 scaling: str = "rowwise"):
        super().__init__()
        _check_scaling(scaling, linear.in_features, linear.out_features)
        values, scale = quantize_weight(linear.weight.detach(), scaling)
        self._hold(values, scale, linear.bias, min_rows, fast_accum, scaling)

    @classmethod
    def from_parts(cls, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias, min_rows: int = ROW_MULTIPLE,
                   fast_accum: bool = False, scaling: str = "rowwise") -> "Fp8Linear":
        """A layer from values and scales already quantized (shapes as the buffers below): fused projections."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer._hold(weight_fp8, weight_scale, bias, min_rows, fast_accum, scaling)
        return layer

    def _hold(self, values, scale, bias, min_rows: int, fast_accum: bool, scaling: str) -> None:
        self.out_features, self.in_features = values.shape
        _check_scaling(scaling, self.in_features, self.out_features)
        self.min_rows = min_rows  # some shapes need more rows than any multiple of 16 (module docstring)
        self.fast_accum = fast_accum
        self.scaling = scaling
        # decided where the weights are quantized (a plain attribute, so compiled code branches on it for free)
        self.cublas_blocks = scaling == "blockwise" and cublas_blocks(values.device)
        self.register_buffer("weight_fp8", values)  # (out, in); buffers: `model.dtype` stays the compute dtype
        # (1, out) row scales as _scaled_mm wants them, or (out / 128, in / 128) block scales
        self.register_buffer("weight_scale", scale.contiguous())
        self.bias = bias if bias is None or isinstance(bias, torch.nn.Parameter) else torch.nn.Parameter(
            bias, requires_grad=False)
        self.register_buffer("unit_scale", torch.ones((), dtype=torch.float32, device=values.device),
                             persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # what callers read off a layer: its device, dtype and shape
        return self.weight_fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        pad = padded_rows(rows, self.min_rows) - rows
        if torch.compiler.is_compiling() or pad:  # compiled: no guard on the row count (a dynamic text length)
            flat = torch.nn.functional.pad(flat, (0, 0, 0, pad))
        # bf16 out (and bias): cuBLAS's row-wise scaled fp8 matmul refuses fp32 ones (a model in fp32, such as
        # the tiny twins on a GPU); use_fast_accum: it refuses that with row-wise scales too (H100, 2026-11-27)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        if self.scaling == "blockwise":
            return self._blockwise(flat, bias, rows).reshape(*lead, self.out_features).to(x.dtype)
        values, scale = quantize_rows(flat)
        if self.fast_accum:  # unit scales in the matmul, the row and column scales after it
            out = torch._scaled_mm(values, self.weight_fp8.t(), scale_a=self.unit_scale, scale_b=self.unit_scale,
                                   out_dtype=torch.bfloat16, use_fast_accum=True)
            out = out[:rows].float() * scale[:rows] * self.weight_scale
            out = (out if bias is None else out + bias).to(torch.bfloat16)
        else:
            out = torch._scaled_mm(values, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias,
                                   out_dtype=torch.bfloat16)[:rows]
        return out.reshape(*lead, self.out_features).to(x.dtype)

    def _blockwise(self, flat: torch.Tensor, bias, rows: int) -> torch.Tensor:
        """1 x 128 input blocks times 128 x 128 weight blocks: cuBLAS on Hopper, else the same values dequantized."""
        values, scale = quantize_blocks(flat)
        if self.cublas_blocks:
            # layouts cuBLAS wants: input scales outer-dim-major (stride (1, rows)), weight scales as (in, out) / 128
            out = torch._scaled_mm(values, self.weight_fp8.t(), scale_a=scale.t().contiguous().t(),
                                   scale_b=self.weight_scale.t(), bias=bias, out_dtype=torch.bfloat16)
            return out[:rows]
        out = dequantize_blocks(values, scale) @ dequantize_blocks(self.weight_fp8, self.weight_scale).t()
        out = out[:rows] if bias is None else out[:rows] + bias.float()
        return out.to(torch.bfloat16)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, min_rows={self.min_rows}, "
                f"fast_accum={self.fast_accum}, scaling={self.scaling}")


def quantizable(module: torch.nn.Module, name: str) -> bool:
    """A Linear of the denoiser that fp8 compute converts: every dimension fp8 matmuls accept."""
    return (isinstance(module, torch.nn.Linear) and module.in_features % ROW_MULTIPLE == 0
            and module.out_features % ROW_MULTIPLE == 0
            and not any(name == k or name.startswith(k + ".") for k in KEEP_PRECISE))


def unsupported_reason(device) -> str | None:
    """None when ``device`` runs fp8 matmuls on tensor cores, else why not (for the error and the planner)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "fp8 compute needs a CUDA GPU with fp8 tensor cores (Ada or Hopper)"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        return (f"fp8 compute needs fp8 tensor cores (compute capability 8.9+: Ada or Hopper); "
                f"this GPU is {major}.{minor}")
    return None


def fewest_rows(in_features: int, out_features: int, device, dtype=torch.bfloat16,
                fast_accum: bool = False, scaling: str = "rowwise") -> int | None:
    """The fewest rows (of ROW_COUNTS_TO_TRY) an fp8 matmul of this shape runs with on ``device`` (in the
    accumulation mode and scaling given); None when it fails at every count. Asks the card: cuBLAS's support is
    by shape and version."""
    for rows in ROW_COUNTS_TO_TRY:
        probe = Fp8Linear(torch.nn.Linear(in_features, out_features, dtype=dtype, device=device), min_rows=rows,
                          fast_accum=fast_accum, scaling=scaling)
        try:
            probe(torch.zeros(1, in_features, dtype=dtype, device=device))
            if str(device).startswith("cuda"):
                torch.cuda.synchronize(device)
            return rows
        except RuntimeError as e:  # CUBLAS_STATUS_NOT_SUPPORTED for this shape: try more rows
            if "CUBLAS" not in str(e) and "not supported" not in str(e).lower():
                raise
    return None


def scaling_for(in_features: int, out_features: int, device, wanted: str) -> str:
    """The scaling a layer of this shape gets on ``device`` when ``wanted`` is asked: block scales only for whole
    blocks, and on a GPU only where cuBLAS multiplies them (elsewhere they would be dequantized at every call)."""
    if wanted != "blockwise" or not blockable(in_features, out_features):
        return "rowwise"
    if torch.device(device).type == "cuda" and not cublas_blocks(device):
        return "rowwise"
    return "blockwise"


def dequantized_weight(layer: "Fp8Linear") -> torch.Tensor:
    """A layer's weight as float32 values (its fp8 values times their scales)."""
    if layer.scaling == "blockwise":
        return dequantize_blocks(layer.weight_fp8, layer.weight_scale)
    return layer.weight_fp8.float() * layer.weight_scale.reshape(-1, 1)


def set_scaling(denoiser: torch.nn.Module, scaling: str) -> int:
    """Requantize every ``Fp8Linear`` of ``denoiser`` to ``scaling`` where its shape and the device allow it, from
    its fp8 weights (a second rounding: for measuring; the engine quantizes from the compute dtype); returns how
    many changed. Compiled code traced the old layers: recompile after."""
    changed, rows_for = 0, {}
    for layer in [m for m in denoiser.modules() if isinstance(m, Fp8Linear)]:
        device = layer.weight_fp8.device
        if layer.scaling == scaling or scaling_for(layer.in_features, layer.out_features, device, scaling) != scaling:
            continue
        shape = (layer.in_features, layer.out_features)
        if shape not in rows_for:
            rows_for[shape] = fewest_rows(*shape, device, scaling=scaling)
        if rows_for[shape] is None:
            continue  # the card refuses this shape with these scales: the layer stays as it is
        values, scale = quantize_weight(dequantized_weight(layer), scaling)
        layer._hold(values, scale, layer.bias, max(layer.min_rows, rows_for[shape]), layer.fast_accum, scaling)
        changed += 1
    return changed


def set_fast_accum(denoiser: torch.nn.Module, on: bool) -> int:
    """Switch every ``Fp8Linear`` of ``denoiser`` to (or from) fast accumulation; returns how many.
    Compiled code traced the old mode: recompile after switching."""
    layers = [m for m in denoiser.modules() if isinstance(m, Fp8Linear)]
    for m in layers:
        m.fast_accum = on
    return len(layers)


def quantize_denoiser(denoiser: torch.nn.Module, device=None, fast_accum: bool = True,
                      scaling: str = "rowwise") -> dict:
    """Replace the denoiser's quantizable Linear layers by ``Fp8Linear`` (in place).

    With ``device``, each layer is moved there just before it is converted, so a bf16 model in host
    RAM never needs its full bf16 size on the GPU. Returns what was done: layers converted, the rows
    each shape is padded to, and the shapes left in the compute dtype.

    ``fast_accum`` (the default): qwen-image-2512 at 1024, 20 steps, true CFG, compiled blocks with CUDA
    graphs took 4.39 s against 4.78 s row-wise accumulated (H100, 2026-11-27, one process; relative L2 to
    the bf16 image 0.0194 against 0.0188, synthetic weights).

    ``scaling="blockwise"``: block scales for the shapes and device that take them (``scaling_for``), row scales for
    the rest; the result counts the layers of each."""
    run_on = device or next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    wanted = {n: mod for n, mod in denoiser.named_modules() if quantizable(mod, n)}
    shapes = {(m.in_features, m.out_features) for m in wanted.values()}
    scalings = {shape: scaling_for(*shape, run_on, scaling) for shape in shapes}
    rows = {shape: fewest_rows(*shape, run_on, dtype, fast_accum, scalings[shape]) for shape in sorted(shapes)}
    kept = sorted(n for n, m in wanted.items() if rows[(m.in_features, m.out_features)] is None)
    converted, by_scaling = 0, {}
    for name in sorted(wanted):
        linear = wanted.pop(name)  # no reference kept: each bf16 weight is freed once converted
        min_rows = rows[(linear.in_features, linear.out_features)]
        if min_rows is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = denoiser.get_submodule(parent_name) if parent_name else denoiser
        shape_scaling = scalings[(linear.in_features, linear.out_features)]
        setattr(parent, child, Fp8Linear(linear.to(run_on), min_rows, fast_accum, shape_scaling))
        converted += 1
        by_scaling[shape_scaling] = by_scaling.get(shape_scaling, 0) + 1
    out = {"layers": converted, "min_rows": {f"{k}x{n}": r for (k, n), r in sorted(rows.items())},
           "kept_precise": kept, "fast_accum": fast_accum}
    if scaling != "rowwise":  # what was asked and what each layer got (rows of earlier runs keep their keys)
        out["scaling"] = {"asked": scaling, **dict(sorted(by_scaling.items()))}
    return out
