"""Nothing is lost, nothing completes twice: a worker killed with SIGKILL mid-job, then the whole
server (API and worker at once) killed with 50 queued jobs and started again on the same data dir.

Counted twice: in the job store (statuses, 'done' events) and on disk (PNG files per job)."""

import os
import signal
import sqlite3
import time

from lightdiff.server.testing import ServerProcess, wait_finished

TXT = {"model": "tiny-sd15", "prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
N_QUEUED = 50


def wait_until(predicate, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def submit(client, **kw) -> str:
    r = client.post("/api/jobs", json={**TXT, **kw})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def sse_types(client, job_id) -> list[str]:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        return [line[7:] for line in r.iter_lines() if line.startswith("event: ")]


def status(client, job_id) -> dict:
    return client.get(f"/api/jobs/{job_id}").json()


def test_kill_worker_then_whole_server_and_every_job_finishes_once(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data).start()
    try:
        with srv.client() as c:
            # 1. kill -9 the worker in the middle of a job
            long_id, short_id = submit(c, steps=200, seed=1), submit(c, seed=2)
            wait_until(lambda: (status(c, long_id).get("progress") or {}).get("step", 0) >= 2)
            (pid,) = srv.worker_pids()
            os.kill(pid, signal.SIGKILL)
            jobs = wait_finished(c, [long_id, short_id], timeout=180)
            assert jobs[long_id]["status"] == "done" and jobs[long_id]["attempts"] == 2
            assert jobs[short_id]["status"] == "done" and jobs[short_id]["attempts"] == 1
            (worker,) = c.get("/api/system").json()["workers"]
            assert worker["restarts"] == 1 and worker["pid"] != pid and worker["last_exit"] == -signal.SIGKILL
            attempts = [e for e in sse_types(c, long_id) if e == "loading"]
            assert len(attempts) == 2

            # 2. 50 queued jobs; a long one among them is running when the whole server dies
            ids = [submit(c, seed=100 + i) for i in range(10)]
            mid_id = submit(c, steps=200, seed=999)
            ids += [submit(c, seed=200 + i) for i in range(N_QUEUED - 10)]
            cancelled = ids[-3:]
            for job_id in cancelled:
                assert c.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelled"
            wait_until(lambda: status(c, mid_id)["status"] == "running", timeout=120)
        srv.kill_all()  # SIGKILL to the API and the worker at the same instant
    finally:
        srv.stop()

    srv2 = ServerProcess(data, port=srv.port).start()
    try:
        with srv2.client() as c:
            requested = ids + [mid_id]
            jobs = wait_finished(c, requested, timeout=240)
            by_status = {s: [j for j in jobs.values() if j["status"] == s] for s in ("done", "failed", "cancelled")}
            assert len(requested) == sum(len(v) for v in by_status.values())
            assert len(by_status["done"]) == N_QUEUED + 1 - 3 and not by_status["failed"]
            assert sorted(j["id"] for j in by_status["cancelled"]) == sorted(cancelled)
            assert jobs[mid_id]["attempts"] == 2  # cut short by the kill, run again after the restart
            # queue order survived: jobs that ran after the restart finished in submission order
            after = [jobs[i] for i in ids if jobs[i]["status"] == "done"]
            started_after = [j for j in after if j["finished"] > jobs[mid_id]["started"]]
            assert [j["id"] for j in started_after] == [j["id"] for j in sorted(started_after, key=lambda j: j["finished"])]

            # 3. a graceful stop (Ctrl-C) gives the running job back to the queue, attempt not counted
            stopped_id = submit(c, steps=1000, seed=5)
            wait_until(lambda: status(c, stopped_id)["status"] == "running", timeout=60)
    finally:
        srv2.stop()

    # the store: one 'done' event per finished job, none for the others
    db = sqlite3.connect(data / "jobs.db")
    done_events = dict(db.execute("SELECT job_id, COUNT(*) FROM events WHERE type='done' GROUP BY job_id").fetchall())
    statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    db.close()
    for job_id in requested + [long_id, short_id]:
        assert done_events.get(job_id, 0) == (1 if statuses[job_id] == "done" else 0), job_id
    db = sqlite3.connect(data / "jobs.db")
    row = db.execute("SELECT status, attempts FROM jobs WHERE id=?", (stopped_id,)).fetchone()
    last_event = db.execute("SELECT type, data FROM events WHERE job_id=? ORDER BY id DESC LIMIT 1",
                            (stopped_id,)).fetchone()
    db.close()
    assert row == ("queued", 0) and last_event[0] == "queued" and "stopped" in last_event[1]
    # the disk: each done job has exactly its one recorded image, no temporary or stale file
    for job_id in requested:
        folder = data / "outputs" / job_id
        files = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        if statuses[job_id] == "done":
            assert files == [f"0-a{jobs[job_id]['attempts']}.png"], (job_id, files)
        else:
            assert files == [], (job_id, files)
