"""Devices and telemetry: which device to use, the environment stamp, memory readings.

The stamp (`env_stamp`) is what `lightdiff env` prints and what every benchmark row and report
embeds, so a figure always travels with its card, driver and library versions.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
from importlib import metadata

from lightdiff import __version__, settings
from lightdiff.errors import InvalidRequest

GiB = 2**30


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def worker_env(device: str) -> tuple[str, dict]:
    """The device name and environment for a worker process of ``device``: cuda:N runs as the only
    visible GPU of its process (CUDA_VISIBLE_DEVICES), so nothing in it (compiled CUDA graphs, libraries
    that assume device 0) can land on another worker's GPU; inside, the device is plain "cuda"."""
    env = dict(os.environ)
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible:
            ids = [v.strip() for v in visible.split(",")]
            index = ids[int(index)] if int(index) < len(ids) else index
        env["CUDA_VISIBLE_DEVICES"] = index
        return "cuda", env
    return device, env


def sync(device: str) -> None:
    """Wait for queued GPU work, so the clock reads finished work (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def is_oom(error: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.OutOfMemoryError, or a RuntimeError saying so)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def pick_device(name: str | None = None) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Validates explicit names."""
    import torch

    name = (name or settings.get("device") or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidRequest("device", f"Device {name!r} was asked for, but CUDA is not available here.",
                                 "Use --device cpu, or install a CUDA build of torch on a machine with a GPU.")
        return name
    if name in ("cpu", "mps"):
        return name
    raise InvalidRequest("device", f"Unknown device {name!r}.", "Use auto, cpu, cuda or cuda:N.")


def _nvml_gpus() -> list[dict]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: not an error, just no NVML readings
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "driver": driver.decode() if isinstance(driver, bytes) else driver,
                        "total_gb": round(mem.total / GiB, 2), "free_gb": round(mem.free / GiB, 2),
                        "used_gb": round(mem.used / GiB, 2)})
        return out
    finally:
        pynvml.nvmlShutdown()


def nvml_used_gb(index: int = 0) -> float | None:
    gpus = _nvml_gpus()
    return gpus[index]["used_gb"] if len(gpus) > index else None


def gpus() -> list[dict]:
    """Visible GPUs with name, total and free memory; NVML adds the driver where it is present."""
    import torch

    if not torch.cuda.is_available():
        return []
    nv = {g["index"]: g for g in _nvml_gpus()}
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name, "total_gb": round(total / GiB, 2),
                    "free_gb": round(free / GiB, 2), "capability": f"{props.major}.{props.minor}",
                    "driver": nv.get(i, {}).get("driver")})
    return out


def host_ram() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"total_gb": round(vm.total / GiB, 2), "available_gb": round(vm.available / GiB, 2)}


def env_stamp() -> dict:
    """Versions, GPU, driver and memory: embedded in every benchmark row and report."""
    import torch

    g = gpus()
    return {
        "lightdiff": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "torchao": _version("torchao"),
        "gpu": g[0]["name"] if g else None,
        "gpu_total_gb": g[0]["total_gb"] if g else None,
        "driver": g[0]["driver"] if g else None,
        "gpus": g,
        "host_ram": host_ram(),
        "host": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def cap_vram(budget_gb: float | None, device: str = "cuda") -> float | None:
    """Make a large card behave like a smaller one: cap this process's CUDA allocator at budget_gb.

    Returns the fraction applied, or None when there is nothing to cap (CPU, or no budget)."""
    import torch

    if budget_gb is None or not str(device).startswith("cuda"):
        return None
    if budget_gb <= 0:
        raise InvalidRequest("vram_budget", f"VRAM budget {budget_gb} GB is not positive.",
                             "Give a budget in GB such as 24, or leave it out to use the whole card.")
    idx = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(idx).total_memory / GiB
    fraction = min(1.0, budget_gb / total)
    torch.cuda.set_per_process_memory_fraction(fraction, idx)
    return fraction


def memory_snapshot(device: str) -> dict:
    """Allocated/reserved now and at peak (torch), plus what nvidia-smi would show (NVML)."""
    import torch

    if not str(device).startswith("cuda"):
        return {}
    idx = torch.device(device).index or 0
    return {
        "allocated_gb": round(torch.cuda.memory_allocated(idx) / GiB, 3),
        "reserved_gb": round(torch.cuda.memory_reserved(idx) / GiB, 3),
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(idx) / GiB, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(idx) / GiB, 3),
        "nvml_used_gb": nvml_used_gb(idx),
    }


def default_dtype(family_dtype: str, device: str):
    """fp16/bf16 on a GPU (the family's own), fp32 on the CPU where half precision is slow."""
    import torch

    if str(device).startswith("cuda"):
        return getattr(torch, family_dtype)
    return torch.float32
