"""Batch workers on this machine: next image, make it, complete it.

One device runs the worker in this process (no start-up cost, and the progress bar sees each image).
Several devices (``--devices cuda:0,cuda:1``) get one spawned process each, which sees only its own GPU
(CUDA_VISIBLE_DEVICES: measured 2026-11-26, workers addressed as cuda:N without it made no more images on
two H100s than on one), every one with its own Engine (and the planner's budget for its card), all
claiming from the same manifest. The parent draws the progress bar from the manifest and, when a worker process dies, hands its images back at
once (``Manifest.release``) instead of waiting for the lease to run out.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
import uuid

from lightdiff.errors import InvalidRequest
from lightdiff.pipeline.manifest import Manifest
from lightdiff.pipeline.store import Store
from lightdiff.runtime.device import worker_env


def make_image(engine, key: str, request: dict):
    """(image, metadata) of one manifest image; the metadata names its batch key."""
    result = engine.run(request)
    meta = dict(result.metadata[0])
    meta["batch_key"] = key
    return result.images[0], meta


def describe(error: BaseException) -> str:
    text = str(error).strip() or repr(error)
    return f"{type(error).__name__}: {text}"


class _Heartbeat:
    """Renews the lease of the image being made, from a thread, so a long model load keeps its claim."""

    def __init__(self, manifest: Manifest, worker: str, lease_s: float):
        self.manifest, self.worker, self.lease_s = manifest, worker, lease_s
        self.key: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self.lease_s / 3):
            key = self.key
            if key is not None:
                self.manifest.renew(key, self.worker, self.lease_s)

    def close(self):
        self._stop.set()


def work(manifest_path: str, store_location: str, device: str, engine_kwargs: dict, worker: str,
         max_attempts: int, lease_s: float, stop=None, limit: int | None = None, on_image=None) -> int:
    """Claim and make images until none is left (or ``stop`` is set, or ``limit`` made); return how many made."""
    from lightdiff.workflows.engine import Engine

    manifest, store = Manifest(manifest_path), Store(store_location)
    engine = Engine(device=device, **engine_kwargs)  # models load on the first image, then stay loaded
    heartbeat = _Heartbeat(manifest, worker, lease_s)
    made = 0
    try:
        while not (stop is not None and stop.is_set()) and (limit is None or made < limit):
            claim = manifest.claim(worker, lease_s, max_attempts)
            if claim is None:
                break
            heartbeat.key = claim.key
            try:
                image, meta = make_image(engine, claim.key, claim.request)
                path = store.write(claim.key, image, meta)  # the file first ...
            except Exception as e:  # an image's failure is recorded; the worker goes on with the next
                manifest.fail(claim.key, worker, describe(e), max_attempts)
                continue
            finally:
                heartbeat.key = None
            if manifest.complete(claim.key, worker, store.url(path)):  # ... then done, if still ours
                made += 1
                if on_image is not None:
                    on_image(claim.key)
    except BaseException:
        manifest.release(worker, "its worker was interrupted")
        raise
    finally:
        heartbeat.close()
    return made


def _process_main(*args, **kwargs):
    try:
        work(*args, **kwargs)
    except KeyboardInterrupt:
        pass
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1)


@contextlib.contextmanager
def _environ(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def default_devices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def run_local(manifest: Manifest, store: Store, devices: list[str], engine_kwargs: dict, max_attempts: int,
              lease_s: float, limit: int | None = None, bar=None) -> None:
    run_id = uuid.uuid4().hex[:8]
    if len(devices) == 1:
        work(str(manifest.path), store.location, devices[0], engine_kwargs, f"local-{run_id}-0", max_attempts,
             lease_s, limit=limit, on_image=(lambda _key: bar.update(1)) if bar is not None else None)
        return
    if store.process_local:
        raise InvalidRequest("output_dir", f"{store.location} is in-memory, so worker processes cannot share it.",
                             "Use a folder or a shared URL (s3://, gs://, file://) with several --devices.")
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    stop = ctx.Event()
    start_done = manifest.counts()["done"]
    procs = {}
    for i, device in enumerate(devices):
        worker = f"local-{run_id}-{i}"
        # each worker sees only its own GPU (as the server's workers do): a spawned child starts with
        # the parent's environment of the moment, so it is set around start()
        inner, env = worker_env(device)
        p = ctx.Process(target=_process_main, name=worker, daemon=True,
                        args=(str(manifest.path), store.location, inner, engine_kwargs, worker, max_attempts, lease_s),
                        kwargs={"stop": stop})
        with _environ(env):
            p.start()
        procs[worker] = p
    try:
        while procs:
            time.sleep(0.5)
            made = manifest.counts()["done"] - start_done
            if bar is not None:
                bar.update(max(0, made - bar.n))
            if limit is not None and made >= limit:
                stop.set()
            for worker, p in list(procs.items()):
                if not p.is_alive():
                    p.join()
                    if p.exitcode != 0:
                        manifest.release(worker, f"its worker process on {p.name} exited with code {p.exitcode}")
                    del procs[worker]
    except BaseException:
        stop.set()
        for p in procs.values():
            p.terminate()
        for worker, p in procs.items():
            p.join(5)
            manifest.release(worker, "the batch run was interrupted")
        raise
    if bar is not None:
        bar.update(max(0, manifest.counts()["done"] - start_done - bar.n))
