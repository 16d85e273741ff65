"""The parent process: run case groups in fresh subprocesses and write every outcome as a row.

Each group runs in ``python -m lightdiff.bench.case`` in its own process group. The child reports
over a pipe (hello, start item i, row of item i). The parent enforces the timeout per item (from
the last event, so loading counts towards the first item), kills the whole process group on
expiry, and writes a "timeout" row; a child that dies writes an "error" row naming the exit code
or signal and the end of its log. Items after a failed one rerun in a fresh process, so one crash
never stops the rest. Rows are appended to the JSONL file as they arrive (flushed, fsynced).

This module does not import torch: the parent stays small and never touches the GPU.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lightdiff.bench import flops as bench_flops
from lightdiff.bench import weights as wcache
from lightdiff.bench.cases import DEFAULT_PROMPT, DISK_MODES, Group
from lightdiff.bench.rows import RowWriter, failure_row, problems


@dataclass
class RunOptions:
    out: Path
    timeout_s: float = 300.0
    logs_dir: Path | None = None  # default: <out>.logs/ beside the results
    count_flops: bool = True
    disk_read_gb: float = 2.0  # size of the file read to measure the disk (0: skip)
    prepare_timeout_s: float = 1800.0
    python: str = sys.executable
    echo: Callable[[str], None] = print


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())[-1500:]


def _exit_text(rc: int | None) -> str:
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            return f"was killed by signal {signal.Signals(-rc).name}" + (
                " (on Linux often the host's out-of-memory killer)" if -rc == signal.SIGKILL else "")
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


class GroupProcess:
    """One child process running (part of) a group; yields events until it ends or times out."""

    def __init__(self, group: Group, opts: RunOptions, log_path: Path, env_extra: dict | None = None):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env.update(env_extra or {})
        env["LIGHTDIFF_BENCH_EVENTS_FD"] = str(write_fd)
        env["LIGHTDIFF_BENCH_SPAWNED_AT"] = repr(time.time())
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([opts.python, "-m", "lightdiff.bench.case", group.to_json()], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(read_fd,), daemon=True).start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    continue  # a torn line from a dying process: its item gets a failure row instead
        self.events.put(None)  # end of stream: the child closed the pipe (exited or died)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: workers the child started too
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> int | None:
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        self._log.close()
        return rc


class Runner:
    def __init__(self, opts: RunOptions, env_extra: dict | None = None):
        self.opts = opts
        self.env_extra = env_extra or {}
        self.writer = RowWriter(opts.out)
        self.logs_dir = opts.logs_dir or opts.out.with_name(opts.out.name + ".logs")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.summary = Summary()
        self._flops_proc: subprocess.Popen | None = None
        self._prepare_failed: dict[tuple, str] = {}
        self._n_logs = 0

    # --- before the cases ---------------------------------------------------------------------
    def prepare(self, groups: list[Group]) -> dict:
        """Weight caches (once per model), the disk's read speed, and the FLOP counts (in the background)."""
        extra: dict = {}
        if self.opts.count_flops:  # first, so its import overlaps cache writing rather than timed runs
            self._start_flops(groups)
        self._prime(groups)
        disk = sorted({(g.model, g.weights, g.device) for g in groups if g.weights in DISK_MODES})
        for model, mode, device in disk:
            try:
                ready = wcache.is_ready(model, mode)
            except Exception:  # unknown model: its case process writes the error rows
                continue
            if ready:
                continue
            self.opts.echo(f"preparing the {mode} weight cache for {model} (written once, then reused) ...")
            log = self._log_path(f"prepare-{model}-{mode}")
            with log.open("ab") as fh:
                try:
                    proc = subprocess.run([self.opts.python, "-m", "lightdiff.bench.weights", model, mode, device],
                                          stdout=fh, stderr=subprocess.STDOUT, timeout=self.opts.prepare_timeout_s,
                                          env={**os.environ, **self.env_extra}, start_new_session=True)
                    rc = proc.returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            if rc != 0:
                self._prepare_failed[(model, mode)] = (f"preparing the {mode} weight cache failed "
                                                       f"({'timed out' if rc == 'timeout' else _exit_text(rc)}): "
                                                       f"{_tail(log, 6)}")
            else:
                self.opts.echo(f"  {_tail(log, 1)}")
        if disk and self.opts.disk_read_gb > 0:
            folder = wcache.cache_dir(disk[0][0], disk[0][1]).parent if self._known(disk[0][0]) else None
            if folder is not None:
                extra = wcache.first_read_gbps(folder, self.opts.disk_read_gb)
                self.opts.echo(f"disk: {extra['disk_read_gbps']:.2f} GB/s ({extra['disk_read_method']})")
        return extra

    def _prime(self, groups: list[Group]) -> None:
        """Load the CUDA libraries from disk once (measure.prime_gpu) before the first measured process."""
        devices = {g.device for g in groups}
        if devices <= {"cpu"} or not _nvml_gpu_present():
            return
        device = next((d for d in devices if d.startswith("cuda")), "cuda")
        twins = tuple(sorted({"tiny-sd15" if _family(g.model) == "sd15" else "tiny-qwen-image"
                              for g in groups if _family(g.model)}))
        t0 = time.time()
        code = f"from lightdiff.bench.measure import prime_gpu; prime_gpu({device!r}, {twins!r})"
        try:
            subprocess.run([self.opts.python, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=300, env={**os.environ, **self.env_extra})
        except subprocess.TimeoutExpired:
            pass
        self.opts.echo(f"primed the GPU with {', '.join(twins)} in {time.time() - t0:.0f} s "
                       "(the first measured process would pay the machine's first-use costs otherwise)")

    @staticmethod
    def _known(model: str) -> bool:
        from lightdiff import specs

        try:
            specs.get(model)
            return True
        except Exception:
            return False

    def _flops_cases(self, groups: list[Group]) -> list[dict]:
        cases, seen = [], set()
        for g in groups:
            if not self._known(g.model):
                continue
            spec = wcache.cache_spec(g.model, g.weights) if g.weights in ("twin", "twin-disk") else None
            model = spec.id if spec else g.model
            for it in g.items:
                if it.kind != "speed":
                    continue
                c = {"model": model, "width": it.width, "height": it.height, "batch": it.batch_size,
                     "cfg": _cfg_on(g), "prompt": g.prompt}
                k = json.dumps(c, sort_keys=True)
                if k not in seen:
                    seen.add(k)
                    cases.append(c)
        return cases

    def _start_flops(self, groups: list[Group]) -> None:
        cases = [c for c in self._flops_cases(groups)
                 if bench_flops.cached_flops_per_image(c["model"], c["width"], c["height"], 1, c["batch"],
                                                       cfg=c["cfg"], prompt=c["prompt"]) is None]
        if not cases:
            return
        log = self._log_path("flops").open("ab")
        # niced: counting on the meta device is bookkeeping and must not disturb the timed cases
        self._flops_proc = subprocess.Popen([self.opts.python, "-m", "lightdiff.bench.flops", json.dumps(cases)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env_extra}, start_new_session=True,
                                            preexec_fn=lambda: os.nice(10))

    # --- the cases ---------------------------------------------------------------------------
    def run(self, groups: list[Group], refused: list | None = None) -> Summary:
        """Run the groups; ``refused`` items (the planner said no plan fits) become "oom" rows unrun."""
        t0 = time.time()
        for r in refused or []:
            self._emit(r.group, r.item, failure_row(r.group, r.item, "oom", r.reason, plan=r.plan or "none"))
        extra = self.prepare(groups)
        for g in groups:
            if extra.get("disk_read_gbps") is not None and g.weights in DISK_MODES:
                g.disk_read_gbps = extra["disk_read_gbps"]
            self.run_group(g, extra)
        if self._flops_proc is not None and self._flops_proc.poll() is None:
            self._flops_proc.kill()
        self.summary.seconds = time.time() - t0
        return self.summary

    def run_group(self, group: Group, extra: dict | None = None) -> None:
        failed = self._prepare_failed.get((group.model, group.weights))
        if failed:
            for item in group.items:
                self._emit(group, item, failure_row(group, item, "error", failed))
            return
        pending = list(group.items)
        while pending:
            sub = group.with_items(pending)
            done = self._run_process(sub, extra or {})
            pending = pending[done:]

    def _run_process(self, group: Group, extra: dict) -> int:
        """Run one process over group.items; returns how many items got a row (at least one)."""
        log = self._log_path(f"{group.model}-{group.variant}-{group.vram_budget_gb or 'card'}")
        child = GroupProcess(group, self.opts, log, self.env_extra)
        env = None
        current = 0  # index of the item in progress (rows come in order)
        finished = 0
        deadline = time.monotonic() + self.opts.timeout_s
        while True:
            try:
                event = child.events.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                child.kill()
                child.close()
                item = group.items[current]
                self._emit(group, item, failure_row(
                    group, item, "timeout",
                    f"no result within {self.opts.timeout_s:g} s; the case's process group was killed "
                    f"(log: {log.name})", env))
                return current + 1
            if event is None:
                break
            deadline = time.monotonic() + self.opts.timeout_s
            kind = event.get("event")
            if kind == "hello":
                env = event.get("env")
            elif kind == "start":
                current = int(event["item"])
            elif kind == "row":
                i = int(event["item"])
                row = event["row"]
                self._enrich(row, extra)
                self._emit(group, group.items[i], row)
                finished = i + 1
                current = finished
        rc = child.close()
        if finished >= len(group.items):
            if rc:
                self.opts.echo(f"  note: the case process {_exit_text(rc)} after its last row (log: {log.name})")
            return finished
        item = group.items[finished]
        before = "before reporting" if env is None else "during this case"
        reason = f"the case process {_exit_text(rc)} {before}; log {log.name}: {_tail(log)}"
        if env is None and finished == 0:
            # it died before it could stamp its environment: nothing item-specific, so every item fails alike
            for it in group.items:
                self._emit(group, it, failure_row(group, it, "error", reason))
            return len(group.items)
        self._emit(group, item, failure_row(group, item, "error", reason, env))
        return finished + 1

    # --- rows -------------------------------------------------------------------------------
    def _enrich(self, row: dict, extra: dict) -> None:
        """Add FLOPs per image, achieved TFLOP/s and the share of the card's peak to ok speed rows."""
        if extra.get("disk_read_method") and isinstance(row.get("startup"), dict) and row["startup"].get("load_gb"):
            row["startup"].setdefault("disk_read_method", extra["disk_read_method"])
        if row.get("kind") != "speed" or row.get("status") != "ok" or not self.opts.count_flops:
            return
        model = row["model"]
        if row.get("weights") == "twin":
            model = wcache.cache_spec(model, "twin").id
        args = (model, row["width"], row["height"], row["steps"], row["batch_size"])
        kw = {"cfg": (row.get("guidance") or 0) > 1, "prompt": row.get("prompt") or DEFAULT_PROMPT}
        value = bench_flops.cached_flops_per_image(*args, **kw)
        if value is None and self._flops_proc is not None:
            try:
                self._flops_proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                pass
            value = bench_flops.cached_flops_per_image(*args, **kw)
        if value is None:
            return
        row["flops_per_image"] = value
        per_image = row.get("sec_per_image")
        if per_image:
            row["achieved_tflops"] = round(value / per_image / 1e12, 3)
            peak = _card_peak(row.get("env") or {})
            if peak:
                row["peak_share"] = round(row["achieved_tflops"] / peak, 4)

    def _emit(self, group: Group, item, row: dict) -> None:
        bad = problems(row)
        if bad:  # still written (a row is never dropped), but flagged so the report can say so
            row.setdefault("row_problems", bad)
        self.writer.write(row)
        self.summary.rows.append(row)
        self.opts.echo(f"{group.label()} | {item.label()}: {_one_line(row)}")

    def _log_path(self, stem: str) -> Path:
        self._n_logs += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        return self.logs_dir / f"{self._n_logs:03d}-{safe}.log"


def _family(model: str) -> str | None:
    from lightdiff import specs

    try:
        return specs.get(model).family
    except Exception:
        return None


def _nvml_gpu_present() -> bool:
    from lightdiff.runtime.device import _nvml_gpus

    return bool(_nvml_gpus())


def _cfg_on(group: Group) -> bool:
    from lightdiff import specs

    guidance = group.guidance if group.guidance is not None else specs.get(group.model).defaults.guidance
    return guidance > 1


def _card_peak(env: dict) -> float | None:
    from lightdiff.specs.cards import find_card

    if not env.get("gpu"):
        return None
    try:
        return find_card(env["gpu"]).bf16_tflops
    except Exception:
        return None


def _one_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status'].upper()}: {(row.get('reason') or '')[:160]}"
    peak = (row.get("peak_vram") or {}).get("allocated_gb")
    mem = f", peak {peak:.2f} GB" if peak is not None else ""
    if row["kind"] == "speed":
        extra = f", {row['achieved_tflops']:.3g} TFLOP/s" if row.get("achieved_tflops") is not None else ""
        return f"ok {row['sec_per_image']:.3f} s/image (median of {len(row['sec_per_call']['runs'])}){mem}{extra}"
    if row["kind"] == "batch":
        fb = f", fallbacks: {'; '.join(row['fallbacks'])}" if row.get("fallbacks") else ""
        return f"ok {row['images_produced']}/{row['images_requested']} images in {row['total_s']:.1f} s{mem}{fb}"
    if row["kind"] == "boundary":
        return f"ok max batch {row['max_batch']}, max size {row['max_size']}"
    if row["kind"] == "workflow":
        return f"ok {row.get('sec_per_image')} s/image, +{row.get('extra_s')} s, +{row.get('extra_vram_gb')} GB"
    return "ok"
