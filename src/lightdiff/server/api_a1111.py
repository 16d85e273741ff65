"""AUTOMATIC1111-compatible API (/sdapi/v1): same field names, same response shape, synchronous calls.

Mapping to lightdiff workflows:
- txt2img -> txt2img; with enable_hr -> hires_fix (hr_scale, hr_upscaler "Latent*" -> latent,
  "Lanczos"/"None"/"Nearest" -> lanczos, hr_second_pass_steps -> hr_steps, denoising_strength -> hr_denoise);
- img2img -> img2img (init_images[0] -> init_image, denoising_strength -> strength); with a mask ->
  inpaint (mask -> mask_image, mask_blur, inpainting_mask_invert -> invert_mask,
  inpaint_full_res -> mask_padding = inpaint_full_res_padding);
- n_iter batches become n_iter jobs with seeds seed + k * batch_size (A1111's numbering), waited for together;
- sampler_name: Euler, Euler a, DPM++ 2M (Karras), DDIM; cfg_scale -> guidance; seed -1 -> random.
Fields A1111 has and lightdiff does not (restore_faces, tiling, styles, subseeds, inpainting_fill
other than "original", ...) are accepted; the response's info lists them under "lightdiff_ignored".
The model is override_settings.sd_model_checkpoint, else the one set with POST /sdapi/v1/options.
"""

from __future__ import annotations

import base64
import json
import secrets
import time

from anyio import to_thread
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from lightdiff import outputs
from lightdiff.server import jobs as J
from lightdiff.server.errors import ApiError
from lightdiff.server.validation import check_model

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 compatible"])

SAMPLERS = {"Euler": "euler", "Euler a": "euler_a", "DPM++ 2M": "dpm++2m", "DPM++ 2M Karras": "dpm++2m",
            "DDIM": "ddim"}
ALIASES = {"Euler": ["k_euler"], "Euler a": ["k_euler_a"], "DPM++ 2M": ["k_dpmpp_2m"],
           "DPM++ 2M Karras": ["k_dpmpp_2m_ka"], "DDIM": []}
FAILURE_STATUS = {"out_of_memory": 507, "does_not_fit": 507, "invalid_request": 422, "worker_lost": 500}
IGNORED_DEFAULTS = {"restore_faces": False, "tiling": False, "styles": None, "subseed": -1, "subseed_strength": 0.0,
                    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "inpainting_fill": 1, "resize_mode": 0,
                    "eta": None, "s_churn": None, "clip_skip": None, "refiner_checkpoint": None,
                    "script_name": None, "alwayson_scripts": None}


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str = Field("", max_length=20000)
    negative_prompt: str = Field("", max_length=20000)
    seed: int = Field(-1, ge=-1, lt=2**32)
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1, le=4)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=1000)
    hr_resize_x: int = Field(0, ge=0, le=8192)
    hr_resize_y: int = Field(0, ge=0, le=8192)
    override_settings: dict = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list, max_length=16)
    mask: str | None = None
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)


def state(request: Request) -> J.ServerState:
    return request.app.state.lightdiff


def current_model(st: J.ServerState) -> str:
    return st.store.get_setting("sd_model_checkpoint") or st.config.default_model


def model_of(st: J.ServerState, body: Txt2ImgRequest) -> str:
    asked = (body.override_settings or {}).get("sd_model_checkpoint")
    if not asked:
        return current_model(st)
    return str(asked).split(" [")[0].removesuffix(".safetensors")  # A1111 titles: "name [hash]"


def scheduler_of(name: str | None, model: str) -> str | None:
    from lightdiff import specs

    if not name:
        return None
    if name not in SAMPLERS:
        raise ApiError(422, "unknown_sampler", f"sampler_name={name[:60]!r} is not available.",
                       f"Use one of: {', '.join(SAMPLERS)}.", "sampler_name")
    key = SAMPLERS[name]
    rules = specs.get(model).rules
    if key not in rules.schedulers and key == "euler" and "flow-euler" in rules.schedulers:
        return "flow-euler"  # Qwen-Image's Euler is the flow-matching one
    return key


def upscaler_of(name: str | None) -> str | None:
    if not name:
        return None
    low = name.lower()
    if low.startswith("latent"):
        return "latent"
    if low in ("lanczos", "none", "nearest"):
        return "lanczos"
    raise ApiError(422, "unknown_upscaler", f"hr_upscaler={name[:60]!r} is not available.",
                   "Use Latent or Lanczos.", "hr_upscaler")


