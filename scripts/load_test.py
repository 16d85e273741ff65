"""Load test: concurrent clients submit tiny-twin jobs to `lightdiff serve` and poll them.

Reports whether every job completed (none lost, none completed twice) and the latency of status
requests (GET /api/jobs/{id}) while the worker is busy. Not a unit test: run it by hand.

    .venv/bin/python scripts/load_test.py                    # starts a server in a temp dir
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:7860 --token T

"Completed twice" is checked on each job's own event stream (exactly one 'done' event) and, when
this script started the server, on disk (exactly one PNG per image in outputs/<job id>/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

FINISHED = ("done", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def one_client(client: httpx.AsyncClient, n: int, jobs: int, request: dict, poll_s: float,
                     latencies: list[float], busy: dict, submitted: dict) -> None:
    ids = []
    for i in range(jobs):
        key = f"load-{busy['run']}-{n}-{i}"  # a resubmission after a network error cannot make a second job
        for attempt in range(5):
            try:
                r = await client.post("/api/jobs", json={**request, "seed": n * 1000 + i},
                                      headers={"Idempotency-Key": key})
                break
            except httpx.TransportError:
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            raise RuntimeError(f"client {n}: could not submit job {i}")
        r.raise_for_status()
        ids.append(r.json()["id"])
        submitted[r.json()["id"]] = key
    pending = set(ids)
    while pending:
        for job_id in list(pending):
            t0 = time.perf_counter()
            r = await client.get(f"/api/jobs/{job_id}")
            dt = time.perf_counter() - t0
            if busy["worker_busy"]:
                latencies.append(dt)
            r.raise_for_status()
            if r.json()["status"] in FINISHED:
                pending.discard(job_id)
        await asyncio.sleep(poll_s)


async def watch_queue(client: httpx.AsyncClient, busy: dict, stop: asyncio.Event) -> None:
    """The worker is busy while jobs are queued or running."""
    while not stop.is_set():
        counts = (await client.get("/api/jobs", params={"limit": 1})).json()["counts"]
        busy["worker_busy"] = counts["queued"] + counts["loading"] + counts["running"] > 0
        await asyncio.sleep(0.1)


async def done_events(client: httpx.AsyncClient, job_id: str) -> int:
    n = 0
    async with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        async for line in r.aiter_lines():
            if line == "event: done":
                n += 1
    return n


async def run(url: str, token: str | None, clients: int, total: int, request: dict, poll_s: float,
              data_dir: Path | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0, limits=limits) as client:
        latencies: list[float] = []
        submitted: dict[str, str] = {}
        busy = {"worker_busy": True, "run": int(time.time())}
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_queue(client, busy, stop))
        per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(client, i, k, request, poll_s, latencies, busy, submitted)
                               for i, k in enumerate(per_client)))
        wall = time.perf_counter() - t0
        stop.set()
        await watcher
        listed = {}
        before = None
        while True:  # every job the server knows of from this run, to find any it made twice
            page = (await client.get("/api/jobs", params={"limit": 500, **({"before": before} if before else {})})).json()
            listed.update({j["id"]: j for j in page["jobs"]})
            if len(page["jobs"]) < 500:
                break
            before = page["jobs"][-1]["seq"]
        jobs = {i: listed.get(i) or (await client.get(f"/api/jobs/{i}")).json() for i in submitted}
        statuses = {s: sum(1 for j in jobs.values() if j["status"] == s) for s in FINISHED}
        events = await asyncio.gather(*(done_events(client, i) for i in submitted))
        twice = [i for i, n in zip(submitted, events) if n > 1]
        missing_done = [i for i, n in zip(submitted, events) if n == 0 and jobs[i]["status"] == "done"]
        disk = None
        if data_dir is not None:
            disk = {"jobs_with_wrong_file_count": [i for i, j in jobs.items() if j["status"] == "done" and
                                                   len(list((data_dir / "outputs" / i).glob("*.png"))) != len(j["images"])]}
        return {
            "clients": clients, "jobs_requested": total, "jobs_submitted": len(submitted),
            "statuses": statuses, "lost": total - sum(statuses.values()),
            "completed_twice": twice, "done_without_event": missing_done, "disk": disk,
            "wall_s": round(wall, 2), "jobs_per_s": round(total / wall, 2),
            "status_requests_while_busy": len(latencies),
            "status_latency_ms": {"p50": round(percentile(latencies, 50) * 1000, 1),
                                  "p95": round(percentile(latencies, 95) * 1000, 1),
                                  "p99": round(percentile(latencies, 99) * 1000, 1),
                                  "max": round(max(latencies, default=float("nan")) * 1000, 1),
                                  "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None},
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server; default: start one in a temporary data dir")
    p.add_argument("--token")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--model", default="tiny-sd15")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between a client's status polls")
    args = p.parse_args(argv)
    request = {"model": args.model, "prompt": "load test", "steps": args.steps, "width": args.size, "height": args.size}
    server = None
    data_dir = None
    url = args.url
    if url is None:
        from lightdiff.server.testing import ServerProcess

        data_dir = Path(tempfile.mkdtemp(prefix="lightdiff-load-")) / "data"
        server = ServerProcess(data_dir, args=["--token", args.token] if args.token else None).start()
        url = server.url
        print(f"started a server at {url} (data {data_dir})", file=sys.stderr)
    try:
        report = asyncio.run(run(url, args.token, args.clients, args.jobs, request, args.poll, data_dir))
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(report, indent=2))
    ok = (report["lost"] == 0 and not report["completed_twice"] and not report["done_without_event"]
          and report["statuses"]["done"] == args.jobs
          and not (report["disk"] or {}).get("jobs_with_wrong_file_count"))
    print("OK: every job completed exactly once" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
