"""Benchmark rows (docs/bench-rows.md): the common fields, failure rows, checks, and the env stamp.

No torch here: the parent process writes failure rows for cases whose process died, and the
report reads the same fields.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
from pathlib import Path

from lightdiff import __version__

SCHEMA = 1
KINDS = ("speed", "batch", "boundary", "workflow", "prediction")
STATUSES = ("ok", "oom", "error", "timeout")
WEIGHT_KINDS = ("synthetic", "hub", "local", "single-file", "twin", "demo")
COMMON_KEYS = ("schema", "kind", "status", "reason", "model", "family", "variant", "workflow", "width", "height",
               "steps", "guidance", "batch_size", "plan", "fallbacks", "weights", "synthetic", "vram_budget_gb",
               "env")
# The env stamp in a row: env_stamp() without the per-GPU list and host RAM table (kept short).
ENV_KEYS = ("lightdiff", "python", "platform", "torch", "cuda", "diffusers", "transformers", "accelerate",
            "torchao", "gpu", "gpu_total_gb", "driver", "date", "host")


def trim_env(stamp: dict) -> dict:
    return {k: stamp.get(k) for k in ENV_KEYS}


def light_env() -> dict:
    """The env stamp without importing torch (for rows the parent writes when a case process died
    before it could stamp its own): versions from package metadata, the GPU from NVML."""
    from lightdiff.runtime.device import _nvml_gpus, _version

    gpus = _nvml_gpus()
    return {
        "lightdiff": __version__, "python": platform.python_version(), "platform": platform.platform(terse=True),
        "torch": _version("torch"), "cuda": None, "diffusers": _version("diffusers"),
        "transformers": _version("transformers"), "accelerate": _version("accelerate"),
        "torchao": _version("torchao"),
        "gpu": gpus[0]["name"] if gpus else None, "gpu_total_gb": gpus[0]["total_gb"] if gpus else None,
        "driver": gpus[0]["driver"] if gpus else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "host": socket.gethostname(),
    }


def weights_kind(mode: str) -> str:
    """The row's "weights" value for a --weights mode."""
    if mode in ("synthetic", "synthetic-disk"):
        return "synthetic"
    if mode in ("twin", "twin-disk"):
        return "twin"
    if mode == "auto" or mode == "hub" or mode.startswith("hub:"):
        return "hub"
    if mode.lower().endswith((".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")):
        return "single-file"
    if "/" in mode and not mode.startswith(("/", ".", "~")) and not Path(mode).exists():
        return "hub"
    return "local"


def base_row(group, item, env: dict | None, *, family: str | None = None, guidance: float | None = None,
             plan: str | None = None) -> dict:
    """The common fields of every row for one item of a group."""
    weights = weights_kind(group.weights)
    return {
        "schema": SCHEMA,
        "kind": item.kind if item.kind != "batch" else "batch",
        "status": "ok",
        "reason": None,
        "model": group.model,
        "family": family,
        "variant": group.variant,
        "workflow": item.workflow,
        "width": item.width,
        "height": item.height,
        "steps": group.steps,
        "guidance": guidance if guidance is not None else group.guidance,
        "batch_size": item.batch_size,
        "plan": plan or group.plan or "resident",
        "fallbacks": [],
        "weights": weights,
        "synthetic": weights in ("synthetic", "twin"),
        "vram_budget_gb": group.vram_budget_gb,
        "prompt": group.prompt,
        "seed": group.seed,
        "env": env if env is not None else light_env(),
    }


def failure_row(group, item, status: str, reason: str, env: dict | None = None, **fields) -> dict:
    row = base_row(group, item, env, family=_family(group.model))
    row.update(status=status, reason=reason, **fields)
    if item.kind == "batch":
        row.setdefault("images_requested", item.images)
        row.setdefault("images_produced", 0)
    return row


def _family(model: str) -> str | None:
    from lightdiff import specs

    try:
        return specs.get(model).family
    except Exception:
        return None


def problems(row: dict) -> list[str]:
    """What is wrong with a row against docs/bench-rows.md (empty when it is fine)."""
    out = []
    for key in COMMON_KEYS:
        if key not in row and not (row.get("kind") == "prediction" and key in ("width", "height", "steps",
                                                                               "guidance", "batch_size")):
            out.append(f"missing {key!r}")
    if row.get("schema") != SCHEMA:
        out.append(f"schema is {row.get('schema')!r}, not {SCHEMA}")
    if row.get("kind") not in KINDS:
        out.append(f"kind {row.get('kind')!r} is not one of {KINDS}")
    if row.get("status") not in STATUSES:
        out.append(f"status {row.get('status')!r} is not one of {STATUSES}")
    if row.get("status") != "ok" and not row.get("reason"):
        out.append("a row that is not ok needs a reason")
    if row.get("weights") is not None and row.get("weights") not in WEIGHT_KINDS:
        out.append(f"weights {row.get('weights')!r} is not one of {WEIGHT_KINDS}")
    if not isinstance(row.get("fallbacks", []), list):
        out.append("fallbacks is not a list")
    try:
        json.dumps(row, allow_nan=False)
    except ValueError as e:
        out.append(f"not strict JSON: {e}")
    return out


def clean(value):
    """NaN and infinities become null: rows are strict JSON, and a bad number must not lose a row."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


class RowWriter:
    """Append rows to a JSONL file as they arrive: flushed and synced, so a crash loses none."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, row: dict) -> None:
        line = json.dumps(clean(row), allow_nan=False, default=str)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.count += 1
