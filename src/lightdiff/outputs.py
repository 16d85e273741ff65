"""Writing and reading result images: atomic PNGs that carry everything needed to reproduce them.

Each PNG has two text chunks:
- ``parameters``: AUTOMATIC1111-style infotext, so tools that read A1111 images show the settings;
- ``lightdiff``: JSON with the full request, model id and weight source, seed, memory plan and versions.
File names come from time, model id, seed and index, never from prompt text.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from lightdiff.errors import InvalidRequest

SAMPLER_NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpm++2m": "DPM++ 2M", "ddim": "DDIM",
                 "flow-euler": "Euler"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def infotext(meta: dict) -> str:
    """AUTOMATIC1111's 'parameters' format: prompt, negative prompt line, then key: value pairs."""
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt", "").strip():
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    pairs = [
        ("Steps", meta.get("steps")),
        ("Sampler", SAMPLER_NAMES.get(meta.get("scheduler", ""), meta.get("scheduler"))),
        ("CFG scale", meta.get("guidance")),
        ("Seed", meta.get("seed")),
        ("Size", f"{meta.get('width')}x{meta.get('height')}"),
        ("Model", meta.get("model")),
    ]
    if meta.get("denoising_strength") is not None:
        pairs.append(("Denoising strength", meta["denoising_strength"]))
    if meta.get("synthetic"):
        pairs.append(("Weights", "synthetic (random values)"))
    pairs.append(("Memory plan", meta.get("plan")))
    pairs.append(("Version", f"lightdiff {meta.get('versions', {}).get('lightdiff', '')}".strip()))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs if v not in (None, "")))
    return "\n".join(lines)


def output_path(out_dir: str | Path, meta: dict, index: int = 0) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = _SAFE.sub("-", str(meta.get("model", "image")))[:40]
    name = f"{stamp}-{model}-s{meta.get('seed', 0)}-{index}.png"
    path = Path(out_dir) / name
    n = 1
    while path.exists():  # two runs in the same second with the same seed: never overwrite
        path = Path(out_dir) / f"{name[:-4]}-{n}.png"
        n += 1
    return path


def save_png(image: Image.Image, path: str | Path, meta: dict) -> Path:
    """Write atomically: a hidden temporary file in the same folder, fsync, then rename.

    A reader never sees a half-written image; if the process dies mid-write only a hidden
    ``.*.tmp`` file is left, which listings ignore."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(meta))
    info.add_itxt("lightdiff", json.dumps(meta, ensure_ascii=False, sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict:
    """The lightdiff JSON record of a PNG written by save_png, with the A1111 text as 'parameters'."""
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, ValueError) as e:
        raise InvalidRequest("image", f"Cannot read {path} as an image: {e}.",
                             "Give a PNG written by lightdiff.") from None
    if "lightdiff" not in text:
        raise InvalidRequest("image", f"{path} has no lightdiff metadata (no 'lightdiff' PNG chunk).",
                             "Reproduce only works from PNGs written by lightdiff; stripping tools remove it.")
    meta = json.loads(text["lightdiff"])
    meta["parameters"] = text.get("parameters", "")
    return meta
