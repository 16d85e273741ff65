"""Measuring inside a case process: clocks that wait for the GPU, VRAM blocks, host RAM peaks, OOMs."""

from __future__ import annotations

import gc
import statistics
import threading
import time

from lightdiff.runtime.device import sync  # noqa: F401  (the benchmark times with it)

GiB = 2**30


def timed(fn, device: str):
    """(result, seconds) of fn(), with the GPU synchronised before both clock reads."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def spread(runs: list[float]) -> dict:
    return {"median": round(statistics.median(runs), 4), "min": round(min(runs), 4), "max": round(max(runs), 4),
            "runs": [round(r, 4) for r in runs]}


def vram_now(device: str) -> dict | None:
    """{"allocated_gb", "reserved_gb", "nvml_used_gb"} now (None on the CPU)."""
    from lightdiff.runtime.device import memory_snapshot

    snap = memory_snapshot(device)
    if not snap:
        return None
    return {"allocated_gb": snap["allocated_gb"], "reserved_gb": snap["reserved_gb"],
            "nvml_used_gb": snap["nvml_used_gb"]}


def reset_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def vram_peak(device: str, nvml_peak_gb: float | None = None) -> dict | None:
    """Peak since reset_peak: torch's allocated and reserved peaks, and the highest NVML reading sampled."""
    from lightdiff.runtime.device import memory_snapshot

    snap = memory_snapshot(device)
    if not snap:
        return None
    return {"allocated_gb": snap["peak_allocated_gb"], "reserved_gb": snap["peak_reserved_gb"],
            "nvml_used_gb": nvml_peak_gb if nvml_peak_gb is not None else snap["nvml_used_gb"]}


def free_memory(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, or lightdiff's own OutOfMemory/DoesNotFit."""
    from lightdiff.errors import DoesNotFit, OutOfMemory

    if isinstance(exc, (OutOfMemory, DoesNotFit)):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc)
    return "out of memory" in text.lower() and ("CUDA" in text or "HIP" in text or "MPS" in text)


def describe(exc: BaseException, limit: int = 600) -> str:
    """One line for a row's reason: the error type and the first part of its message (and hint)."""
    text = " ".join(str(exc).split())
    hint = getattr(exc, "hint", "")
    if hint and hint not in text:
        text = f"{text} {hint}"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Sampler:
    """Samples host RSS (psutil) and NVML used memory in a thread; keeps the maxima since reset().

    torch's peak counters only see its own allocator; NVML shows what nvidia-smi shows (CUDA context,
    cuBLAS workspaces, other libraries), so both are sampled, every 20 ms (short against a denoising
    step). The thread can be paused: a launch-bound loop (SD1.5 at batch 1) loses time to any other
    Python thread that takes the GIL, so timed warm runs go unsampled (see case.py)."""

    def __init__(self, device: str, interval_s: float = 0.02):
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self._nvml = _nvml_handle(device)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.reset()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-sampler")
        self._thread.start()

    def reset(self, host: bool = True) -> None:
        """Start new maxima (host=False keeps the host RAM peak, e.g. to include the cold load)."""
        with self._lock:
            if host:
                self.rss_peak = self._proc.memory_info().rss
            self.nvml_peak = self._nvml_used()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def _nvml_used(self) -> int | None:
        if self._nvml is None:
            return None
        try:
            import pynvml

            return pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used
        except Exception:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._running.wait()
            rss = self._proc.memory_info().rss
            used = self._nvml_used()
            with self._lock:
                self.rss_peak = max(self.rss_peak, rss)
                if used is not None:
                    self.nvml_peak = max(self.nvml_peak or 0, used)

    def host_peak_gb(self) -> float:
        with self._lock:
            return round(self.rss_peak / GiB, 3)

    def nvml_peak_gb(self) -> float | None:
        with self._lock:
            return round(self.nvml_peak / GiB, 3) if self.nvml_peak is not None else None

    def stop(self) -> None:
        self._stop.set()
        self._running.set()


def prime_gpu(device: str = "cuda", twins: tuple[str, ...] = ("tiny-sd15",)) -> None:
    """Once per machine, before any measured process: run the families' tiny twins through their real
    pipelines on the device, in the compute dtype.

    The first process on a fresh machine was seen to take 6.5 s for its first SD1.5 call where later
    processes took 1.6-1.8 s (H100, 2026-11-26): libraries and kernel caches read from disk, Python
    modules compiled on first import. Paying that here keeps it out of whichever variant runs first."""
    import torch

    from lightdiff import specs
    from lightdiff.runtime import loader
    from lightdiff.runtime.device import default_dtype
    from lightdiff.workflows import txt2img

    for twin in twins:
        spec = specs.get(twin)
        loaded = loader.load(spec, "twin", device=device, dtype=default_dtype(spec.rules.compute_dtype, device))
        txt2img.run(loaded, {"model": twin, "prompt": "a red circle", "steps": 2, "seed": 0, "batch_size": 2})
        del loaded
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _nvml_handle(device: str):
    if not str(device).startswith("cuda"):
        return None
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no NVML: torch's own counters still give the peaks
        return None
