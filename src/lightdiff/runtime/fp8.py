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
"""

from __future__ import annotations

import torch

ROW_MULTIPLE = 16
# Layers left in the compute dtype: the first and last projections of the latent (tiny, and the
# ones quantization noise hurts most) and the timestep embedding (two small layers).
KEEP_PRECISE = ("img_in", "proj_out", "norm_out", "time_text_embed")


class RowPadded(torch.nn.Module):
    """A Linear whose input rows are padded to a multiple of ``multiple`` (see the module docstring)."""

    def __init__(self, inner: torch.nn.Module, multiple: int = ROW_MULTIPLE):
        super().__init__()
        self.inner = inner
        self.multiple = multiple

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
        pad = -rows % self.multiple
        if pad:
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


def quantize_denoiser(denoiser: torch.nn.Module, device=None) -> int:
    """Convert the denoiser's Linear layers to torchao float8 (per-row scales), each padded for rows.

    With ``device``, each layer is moved there just before it is converted, so a bf16 model in host
    RAM never needs its full bf16 size on the GPU. Returns the number of layers converted."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    wanted = {n for n, mod in denoiser.named_modules() if quantizable(mod, n)}
    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda mod, fqn: fqn in wanted, device=device)
    wrap_rows(denoiser, wanted)
    return len(wanted)


def wrap_rows(root: torch.nn.Module, names: set[str], multiple: int = ROW_MULTIPLE) -> None:
    """Replace each named submodule of ``root`` by ``RowPadded(submodule)``."""
    for name in sorted(names):
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, RowPadded(getattr(parent, child), multiple))
