"""The job store: SQLite (WAL) shared by the API process and the worker processes.

Why it loses nothing:
- a job is a row from the moment it is accepted; queue order is its sequence number;
- a worker *claims* a job with a lease (claimed_by, claim_token, lease_expires) that it renews while
  running; a claim that is not renewed (worker killed, crashed, server restarted) expires, and the
  job is claimed again with ``attempts`` counted, up to ``max_attempts``, then failed with the reason;
- every state change after the claim is a conditional UPDATE on the claim token, so a worker that
  lost its claim cannot complete, fail or cancel the job: a job completes once;
- each state change and its event (queued, loading, running i/n, done, failed, cancelled) are
  written in one transaction, so the event stream and the job row never disagree.

Each thread gets its own connection (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ACTIVE = ("loading", "running")
FINISHED = ("done", "failed", "cancelled")
STATUSES = ("queued",) + ACTIVE + FINISHED

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'api',
    workflow TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    claimed_by TEXT,
    claim_token TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    step INTEGER,
    steps INTEGER,
    error TEXT,
    result TEXT,
    retry_of TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER,
    device TEXT,
    state TEXT,
    job_id TEXT,
    started REAL,
    heartbeat REAL,
    env TEXT,
    memory TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    # -- connections and transactions -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self):
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _event(c: sqlite3.Connection, job_id: str, type_: str, data: dict | None = None, now: float | None = None):
        c.execute("INSERT INTO events(job_id, type, data, created) VALUES (?, ?, ?, ?)",
                  (job_id, type_, json.dumps(data or {}), now or time.time()))

    # -- submitting and reading ----------------------------------------------------------------

    def submit(self, request: dict, *, workflow: str, model: str, request_hash: str, max_attempts: int,
               idempotency_key: str | None = None, source: str = "api", retry_of: str | None = None,
               max_queued: int | None = None) -> tuple[dict, bool]:
        """Queue a job. Returns (job, created); with a known Idempotency-Key, the existing job and False."""
        now = time.time()
        job_id = uuid.uuid4().hex
        with self.tx() as c:
            if idempotency_key is not None:
                row = c.execute("SELECT * FROM jobs WHERE idempotency_key=?", (idempotency_key,)).fetchone()
                if row is not None:
                    return _job(row), False
            if max_queued is not None:
                n = c.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()[0]
                if n >= max_queued:
                    raise QueueFull(n)
            c.execute(
                "INSERT INTO jobs(id, idempotency_key, request_hash, source, workflow, model, request, status,"
                " max_attempts, retry_of, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, idempotency_key, request_hash, source, workflow, model, json.dumps(request),
                 max_attempts, retry_of, now, now))
            self._event(c, job_id, "queued", {"workflow": workflow, "model": model}, now)
            row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row), True

    def get(self, job_id: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def by_idempotency_key(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE idempotency_key=?", (key,)).fetchone()
        return _job(row) if row else None

    def list(self, status: str | None = None, limit: int = 100, before: int | None = None,
             source: str | None = None) -> list[dict]:
        """Newest first; ``before`` is a seq for paging."""
        where, args = [], []
        if status:
            where.append("status=?")
            args.append(status)
        if source:
            where.append("source=?")
            args.append(source)
        if before is not None:
            where.append("seq<?")
            args.append(before)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        return [_job(r) for r in self._conn().execute(sql, (*args, limit))]

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = {s: 0 for s in STATUSES}
        out.update({r[0]: r[1] for r in rows})
        return out

    def queue_position(self, job: dict) -> int | None:
        """0 = next to run. None when the job is not queued."""
        if job["status"] != "queued":
            return None
        return self._conn().execute("SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq<?",
                                    (job["seq"],)).fetchone()[0]

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        rows = self._conn().execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id",
                                    (job_id, after)).fetchall()
        return [{"id": r["id"], "type": r["type"], "data": json.loads(r["data"]), "created": r["created"]}
                for r in rows]

    def current(self) -> dict | None:
        """The active job that started last (A1111's /progress shows one job)."""
        row = self._conn().execute("SELECT * FROM jobs WHERE status IN ('loading','running')"
                                   " ORDER BY started DESC LIMIT 1").fetchone()
        return _job(row) if row else None

    # -- the worker's verbs: next job, progress, complete ----------------------------------------

    def claim(self, worker_id: str, lease_s: float) -> dict | None:
        """Take the first claimable job: queued, or active with an expired lease (its worker died).

        Jobs whose lease expired after their last allowed attempt fail here with the reason; an
        expired job that was asked to cancel is cancelled instead of run again."""
        now = time.time()
        with self.tx() as c:
            for row in c.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE status IN ('loading','running')"
                                 " AND lease_expires<? AND (attempts>=max_attempts OR cancel_requested=1)",
                                 (now,)).fetchall():
                if row["cancel_requested"]:
                    self._finish(c, row["id"], "cancelled", None, None, now)
                else:
                    err = {"code": "worker_lost",
                           "message": f"The worker stopped (crash, kill, out-of-memory kill or restart) during "
                                      f"each of the {row['attempts']} attempts at this job.",
                           "hint": "Check the server log for the cause; try a smaller size, batch or another "
                                   "memory plan, then retry the job."}
                    self._finish(c, row["id"], "failed", None, err, now)
            token = uuid.uuid4().hex
            row = c.execute(
                "UPDATE jobs SET status='loading', attempts=attempts+1, claimed_by=?, claim_token=?,"
                " lease_expires=?, started=?, step=NULL, steps=NULL, updated=?"
                " WHERE seq=(SELECT seq FROM jobs WHERE status='queued'"
                "            OR (status IN ('loading','running') AND lease_expires<?) ORDER BY seq LIMIT 1)"
                " RETURNING *", (worker_id, token, now + lease_s, now, now, now)).fetchone()
            if row is None:
                return None
            job = _job(row)
            self._event(c, job["id"], "loading", {"attempt": job["attempts"], "worker": worker_id}, now)
        return job

    def renew(self, job_id: str, token: str, lease_s: float) -> tuple[bool, bool]:
        """Extend the lease. Returns (still ours, cancel requested)."""
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET lease_expires=? WHERE id=? AND claim_token=? AND status IN ('loading','running')",
                          (time.time() + lease_s, job_id, token)).rowcount
            row = c.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return n == 1, bool(row and row[0])

    def progress(self, job_id: str, token: str, step: int, steps: int) -> tuple[bool, bool]:
        """Record step i of n. Returns (still ours, cancel requested)."""
        now = time.time()
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET status='running', step=?, steps=?, updated=? WHERE id=? AND claim_token=?"
                          " AND status IN ('loading','running')", (step, steps, now, job_id, token)).rowcount
            if n:
                self._event(c, job_id, "running", {"step": step, "steps": steps}, now)
            row = c.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return n == 1, bool(row and row[0])

    def cancel_requested(self, job_id: str) -> bool:
        row = self._conn().execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def complete(self, job_id: str, token: str, result: dict) -> bool:
        """Mark done, only while the claim is ours (a conditional UPDATE): a job completes once."""
        return self._end(job_id, token, "done", result, None)

    def fail(self, job_id: str, token: str, error: dict) -> bool:
        return self._end(job_id, token, "failed", None, error)

    def confirm_cancelled(self, job_id: str, token: str) -> bool:
        return self._end(job_id, token, "cancelled", None, None)

    def release(self, job_id: str, token: str, reason: str) -> bool:
        """Give a claimed job back to the queue without counting the attempt (graceful shutdown)."""
        now = time.time()
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET status='queued', attempts=MAX(attempts-1, 0), claimed_by=NULL,"
                          " claim_token=NULL, lease_expires=NULL, step=NULL, steps=NULL, updated=?"
                          " WHERE id=? AND claim_token=? AND status IN ('loading','running')",
                          (now, job_id, token)).rowcount
            if n:
                self._event(c, job_id, "queued", {"reason": reason}, now)
        return n == 1

    def _end(self, job_id: str, token: str, status: str, result: dict | None, error: dict | None) -> bool:
        now = time.time()
        with self.tx() as c:
            n = c.execute("SELECT 1 FROM jobs WHERE id=? AND claim_token=? AND status IN ('loading','running')",
                          (job_id, token)).fetchone()
            if n is None:
                return False
            self._finish(c, job_id, status, result, error, now)
        return True

    def _finish(self, c, job_id: str, status: str, result: dict | None, error: dict | None, now: float) -> None:
        c.execute("UPDATE jobs SET status=?, result=?, error=?, finished=?, updated=?, lease_expires=NULL"
                  " WHERE id=?", (status, json.dumps(result) if result is not None else None,
                                  json.dumps(error) if error is not None else None, now, now, job_id))
        data = {"done": {"images": len((result or {}).get("images", []))}, "failed": {"error": error},
                "cancelled": {}}[status]
        self._event(c, job_id, status, data, now)

    def release_worker(self, worker_id: str) -> int:
        """A worker died: expire its leases now so its job is claimed again without waiting."""
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET lease_expires=0 WHERE claimed_by=? AND status IN ('loading','running')",
                          (worker_id,)).rowcount
            c.execute("DELETE FROM workers WHERE id=?", (worker_id,))
        return n

    def release_all(self) -> int:
        """At server start (with the data-dir lock held) no worker can be alive: expire every lease."""
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET lease_expires=0 WHERE status IN ('loading','running')").rowcount
            c.execute("DELETE FROM workers")
        return n

    # -- cancelling and retrying --------------------------------------------------------------

    def cancel(self, job_id: str) -> dict | None:
        """Queued: cancelled at once. Active: flagged; the worker stops at its next step.
        Finished: unchanged (the caller reports it). Touches no other job."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                self._finish(c, job_id, "cancelled", None, None, now)
            elif row["status"] in ACTIVE:
                n = c.execute("UPDATE jobs SET cancel_requested=1, updated=? WHERE id=? AND cancel_requested=0",
                              (now, job_id)).rowcount
                if n:
                    self._event(c, job_id, "cancelling", {}, now)
            row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row)

    def cancel_active(self) -> list[str]:
        """A1111's /interrupt: stop what is running now (queued jobs stay queued)."""
        with self.tx() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM jobs WHERE status IN ('loading','running')"
                                           " AND cancel_requested=0")]
            for job_id in ids:
                c.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
                self._event(c, job_id, "cancelling", {"by": "interrupt"})
        return ids

    # -- workers and settings ------------------------------------------------------------------

    def worker_seen(self, worker_id: str, *, pid: int, device: str, state: str, job_id: str | None = None,
                    env: dict | None = None, memory: dict | None = None) -> None:
        now = time.time()
        with self.tx() as c:
            c.execute(
                "INSERT INTO workers(id, pid, device, state, job_id, started, heartbeat, env, memory)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state=excluded.state,"
                " job_id=excluded.job_id, heartbeat=excluded.heartbeat,"
                " env=COALESCE(excluded.env, workers.env), memory=COALESCE(excluded.memory, workers.memory)",
                (worker_id, pid, device, state, job_id, now, now, json.dumps(env) if env else None,
                 json.dumps(memory) if memory else None))

    def workers(self) -> list[dict]:
        out = []
        for r in self._conn().execute("SELECT * FROM workers ORDER BY started"):
            d = dict(r)
            d["env"] = json.loads(d["env"]) if d["env"] else None
            d["memory"] = json.loads(d["memory"]) if d["memory"] else None
            out.append(d)
        return out

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self._conn().execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (key, value))


class QueueFull(Exception):
    def __init__(self, n: int):
        super().__init__(f"{n} jobs are queued")
        self.n = n


def _job(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["request"] = json.loads(d["request"])
    d["result"] = json.loads(d["result"]) if d["result"] else None
    d["error"] = json.loads(d["error"]) if d["error"] else None
    d["cancel_requested"] = bool(d["cancel_requested"])
    return d
