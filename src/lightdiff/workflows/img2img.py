"""img2img: an init image plus a prompt in, images out (AUTOMATIC1111's img2img, diffusers' Img2Img pipelines).

Steps: 1. decode the init image; 2. working size: width/height if given, else the image's own size
rounded down to the family's multiple; the image is resized to it (Lanczos, with a warning);
3. strength 0 returns the init image itself (see below); 4. denoise int(steps x strength) steps
(SD1.5; Qwen-Image rounds up) from the noised image; 5. metadata with the strength and the input's hash.

Strength 0 means "no change": diffusers would run zero steps and fail (SD1.5 raises a reshape error,
Qwen-Image a ValueError), so this workflow returns the resized init image unchanged, with a warning.
A strength so small that no whole step is left (e.g. 0.2 at 2 steps) is refused, naming the fix.

Shared by inpaint and hires_fix: ``denoise_steps``, ``scheduled``, ``working_size``, ``finish_metadata``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Literal

from pydantic import Field

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import images
from lightdiff.workflows.base import (
    BaseRequest, GenerationResult, Timer, generators, image_metadata, parse, prompt_length_warnings, resolve,
    step_callback,
)
from lightdiff.workflows.txt2img import family_call_args, prompt_token_limit, set_scheduler

NAME = "img2img"


class Request(BaseRequest):
    """Image to image. width/height default to the init image's size."""

    workflow: Literal["img2img"] = "img2img"
    init_image: images.ImageInput
    strength: float = Field(0.75, ge=0.0, le=1.0, description="0 keeps the image, 1 ignores it")


def denoise_steps(family: str, steps: int, strength: float) -> int:
    """How many steps the diffusers pipeline runs for ``strength`` (mirrors its get_timesteps)."""
    if family == "sd15":
        return min(int(steps * strength), steps)
    return steps - int(max(steps - steps * strength, 0))  # Qwen-Image (flow matching): rounds up


def check_strength(family: str, steps: int, strength: float, field: str = "strength", steps_field: str = "steps"):
    """Refuse a strength that leaves no whole denoising step (0 itself is handled by the caller)."""
    if strength > 0 and denoise_steps(family, steps, strength) < 1:
        need = math.ceil(1 / strength)
        raise InvalidRequest(
            field, f"{field}={strength} with {steps_field}={steps} leaves no denoising step "
                   f"(the pipeline runs int({steps} x {strength}) = 0 steps).",
            f"Use {steps_field} >= {need}, a larger {field}, or {field}=0 to keep the image unchanged.")


def working_size(req: BaseRequest, image, spec) -> BaseRequest:
    """Fill width/height from the input image when the request leaves them out."""
    if req.width is not None and req.height is not None:
        return req
    w, h = images.snap_size(image.size, spec.rules.size_multiple, spec.rules.min_size)
    return req.model_copy(update={"width": req.width or w, "height": req.height or h})


@contextmanager
def scheduled(pipe, loaded, name: str):
    """Use a fresh scheduler of the asked kind; leave the shared pipeline as loaded afterwards."""
    before = pipe.scheduler
    set_scheduler(pipe, loaded, name)
    try:
        yield pipe
    finally:
        pipe.scheduler = before


def offset_progress(progress, offset: int, total: int):
    """Report a later pass's steps as continuing an earlier one's (hires fix: base, then upscale)."""
    if progress is None:
        return None

    def shifted(event: dict) -> None:
        if event.get("stage") == "running":
            event = {**event, "step": event["step"] + offset, "steps": total}
        progress(event)
    return shifted


def size_args(pipe, width: int, height: int) -> dict:
    """width/height for pipelines that take them (Qwen-Image's); SD1.5 img2img uses the image's size."""
    import inspect

    params = inspect.signature(type(pipe).__call__).parameters
    return {"width": width, "height": height} if "width" in params else {}


def finish_metadata(meta: list[dict], inputs: dict) -> list[dict]:
    """Record the inputs' hashes and keep large inline images out of the PNG (images.compact_request)."""
    for m in meta:
        m["inputs"] = {name: images.describe(im) for name, im in inputs.items()}
        m["request"] = images.compact_request(m["request"])
    return meta


def validate(req: Request, spec) -> None:
    """Checks that need no weights (the engine calls this before loading)."""
    image = images.load(req.init_image, "init_image")
    r = resolve(working_size(req, image, spec), spec)
    check_strength(spec.family, r.steps, req.strength)


def run(loaded, request, progress=None, cancel=None) -> GenerationResult:
    req = parse(Request, request)
    spec = loaded.spec
    timer = Timer()
    init = images.load(req.init_image, "init_image")
    req = working_size(req, init, spec)
    r = resolve(req, spec)
    check_strength(spec.family, r.steps, req.strength)
    warnings: list[str] = []
    init = images.fit(init, r.width, r.height, "init_image", warnings)
    if req.strength == 0:
        warnings.append("strength 0: the init image is returned unchanged (resized to the working size); "
                        "no denoising ran.")
        out_images = [init.copy() for _ in range(r.batch_size)]
    else:
        pipe = loaded.pipeline("img2img")
        pipe.set_progress_bar_config(disable=True)
        warnings += prompt_length_warnings(pipe, r, prompt_token_limit(pipe, spec))
        n = denoise_steps(spec.family, r.steps, req.strength)
        with scheduled(pipe, loaded, r.scheduler):
            out = pipe(
                prompt=r.prompt,
                negative_prompt=r.negative_prompt or None,
                image=init,
                strength=req.strength,
                **size_args(pipe, r.width, r.height),
                num_inference_steps=r.steps,
                num_images_per_prompt=r.batch_size,
                generator=generators(r.seed, r.batch_size),
                callback_on_step_end=step_callback(n, progress, cancel),
                output_type="pil",
                **family_call_args(spec, r, pipe),
            )
        out_images = list(out.images)
    meta = [image_metadata(loaded, NAME, r, i, req, {"denoising_strength": req.strength})
            for i in range(len(out_images))]
    return GenerationResult(images=out_images, metadata=finish_metadata(meta, {"init_image": init}),
                            warnings=warnings, timings={"generate_s": timer()})
