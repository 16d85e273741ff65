"""The batch pipeline on Ray: actors make images, the driver owns the manifest.

- One actor per GPU of the cluster (``num_gpus=1``), or ``workers`` CPU actors. Each builds one
  Engine and keeps its loaded model for every image it is given.
- Work is pulled: the driver claims the next image from the manifest only when an actor is idle, so
  fast actors make more images. An image key is claimed once at a time (the manifest's claim).
- The driver marks an image done only when its actor returns the written path (checked to exist)
  or, for a store that lives in one process (memory://), the PNG bytes the driver then writes.
- A dead actor: its image is recorded as a failed attempt (retried up to --max-attempts); Ray
  restarts the actor (``max_restarts``), and the driver gives it work again once a ping answers.
  An actor that stays dead is dropped; the others go on.
Ray is imported only here, inside functions: `lightdiff batch` without --ray does not need it.
"""

from __future__ import annotations

import os
import time
import uuid

from lightdiff.errors import LightdiffError
from lightdiff.pipeline.local import describe, make_image
from lightdiff.pipeline.manifest import Manifest
from lightdiff.pipeline.store import Store, png_bytes


def import_ray():
    try:
        import ray
    except ImportError:
        raise LightdiffError("--ray needs Ray, which is not installed.",
                             "pip install 'lightdiff[ray]' (or run without --ray).", code="missing_dependency") from None
    return ray


class ImageActor:
    """One Engine, kept for the actor's life; ``make`` writes (or returns) one image."""

    def __init__(self, store_location: str, device: str, engine_kwargs: dict):
        from lightdiff.workflows.engine import Engine

        self.store = Store(store_location)
        self.engine = Engine(device=device, **engine_kwargs)

    def ping(self) -> int:
        return os.getpid()

    def make(self, key: str, request: dict) -> dict:
        image, meta = make_image(self.engine, key, request)
        if self.store.process_local:  # the driver's memory:// is not this process's: send the bytes
            return {"key": key, "png": png_bytes(image, meta)}
        return {"key": key, "path": self.store.write(key, image, meta)}


def start_actors(ray, store: Store, workers: int | None, engine_kwargs: dict, max_restarts: int) -> list:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and not workers:
        options, device, n = {"num_gpus": 1, "num_cpus": 1}, "cuda", gpus  # Ray sets CUDA_VISIBLE_DEVICES
    else:
        options, device, n = {"num_cpus": 1}, "cpu", workers or 1
    cls = ray.remote(ImageActor).options(max_restarts=max_restarts, max_task_retries=0, **options)
    return [cls.remote(store.location, device, engine_kwargs) for _ in range(n)]


def run_ray(manifest: Manifest, store: Store, address: str | None = None, workers: int | None = None,
            engine_kwargs: dict | None = None, max_attempts: int = 3, lease_s: float = 600.0,
            limit: int | None = None, bar=None, max_restarts: int = 2, on_image=None) -> None:
    """Make the manifest's pending images on Ray. ``on_image(made, actors)`` runs in the driver after each."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    try:
        _drive(ray, manifest, store, workers, engine_kwargs or {}, max_attempts, lease_s, limit, bar, max_restarts,
               on_image)
    finally:
        if started:
            ray.shutdown()


def _drive(ray, manifest, store, workers, engine_kwargs, max_attempts, lease_s, limit, bar, max_restarts, on_image):
    from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

    run_id = uuid.uuid4().hex[:8]
    actors = start_actors(ray, store, workers, engine_kwargs, max_restarts)
    names = [f"ray-{run_id}-{i}" for i in range(len(actors))]
    idle = list(range(len(actors)))
    inflight: dict = {}  # object ref -> (actor index, claimed key or None for a ping)
    pings: dict[int, int] = {}  # failed pings per actor
    made = 0
    try:
        while True:
            while idle and (limit is None or made + _claims(inflight) < limit):
                i = idle[0]
                claim = manifest.claim(names[i], lease_s, max_attempts)
                if claim is None:
                    break
                idle.pop(0)
                inflight[actors[i].make.remote(claim.key, claim.request)] = (i, claim.key)
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=lease_s / 3)
            if not ready:  # long images: keep their claims
                for i, key in inflight.values():
                    if key is not None:
                        manifest.renew(key, names[i], lease_s)
                continue
            ref = ready[0]
            i, key = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError as e:
                if key is None:  # its ping failed: dead for good, or still unavailable
                    pings[i] = pings.get(i, 0) + 1
                    if isinstance(e, ActorDiedError) or pings[i] > max_restarts + 2:
                        continue  # no more work for it; the others go on
                    time.sleep(0.5)
                else:
                    manifest.fail(key, names[i], f"its Ray actor died: {describe(e).splitlines()[0]}", max_attempts)
                inflight[actors[i].ping.remote()] = (i, None)  # back in service once it answers (restarted)
                continue
            except RayTaskError as e:  # the image failed inside a live actor
                manifest.fail(key, names[i], describe(e.cause if e.cause is not None else e), max_attempts)
                idle.append(i)
                continue
            idle.append(i)
            if key is None:
                continue  # a restarted actor answered its ping
            if "png" in out:
                path = store.write_bytes(key, out["png"])
            else:
                path = out["path"]
            if not store.exists(path):
                manifest.fail(key, names[i], f"the actor reported {path} but the store has no such file", max_attempts)
                continue
            if manifest.complete(key, names[i], store.url(path)):
                made += 1
                if bar is not None:
                    bar.update(1)
                if on_image is not None:
                    on_image(made, actors)
    finally:
        for i, key in inflight.values():
            if key is not None:
                manifest.release(names[i], "the batch run stopped before its Ray actor finished")
        for actor in actors:
            ray.kill(actor)


def _claims(inflight: dict) -> int:
    return sum(1 for _, key in inflight.values() if key is not None)

