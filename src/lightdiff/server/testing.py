"""A real `lightdiff serve` in a child process, for tests and scripts/load_test.py.

It runs in its own process group, so ``kill_all()`` is a power cut: the API process and its
workers die at once with SIGKILL, the way a crashed host would leave them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: str | Path, port: int | None = None, args: list[str] | None = None,
                 log: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.args = args or []
        self.log_path = Path(log) if log else self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, wait_worker: bool = True, timeout: float = 120.0) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        cmd = [sys.executable, "-m", "lightdiff", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
               "--devices", "cpu", "--cpu-threads", "1", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    info = c.get("/api/system", headers=self.headers()).json()
                    if not wait_worker or any(w["state"] in ("idle", "busy") for w in info["workers"]):
                        return self
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server did not become ready in {timeout} s:\n{self.log()}")

    def headers(self) -> dict:
        token = next((self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == "--token"), None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=kw.pop("timeout", 60.0), **kw)

    def worker_pids(self) -> list[int]:
        with self.client() as c:
            return [w["pid"] for w in c.get("/api/system").json()["workers"] if w["alive"]]

    def kill_all(self) -> None:
        """SIGKILL the whole process group: the API and its workers, at the same instant."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Ctrl-C: the server stops its workers, which give their jobs back to the queue."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        try:  # workers left in the group (there should be none)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError, AttributeError):
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_finished(client: httpx.Client, job_ids, timeout: float = 120.0) -> dict[str, dict]:
    """Poll until every job is done, failed or cancelled."""
    pending, out = set(job_ids), {}
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} job(s) not finished: {sorted(pending)[:5]}")
        listed = {j["id"]: j for j in client.get("/api/jobs", params={"limit": 500}).json()["jobs"]}
        for job_id in list(pending):
            job = listed.get(job_id) or client.get(f"/api/jobs/{job_id}").json()
            if job["status"] in ("done", "failed", "cancelled"):
                out[job_id] = job
                pending.discard(job_id)
        if pending:
            time.sleep(0.2)
    return out
