"""hires_fix: generate at a base size, upscale, then refine at the target size (AUTOMATIC1111's "Hires. fix").

Steps: 1. txt2img at the base size (width/height); 2. upscale by ``hr_scale`` (1 < hr_scale <= 4;
the target is base x scale rounded down to the family's size multiple, and must stay within the
family's max size); 3. an img2img pass at the target size with its own ``hr_denoise`` strength and
``hr_steps`` (default: the base steps; the pass runs int(hr_steps x hr_denoise) of them), same seed.

Upscalers:
- ``latent`` (SD1.5 only): the base pass stops at latents (output_type="latent"), which are
  enlarged with bilinear interpolation (torch.nn.functional.interpolate, as A1111's "Latent") and
  given to the img2img pipeline as its image (diffusers takes 4-channel latents as they are).
- ``lanczos``: decode, PIL Lanczos resize, img2img. The only upscaler for Qwen-Image: its img2img
  pipeline reads a latent input through an image preprocessor configured for 4 channels, and its
  latents are packed and normalised, so handing it enlarged latents is not a supported path.
The default is ``latent`` for SD1.5 and ``lanczos`` for Qwen-Image.

Metadata keep the base and the target size (``hires``); width/height are the target's.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from lightdiff.errors import InvalidRequest
from lightdiff.workflows.base import (
    BaseRequest, GenerationResult, Timer, generators, image_metadata, parse, prompt_length_warnings, resolve,
    step_callback,
)
from lightdiff.workflows.img2img import check_strength, denoise_steps, offset_progress, scheduled
from lightdiff.workflows.txt2img import family_call_args, prompt_token_limit

NAME = "hires_fix"
MIN_SCALE, MAX_SCALE = 1.0, 4.0
UPSCALERS = {"sd15": ("latent", "lanczos"), "qwen-image": ("lanczos",)}


class Request(BaseRequest):
    """txt2img at width x height, then a refining pass at hr_scale times that size."""

    workflow: Literal["hires_fix"] = "hires_fix"
    hr_scale: float = Field(2.0, gt=MIN_SCALE, le=MAX_SCALE, description="upscale factor, 1 < x <= 4")
    hr_upscaler: Literal["latent", "lanczos"] | None = Field(None,
                                                            description="default: latent (SD1.5), lanczos (Qwen)")
    hr_steps: int | None = Field(None, ge=1, le=1000, description="steps of the second pass; default: steps")
    hr_denoise: float = Field(0.7, gt=0.0, le=1.0, description="strength of the second pass")


def memory_size(req: Request, spec) -> tuple[int, int]:
    """The size the memory plan must hold: the second pass runs at the target size, not the base size."""
    r = resolve(req, spec)
    m = spec.rules.size_multiple
    return tuple(int(v * req.hr_scale) // m * m for v in (r.width, r.height))


def plan(req: Request, spec):
    """Resolved base request, target size, upscaler and second-pass steps; every check before loading."""
    r = resolve(req, spec)
    rules = spec.rules
    target = [int(v * req.hr_scale) // rules.size_multiple * rules.size_multiple for v in (r.width, r.height)]
    if max(target) > rules.max_size:
        most = math.floor(rules.max_size / max(r.width, r.height) * 100) / 100  # rounded down: it must fit
        raise InvalidRequest("hr_scale", f"hr_scale={req.hr_scale} makes {r.width}x{r.height} into "
                                         f"{target[0]}x{target[1]}, over {spec.family}'s largest size "
                                         f"{rules.max_size}.", f"Use hr_scale <= {most:.2f} or a smaller base size.")
    if target == [r.width, r.height]:
        raise InvalidRequest("hr_scale", f"hr_scale={req.hr_scale} leaves {r.width}x{r.height} unchanged after "
                                         f"rounding to multiples of {rules.size_multiple}.", "Use a larger hr_scale.")
    upscaler = req.hr_upscaler or UPSCALERS[spec.family][0]
    if upscaler not in UPSCALERS[spec.family]:
        raise InvalidRequest("hr_upscaler", f"hr_upscaler={upscaler!r} is not available for {spec.family}.",
                             f"Use one of: {', '.join(UPSCALERS[spec.family])} (see workflows/hires_fix.py).")
    hr_steps = req.hr_steps or r.steps
    check_strength(spec.family, hr_steps, req.hr_denoise, "hr_denoise", "hr_steps")
    return r, tuple(target), upscaler, hr_steps


def validate(req: Request, spec) -> None:
    plan(req, spec)


def _upscale_latents(latents, width: int, height: int, vae_scale: int):
    import torch.nn.functional as F

    return F.interpolate(latents, size=(height // vae_scale, width // vae_scale), mode="bilinear",
                         align_corners=False)


def run(loaded, request, progress=None, cancel=None) -> GenerationResult:
    from PIL import Image

    req = parse(Request, request)
    spec = loaded.spec
    r, (tw, th), upscaler, hr_steps = plan(req, spec)
    timer = Timer()
    base_pipe = loaded.pipeline("txt2img")
    warnings = prompt_length_warnings(base_pipe, r, prompt_token_limit(base_pipe, spec))
    hr_run = denoise_steps(spec.family, hr_steps, req.hr_denoise)
    total = r.steps + hr_run

    # 1. the base pass
    with scheduled(base_pipe, loaded, r.scheduler):
        base = base_pipe(prompt=r.prompt, negative_prompt=r.negative_prompt or None, width=r.width, height=r.height,
                         num_inference_steps=r.steps, num_images_per_prompt=r.batch_size,
                         generator=generators(r.seed, r.batch_size),
                         callback_on_step_end=step_callback(r.steps, offset_progress(progress, 0, total), cancel),
                         output_type="latent" if upscaler == "latent" else "pil",
                         **family_call_args(spec, r, base_pipe)).images
    base_s = timer()

    # 2. upscale
    if upscaler == "latent":
        hr_input = _upscale_latents(base, tw, th, base_pipe.vae_scale_factor)
    else:
        hr_input = [im.resize((tw, th), Image.Resampling.LANCZOS) for im in base]

    # 3. the refining pass: the whole batch at once, image i from its own upscaled input and seed
    pipe = loaded.pipeline("img2img")
    pipe.set_progress_bar_config(disable=True)
    n = r.batch_size
    size = {"width": tw, "height": th} if spec.family != "sd15" else {}
    with scheduled(pipe, loaded, r.scheduler):
        out = pipe(prompt=[r.prompt] * n, negative_prompt=[r.negative_prompt] * n if r.negative_prompt else None,
                   image=hr_input, strength=req.hr_denoise, num_inference_steps=hr_steps, num_images_per_prompt=1,
                   generator=generators(r.seed, n),
                   callback_on_step_end=step_callback(hr_run, offset_progress(progress, r.steps, total), cancel),
                   output_type="pil", **family_call_args(spec, r, pipe), **size)
    out_images = list(out.images)

    hires = {"base_width": r.width, "base_height": r.height, "target_width": tw, "target_height": th,
             "scale": req.hr_scale, "upscaler": upscaler, "steps": hr_steps, "denoise": req.hr_denoise}
    meta = [image_metadata(loaded, NAME, r, i, req,
                           {"width": tw, "height": th, "hires": hires, "denoising_strength": req.hr_denoise})
            for i in range(len(out_images))]
    return GenerationResult(images=out_images, metadata=meta, warnings=warnings,
                            timings={"base_s": base_s, "generate_s": timer()})
