"""What the three APIs share: submit a request as a job, show a job, wait for jobs, find their images.

No model logic here: a request is checked (validation.py), stored (store.py) and run by a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from anyio import to_thread

from lightdiff.server import uploads, validation
from lightdiff.server.config import ServerConfig
from lightdiff.server.errors import ApiError
from lightdiff.server.store import FINISHED, QueueFull, Store
from lightdiff.server.supervisor import Supervisor

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_FILE = re.compile(r"^(\d+-a\d+|extra-[A-Za-z0-9_-]+-a\d+)\.png$")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass
class ServerState:
    config: ServerConfig
    store: Store
    supervisor: Supervisor | None = None
    started: float = field(default_factory=time.time)


def job_id_or_404(job_id: str) -> str:
    """Ids are 32 hex digits (a UUID, dashes allowed); anything else cannot name a job or a folder."""
    norm = job_id.replace("-", "").lower() if len(job_id) <= 36 else job_id
    if not _JOB_ID.match(norm):
        raise ApiError(404, "job_not_found", f"{job_id[:80]!r} is not a job id (ids are 32 hex digits).",
                       "Use the id POST /api/jobs returned.")
    return norm


def get_job(state: ServerState, job_id: str) -> dict:
    job = state.store.get(job_id_or_404(job_id))
    if job is None:
        raise ApiError(404, "job_not_found", f"There is no job {job_id!r}.", "List jobs with GET /api/jobs.")
    return job


def body_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def submit(state: ServerState, data, *, idempotency_key: str | None = None, source: str = "api",
           default_model: str | None = None, retry_of: str | None = None) -> tuple[dict, bool]:
    """Check the request completely, then queue it. Returns (job, created)."""
    digest = body_hash(data)
    if idempotency_key is not None:
        if not _KEY.match(idempotency_key):
            raise ApiError(422, "invalid_idempotency_key", "The Idempotency-Key header must be 1 to 200 printable "
                           "ASCII characters without spaces.", "Use e.g. a UUID.", "Idempotency-Key")
        existing = state.store.by_idempotency_key(idempotency_key)
        if existing is not None:
            return _same_request(existing, digest, idempotency_key), False
    prepared = validation.prepare(data, state.config, default_model)
    for png in prepared.images.values():
        uploads.store(state.config.uploads_dir, png)
    try:
        job, created = state.store.submit(
            prepared.request, workflow=prepared.workflow, model=prepared.model, request_hash=digest,
            max_attempts=state.config.max_attempts, idempotency_key=idempotency_key, source=source,
            retry_of=retry_of, max_queued=state.config.max_queued)
    except QueueFull as e:
        raise ApiError(503, "queue_full", f"The queue is full ({e.n} jobs waiting).",
                       "Retry later, or cancel queued jobs.") from None
    return (job, True) if created else (_same_request(job, digest, idempotency_key), False)


def _same_request(job: dict, digest: str, key: str) -> dict:
    if job["request_hash"] != digest:
        raise ApiError(409, "idempotency_key_reused", f"Idempotency-Key {key!r} was used for job {job['id']} "
                       "with a different request.", "Use a new key for a new request.", "Idempotency-Key")
    return job


def view(state: ServerState, job: dict) -> dict:
    """The public form of a job."""
    jid = job["id"]
    out = {
        "id": jid,
        "status": job["status"],
        "workflow": job["workflow"],
        "model": job["model"],
        "source": job["source"],
        "created": job["created"],
        "started": job["started"],
        "finished": job["finished"],
        "attempts": job["attempts"],
        "max_attempts": job["max_attempts"],
        "cancel_requested": job["cancel_requested"],
        "progress": {"step": job["step"], "steps": job["steps"]} if job["steps"] else None,
        "queue_position": state.store.queue_position(job),
        "retry_of": job["retry_of"],
        "request": job["request"],
        "error": job["error"],
        "events_url": f"/api/jobs/{jid}/events",
    }
    result = job["result"] or {}
    out["images"] = [{**{k: im[k] for k in ("index", "seed", "width", "height")},
                      "url": f"/api/jobs/{jid}/images/{im['index']}",
                      "metadata_url": f"/api/jobs/{jid}/images/{im['index']}/metadata"}
                     for im in result.get("images", [])]
    out["warnings"] = result.get("warnings", [])
    out["timings"] = result.get("timings", {})
    return out


def image_path(state: ServerState, job: dict, index: int) -> Path:
    """Served only from outputs/<job id>/ by index, with the file name the worker recorded."""
    images = (job["result"] or {}).get("images", []) if job["status"] == "done" else []
    if not 0 <= index < len(images):
        raise ApiError(404, "image_not_found",
                       f"Job {job['id']} has no image {index} (status {job['status']}, {len(images)} image(s)).",
                       "Wait until the job is done; indexes start at 0.")
    name = images[index]["file"]
    path = state.config.outputs_dir / job["id"] / name
    if not _IMAGE_FILE.match(name) or not path.is_file():
        raise ApiError(404, "image_not_found", f"The file of image {index} of job {job['id']} is missing.",
                       "It may have been deleted from the data directory.")
    return path


async def wait_for(state: ServerState, job_ids: list[str], timeout: float | None = None) -> list[dict]:
    """Poll the store until every job has finished (the A1111 and OpenAI calls are synchronous)."""
    deadline = time.monotonic() + (timeout or state.config.sync_timeout_s)
    while True:
        jobs = await to_thread.run_sync(lambda: [state.store.get(i) for i in job_ids])
        if all(j["status"] in FINISHED for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise ApiError(504, "timeout", f"The job(s) {', '.join(job_ids)} did not finish in time.",
                           "They are still queued or running; follow them with GET /api/jobs/{id}.")
        await asyncio.sleep(0.1)