def ignored_fields(body: BaseModel) -> dict:
    out = {}
    dumped = body.model_dump()
    for key, default in IGNORED_DEFAULTS.items():
        value = (body.model_extra or {}).get(key, dumped.get(key, default))
        if value not in (default, None, [], {}, ""):
            out[key] = value
    for key, value in (body.model_extra or {}).items():
        if key not in IGNORED_DEFAULTS and value not in (None, [], {}, "", False, 0):
            out[key] = value if len(json.dumps(value, default=str)) < 200 else "..."
    return out


def base_request(st: J.ServerState, body: Txt2ImgRequest) -> dict:
    model = model_of(st, body)
    check_model(model, st.config)
    req = {"model": model, "prompt": body.prompt, "negative_prompt": body.negative_prompt,
           "steps": body.steps, "guidance": body.cfg_scale, "width": body.width, "height": body.height,
           "batch_size": body.batch_size, "scheduler": scheduler_of(body.sampler_name or body.sampler_index, model)}
    return {k: v for k, v in req.items() if v is not None}


def txt2img_request(st: J.ServerState, body: Txt2ImgRequest) -> dict:
    req = base_request(st, body)
    if not body.enable_hr:
        return {"workflow": "txt2img", **req}
    scale = body.hr_scale
    if body.hr_resize_x and body.width:
        scale = body.hr_resize_x / body.width
    elif body.hr_resize_y and body.height:
        scale = body.hr_resize_y / body.height
    hires = {"workflow": "hires_fix", **req, "hr_scale": scale, "hr_upscaler": upscaler_of(body.hr_upscaler),
             "hr_steps": body.hr_second_pass_steps or None,
             "hr_denoise": body.denoising_strength if body.denoising_strength is not None else 0.7}
    return {k: v for k, v in hires.items() if v is not None}


def img2img_request(st: J.ServerState, body: Img2ImgRequest) -> dict:
    if not body.init_images:
        raise ApiError(422, "invalid_request", "init_images is empty.", "Send one base64 image in init_images.",
                       "init_images")
    req = base_request(st, body)
    strength = body.denoising_strength if body.denoising_strength is not None else 0.75
    if body.mask is None:
        return {"workflow": "img2img", **req, "init_image": body.init_images[0], "strength": strength}
    return {"workflow": "inpaint", **req, "init_image": body.init_images[0], "mask_image": body.mask,
            "strength": strength, "mask_blur": body.mask_blur, "invert_mask": bool(body.inpainting_mask_invert),
            **({"mask_padding": body.inpaint_full_res_padding} if body.inpaint_full_res else {})}


async def generate(st: J.ServerState, body: Txt2ImgRequest, request: dict) -> dict:
    """Submit n_iter jobs (A1111's seeds: seed + k * batch_size), wait, answer as A1111 does."""
    seed = body.seed if body.seed >= 0 else secrets.randbelow(2**32)
    ids = []
    for k in range(body.n_iter):
        job, _ = await to_thread.run_sync(lambda k=k: J.submit(
            st, {**request, "seed": (seed + k * body.batch_size) % 2**32}, source="a1111"))
        ids.append(job["id"])
    try:
        done = await J.wait_for(st, ids)
    except BaseException:
        for job_id in ids:  # a client that gave up (or a timeout) should not leave work queued
            await to_thread.run_sync(st.store.cancel, job_id)
        raise
    failed = [j for j in done if j["status"] == "failed"]
    if failed:
        err = failed[0]["error"] or {}
        code = err.get("code", "failed")
        raise ApiError(FAILURE_STATUS.get(code, 500), code, err.get("message", "The job failed."), err.get("hint", ""))
    images, metas = [], []
    for job in done:
        for index, _ in enumerate((job["result"] or {}).get("images", [])):
            path = J.image_path(st, job, index)
            images.append(base64.b64encode(path.read_bytes()).decode("ascii"))
            metas.append(job["result"]["metadata"][index])
    first = metas[0] if metas else {}
    info = {
        "prompt": body.prompt, "all_prompts": [m.get("prompt") for m in metas],
        "negative_prompt": body.negative_prompt, "all_negative_prompts": [m.get("negative_prompt") for m in metas],
        "seed": seed, "all_seeds": [m.get("seed") for m in metas], "subseed": -1, "all_subseeds": [-1] * len(metas),
        "subseed_strength": 0, "width": first.get("width"), "height": first.get("height"),
        "sampler_name": body.sampler_name or outputs.SAMPLER_NAMES.get(first.get("scheduler", ""), first.get("scheduler")),
        "cfg_scale": first.get("guidance"), "steps": first.get("steps"), "batch_size": body.batch_size,
        "restore_faces": False, "sd_model_name": request["model"], "sd_model_hash": None,
        "denoising_strength": body.denoising_strength, "index_of_first_image": 0,
        "infotexts": [outputs.infotext(m) for m in metas], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "version": f"lightdiff {first.get('versions', {}).get('lightdiff', '')}",
        "interrupted": any(j["status"] == "cancelled" for j in done),
        "lightdiff_workflow": request["workflow"], "lightdiff_job_ids": ids,
        "lightdiff_ignored": ignored_fields(body),
    }
    parameters = body.model_dump(exclude={"init_images", "mask"})
    return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}


