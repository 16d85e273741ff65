"""Read benchmark JSONL files (docs/bench-rows.md) into validated rows.

Pydantic checks the common fields every row carries; kind-specific fields stay as plain data
because most are optional (null when not measured). A bad line stops the report with the file
and line that need fixing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lightdiff.errors import LightdiffError

KINDS = ("speed", "batch", "boundary", "workflow", "prediction")


class RowHeader(BaseModel):
    """The common fields of docs/bench-rows.md; extra fields are kept, not checked here."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["speed", "batch", "boundary", "workflow", "prediction"]
    status: Literal["ok", "oom", "error", "timeout"]
    reason: str | None = None
    model: str
    family: str | None = None
    variant: str | None = None
    workflow: str = "txt2img"
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 1
    plan: str | None = None
    fallbacks: list[str] = []
    weights: str | None = None
    synthetic: bool = False
    vram_budget_gb: float | None = None
    env: dict[str, Any] = {}


def _check_row(data: dict) -> dict:
    if "schema" not in data:
        raise ValueError("field 'schema' is missing (expected 1)")
    if data["schema"] != 1:
        raise ValueError(f"field 'schema' is {data['schema']!r}; this lightdiff reads schema 1")
    header = RowHeader.model_validate({k: v for k, v in data.items() if k != "schema"})
    row = dict(data)
    # Defaults the schema allows to be missing, filled in so readers need not repeat them.
    for key in ("workflow", "batch_size", "fallbacks", "synthetic", "env"):
        row[key] = getattr(header, key) if data.get(key) is None else data[key]
    return row


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "row"
    return f"field {where!r}: {first['msg']} (got {first.get('input')!r})"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of one file, each with "_source" = "file:line" so tables and errors can point back."""
    path = Path(path)
    if not path.is_file():
        raise LightdiffError(f"Benchmark results file {path} does not exist.",
                             "Pass the JSONL files written by `lightdiff bench`.", code="invalid_request")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise LightdiffError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}).",
                                     "Each line must be one JSON object as described in docs/bench-rows.md; "
                                     "fix or delete that line.", code="invalid_request") from None
            if not isinstance(data, dict):
                raise LightdiffError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}.",
                                     "Each line must be one JSON object as described in docs/bench-rows.md.",
                                     code="invalid_request")
            try:
                row = _check_row(data)
            except ValidationError as e:
                raise LightdiffError(f"{path}:{lineno}: {_describe(e)}.",
                                     "See docs/bench-rows.md for the row schema; fix or delete that line.",
                                     code="invalid_request") from None
            except ValueError as e:
                raise LightdiffError(f"{path}:{lineno}: {e}.",
                                     "See docs/bench-rows.md for the row schema; fix or delete that line.",
                                     code="invalid_request") from None
            row["_source"] = f"{path.name}:{lineno}"
            rows.append(row)
    if not rows:
        raise LightdiffError(f"Benchmark results file {path} has no rows.",
                             "Run `lightdiff bench ... -o results.jsonl` first, or pass a file that has rows.",
                             code="invalid_request")
    return rows


def size_of(row: dict) -> tuple[int, int] | None:
    if row.get("width") and row.get("height"):
        return int(row["width"]), int(row["height"])
    return None


def vram_seen(block: dict | None) -> tuple[float | None, str]:
    """The VRAM a user would see (nvidia-smi), else what the allocator reserved, else allocated.

    Returns (GB, which measure) so every comparison can say what it compared.
    """
    if not block:
        return None, ""
    for key, label in (("nvml_used_gb", "nvml used"), ("reserved_gb", "reserved"), ("allocated_gb", "allocated")):
        if block.get(key) is not None:
            return float(block[key]), label
    return None, ""


@dataclass
class Results:
    """All rows of all files, with the queries the report sections share."""

    rows: list[dict]
    files: list[str] = field(default_factory=list)

    @classmethod
    def from_files(cls, paths) -> "Results":
        paths = list(paths)
        if not paths:
            raise LightdiffError("No benchmark results files given.",
                                 "Usage: lightdiff report results.jsonl [more.jsonl ...] -o report/",
                                 code="invalid_request")
        rows = []
        for p in paths:
            rows.extend(read_jsonl(p))
        return cls(rows, [str(p) for p in paths])

    def of(self, kind: str, *, ok: bool | None = None, **match) -> list[dict]:
        """Rows of one kind whose fields equal ``match``; ok=True keeps status ok only."""
        out = []
        for r in self.rows:
            if r["kind"] != kind or (ok is not None and (r["status"] == "ok") != ok):
                continue
            if all(r.get(k) == v for k, v in match.items()):
                out.append(r)
        return out

    def measured(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] != "prediction"]

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r["model"], None)
        return list(seen)

    def envs(self) -> list[tuple[dict, int]]:
        """Distinct environment stamps of measured rows and how many rows carry each."""
        stamps: dict[str, list] = {}
        for r in self.measured():
            key = json.dumps(r.get("env") or {}, sort_keys=True)
            stamps.setdefault(key, [r.get("env") or {}, 0])[1] += 1
        return [(env, n) for env, n in stamps.values()]

    def any_synthetic(self) -> bool:
        return any(r.get("synthetic") for r in self.measured())
