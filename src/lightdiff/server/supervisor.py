"""The supervisor: a thread in the API process that keeps one worker process per device alive.

Workers are plain subprocesses (`python -m lightdiff.server.worker`), so nothing a worker does (an
out-of-memory kill, a segfault in a kernel, `kill -9`) can take the API down. When one exits, the
supervisor expires its leases at once (its job is claimed again, attempts counted) and starts a new
one, backing off when a worker keeps dying right after starting.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lightdiff.errors import LightdiffError
from lightdiff.runtime.device import worker_env
from lightdiff.server.config import ServerConfig
from lightdiff.server.store import Store

QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after starting is restarted with a back-off
MAX_BACKOFF_S = 30.0


@dataclass
class Slot:
    index: int
    device: str
    proc: subprocess.Popen | None = None
    worker_id: str = ""
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None


class DataDirInUse(LightdiffError):
    code = "data_dir_in_use"


def lock_data_dir(data_dir: Path):
    """One server per data dir: then at start-up no worker of ours can be alive, and every lease
    left in the store belongs to a dead one. The OS drops the lock when the process dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / "server.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise DataDirInUse(f"Another lightdiff server (pid {other}) is using {data_dir}.",
                           "Stop it, or give this one another --data-dir.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Supervisor:
    def __init__(self, config: ServerConfig, store: Store):
        self.config = config
        self.store = store
        self.slots = [Slot(i, d) for i, d in enumerate(config.devices)]
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        # The worker reads its settings from a file; the API token stays out of it.
        self.config_path = Path(config.data_dir) / "worker-config.json"

    def start(self) -> None:
        self.config_path.write_text(self.config.with_changes(token=None).to_json())
        for slot in self.slots:
            self._spawn(slot)
        self.thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self.thread.start()

    def _spawn(self, slot: Slot) -> None:
        device, env = worker_env(slot.device)
        slot.worker_id = f"{slot.device.replace(':', '')}-{slot.index}-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "lightdiff.server.worker", "--config", str(self.config_path),
               "--device", device, "--worker-id", slot.worker_id, "--parent-pid", str(os.getpid())]
        slot.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        slot.started = time.monotonic()

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            for slot in self.slots:
                try:
                    self._check(slot)
                except Exception as e:  # never let one bad check end supervision
                    print(f"[supervisor] {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def _check(self, slot: Slot) -> None:
        now = time.monotonic()
        if slot.proc is not None:
            rc = slot.proc.poll()
            if rc is None or self.stopping.is_set():
                return
            slot.last_exit = rc
            released = self.store.release_worker(slot.worker_id)
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            slot.backoff = min(max(1.0, slot.backoff * 2), MAX_BACKOFF_S) if now - slot.started < QUICK_DEATH_S else 0.0
            print(f"[supervisor] worker {slot.worker_id} (pid {slot.proc.pid}) stopped with {how}; "
                  f"{released} job(s) returned to the queue; restarting in {slot.backoff:.0f} s",
                  file=sys.stderr, flush=True)
            slot.proc = None
            slot.next_start = now + slot.backoff
        if slot.proc is None and now >= slot.next_start and not self.stopping.is_set():
            slot.restarts += 1
            self._spawn(slot)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a worker gives its job back to the queue at the next step; SIGKILL after timeout."""
        self.stopping.set()
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def status(self) -> list[dict]:
        return [{"index": s.index, "device": s.device, "worker_id": s.worker_id,
                 "pid": s.proc.pid if s.proc else None, "alive": bool(s.proc and s.proc.poll() is None),
                 "restarts": s.restarts, "last_exit": s.last_exit} for s in self.slots]
