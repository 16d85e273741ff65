"""Check a request completely before it is queued, without an engine and without loading a model.

The same checks the engine makes (the workflow's pydantic Request, ``base.resolve`` against the
model's spec, the workflow's own ``validate``), plus what only a server needs: the model must be one
it serves, weights must be a source the operator allows, images must be inline and safe. The
request that is stored has every choice made (model, seed), so a job re-run after a crash or a
retry draws the same image.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field

from lightdiff import specs, workflows
from lightdiff.errors import InvalidRequest, LightdiffError, UnsafeWeightsFormat
from lightdiff.server import uploads
from lightdiff.server.config import SAFE_WEIGHTS, ServerConfig

# Workflows other engineers add as files; until a file exists the server says so (501) instead of
# calling the name unknown.
PLANNED_WORKFLOWS = ("txt2img", "img2img", "inpaint", "hires_fix", "controlnet", "batch")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


class WorkflowUnavailable(LightdiffError):
    code = "workflow_unavailable"
    http_status = 501


class ModelNotServed(LightdiffError):
    code = "model_not_served"
    http_status = 403


class WeightsNotAllowed(LightdiffError):
    code = "weights_not_allowed"
    http_status = 403


@dataclass
class Prepared:
    workflow: str
    model: str
    request: dict  # as stored: images as upload:<sha256> references
    request_hash: str
    images: dict[str, bytes] = field(default_factory=dict)  # field -> normalized PNG, to store


def image_fields(data: dict) -> list[str]:
    try:
        from lightdiff.workflows.images import IMAGE_FIELDS
    except ImportError:
        IMAGE_FIELDS = ("init_image", "mask_image", "control_image")
    return [k for k, v in data.items() if v is not None and (k in IMAGE_FIELDS or k.endswith("_image")
                                                              or k in ("image", "mask"))]


def available_workflows() -> list[str]:
    """Workflow modules that are complete (a helper module in the folder is not a workflow)."""
    out = []
    for name in workflows.names():
        try:
            mod = workflows.get(name)
        except Exception:  # a workflow file being written must not take the server down
            continue
        if hasattr(mod, "Request") and hasattr(mod, "run"):
            out.append(name)
    return out


def workflow_module(name):
    names = available_workflows()
    if not isinstance(name, str):
        raise InvalidRequest("workflow", f"workflow={name!r} is not a name.", f"Use one of: {', '.join(names)}.")
    if name not in names:
        if name in PLANNED_WORKFLOWS:
            raise WorkflowUnavailable(f"The {name} workflow is not available in this lightdiff build yet.",
                                      f"Use one of: {', '.join(names)}.", details={"field": "workflow"})
        raise InvalidRequest("workflow", f"Unknown workflow {name[:80]!r}.", f"Use one of: {', '.join(names)}.")
    return workflows.get(name)


def check_model(model, config: ServerConfig):
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model", f"model={model!r} is not a model id.", "See GET /api/models for the ids.")
    spec = specs.get(model)  # UnknownModel (404) names close ids
    if config.models and model not in config.models:
        raise ModelNotServed(f"Model {model!r} is not served here.",
                             f"This server serves: {', '.join(config.models)}.", details={"field": "model"})
    return spec


def check_weights(weights, config: ServerConfig, field: str = "weights") -> None:
    if not isinstance(weights, str):
        raise InvalidRequest(field, f"{field}={weights!r} is not a string.", f"Use one of: {', '.join(SAFE_WEIGHTS)}.")
    if weights.lower().endswith(PICKLE_SUFFIXES) and not config.allow_unsafe_pickle:
        raise UnsafeWeightsFormat(f"{field}={weights[:120]!r} is a pickle checkpoint, which can run code when loaded.",
                                  "Use a .safetensors file; the operator can allow pickle with --allow-unsafe-pickle.",
                                  details={"field": field})
    if weights in config.allow_weights or "*" in config.allow_weights:
        return
    raise WeightsNotAllowed(f"{field}={weights[:120]!r} is not allowed by this server.",
                            f"Requests may choose: {', '.join(config.allow_weights)}; the operator can allow "
                            "more with `lightdiff serve --allow-weights`.", details={"field": field})


def prepare(data, config: ServerConfig, default_model: str | None = None) -> Prepared:
    if not isinstance(data, dict):
        raise InvalidRequest("request", f"The request must be a JSON object, not {type(data).__name__}.",
                             'Send e.g. {"prompt": "a red circle", "model": "tiny-sd15"}.')
    data = dict(data)
    name = data.get("workflow") or "txt2img"
    wf = workflow_module(name)
    data["workflow"] = name
    if data.get("model") is None:
        data["model"] = default_model or config.default_model
    spec = check_model(data["model"], config)
    check_weights(data.get("weights", "auto"), config)
    if "controlnet" in data:  # ControlNet weights: the same rule as the model's (no client-chosen paths)
        check_weights(data["controlnet"], config, "controlnet")
    if data.get("seed") is None:
        data["seed"] = secrets.randbelow(2**32)  # fixed now, so a re-run after a crash draws the same image

    limits = uploads.Limits(config.max_upload_bytes, config.max_upload_pixels)
    pngs: dict[str, bytes] = {}
    for key in image_fields(data):
        if uploads.is_ref(data[key]) and uploads.path_of(config.uploads_dir, data[key][len(uploads.REF_PREFIX):]):
            pngs[key] = uploads.path_of(config.uploads_dir, data[key][len(uploads.REF_PREFIX):]).read_bytes()
        else:
            im = uploads.check_image(key, uploads.bytes_from_field(key, data[key], limits), limits)
            pngs[key] = uploads.to_png(im)
        data[key] = uploads.data_uri(pngs[key])

    req = validate(wf, data, spec)
    stored = req.model_dump(mode="json", exclude_unset=True)
    stored["workflow"] = name
    for key, png in pngs.items():
        stored[key] = uploads.REF_PREFIX + hashlib.sha256(png).hexdigest()
    digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()
    return Prepared(name, stored["model"], stored, digest, pngs)


def validate(wf, data: dict, spec):
    """The engine's checks, minus the engine: parse, resolve against the spec, the workflow's validate."""
    from lightdiff.workflows.base import parse, resolve

    try:
        req = parse(wf.Request, data)
        resolve(req, spec)
        if hasattr(wf, "validate"):
            wf.validate(req, spec)
    except LightdiffError:
        raise
    except Exception as e:  # a workflow's own check that raised a plain error still means "bad input"
        raise InvalidRequest("request", f"The request was refused by the {wf.NAME} checks: {type(e).__name__}: "
                                        f"{str(e)[:300]}.", "Fix the request fields named above.") from None
    return req
