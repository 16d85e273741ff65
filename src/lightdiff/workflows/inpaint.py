"""inpaint: repaint the white part of a mask, keep the rest (AUTOMATIC1111's inpaint semantics).

Steps: 1. decode image and mask (white = repaint; a transparent mask layer counts as keep);
2. working size as img2img (width/height, else the image's size rounded to the family's multiple);
a mask of another size than the image is stretched to it with a warning in the result (nearest
neighbour, so a hard mask stays hard); 3. blur the mask by ``mask_blur`` pixels (Gaussian, as A1111);
4. denoise with the family's inpaint pipeline: SD1.5 StableDiffusionInpaintPipeline works with a
regular 4-channel UNet (diffusers blends the noised original outside the mask each step) and with
an inpainting checkpoint (9-channel UNet); Qwen-Image uses QwenImageInpaintPipeline;
5. "apply overlay": paste the original back outside the blurred mask, so those pixels are unchanged
(the VAE round trip would otherwise shift them). With ``mask_padding`` set ("inpaint only masked"),
only the mask's bounding box plus that many pixels is repainted at the working size and pasted back.

An all-black mask repaints nothing: the image comes back unchanged, with a warning. Strength 0 the
same (see img2img).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lightdiff.workflows import images
from lightdiff.workflows.base import (
    BaseRequest, GenerationResult, Timer, generators, image_metadata, parse, prompt_length_warnings, resolve,
    step_callback,
)
from lightdiff.workflows.img2img import (
    check_strength, denoise_steps, finish_metadata, scheduled, size_args, working_size,
)
from lightdiff.workflows.txt2img import family_call_args, prompt_token_limit

NAME = "inpaint"


class Request(BaseRequest):
    """Inpainting. width/height default to the init image's size."""

    workflow: Literal["inpaint"] = "inpaint"
    init_image: images.ImageInput
    mask_image: images.ImageInput = Field(description="white = repaint, black = keep")
    strength: float = Field(0.75, ge=0.0, le=1.0)
    mask_blur: int = Field(4, ge=0, le=64, description="Gaussian blur radius of the mask, pixels")
    mask_padding: int | None = Field(None, ge=0, le=1024,
                                     description="inpaint only the masked area plus this many pixels")
    invert_mask: bool = False


def prepare_mask(req: Request, init_size: tuple[int, int], width: int, height: int, warnings: list[str]):
    """The mask at the working size, inverted if asked, blurred: what both denoising and overlay use."""
    from PIL import Image, ImageFilter, ImageOps

    mask = images.load(req.mask_image, "mask_image", mode="L")
    if mask.size != init_size:
        warnings.append(f"mask_image is {mask.width}x{mask.height} but init_image is {init_size[0]}x{init_size[1]}: "
                        f"the mask was stretched to the image.")
    mask = mask.resize((width, height), Image.Resampling.NEAREST) if mask.size != (width, height) else mask
    if req.invert_mask:
        mask = ImageOps.invert(mask)
    if req.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(req.mask_blur))
    return mask


def validate(req: Request, spec) -> None:
    init = images.load(req.init_image, "init_image")
    images.load(req.mask_image, "mask_image", mode="L")
    r = resolve(working_size(req, init, spec), spec)
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
    mask = prepare_mask(req, init.size, r.width, r.height, warnings)
    init = images.fit(init, r.width, r.height, "init_image", warnings)
    if req.strength == 0 or mask.getbbox() is None:
        why = "strength 0" if req.strength == 0 else "the mask is all black (nothing to repaint)"
        warnings.append(f"{why}: the init image is returned unchanged; no denoising ran.")
        out_images = [init.copy() for _ in range(r.batch_size)]
    else:
        pipe = loaded.pipeline("inpaint")
        pipe.set_progress_bar_config(disable=True)
        warnings += prompt_length_warnings(pipe, r, prompt_token_limit(pipe, spec))
        with scheduled(pipe, loaded, r.scheduler):
            out = pipe(
                prompt=r.prompt,
                negative_prompt=r.negative_prompt or None,
                image=init,
                mask_image=mask,
                strength=req.strength,
                padding_mask_crop=req.mask_padding,
                num_inference_steps=r.steps,
                num_images_per_prompt=r.batch_size,
                generator=generators(r.seed, r.batch_size),
                callback_on_step_end=step_callback(denoise_steps(spec.family, r.steps, req.strength), progress,
                                                   cancel),
                output_type="pil",
                **size_args(pipe, r.width, r.height),
                **family_call_args(spec, r, pipe),
            )
        out_images = list(out.images)
        if req.mask_padding is None:  # with padding the pipeline pastes the crop back over the original itself
            out_images = [pipe.image_processor.apply_overlay(mask, init, im) for im in out_images]
    extra = {"denoising_strength": req.strength, "mask_blur": req.mask_blur, "mask_padding": req.mask_padding}
    meta = [image_metadata(loaded, NAME, r, i, req, extra) for i in range(len(out_images))]
    return GenerationResult(images=out_images, metadata=finish_metadata(meta, {"init_image": init, "mask_image": mask}),
                            warnings=warnings, timings={"generate_s": timer()})
