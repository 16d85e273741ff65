"""FLOPs per denoiser forward and per VAE decode, counted once on the meta device and kept as data.

The planner's time model needs FLOPs at any size without torch, so the counts live here as the
coefficients of ``tflops = c0 + c1*P + c2*P**2`` (P = megapixels of one image; the P**2 term is
attention, whose cost grows with tokens squared). ``count_tflops`` re-derives them with
torch.utils.flop_counter.FlopCounterMode on the real architecture built on the meta device (no
memory, no weights); ``python -m lightdiff.runtime.plan_flops sd15 qwen-image`` prints fresh
coefficients, and a test re-counts one size and compares it with the table.

Counts are for ONE batch item through the component: a denoiser forward on one latent (so CFG
or true CFG costs two per step) and one VAE decode. Qwen-Image is counted with 64 text tokens
(a typical prompt after the template is dropped); the text stream adds about 2% at 1024.
"""

from __future__ import annotations

import sys

# (component class, params_M) -> (c0, c1, c2): TFLOP = c0 + c1*P + c2*P**2, P in megapixels.
# Fitted by least squares to counts at 256, 512, 768, 1024, 1328, 1536 and 2048 px squares
# (count_tflops, diffusers 0.42.1). Keyed by architecture, so qwen-image and qwen-image-2512 share one.
FLOP_FITS: dict[tuple[str, float], tuple[float, float, float]] = {
    ('UNet2DConditionModel', 859.52): (-0.00181, 2.60436, 1.77824),
    ('AutoencoderKL', 83.65): (0.0, 9.46106, 0.5),
    ('QwenImageTransformer2DModel', 20430.4): (0.88781, 53.45587, 11.25),
    ('AutoencoderKLQwenImage', 126.89): (0.0, 10.74817, 0.375),
}

TEXT_TOKENS_ASSUMED = 64
FIT_SIZES = (256, 512, 768, 1024, 1328, 1536, 2048)


def _key(spec, component: str) -> tuple[str, float]:
    comp = spec.components[component]
    return comp.cls, round(comp.params_M or 0.0, 2)


def tflops(spec, component: str, width: int, height: int) -> float | None:
    """TFLOP for one batch item through ``component`` at width x height, from the table; None if unknown."""
    fit = FLOP_FITS.get(_key(spec, component))
    if fit is None:
        return None
    p = width * height / 1e6
    c0, c1, c2 = fit
    return max(0.0, c0 + c1 * p + c2 * p * p)


def count_tflops(spec, component: str, width: int, height: int, text_tokens: int = TEXT_TOKENS_ASSUMED) -> float:
    """Count with FlopCounterMode on the meta device: the real architecture, no memory, no weights."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lightdiff.runtime.build import build_on_meta

    module = build_on_meta(spec, [component])[component]
    meta = {"device": "meta"}
    cfg = module.config
    if component == "unet":
        lat = torch.empty(1, cfg.in_channels, height // 8, width // 8, **meta)
        text = torch.empty(1, 77, cfg.cross_attention_dim, **meta)

        def run():
            module(lat, torch.tensor([500.0], **meta), text)
    elif component == "transformer":
        h, w = height // 16, width // 16
        x = torch.empty(1, h * w, cfg.in_channels, **meta)
        text = torch.empty(1, text_tokens, cfg.joint_attention_dim, **meta)
        mask = torch.ones(1, text_tokens, dtype=torch.bool, **meta)

        def run():
            module(hidden_states=x, encoder_hidden_states=text, encoder_hidden_states_mask=mask,
                   timestep=torch.tensor([0.5], **meta), img_shapes=[(1, h, w)], return_dict=False)
    elif component == "vae":
        z_dim = getattr(cfg, "z_dim", None)
        if z_dim is not None:  # Qwen-Image's video-style VAE: (batch, channels, frames, h, w)
            lat = torch.empty(1, z_dim, 1, height // 8, width // 8, **meta)
        else:
            lat = torch.empty(1, cfg.latent_channels, height // 8, width // 8, **meta)

        def run():
            module.decode(lat)
    else:
        raise ValueError(f"no FLOP count recipe for component {component!r}")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run()
    return counter.get_total_flops() / 1e12


def _fit(spec, component: str) -> tuple[float, float, float]:
    import numpy as np

    ps = np.array([s * s / 1e6 for s in FIT_SIZES])
    ys = np.array([count_tflops(spec, component, s, s) for s in FIT_SIZES])
    a = np.stack([np.ones_like(ps), ps, ps * ps], axis=1)
    coef, *_ = np.linalg.lstsq(a, ys, rcond=None)
    return tuple(round(float(c), 5) for c in coef)


def main(argv: list[str]) -> None:
    from lightdiff import specs

    for model_id in argv or ["sd15", "qwen-image"]:
        spec = specs.get(model_id)
        for component in spec.weight_components():
            if component == "text_encoder":
                continue
            print(f"    {_key(spec, component)!r}: {_fit(spec, component)!r},")


if __name__ == "__main__":
    main(sys.argv[1:])
