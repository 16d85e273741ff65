"""Workflow templates: JSON requests shipped in workflows/templates/, or any JSON file of a user's.

A template file is ``{"description": "...", "request": {...}}`` or a bare request object. Image
fields (init_image, mask_image, control_image) may name files relative to the template's folder;
they become absolute paths, so the request stored in each image's metadata still finds them.
``--set key=value`` overrides read the value as JSON (numbers, true/false, null, lists), and as a
plain string when it is not JSON: ``--set steps=30 --set prompt="a cat"``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightdiff.errors import InvalidRequest
from lightdiff.workflows.images import IMAGE_FIELDS

FOLDER = Path(__file__).parent / "templates"


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def find(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = FOLDER / f"{name_or_path.removesuffix('.json')}.json"
    if shipped.is_file():
        return shipped
    raise InvalidRequest("template", f"There is no template or file {name_or_path!r}.",
                         f"Use a path to a JSON file or one of: {', '.join(names())} (`lightdiff run --list`).")


def read(name_or_path: str) -> tuple[dict, str]:
    """(request, description) of a template, image paths made absolute."""
    path = find(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest("template", f"{path} is not valid JSON: {e}.", "Fix the file's JSON syntax.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("template", f"{path} holds a JSON {type(data).__name__}, not an object.",
                             'Write {"request": {"workflow": ..., "prompt": ...}}.')
    request, description = (data["request"], data.get("description", "")) if "request" in data else (data, "")
    if not isinstance(request, dict):
        raise InvalidRequest("template", f"{path}: 'request' is not an object.", "Make 'request' a JSON object.")
    return absolute_images(request, path.parent.resolve()), description


def absolute_images(request: dict, base: Path) -> dict:
    """Image fields naming a file relative to ``base`` become absolute paths."""
    out = dict(request)
    for name in IMAGE_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and not value.startswith(("data:", "sha256:")) and len(value) < 4096:
            candidate = Path(value).expanduser()
            candidate = candidate if candidate.is_absolute() else base / candidate
            if candidate.is_file():
                out[name] = str(candidate.resolve())
    return out


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_sets(request: dict, sets: list[str] | None) -> dict:
    """Apply ``key=value`` overrides; image paths are taken relative to the current folder."""
    out = dict(request)
    for item in sets or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidRequest("set", f"--set {item!r} is not key=value.", "Write e.g. --set steps=30.")
        out[key] = parse_value(value)
    return absolute_images(out, Path.cwd())
