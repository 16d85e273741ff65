"""controlnet: txt2img steered by a Canny edge map (AUTOMATIC1111's ControlNet extension, canny preprocessor).

Steps: 1. decode the control image; working size from width/height, else the image's own size
(rounded to the family's multiple); 2. preprocess: cv2.Canny with ``canny_low``/``canny_high``
(or ``preprocessor="none"`` when the image already is an edge map); the map is returned in
``result.extras["edges"]`` and the engine saves it beside the image; 3. get the ControlNet weights
(below); 4. denoise with the family's ControlNet pipeline, ``control_scale`` weighting the
ControlNet's residuals between ``control_start`` and ``control_end`` (fractions of the steps).

ControlNet weights (``controlnet``), per family as data in ``CONTROLNETS``:
- ``auto``: the family's hub ControlNet for real weights (hub, folder, single file); ``twin`` for a
  tiny twin model; ``synthetic`` for any other source (synthetic weights, the demo model);
- ``hub`` (the family's default repo), ``hub:org/name`` or ``org/name``; a diffusers folder (config.json);
- ``twin``: tiny random weights from a config (SD1.5: ControlNetModel.from_unet of the loaded UNet;
  Qwen-Image: a config matching the tiny transformer), ``synthetic``: real-size random weights.
Random ControlNets get random values in their zero-initialised output layers (a fresh ControlNet
adds exactly nothing, so it could not show that the control path runs). A ControlNet made for
another family, or for another size of model, is refused naming the ``controlnet`` field.

With control_scale 0 the image equals txt2img's with the same seed. Qwen-Image's pipeline samples
the control image's VAE encoding with the request's generators before drawing the starting noise,
so the noise is drawn here first, exactly as txt2img draws it, and passed in.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from lightdiff.errors import InvalidRequest, WeightsNotFound
from lightdiff.workflows import images
from lightdiff.workflows.base import (
    BaseRequest, GenerationResult, Timer, generators, image_metadata, parse, prompt_length_warnings, resolve,
    step_callback,
)
from lightdiff.workflows.img2img import finish_metadata, scheduled, working_size
from lightdiff.workflows.txt2img import family_call_args, prompt_token_limit

NAME = "controlnet"

# family -> the ControlNet class, its default hub repository and how to build random ones.
CONTROLNETS = {
    "sd15": {
        "class": "ControlNetModel",
        "hub": "lllyasviel/control_v11p_sd15_canny",
        "image_arg": "image",
        # twin and synthetic: ControlNetModel.from_unet(loaded UNet); the conditioning encoder gets one
        # stride-2 stage per VAE downsampling (three for the real VAE, one for the tiny twin's)
        "cond_channels": (16, 32, 96, 256),
        # ControlNet parameters / UNet parameters, counted on the meta device: 361.28 M / 859.52 M
        "params_ratio": 0.4203,
    },
    "qwen-image": {
        "class": "QwenImageControlNetModel",
        "hub": "InstantX/Qwen-Image-ControlNet-Union",
        "image_arg": "control_image",
        # InstantX/Qwen-Image-ControlNet-Union config.json: 5 double blocks copied from the transformer
        "config": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 5,
                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                   "axes_dims_rope": [16, 56, 56], "extra_condition_channels": 0},
        # ControlNet parameters / transformer parameters, counted on the meta device: 1768.00 M / 20430.40 M
        "params_ratio": 0.08654,
        # matches the tiny-qwen-image transformer (specs/builtin.py)
        "twin_config": {"patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 2,
                        "attention_head_dim": 16, "num_attention_heads": 3, "joint_attention_dim": 16,
                        "axes_dims_rope": [8, 4, 4], "extra_condition_channels": 0},
    },
}
# config keys that must agree between a ControlNet and the model it steers
_MATCH = {"sd15": ("cross_attention_dim", "block_out_channels", "in_channels"),
          "qwen-image": ("in_channels", "joint_attention_dim", "num_attention_heads", "attention_head_dim")}


class Request(BaseRequest):
    """txt2img with a ControlNet. width/height default to the control image's size."""

    workflow: Literal["controlnet"] = "controlnet"
    control_image: images.ImageInput
    controlnet: str = Field("auto", min_length=1, max_length=1000)
    preprocessor: Literal["canny", "none"] = "canny"
    canny_low: int = Field(100, ge=0, le=1000)
    canny_high: int = Field(200, ge=0, le=1000)
    control_scale: float = Field(1.0, ge=0.0, le=2.0)
    control_start: float = Field(0.0, ge=0.0, le=1.0)
    control_end: float = Field(1.0, ge=0.0, le=1.0)


