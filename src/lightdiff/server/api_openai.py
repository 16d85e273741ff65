"""OpenAI Images-compatible API (/v1/images): generations and edits, with OpenAI's error format.

- generations -> txt2img: prompt, n -> batch_size, size "WxH" (or "auto": the model's default size);
- edits (multipart: image, mask, prompt) -> inpaint when a mask is given, or when the image has
  transparent pixels (OpenAI's convention: transparent = edit; the alpha becomes the mask);
  img2img (strength 0.75) otherwise. Without size, the image's own size is used.
- model: a lightdiff model id; OpenAI's own names (dall-e-2, dall-e-3, gpt-image-*) mean this
  server's default model, so unmodified OpenAI clients work.
- response_format: b64_json, or url (a link to GET /api/jobs/{id}/images/{i} on this server).
"""

from __future__ import annotations

import base64
import io
import re
import time
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from lightdiff.server import jobs as J
from lightdiff.server import uploads
from lightdiff.server.errors import ApiError

router = APIRouter(prefix="/v1/images", tags=["OpenAI compatible"])
OPENAI_MODELS = re.compile(r"^(dall-e-[23]|gpt-image-[\w.-]+)$")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
FAILURE_STATUS = {"out_of_memory": 507, "does_not_fit": 507, "invalid_request": 400}


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str = Field(..., min_length=1, max_length=32000)
    model: str | None = Field(None, max_length=200)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=20)
    response_format: Literal["url", "b64_json"] | None = None


def state(request: Request) -> J.ServerState:
    return request.app.state.lightdiff


def model_of(st: J.ServerState, name: str | None) -> str:
    if not name or OPENAI_MODELS.match(name):
        return st.config.default_model
    return name


def size_of(size: str | None) -> dict:
    if size in (None, "", "auto"):
        return {}
    m = _SIZE.match(size)
    if not m:
        raise ApiError(400, "invalid_size", f"size={size[:40]!r} is not WIDTHxHEIGHT.", "Use e.g. 512x512 or auto.", "size")
    return {"width": int(m.group(1)), "height": int(m.group(2))}


def response_format_of(fmt: str | None, model: str | None) -> str:
    if fmt:
        return fmt
    return "b64_json" if model and model.startswith("gpt-image") else "url"


async def run(st: J.ServerState, request: Request, data: dict, fmt: str) -> dict:
    job, _ = await to_thread.run_sync(lambda: J.submit(st, data, source="openai"))
    try:
        (done,) = await J.wait_for(st, [job["id"]])
    except BaseException:
        await to_thread.run_sync(st.store.cancel, job["id"])
        raise
    if done["status"] != "done":
        err = done["error"] or {"code": "cancelled", "message": "The job was cancelled.", "hint": ""}
        status = 409 if done["status"] == "cancelled" else FAILURE_STATUS.get(err.get("code"), 500)
        raise ApiError(status, err.get("code", "failed"), err.get("message", "The job failed."), err.get("hint", ""))
    out = []
    for index, _ in enumerate(done["result"]["images"]):
        if fmt == "b64_json":
            path = J.image_path(st, done, index)
            out.append({"b64_json": base64.b64encode(path.read_bytes()).decode("ascii")})
        else:
            out.append({"url": str(request.base_url).rstrip("/") + f"/api/jobs/{done['id']}/images/{index}"})
    return {"created": int(time.time()), "data": out}


@router.post("/generations", summary="OpenAI images.generate -> txt2img; waits for the images")
async def generations(request: Request, body: GenerationRequest):
    st = state(request)
    data = {"workflow": "txt2img", "model": model_of(st, body.model), "prompt": body.prompt,
            "batch_size": body.n, **size_of(body.size)}
    return await run(st, request, data, response_format_of(body.response_format, body.model))


async def read_upload(st: J.ServerState, upload: UploadFile, field: str) -> bytes:
    """Read at most the byte limit (plus one, to tell "over"); the header check follows."""
    limit = st.config.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"{field} is over the limit of {limit} bytes.",
                       "Send a smaller image.", field)
    return data


def alpha_mask(png: bytes) -> bytes | None:
    """OpenAI's edits without a mask edit the transparent pixels: white where alpha is 0."""
    from PIL import Image

    im = Image.open(io.BytesIO(png))
    if im.mode not in ("RGBA", "LA") and not (im.mode == "P" and "transparency" in im.info):
        return None
    alpha = im.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        return None
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


@router.post("/edits", summary="OpenAI images.edit (multipart) -> inpaint or img2img; waits for the images")
async def edits(request: Request,
                prompt: Annotated[str, Form(min_length=1, max_length=32000)],
                image: Annotated[UploadFile | None, File()] = None,
                mask: Annotated[UploadFile | None, File()] = None,
                model: Annotated[str | None, Form(max_length=200)] = None,
                n: Annotated[int, Form(ge=1, le=10)] = 1,
                size: Annotated[str | None, Form(max_length=20)] = None,
                response_format: Annotated[Literal["url", "b64_json"] | None, Form()] = None):
    st = state(request)
    if image is None:  # gpt-image clients send image[] (several images); the first is used
        form = await request.form()
        image = next((v for k, v in form.multi_items() if k in ("image[]", "image") and hasattr(v, "read")), None)
    if image is None:
        raise ApiError(400, "invalid_request", "The image field is missing.", "Send the image as a multipart file.", "image")
    limits = uploads.Limits(st.config.max_upload_bytes, st.config.max_upload_pixels)
    png = uploads.to_png(uploads.check_image("image", await read_upload(st, image, "image"), limits))
    data = {"model": model_of(st, model), "prompt": prompt, "batch_size": n, **size_of(size),
            "init_image": uploads.data_uri(png)}
    mask_png = None
    if mask is not None:
        mask_png = uploads.to_png(uploads.check_image("mask", await read_upload(st, mask, "mask"), limits))
        mask_png = alpha_mask(mask_png) or mask_png  # an OpenAI mask is transparent where to edit
    else:
        mask_png = alpha_mask(png)
    if mask_png is not None:
        data.update(workflow="inpaint", mask_image=uploads.data_uri(mask_png), mask_blur=0, strength=1.0)
    else:
        data.update(workflow="img2img", strength=0.75)
    return await run(st, request, data, response_format_of(response_format, model))
