"""The worker process: next job, run it, complete it.

One process per device, started and restarted by the API process's supervisor (supervisor.py). It
is the only process that imports torch and holds models, so an out-of-memory kill, a crash or a
`kill -9` costs the job in hand one attempt and nothing else: its lease expires, the supervisor
starts a new worker and the job runs again.

While a job runs, a heartbeat thread renews its lease, watches for a cancel request (the workflow's
step callback checks the same Event) and exits if the API process has gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from lightdiff.errors import LightdiffError, OutOfMemory
from lightdiff.server import uploads
from lightdiff.server.config import ServerConfig
from lightdiff.server.store import Store

TICK_S = 0.25  # how often the heartbeat looks for a cancel request
MEMORY_EVERY_S = 2.0


@dataclass
class Outcome:
    status: str  # done | failed | cancelled
    result: dict | None = None
    error: dict | None = None
    files: tuple[Path, ...] = ()


def image_name(index: int, attempt: int) -> str:
    """Each attempt writes its own names, so a worker that lost its claim never removes the winner's."""
    return f"{index}-a{attempt}.png"


def make_engine(config: ServerConfig, device: str):
    """The engine a worker runs jobs on, as the server's options say."""
    from lightdiff.workflows.engine import Engine

    return Engine(device=device, vram_budget_gb=config.vram_budget_gb, fast=config.fast,
                  allow_unsafe_pickle=config.allow_unsafe_pickle or None, ram_share=len(config.devices) or 1)


