"""Job files: JSONL (one request object per line) or CSV (one request per row, a column per field).

A line is a workflow request (txt2img by default; ``workflow: "batch"`` lines become txt2img images)
with these extras, all optional:
- ``template``: a shipped template name or JSON file; the line's own fields override it;
- ``prompts`` (a list) instead of ``prompt``; ``seeds`` (a list) or ``count`` (seeds seed, seed+1, ...);
- ``size``: sets width and height.
Each line expands to one request per image (prompt x seed, batch_size 1), validated before anything
runs. A line without a seed gets one derived from the request itself, so a rerun of the same file
asks for the same images. The image key is a hash of the normalised request (every default filled
in by the workflow's pydantic model) including its seed: the same image asked twice is made once.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lightdiff.errors import InvalidRequest, LightdiffError

TEXT_FIELDS = ("prompt", "negative_prompt", "model", "weights", "template", "scheduler", "workflow")


@dataclass(frozen=True)
class ImageJob:
    key: str
    line: int  # 1-based line (JSONL) or row (CSV) of the job file
    request: dict  # a complete single-image request for Engine.run


def read_lines(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, request dict) of every non-blank line of a .jsonl or .csv file."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest("jobs", f"There is no job file {str(path)!r}.", "Give a .jsonl or .csv file of requests.")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    out = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidRequest("jobs", f"{path}:{n} is not valid JSON: {e}.",
                                 'Write one JSON object per line, e.g. {"prompt": "a cat", "count": 4}.') from None
        if not isinstance(data, dict):
            raise InvalidRequest("jobs", f"{path}:{n} holds a JSON {type(data).__name__}, not an object.",
                                 'Write one JSON object per line, e.g. {"prompt": "a cat"}.')
        out.append((n, data))
    return out


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    from lightdiff.workflows._templates import parse_value

    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):  # row 1 is the header
            # Text columns stay text ("123" is a prompt); others read as JSON: numbers, lists of seeds.
            data = {k.strip(): (v if k.strip() in TEXT_FIELDS else parse_value(v))
                    for k, v in row.items() if k and v not in (None, "")}
            if data:
                out.append((n, data))
    return out


def expand(line: dict, lineno: int = 0) -> list[ImageJob]:
    """The single-image requests a job line asks for, validated, each with its stable key."""
    from lightdiff.workflows import _templates

    req = dict(line)
    where = f"line {lineno}: " if lineno else ""
    try:
        if req.get("template"):
            base, _ = _templates.read(req.pop("template"))
            req = {**base, **req}
        req.pop("template", None)
        if "size" in req:
            req["width"] = req["height"] = req.pop("size")
        if req.get("workflow", "txt2img") == "batch":
            req["workflow"] = "txt2img"
        req.pop("batch_size", None)  # each image is its own request; parallelism comes from workers
        prompts = req.pop("prompts", None)
        seeds, count = req.pop("seeds", None), req.pop("count", None)
        if prompts is not None and req.get("prompt"):
            raise InvalidRequest("prompts", "Both prompt and prompts are given.", "Give one prompt, or a list in prompts.")
        if seeds is not None and count is not None:
            raise InvalidRequest("count", f"count={count} and seeds={seeds} are both given.",
                                 "Give count (seeds count up from seed) or the list of seeds, not both.")
        if prompts is None:
            prompts = [req.pop("prompt", None)]
        if not isinstance(prompts, list) or not prompts:
            raise InvalidRequest("prompts", f"prompts={prompts!r} is not a non-empty list.", 'Write "prompts": ["a", "b"].')
        if seeds is not None and (not isinstance(seeds, list) or not seeds):
            raise InvalidRequest("seeds", f"seeds={seeds!r} is not a non-empty list.", 'Write "seeds": [1, 2, 3].')
        if count is not None and (not isinstance(count, int) or count < 1):
            raise InvalidRequest("count", f"count={count!r} is not a positive whole number.", 'Write "count": 4.')
        jobs = []
        for prompt in prompts:
            one = normalise({**req, "prompt": prompt, "seed": 0})
            if seeds is None:
                first = req.get("seed")
                if first is None:  # derived from the request, so a rerun asks for the same images
                    first = int(hashlib.sha256(_canonical({**one, "seed": None}).encode()).hexdigest()[:8], 16)
                seeds_here = [(first + k) % 2**32 for k in range(count or 1)]
            else:
                seeds_here = seeds
            for seed in seeds_here:
                request = normalise({**one, "seed": seed})
                jobs.append(ImageJob(image_key(request), lineno, request))
        return jobs
    except LightdiffError as e:
        e.message = where + e.message  # which line of the file, for a file of thousands
        raise


def normalise(request: dict) -> dict:
    """The request with every default made explicit (the workflow's pydantic model), validated."""
    from lightdiff import specs, workflows
    from lightdiff.workflows.base import parse, resolve

    wf = workflows.get(request.get("workflow") or "txt2img")
    req = parse(wf.Request, request)
    spec = specs.get(req.model)
    resolve(req, spec)  # sizes, scheduler, guidance: fail before any worker starts
    if hasattr(wf, "validate"):
        wf.validate(req, spec)
    return req.model_dump(mode="json")


def image_key(request: dict) -> str:
    return hashlib.sha256(_canonical(request).encode()).hexdigest()[:20]


def _canonical(request: dict) -> str:
    return json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def expand_file(path: str | Path) -> list[ImageJob]:
    jobs = []
    for n, line in read_lines(path):
        jobs.extend(expand(line, n))
    if not jobs:
        raise InvalidRequest("jobs", f"{path} has no requests.", 'Write one JSON object per line, e.g. {"prompt": "a cat"}.')
    return jobs
