"""txt2img: a prompt in, images out, for both families through their diffusers pipelines.

Steps: 1. validate and fill defaults from the spec; 2. set the scheduler; 3. warn on prompts longer
than the text encoder reads; 4. denoise with one generator per image; 5. attach metadata.
"""

from __future__ import annotations

from typing import Literal

from lightdiff.workflows.base import (
    BaseRequest, GenerationResult, Timer, generators, image_metadata, prompt_length_warnings, resolve,
    step_callback,
)

NAME = "txt2img"

SD_SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
}


class Request(BaseRequest):
    """Text to image."""

    workflow: Literal["txt2img"] = "txt2img"


def set_scheduler(pipe, loaded, name: str) -> None:
    """A fresh scheduler of the asked kind from the model's own config (schedulers keep state)."""
    import diffusers

    if loaded.spec.family != "sd15":
        pipe.scheduler = loaded.new_scheduler(type(pipe.scheduler))
        return  # Qwen-Image has one scheduler (flow matching Euler)
    pipe.scheduler = loaded.new_scheduler(getattr(diffusers, SD_SCHEDULERS[name]))


def prompt_token_limit(pipe, spec) -> int:
    if spec.family == "sd15":
        from lightdiff.demo.vocab import echo_prompt_limit, echoes

        if echoes(pipe.tokenizer):  # a demo model that reads its caption twice
            return echo_prompt_limit(pipe.tokenizer.model_max_length)
        return pipe.tokenizer.model_max_length - 2  # BOS and EOS take two of CLIP's 77 places
    return spec.defaults.max_prompt_tokens


def family_call_args(spec, r, pipe) -> dict:
    """The arguments that differ between families: CFG for SD1.5, true CFG for Qwen-Image."""
    if spec.rules.guidance_kind == "true_cfg":
        return {"true_cfg_scale": r.guidance, "max_sequence_length": spec.defaults.max_prompt_tokens}
    return {"guidance_scale": r.guidance}


def run(loaded, request, progress=None, cancel=None) -> GenerationResult:
    from lightdiff.workflows.base import parse

    req = parse(Request, request)
    r = resolve(req, loaded.spec)
    timer = Timer()
    pipe = loaded.pipeline("txt2img")
    warnings = prompt_length_warnings(pipe, r, prompt_token_limit(pipe, loaded.spec))
    loaded_scheduler = pipe.scheduler
    set_scheduler(pipe, loaded, r.scheduler)
    fast = getattr(loaded, "fast_loop", None)
    try:
        if fast is not None and fast.supports(loaded.spec.family, r.scheduler, r.guidance):
            images = fast(r.prompt, r.negative_prompt or None, r.width, r.height, r.steps, r.guidance,
                          generators(r.seed, r.batch_size), num_images_per_prompt=r.batch_size,
                          callback=step_callback(r.steps, progress, cancel))
            used = {"fast_path": "graph-loop" if fast.graphed else "graph-loop (eager)"}
            if fast.precompiled_notes:  # per function: "loaded", "compiled", or why not
                used["precompiled"] = dict(fast.precompiled_notes)
            return GenerationResult(images=images, metadata=[image_metadata(loaded, NAME, r, i, req, used)
                                                             for i in range(len(images))],
                                    warnings=warnings, timings={"generate_s": timer()})
        out = pipe(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            width=r.width,
            height=r.height,
            num_inference_steps=r.steps,
            num_images_per_prompt=r.batch_size,
            generator=generators(r.seed, r.batch_size),
            callback_on_step_end=step_callback(r.steps, progress, cancel),
            output_type="pil",
            **family_call_args(loaded.spec, r, pipe),
        )
    finally:
        pipe.scheduler = loaded_scheduler  # the loaded pipeline stays as loaded (save_pretrained, from_pipe)
    images = list(out.images)
    meta = [image_metadata(loaded, NAME, r, i, req) for i in range(len(images))]
    return GenerationResult(images=images, metadata=meta, warnings=warnings, timings={"generate_s": timer()})