class Worker:
    def __init__(self, config: ServerConfig, device: str, worker_id: str, parent_pid: int | None = None):
        self.config = config
        self.device = device
        self.worker_id = worker_id
        self.parent_pid = parent_pid
        self.store = Store(config.db_path)
        self.engine = None
        self.job: dict | None = None
        self.cancel = threading.Event()
        self.stopping = threading.Event()
        self.lost_claim = False
        self.lock = threading.Lock()

    def log(self, msg: str) -> None:
        print(f"[worker {self.worker_id}] {msg}", file=sys.stderr, flush=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.cpu_threads and not self.device.startswith("cuda"):
            import torch

            torch.set_num_threads(self.config.cpu_threads)
        self.engine = make_engine(self.config, self.device)
        self.store.worker_seen(self.worker_id, pid=os.getpid(), device=self.engine.device, state="idle",
                               env=self._env(), memory=self._memory())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        self.log(f"ready on {self.engine.device} (pid {os.getpid()})")

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            job = self.next_job()
            if job is None:
                self.stopping.wait(self.config.poll_s)
                continue
            outcome = self.run(job)
            self.complete(job, outcome)

    def _on_stop_signal(self, signum, frame) -> None:
        # Stop at the next step and give the job back to the queue (complete() sees `stopping`).
        self.stopping.set()
        self.cancel.set()

    # -- the three verbs ----------------------------------------------------------------------

    def next_job(self) -> dict | None:
        job = self.store.claim(self.worker_id, self.config.lease_s)
        if job is None:
            return None
        with self.lock:
            self.job, self.lost_claim = job, False
            self.cancel.clear()
        self._remove_stale_files(job)
        self.store.worker_seen(self.worker_id, pid=os.getpid(), device=self.device, state="busy", job_id=job["id"])
        self.log(f"job {job['id']} attempt {job['attempts']}: {job['workflow']} on {job['model']}")
        return job

    def run(self, job: dict) -> Outcome:
        from lightdiff.workflows.base import Cancelled

        t0 = time.perf_counter()
        try:
            request = uploads.resolve_refs(job["request"], self.config.uploads_dir)
            result = self.engine.run(request, progress=self._progress, cancel=self.cancel)
            return self._save(job, result, time.perf_counter() - t0)
        except Cancelled:
            return Outcome("cancelled")
        except LightdiffError as e:
            return Outcome("failed", error=e.to_dict())
        except Exception as e:
            if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):  # GPU (torch) or host RAM
                self.engine.pool.clear()  # start the next job from an empty card
                err = OutOfMemory(f"The device ran out of memory running this job ({str(e).splitlines()[0][:200]}).",
                                  "Use a smaller size or batch, a larger --vram-budget, or another memory plan.")
                return Outcome("failed", error=err.to_dict())
            self.log(f"job {job['id']} raised:\n{traceback.format_exc()}")
            return Outcome("failed", error={"code": "internal_error",
                                            "message": f"The job failed: {type(e).__name__}: {str(e)[:500]}",
                                            "hint": "This is a bug in lightdiff or a workflow; the server log has "
                                                    "the traceback. Report it with the job's request."})

    def complete(self, job: dict, outcome: Outcome) -> None:
        token = job["claim_token"]
        if self.stopping.is_set() and outcome.status == "cancelled":
            self.store.release(job["id"], token, "worker stopped; the job will run again")
            self._unlink(outcome.files)
        elif self.lost_claim:
            self.log(f"job {job['id']}: claim lost (lease expired); leaving it to its new owner")
            self._unlink(outcome.files)
        else:
            end = {"done": lambda: self.store.complete(job["id"], token, outcome.result),
                   "failed": lambda: self.store.fail(job["id"], token, outcome.error),
                   "cancelled": lambda: self.store.confirm_cancelled(job["id"], token)}[outcome.status]
            if end():
                self.log(f"job {job['id']}: {outcome.status}"
                         + (f" [{outcome.error.get('code')}] {outcome.error.get('message')}" if outcome.error else ""))
            else:  # someone else holds the claim now: their run is the one that counts
                self._unlink(outcome.files)
        with self.lock:
            self.job = None
        self.store.worker_seen(self.worker_id, pid=os.getpid(), device=self.device, state="idle")

    # -- helpers ------------------------------------------------------------------------------

    def _progress(self, event: dict) -> None:
        job = self.job
        if job is None or event.get("stage") != "running":
            return  # "loading" was recorded when the job was claimed
        ours, cancel = self.store.progress(job["id"], job["claim_token"], int(event["step"]), int(event["steps"]))
        if not ours:
            self.lost_claim = True
        if cancel or not ours:
            self.cancel.set()

    def _save(self, job: dict, result, run_s: float) -> Outcome:
        from lightdiff import outputs

        out_dir = self.config.outputs_dir / job["id"]
        files, images = [], []
        for i, (image, meta) in enumerate(zip(result.images, result.metadata)):
            meta = {**meta, "job_id": job["id"], "attempt": job["attempts"]}
            path = outputs.save_png(image, out_dir / image_name(i, job["attempts"]), meta)  # atomic
            files.append(path)
            images.append({"index": i, "file": path.name, "seed": meta.get("seed"),
                           "width": image.width, "height": image.height})
        extras = {}
        for name, image in result.extras.items():
            if hasattr(image, "save"):
                path = outputs.save_png(image, out_dir / f"extra-{name}-a{job['attempts']}.png",
                                        {"job_id": job["id"], "kind": name})
                files.append(path)
                extras[name] = path.name
        payload = {"images": images, "metadata": [dict(m, job_id=job["id"]) for m in result.metadata],
                   "warnings": result.warnings, "timings": {**result.timings, "run_s": round(run_s, 4)},
                   "extras": extras, "device": self.device, "worker": self.worker_id}
        return Outcome("done", result=payload, files=tuple(files))

    def _remove_stale_files(self, job: dict) -> None:
        """Files of earlier attempts (cut short by a crash) are never referenced: remove them."""
        out_dir = self.config.outputs_dir / job["id"]
        if out_dir.is_dir():
            for p in out_dir.iterdir():
                if not p.name.endswith(f"-a{job['attempts']}.png"):
                    p.unlink(missing_ok=True)

    @staticmethod
    def _unlink(files) -> None:
        for p in files:
            Path(p).unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        last_renew = last_memory = 0.0
        while True:
            time.sleep(TICK_S)
            if self.parent_pid and os.getppid() != self.parent_pid:
                # The API process is gone: exit; the next server start re-queues the job in hand.
                os._exit(3)
            now = time.monotonic()
            try:
                job = self.job
                if job is not None:
                    if now - last_renew >= min(self.config.lease_s / 3, 5.0):
                        ours, cancel = self.store.renew(job["id"], job["claim_token"], self.config.lease_s)
                        last_renew = now
                    else:
                        ours, cancel = True, self.store.cancel_requested(job["id"])
                    if not ours and self.job is job:
                        self.lost_claim = True
                    if cancel or not ours:
                        self.cancel.set()
                if now - last_memory >= MEMORY_EVERY_S:
                    self.store.worker_seen(self.worker_id, pid=os.getpid(), device=self.device,
                                           state="busy" if job else "idle", job_id=job["id"] if job else None,
                                           memory=self._memory())
                    last_memory = now
            except Exception as e:  # a locked or busy database must not stop the heartbeat
                self.log(f"heartbeat: {type(e).__name__}: {e}")

    def _env(self) -> dict | None:
        try:
            from lightdiff.runtime.device import env_stamp

            return env_stamp()
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}

    def _memory(self) -> dict | None:
        try:
            from lightdiff.runtime.device import host_ram, memory_snapshot

            return {"device": memory_snapshot(self.device), "host": host_ram()}
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightdiff.server.worker")
    p.add_argument("--config", required=True, help="path of the server config JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    config = ServerConfig.from_json(Path(args.config).read_text())
    worker = Worker(config, args.device, args.worker_id, args.parent_pid)
    worker.start()
    worker.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
