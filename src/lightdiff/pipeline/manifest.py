"""The manifest: one SQLite row per image (WAL, so workers and a status reader share it safely).

A row is pending -> running (claimed with a lease) -> done | failed. Why nothing is lost or made twice:
- a claim is one UPDATE ... WHERE status='pending' (or a running row whose lease expired) inside an
  IMMEDIATE transaction, so exactly one worker gets each image; the claim counts an attempt;
- a worker renews its lease while it runs; a dead worker's lease expires and the image is claimed
  again (or failed, with the reason, once its attempts are spent);
- done is a conditional UPDATE on (key, worker, status='running'), made only after the file exists:
  a worker that lost its claim cannot mark anything done;
- on a rerun, a done row whose file is missing goes back to pending (``verify``).
A done row keeps its worker and completion time, from which ``throughput`` measures images per second.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key TEXT PRIMARY KEY,
    line INTEGER NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    output TEXT,
    worker TEXT,
    lease_until REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_status ON images(status, line);
"""
STATUSES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Claim:
    key: str
    request: dict
    attempts: int


class Manifest:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.executescript(SCHEMA)  # executescript manages its own transaction
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: safe across threads and forked/spawned workers.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _tx(self):
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock first: claims never race
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # --- filling ---------------------------------------------------------------------------------

    def add(self, jobs) -> int:
        """Insert new images (an image already in the manifest keeps its state); return how many were new."""
        now = time.time()
        with self._tx() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO images (key, line, request, updated) VALUES (?, ?, ?, ?)",
                           [(j.key, j.line, json.dumps(j.request, sort_keys=True), now) for j in jobs])
            return db.total_changes - before

    def prepare_rerun(self, exists, max_attempts: int, retry_failed: bool = False) -> dict:
        """Before a run: done rows whose file is gone, failed rows with attempts left (or all failed
        rows with ``retry_failed``) go back to pending. ``exists(output) -> bool`` checks the store."""
        reset = {"missing_files": 0, "retried": 0}
        with self._tx() as db:
            done = db.execute("SELECT key, output FROM images WHERE status='done'").fetchall()
            gone = [k for k, out in done if not out or not exists(out)]
            db.executemany("UPDATE images SET status='pending', output=NULL, attempts=0, worker=NULL, "
                           "error='its file was missing on rerun' WHERE key=?", [(k,) for k in gone])
            reset["missing_files"] = len(gone)
            if retry_failed:
                cur = db.execute("UPDATE images SET status='pending', attempts=0 WHERE status='failed'")
            else:
                cur = db.execute("UPDATE images SET status='pending' WHERE status='failed' AND attempts < ?",
                                 (max_attempts,))
            reset["retried"] = cur.rowcount
        return reset

    # --- the worker's verbs: claim, renew, complete, fail ------------------------------------------

    def claim(self, worker: str, lease_s: float, max_attempts: int) -> Claim | None:
        """The next pending image (or one whose lease expired), now leased to ``worker``; None when none is left."""
        now = time.time()
        with self._tx() as db:
            # An expired lease with no attempts left: the worker died on it every time.
            db.execute("UPDATE images SET status='failed', worker=NULL, updated=?, error=COALESCE(error, '') || "
                       "'its worker stopped (killed or crashed) while making it, on every attempt' "
                       "WHERE status='running' AND lease_until < ? AND attempts >= ?", (now, now, max_attempts))
            row = db.execute("SELECT key, request, attempts FROM images WHERE status='pending' "
                             "OR (status='running' AND lease_until < ?) ORDER BY line, key LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE images SET status='running', worker=?, lease_until=?, attempts=attempts+1, updated=? "
                       "WHERE key=?", (worker, now + lease_s, now, row[0]))
            return Claim(row[0], json.loads(row[1]), row[2] + 1)

    def renew(self, key: str, worker: str, lease_s: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE images SET lease_until=? WHERE key=? AND worker=? AND status='running'",
                             (time.time() + lease_s, key, worker))
            return cur.rowcount == 1

    def complete(self, key: str, worker: str, output: str) -> bool:
        """Mark done (call only once the file exists); False when ``worker`` no longer holds the claim."""
        with self._tx() as db:
            # the worker stays on a done row (every other verb acts on running rows only): throughput()
            # tells each worker's first image, which carries its model load and warm-up
            cur = db.execute("UPDATE images SET status='done', output=?, error=NULL, lease_until=NULL, "
                             "updated=? WHERE key=? AND worker=? AND status='running'",
                             (output, time.time(), key, worker))
            return cur.rowcount == 1

    def fail(self, key: str, worker: str, error: str, max_attempts: int) -> str | None:
        """Record a failed attempt: back to pending while attempts are left, else failed. Returns the new status."""
        with self._tx() as db:
            cur = db.execute("UPDATE images SET status=CASE WHEN attempts >= ? THEN 'failed' ELSE 'pending' END, "
                             "error=?, worker=NULL, lease_until=NULL, updated=? "
                             "WHERE key=? AND worker=? AND status='running'",
                             (max_attempts, error[:2000], time.time(), key, worker))
            if cur.rowcount != 1:
                return None
            return db.execute("SELECT status FROM images WHERE key=?", (key,)).fetchone()[0]

    def release(self, worker: str, reason: str) -> int:
        """A worker known to be dead: its running images go back to pending at once (no lease wait)."""
        with self._tx() as db:
            cur = db.execute("UPDATE images SET status='pending', worker=NULL, lease_until=NULL, error=?, updated=? "
                             "WHERE worker=? AND status='running'", (reason, time.time(), worker))
            return cur.rowcount

    # --- reading ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        db = self._connect()
        try:
            rows = dict(db.execute("SELECT status, COUNT(*) FROM images GROUP BY status").fetchall())
        finally:
            db.close()
        return {s: rows.get(s, 0) for s in STATUSES}

    def rows(self, status: str | None = None) -> list[dict]:
        db = self._connect()
        db.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM images" + (" WHERE status=?" if status else "") + " ORDER BY line, key"
            return [dict(r) for r in db.execute(sql, (status,) if status else ())]
        finally:
            db.close()

    def throughput(self, since: float | None = None) -> dict:
        """Images per second from the done rows' completion times (those completed at or after ``since``).

        ``images_per_s``: every image over the time from ``since`` (the run's start: model loads included)
        to the last completion. ``steady_images_per_s``: for each worker, the images after its first over
        the time from its first completion to its last (the first image carries the model load, compile
        and warm-up), summed over the workers that made two or more; what more images would add."""
        db = self._connect()
        try:
            rows = db.execute("SELECT COALESCE(worker, ''), updated FROM images WHERE status='done' AND updated >= ? "
                              "ORDER BY updated", (since or 0.0,)).fetchall()
        finally:
            db.close()
        out = {"images": len(rows), "workers": 0, "wall_s": None, "images_per_s": None,
               "steady_images": 0, "steady_images_per_s": None}
        if not rows:
            return out
        if since is not None and rows[-1][1] > since:
            out["wall_s"] = round(rows[-1][1] - since, 3)
            out["images_per_s"] = round(len(rows) / out["wall_s"], 4)
        by_worker: dict[str, list[float]] = {}
        for worker, t in rows:
            by_worker.setdefault(worker, []).append(t)
        out["workers"] = len(by_worker)
        rates = [(len(ts) - 1, (len(ts) - 1) / (ts[-1] - ts[0])) for ts in by_worker.values()
                 if len(ts) > 1 and ts[-1] > ts[0]]
        if rates:
            out["steady_images"] = sum(n for n, _ in rates)
            out["steady_images_per_s"] = round(sum(rate for _, rate in rates), 4)
        return out

    def summary(self, show: int = 20) -> str:
        """Counts, then the images not made (up to ``show`` of each status), with line, prompt and why."""
        c = self.counts()
        lines = [f"{c['done']} done, {c['failed']} failed, {c['pending']} pending, {c['running']} running "
                 f"({sum(c.values())} images) in {self.path}"]
        for status in ("failed", "pending", "running"):
            rows = self.rows(status)
            if len(rows) > show:
                lines.append(f"  ... {len(rows) - show} more {status} (all: sqlite3 {self.path} "
                             f"\"SELECT key, error FROM images WHERE status='{status}'\")")
            for r in rows[:show]:
                req = json.loads(r["request"])
                why = r["error"] or ("not attempted yet" if status == "pending" else f"claimed by {r['worker']}")
                lines.append(f"  {status}: {r['key']} (line {r['line']}, seed {req.get('seed')}, "
                             f"prompt {req.get('prompt', '')[:50]!r}, {r['attempts']} attempt(s)): {why}")
        return "\n".join(lines)
