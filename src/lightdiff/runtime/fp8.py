"""fp8 compute for a transformer denoiser: torchao float8 matmuls, with every Linear usable.

torchao's Float8DynamicActivationFloat8WeightConfig keeps weights in float8 (1 byte per parameter,
one scale per output row) and quantizes activations per row at each call, so the matmuls run on
fp8 tensor cores (Hopper, Ada) instead of upcasting weights as diffusers' layerwise casting does.

cuBLAS fp8 matmuls need the row count of the activation to be a multiple of 16. Qwen-Image's text
stream has a handful of tokens and its modulation layers see one row per image, so those layers
fail as they are (CUBLAS_STATUS_NOT_SUPPORTED, measured 2026-11-26). ``RowPadded`` pads the rows
with zeros to the next multiple of 16 and drops them after the matmul: rows are independent, so
the real rows' results are unchanged, and the padding costs at most 15 rows of work. torchao has no
such option (its ``pad_inner_dim`` pads the reduction dimension, not the rows).

cuBLAS's row-wise scaled fp8 matmul also refuses some shapes with few rows on the H100: a large
reduction dimension (Linear(9216 -> 3072)) fails up to 256 rows and works from 257 (pytorch/ao#4582;
here Qwen-Image's feed-forward output Linear(12288 -> 3072) on the text stream, measured 2026-11-26).
So ``quantize_denoiser`` asks the card, once per layer shape, for the fewest rows that work (16, else
272, else 1024) and pads to that; a shape that fails at every count stays in the compute dtype.
"""

from __future__ import annotations

import torch

ROW_MULTIPLE = 16
ROW_COUNTS_TO_TRY = (16, 272, 1024)  # 272: the first multiple of 16 above pytorch/ao#4582's 256
# Layers left in the compute dtype: the first and last projections of the latent (tiny, and the
# ones quantization noise hurts most) and the timestep embedding (two small layers).
KEEP_PRECISE = ("img_in", "proj_out", "norm_out", "time_text_embed")


class RowPadded(torch.nn.Module):
    """A Linear whose input rows are padded to a multiple of ``multiple`` (see the module docstring)."""

    def __init__(self, inner: torch.nn.Module, multiple: int = ROW_MULTIPLE, min_rows: int = 0):
        super().__init__()
        self.inner = inner
        self.multiple = multiple
        self.min_rows = min_rows  # some fp8 shapes need more rows than any multiple of 16 (module docstring)

    # diffusers reads these from the layers it holds (e.g. a layer's weight dtype or device)
    @property
    def weight(self):
        return self.inner.weight

    @property
    def bias(self):
        return self.inner.bias

    @property
    def in_features(self) -> int:
        return self.inner.in_features

    @property
    def out_features(self) -> int:
        return self.inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        pad = max(-rows % self.multiple, self.min_rows - rows)
        if pad > 0:
            flat = torch.nn.functional.pad(flat, (0, 0, 0, pad))
        out = self.inner(flat)
        return out[:rows].reshape(*lead, out.shape[-1])


def quantizable(module: torch.nn.Module, name: str) -> bool:
    """A Linear of the denoiser that fp8 compute converts: every dimension fp8 matmuls accept."""
    return (isinstance(module, torch.nn.Linear) and module.in_features % ROW_MULTIPLE == 0
            and module.out_features % ROW_MULTIPLE == 0
            and not any(name == k or name.startswith(k + ".") for k in KEEP_PRECISE))


def unsupported_reason(device) -> str | None:
    """None when ``device`` runs fp8 matmuls, else why not (for the error and the planner)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "fp8 compute needs a CUDA GPU with fp8 tensor cores (Ada or Hopper)"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        return (f"fp8 compute needs fp8 tensor cores (compute capability 8.9+: Ada or Hopper); "
                f"this GPU is {major}.{minor}")
    return None


def _config():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def fewest_rows(in_features: int, out_features: int, device, dtype=torch.bfloat16) -> int | None:
    """The fewest rows (of ROW_COUNTS_TO_TRY) a float8 Linear of this shape runs with on ``device``;
    None when it fails at every count. Asks the card: cuBLAS's support is by shape and version."""
    from torchao.quantization import quantize_

    probe = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, dtype=dtype, device=device))
    quantize_(probe, _config())
    for rows in ROW_COUNTS_TO_TRY:
        try:
            probe(torch.zeros(rows, in_features, dtype=dtype, device=device))
            torch.cuda.synchronize(device)
            return rows
        except RuntimeError as e:  # CUBLAS_STATUS_NOT_SUPPORTED for this shape: try more rows
            if "CUBLAS" not in str(e) and "not supported" not in str(e).lower():
                raise
    return None


def quantize_denoiser(denoiser: torch.nn.Module, device=None) -> dict:
    """Convert the denoiser's Linear layers to torchao float8 (per-row scales), each padded for rows.

    With ``device``, each layer is moved there just before it is converted, so a bf16 model in host
    RAM never needs its full bf16 size on the GPU. Returns what was done: layers converted, the rows
    each shape is padded to, and the shapes left in the compute dtype."""
    from torchao.quantization import quantize_

    run_on = device or next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    wanted = {n: mod for n, mod in denoiser.named_modules() if quantizable(mod, n)}
    shapes = {(m.in_features, m.out_features) for m in wanted.values()}
    rows = {shape: fewest_rows(*shape, run_on, dtype) for shape in sorted(shapes)}
    keep = {n for n, m in wanted.items() if rows[(m.in_features, m.out_features)] is None}
    names = set(wanted) - keep
    quantize_(denoiser, _config(), filter_fn=lambda mod, fqn: fqn in names, device=device)
    wrap_rows(denoiser, {n: rows[(wanted[n].in_features, wanted[n].out_features)] for n in names})
    return {"layers": len(names), "min_rows": {f"{k}x{n}": r for (k, n), r in sorted(rows.items())},
            "kept_precise": sorted(keep)}


def wrap_rows(root: torch.nn.Module, min_rows: dict[str, int], multiple: int = ROW_MULTIPLE) -> None:
    """Replace each named submodule of ``root`` by ``RowPadded(submodule)``, padded to at least its rows."""
    for name, rows in sorted(min_rows.items()):
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, RowPadded(getattr(parent, child), multiple, rows))