@router.post("/txt2img", summary="A1111 txt2img (enable_hr: hires fix); waits for the images")
async def txt2img(request: Request, body: Txt2ImgRequest):
    st = state(request)
    mapped = await to_thread.run_sync(txt2img_request, st, body)
    return await generate(st, body, mapped)


@router.post("/img2img", summary="A1111 img2img (with mask: inpainting); waits for the images")
async def img2img(request: Request, body: Img2ImgRequest):
    st = state(request)
    mapped = await to_thread.run_sync(img2img_request, st, body)
    return await generate(st, body, mapped)


@router.get("/progress", summary="Progress of the job running now")
def progress(request: Request, skip_current_image: bool = False):
    st = state(request)
    counts = st.store.counts()
    job = st.store.current()
    step, steps = (job["step"] or 0, job["steps"] or 0) if job else (0, 0)
    fraction = step / steps if steps else 0.0
    elapsed = time.time() - job["started"] if job and job["started"] else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {"progress": round(fraction, 4), "eta_relative": round(eta, 2),
            "state": {"skipped": False, "interrupted": bool(job and job["cancel_requested"]),
                      "job": job["id"] if job else "", "job_count": counts["queued"] + counts["loading"] + counts["running"],
                      "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job["created"])) if job else "0",
                      "job_no": 0, "sampling_step": step, "sampling_steps": steps},
            "current_image": None, "textinfo": f"{job['status']} {job['id']}" if job else None}


@router.post("/interrupt", summary="Stop the job(s) running now (queued jobs stay queued)")
def interrupt(request: Request):
    return {"interrupted": state(request).store.cancel_active()}


@router.get("/options", summary="Server options (sd_model_checkpoint is the model used by default)")
def get_options(request: Request):
    st = state(request)
    return {"sd_model_checkpoint": current_model(st), "samples_format": "png", "sd_checkpoint_hash": None,
            "CLIP_stop_at_last_layers": 1, "outdir_samples": str(st.config.outputs_dir)}


@router.post("/options", summary="Set options; sd_model_checkpoint chooses the default model")
def set_options(request: Request, body: dict = Body(...)):
    st = state(request)
    if "sd_model_checkpoint" in body:
        model = str(body["sd_model_checkpoint"]).split(" [")[0].removesuffix(".safetensors")
        check_model(model, st.config)
        st.store.set_setting("sd_model_checkpoint", model)
    return None


@router.get("/sd-models", summary="Models (checkpoints) this server serves")
def sd_models(request: Request):
    from lightdiff import specs

    st = state(request)
    return [{"title": s.id, "model_name": s.id, "hash": None, "sha256": None,
             "filename": s.source if s.source not in ("hub", "twin") else (s.hub_repo or s.id), "config": None}
            for s in specs.all_specs() if not st.config.models or s.id in st.config.models]


@router.get("/samplers", summary="Samplers")
def samplers():
    return [{"name": n, "aliases": ALIASES[n], "options": {}} for n in SAMPLERS]


@router.get("/memory", summary="RAM and device memory (bytes), as A1111 reports them")
def memory(request: Request):
    from lightdiff.runtime.device import GiB

    import psutil

    vm = psutil.virtual_memory()
    out = {"ram": {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}}
    for w in state(request).store.workers():
        dev = (w.get("memory") or {}).get("device") or {}
        env = w.get("env") or {}
        if dev and env.get("gpu_total_gb"):
            total = int(env["gpu_total_gb"] * GiB)
            used = int((dev.get("nvml_used_gb") or dev.get("reserved_gb") or 0) * GiB)
            out["cuda"] = {"system": {"free": total - used, "used": used, "total": total},
                           "active": {"current": int(dev.get("allocated_gb", 0) * GiB),
                                      "peak": int(dev.get("peak_allocated_gb", 0) * GiB)},
                           "reserved": {"current": int(dev.get("reserved_gb", 0) * GiB),
                                        "peak": int(dev.get("peak_reserved_gb", 0) * GiB)}}
            break
    else:
        out["cuda"] = {"error": "no CUDA device in use by the workers"}
    return out