def memory_extra_params_M(req: Request, spec) -> float:
    """The ControlNet's parameters (millions), on the GPU beside the model: the planner counts them."""
    from lightdiff.runtime.plan_model import PROFILES

    return CONTROLNETS[spec.family]["params_ratio"] * spec.params_M(PROFILES[spec.family].denoiser)


def check_ranges(req: Request) -> None:
    if req.canny_low > req.canny_high:
        raise InvalidRequest("canny_low", f"canny_low={req.canny_low} is above canny_high={req.canny_high}.",
                             "Use canny_low <= canny_high (A1111's defaults are 100 and 200).")
    if req.control_start >= req.control_end:
        raise InvalidRequest("control_start", f"control_start={req.control_start} is not below "
                                              f"control_end={req.control_end}.",
                             "Use e.g. control_start=0, control_end=1 (fractions of the steps).")


def canny(image, low: int, high: int):
    """Edge map as the ControlNet was trained on: white edges on black, three channels."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def _source_kind(value: str, loaded_source_kind: str) -> tuple[str, str | None]:
    """controlnet field -> (kind, location): kind is hub, local, twin or synthetic."""
    v = value.strip()
    if v == "auto" and loaded_source_kind == "demo":  # the demo model ships its own trained canny ControlNet
        from lightdiff.runtime.loader import demo_weights_dir

        return "local", str(demo_weights_dir() / "controlnet")
    if v == "auto":  # the published ControlNet steers published weights; random weights get a random one
        v = {"hub": "hub", "local": "hub", "single-file": "hub", "twin": "twin"}.get(loaded_source_kind, "synthetic")
    if v in ("twin", "synthetic"):
        return v, None
    if v == "hub":
        return "hub", None
    if v.startswith("hub:"):
        return "hub", v[4:]
    if v.startswith(("/", ".", "~")) or Path(v).expanduser().is_dir():
        return "local", str(Path(v).expanduser())
    if v.count("/") == 1:
        return "hub", v
    raise InvalidRequest("controlnet", f"Cannot tell what ControlNet source {value!r} is.",
                         "Use auto, hub, hub:org/name, org/name, a diffusers folder, twin or synthetic.")


def _other_family_of_repo(repo: str, family: str) -> str | None:
    for fam, entry in CONTROLNETS.items():
        if fam != family and entry["hub"].lower() == repo.lower():
            return fam
    return None


def validate(req: Request, spec) -> None:
    check_ranges(req)
    image = images.load(req.control_image, "control_image")
    resolve(working_size(req, image, spec), spec)
    kind, location = _source_kind(req.controlnet, "hub")
    if kind == "hub" and location and (other := _other_family_of_repo(location, spec.family)):
        raise _wrong_family(location, other, spec.family)
    if kind == "local":
        _check_config(_read_local_config(location), spec.family, location)


def _wrong_family(what: str, its_family: str, family: str) -> InvalidRequest:
    return InvalidRequest("controlnet", f"ControlNet {what!r} is for {its_family}; this model is {family}.",
                          f"Use a {family} ControlNet, e.g. {CONTROLNETS[family]['hub']}, or controlnet=auto.")


def _read_local_config(folder: str) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise WeightsNotFound(f"{folder} is not a diffusers ControlNet folder: there is no config.json in it.",
                              "Point controlnet at the folder holding config.json and the .safetensors weights.",
                              details={"path": folder})
    return json.loads(path.read_text(encoding="utf-8"))


def _check_config(config: dict, family: str, what: str) -> None:
    cls = config.get("_class_name")
    if cls == CONTROLNETS[family]["class"]:
        return
    other = next((f for f, e in CONTROLNETS.items() if e["class"] == cls), None)
    if other:
        raise _wrong_family(what, other, family)
    raise InvalidRequest("controlnet", f"{what!r} holds a {cls or 'model without _class_name'}, not a "
                                       f"{CONTROLNETS[family]['class']}.", f"Use a {family} ControlNet.")


def _check_fits(controlnet, loaded, what: str) -> None:
    """A ControlNet of the right family but another model size would fail deep inside the pipeline."""
    family = loaded.spec.family
    model = loaded.pipe.unet if family == "sd15" else loaded.pipe.transformer
    diffs = [f"{k} {controlnet.config.get(k)} vs {model.config.get(k)}" for k in _MATCH[family]
             if _as_list(controlnet.config.get(k)) != _as_list(model.config.get(k))]
    if diffs:
        raise InvalidRequest("controlnet", f"ControlNet {what!r} does not fit {loaded.spec.id}: {'; '.join(diffs)}.",
                             "Use a ControlNet made for this model (controlnet=auto picks one).")


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _randomise_outputs(controlnet, seed: int = 0) -> None:
    import torch

    gen = torch.Generator("cpu").manual_seed(seed)
    names = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks")
    with torch.no_grad():
        for name in names:
            part = getattr(controlnet, name, None)
            for p in (part.parameters() if part is not None else []):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.05).to(p.dtype))


def _build_random(kind: str, loaded):
    import diffusers
    import torch

    family = loaded.spec.family
    entry = CONTROLNETS[family]
    if family == "sd15":
        stages = int(math.log2(loaded.pipe.vae_scale_factor)) + 1  # one stride-2 stage per VAE halving
        cn = diffusers.ControlNetModel.from_unet(loaded.pipe.unet,
                                                 conditioning_embedding_out_channels=entry["cond_channels"][:stages])
    elif kind == "twin":
        torch.manual_seed(0)
        cn = diffusers.QwenImageControlNetModel.from_config(entry["twin_config"])
    else:
        from accelerate import init_empty_weights

        from lightdiff.runtime.build import materialise

        with init_empty_weights(include_buffers=False):
            cn = diffusers.QwenImageControlNetModel.from_config(entry["config"])
        return materialise(cn, loaded.device, loaded.dtype)
    _randomise_outputs(cn)
    return cn.to(loaded.device, loaded.dtype).eval()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _load_hub(repo: str, loaded):
    import diffusers
    from huggingface_hub import hf_hub_download

    family = loaded.spec.family
    if other := _other_family_of_repo(repo, family):
        raise _wrong_family(repo, other, family)
    try:
        config = json.loads(Path(hf_hub_download(repo, "config.json", local_files_only=_offline())).read_text())
    except Exception as e:  # hub errors come as OSError, HfHubHTTPError, LocalEntryNotFoundError...
        how = "HF_HUB_OFFLINE is set" if _offline() else f"the download failed ({type(e).__name__})"
        raise WeightsNotFound(f"ControlNet {repo} is not in the local cache and {how}.",
                              f"Run `huggingface-cli download {repo}` on a machine with network and copy HF_HOME "
                              "here, or pass controlnet=/path/to/folder.", details={"repo": repo}) from None
    _check_config(config, family, repo)
    cls = getattr(diffusers, CONTROLNETS[family]["class"])
    return cls.from_pretrained(repo, torch_dtype=loaded.dtype, local_files_only=_offline()).to(loaded.device)


def _cache(loaded) -> dict:
    """ControlNets loaded for this model: kept on the LoadedModel, so the pool frees them with it."""
    if not hasattr(loaded, "_controlnets"):
        loaded._controlnets = {}
    return loaded._controlnets


def get_controlnet(loaded, value: str, progress=None):
    """The ControlNet for this model, loaded once and kept with it (only the latest one)."""
    kind, location = _source_kind(value, loaded.source.kind)
    family = loaded.spec.family
    if kind == "hub":
        location = location or CONTROLNETS[family]["hub"]
    key = (kind, location)
    cache = _cache(loaded)
    if key not in cache:
        cache.clear()  # one ControlNet at a time: a second would hold its memory too
        for old in [k for k in loaded._derived if k[0] == "controlnet"]:
            del loaded._derived[old]  # and the pipelines built around the old one
        if progress and kind in ("hub", "local"):
            progress({"stage": "loading", "model": location})
        if kind in ("twin", "synthetic"):
            cn = _build_random(kind, loaded)
        elif kind == "hub":
            cn = _load_hub(location, loaded)
        else:
            import diffusers

            _check_config(_read_local_config(location), family, location)
            cls = getattr(diffusers, CONTROLNETS[family]["class"])
            cn = cls.from_pretrained(location, torch_dtype=loaded.dtype, local_files_only=True).to(loaded.device)
        _check_fits(cn, loaded, location or kind)
        cache[key] = cn
    return cache[key], (f"{kind}:{location}" if location else kind)


def run(loaded, request, progress=None, cancel=None) -> GenerationResult:
    req = parse(Request, request)
    check_ranges(req)
    spec = loaded.spec
    timer = Timer()
    source = images.load(req.control_image, "control_image")
    req = working_size(req, source, spec)
    r = resolve(req, spec)
    warnings: list[str] = []
    source = images.fit(source, r.width, r.height, "control_image", warnings)
    control_map = canny(source, req.canny_low, req.canny_high) if req.preprocessor == "canny" else source
    cn, cn_source = get_controlnet(loaded, req.controlnet, progress)
    pipe = loaded.pipeline("controlnet", controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    warnings += prompt_length_warnings(pipe, r, prompt_token_limit(pipe, spec))
    gens = generators(r.seed, r.batch_size)
    start = {}
    if spec.family != "sd15":  # see the module doc: draw the starting noise as txt2img does
        start["latents"] = pipe.prepare_latents(r.batch_size, pipe.transformer.config.in_channels // 4, r.height,
                                                r.width, pipe.text_encoder.dtype, pipe._execution_device, gens)
    with scheduled(pipe, loaded, r.scheduler):
        out = pipe(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            width=r.width,
            height=r.height,
            num_inference_steps=r.steps,
            num_images_per_prompt=r.batch_size,
            generator=gens,
            callback_on_step_end=step_callback(r.steps, progress, cancel),
            output_type="pil",
            controlnet_conditioning_scale=req.control_scale,
            control_guidance_start=req.control_start,
            control_guidance_end=req.control_end,
            **{CONTROLNETS[spec.family]["image_arg"]: control_map},
            **start,
            **family_call_args(spec, r, pipe),
        )
    out_images = list(out.images)
    if cn_source in ("twin", "synthetic"):
        warnings.append(f"The ControlNet has random weights ({cn_source}): it runs the control path, but "
                        "the edges steer nothing meaningful.")
    extra = {"controlnet": cn_source, "control_scale": req.control_scale,
             "control_range": [req.control_start, req.control_end], "preprocessor": req.preprocessor,
             "canny": [req.canny_low, req.canny_high] if req.preprocessor == "canny" else None}
    meta = [image_metadata(loaded, NAME, r, i, req, extra) for i in range(len(out_images))]
    return GenerationResult(images=out_images, metadata=finish_metadata(meta, {"control_image": source}),
                            warnings=warnings, timings={"generate_s": timer()}, extras={"edges": control_map})
