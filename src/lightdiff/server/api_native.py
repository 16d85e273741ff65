"""The native API under /api: jobs (submit, list, get, cancel, retry, events, images), models, system."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from lightdiff import __version__, outputs
from lightdiff.server import jobs as J
from lightdiff.server import uploads
from lightdiff.server.errors import ApiError
from lightdiff.server.store import ACTIVE, FINISHED, STATUSES
from lightdiff.server.validation import PLANNED_WORKFLOWS

router = APIRouter(prefix="/api", tags=["native"])
KEEPALIVE_S = 15.0

EXAMPLE = {"workflow": "txt2img", "model": "tiny-sd15", "prompt": "a red circle on a white background",
           "steps": 2, "width": 64, "height": 64, "seed": 1}


def state(request: Request) -> J.ServerState:
    return request.app.state.lightdiff


@router.post("/jobs", status_code=201, summary="Submit a job (any workflow request)")
def submit_job(request: Request,
               body: Annotated[dict, Body(openapi_examples={"txt2img": {"value": EXAMPLE}})],
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None):
    """Validates the request completely (model, sizes, steps, images) before queuing it. With an
    Idempotency-Key header, a repeated submission returns the job the first one made (200)."""
    st = state(request)
    job, created = J.submit(st, body, idempotency_key=idempotency_key, source="api")
    return JSONResponse(J.view(st, job), status_code=201 if created else 200,
                        headers={"Location": f"/api/jobs/{job['id']}"})


@router.get("/jobs", summary="List jobs, newest first")
def list_jobs(request: Request, status: Literal[STATUSES] | None = None,  # type: ignore[valid-type]
              limit: Annotated[int, Query(ge=1, le=500)] = 50, before: Annotated[int | None, Query(ge=0)] = None):
    st = state(request)
    rows = st.store.list(status=status, limit=limit, before=before)
    return {"jobs": [J.view(st, j) | {"seq": j["seq"]} for j in rows], "counts": st.store.counts()}


@router.get("/jobs/{job_id}", summary="One job: status, progress, images, error")
async def get_job(request: Request, job_id: str):
    # Async on purpose: two indexed SQLite reads take well under a millisecond (WAL readers never
    # wait for the writer), cheaper than a hop to the thread pool, which is what clients that poll feel.
    st = state(request)
    return J.view(st, J.get_job(st, job_id))


@router.post("/jobs/{job_id}/cancel", summary="Cancel one job")
def cancel_job(request: Request, job_id: str):
    """Queued: cancelled at once. Running: stops at the next step. Other jobs are not touched."""
    st = state(request)
    job = J.get_job(st, job_id)
    if job["status"] in FINISHED:
        raise ApiError(409, "job_finished", f"Job {job['id']} has already finished ({job['status']}).",
                       "Nothing to cancel; retry it with POST /api/jobs/{id}/retry if it failed.")
    job = st.store.cancel(job["id"])
    return JSONResponse(J.view(st, job), status_code=202 if job["status"] in ACTIVE else 200)


@router.post("/jobs/{job_id}/retry", status_code=201, summary="Run a failed or cancelled job again (a new job)")
def retry_job(request: Request, job_id: str):
    st = state(request)
    job = J.get_job(st, job_id)
    if job["status"] not in ("failed", "cancelled"):
        raise ApiError(409, "not_retryable", f"Job {job['id']} is {job['status']}; only failed or cancelled jobs "
                       "are retried.", "Wait for it to finish, or submit a new job.")
    new, _ = J.submit(st, job["request"], source=job["source"], retry_of=job["id"])
    return JSONResponse(J.view(st, new), status_code=201, headers={"Location": f"/api/jobs/{new['id']}"})


@router.get("/jobs/{job_id}/events", summary="Server-Sent Events: queued, loading, running i/n, done or failed",
            response_class=StreamingResponse)
async def job_events(request: Request, job_id: str, after: Annotated[int, Query(ge=0)] = 0,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None):
    st = state(request)
    job = await to_thread.run_sync(J.get_job, st, job_id)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

    async def stream():
        last, quiet_since = start, time.monotonic()
        yield "retry: 1000\n\n"
        while True:
            events = await to_thread.run_sync(st.store.events, job["id"], last)
            for e in events:
                last = e["id"]
                data = {"type": e["type"], "job_id": job["id"], "time": e["created"], **e["data"]}
                yield f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(data)}\n\n"
                if e["type"] in FINISHED:
                    return
            if events:
                quiet_since = time.monotonic()
            else:
                now_job = await to_thread.run_sync(st.store.get, job["id"])
                if now_job["status"] in FINISHED:
                    return  # the client already had the final event
                if time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.15)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/images/{index}", summary="A result image (PNG with its metadata chunks)",
            response_class=FileResponse)
def job_image(request: Request, job_id: str, index: int):
    st = state(request)
    return FileResponse(J.image_path(st, J.get_job(st, job_id), index), media_type="image/png")


@router.get("/jobs/{job_id}/images/{index}/metadata", summary="The metadata stored in a result image")
def job_image_metadata(request: Request, job_id: str, index: int):
    st = state(request)
    return outputs.read_metadata(J.image_path(st, J.get_job(st, job_id), index))


@router.get("/uploads/{sha256}", summary="An uploaded input image, by its hash", response_class=FileResponse)
def uploaded_image(request: Request, sha256: str):
    path = uploads.path_of(state(request).config.uploads_dir, sha256)
    if path is None:
        raise ApiError(404, "upload_not_found", f"There is no uploaded image {sha256[:70]!r}.",
                       "Use the upload:<sha256> reference from a job's request.")
    return FileResponse(path, media_type="image/png")


@router.get("/models", summary="Models this server knows, which it serves, and which fit this card")
def list_models(request: Request):
    st = state(request)
    return {"default": st.config.default_model, "models": models_info(st)}


@router.get("/workflows", summary="Workflows and their request fields (JSON Schema)")
def list_workflows():
    from lightdiff import workflows

    from lightdiff.server.validation import available_workflows

    out = []
    names = available_workflows()
    for name in names:
        wf = workflows.get(name)
        out.append({"name": name, "available": True, "doc": (wf.__doc__ or "").strip().split("\n")[0],
                    "schema": wf.Request.model_json_schema()})
    out += [{"name": n, "available": False} for n in PLANNED_WORKFLOWS if n not in names]
    return {"workflows": out}


@router.get("/templates", summary="Shipped workflow templates, their images inlined")
def list_templates():
    """The requests in workflows/templates/ (the web UI's template menu). Their image fields name
    files shipped beside them; those are sent inline, since a client may not send paths."""
    try:
        from lightdiff.workflows import _templates
    except ImportError:
        return {"templates": []}
    out = []
    folder = _templates.FOLDER.resolve()
    for name in _templates.names():
        try:
            request, description = _templates.read(name)
        except Exception:  # a broken template file must not break the list
            continue
        for key, value in list(request.items()):
            if isinstance(value, str) and key.endswith("_image"):
                path = Path(value).resolve()
                if path.is_file() and path.is_relative_to(folder):
                    request[key] = uploads.data_uri(path.read_bytes()) if path.suffix == ".png" else None
        out.append({"name": name, "description": description, "request": request})
    return {"templates": out}


@router.get("/system", summary="Version, queue, workers, device and memory telemetry")
def system(request: Request):
    return system_info(state(request))


def system_info(st: J.ServerState) -> dict:
    """Device telemetry comes from the workers (they hold the device; the API process never imports
    torch or opens a CUDA context): each reports runtime.device.env_stamp() at start and memory
    readings every few seconds."""
    from lightdiff.runtime.device import host_ram

    reported = {w["id"]: w for w in st.store.workers()}
    workers = []
    for slot in (st.supervisor.status() if st.supervisor else []):
        w = reported.get(slot["worker_id"], {})
        workers.append({**slot, "state": w.get("state", "starting" if slot["alive"] else "stopped"),
                        "job_id": w.get("job_id"),
                        "heartbeat_age_s": round(time.time() - w["heartbeat"], 2) if w.get("heartbeat") else None,
                        "memory": w.get("memory"), "device_name": (w.get("env") or {}).get("gpu")})
    env = next((w["env"] for w in reported.values() if w.get("env")), None)
    return {"lightdiff": __version__, "data_dir": str(st.config.data_dir), "uptime_s": round(time.time() - st.started, 1),
            "queue": st.store.counts(), "workers": workers, "env": env, "host_ram": host_ram(),
            "vram_budget_gb": st.config.vram_budget_gb, "auth": bool(st.config.token)}


def models_info(st: J.ServerState) -> list[dict]:
    from lightdiff import specs

    from lightdiff.server.validation import available_workflows

    available = set(available_workflows())
    budget = st.config.vram_budget_gb
    rows = []
    for spec in specs.all_specs():
        row = {"id": spec.id, "family": spec.family, "description": spec.description, "is_twin": spec.is_twin,
               "twin": spec.twin, "params_M": round(spec.params_M(), 3), "defaults": asdict(spec.defaults),
               "schedulers": list(spec.rules.schedulers), "size_multiple": spec.rules.size_multiple,
               "workflows": [w for w in spec.pipelines if w in available] + [w for w in ("hires_fix", "batch")
                                                                            if w in available],
               "served": not st.config.models or spec.id in st.config.models,
               "default": spec.id == st.config.default_model}
        fits = fit_for(spec, budget, st)
        if fits is not None:
            row["fits"] = fits
        rows.append(row)
    return rows


def fit_for(spec, budget_gb, st) -> dict | None:
    """What the memory planner (runtime.plan, torch-free) says about this model at its default size
    on this card: the budget given to `serve`, else the GPU size a worker reported (the API process
    never touches the GPU). None when there is neither (a CPU server) or no planner."""
    try:
        from lightdiff.runtime import plan
        from lightdiff.errors import DoesNotFit

        total = next((w["env"].get("gpu_total_gb") for w in st.store.workers() if w.get("env")), None)
        vram = budget_gb or total
        if vram is None:
            return None
        d = spec.defaults
        fast = getattr(st.config, "fast", "off")
        try:  # as the workers' engines choose (txt2img at the defaults, on a GPU)
            chosen = plan.choose(spec, d.width, d.height, 1, budget_gb=vram, exclude=plan.excluded_for(fast),
                                 compiled_loop=fast == "auto")
        except DoesNotFit as e:
            return {"vram_gb": vram, "width": d.width, "height": d.height, "fits": False, "message": e.message,
                    "hint": e.hint}
        return {"vram_gb": vram, "width": d.width, "height": d.height, "fits": True, "plan": chosen.name,
                "predicted": chosen.estimate.to_dict()}
    except (ImportError, AttributeError, TypeError):  # planner absent or of another shape: no fits column
        return None
