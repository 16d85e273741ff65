"""Generate an evaluation set: every prompt x language x seed x model, resumable, with contact sheets.

Layout of an eval folder (``evalrun/``)::

    manifest.json                         what was asked: suite, models, seeds, languages, settings
    images/<model>/<prompt_id>-s<seed>.png  one PNG per image (``-zh`` before ``-s`` for Chinese prompts)
    records.jsonl                         one line per image: model, prompt, scenario, lang, seed, path, statistics
    sheets/<prompt_id>.png                rows = seeds, columns = models, for looking at side by side

Images are made through ``workflows.engine.Engine`` grouped by model, so one model is loaded at a
time. A rerun skips every image whose file exists and whose embedded metadata matches what is
asked (model, prompt, seed, weights, the identical settings); anything else is made again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightdiff.errors import InvalidRequest
from lightdiff.evals.suites import LANGUAGES, Prompt, Suite

# Settings that --identical may fix for every model; anything else would change what is compared.
IDENTICAL_KEYS = ("steps", "guidance", "width", "height", "scheduler", "negative_prompt")
MANIFEST, RECORDS = "manifest.json", "records.jsonl"


def parse_identical(text: str | None) -> dict[str, Any]:
    """"steps=20,guidance=7" -> {"steps": 20, "guidance": 7.0}; names and values checked."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value.strip():
            raise InvalidRequest("identical", f"{part!r} is not key=value.", "Write e.g. --identical steps=20,guidance=7.")
        if key not in IDENTICAL_KEYS:
            raise InvalidRequest("identical", f"unknown setting {key!r}.", f"Use some of: {', '.join(IDENTICAL_KEYS)}.")
        value = value.strip()
        try:
            out[key] = int(value) if key in ("steps", "width", "height") else float(value) if key == "guidance" else value
        except ValueError:
            raise InvalidRequest("identical", f"{key}={value!r} is not a number.",
                                 f"Give {key} as a {'whole number' if key != 'guidance' else 'number'}.") from None
    return out


def parse_languages(lang: str) -> tuple[str, ...]:
    if lang == "both":
        return LANGUAGES
    if lang not in LANGUAGES:
        raise InvalidRequest("lang", f"unknown language {lang!r}.", "Use en, zh or both.")
    return (lang,)


@dataclass(frozen=True)
class Item:
    """One image to make."""

    model: str
    prompt: Prompt
    lang: str
    seed: int

    @property
    def key(self) -> str:
        """The image's file stem inside images/<model>/: also its id in the ratings."""
        return f"{self.prompt.id}{'' if self.lang == 'en' else '-' + self.lang}-s{self.seed}"

    def relpath(self) -> str:
        return f"images/{self.model}/{self.key}.png"


@dataclass
class EvalConfig:
    models: list[str]
    suite: Suite
    seeds: list[int]
    languages: tuple[str, ...] = ("en",)
    identical: dict[str, Any] = field(default_factory=dict)
    weights: str = "auto"
    limit: int | None = None  # first N prompts only

    def prompts(self) -> list[Prompt]:
        return list(self.suite.prompts[: self.limit] if self.limit else self.suite.prompts)

    def items(self) -> list[Item]:
        """Grouped by model (one load each), then prompt, language, seed."""
        return [Item(m, p, lang, s) for m in self.models for p in self.prompts() for lang in self.languages
                for s in self.seeds]

    def request(self, item: Item) -> dict:
        return {"workflow": "txt2img", "model": item.model, "weights": self.weights,
                "prompt": item.prompt.text(item.lang), "seed": item.seed, "batch_size": 1, **self.identical}

    def manifest(self) -> dict:
        return {"suite": self.suite.name, "suite_version": self.suite.version, "models": self.models,
                "seeds": self.seeds, "languages": list(self.languages), "identical": self.identical,
                "weights": self.weights, "limit": self.limit,
                "prompts": [p.model_dump() for p in self.prompts()]}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise InvalidRequest("run_dir", f"{run_dir} has no {MANIFEST}: it is not an eval folder.",
                             "Make one with `lightdiff eval --models ... -o FOLDER`.")
    return json.loads(path.read_text(encoding="utf-8"))


def load_records(run_dir: str | Path) -> list[dict]:
    """Records of records.jsonl, one per image path (a later line replaces an earlier one)."""
    path = Path(run_dir) / RECORDS
    by_path: dict[str, dict] = {}
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a crash mid-append: the image is re-checked on the next run.
                continue
            by_path[rec["path"]] = rec
    return list(by_path.values())


def _matches(meta: dict, request: dict) -> bool:
    asked = {k: request[k] for k in ("model", "prompt", "seed", "weights")}
    given = {k: meta.get("request", {}).get(k) for k in asked}
    if given != asked:
        return False
    for key in IDENTICAL_KEYS:
        if key in request and meta.get(key) != request[key]:
            return False
    return True


def _existing(path: Path, request: dict) -> bool:
    from lightdiff.outputs import read_metadata

    if not path.is_file():
        return False
    try:
        return _matches(read_metadata(path), request)
    except InvalidRequest:
        return False  # unreadable or foreign PNG: make it again


def record_for(item: Item, path: str, meta: dict, stats: dict) -> dict:
    return {"model": item.model, "prompt": item.prompt.id, "scenario": item.prompt.scenario, "lang": item.lang,
            "seed": item.seed, "key": item.key, "path": path, "synthetic": bool(meta.get("synthetic")),
            "steps": meta.get("steps"), "guidance": meta.get("guidance"), "width": meta.get("width"),
            "height": meta.get("height"), **stats}


@dataclass
class RunSummary:
    generated: int
    skipped: int
    records: list[dict]
    sheets: list[Path]


def run_eval(config: EvalConfig, out_dir: str | Path, *, engine=None,
             on_image: Callable[[dict], None] | None = None,
             progress: Callable[[str], None] | None = None, stats_size: int = 512) -> RunSummary:
    """Make every missing image, append its record, then draw the contact sheets.

    ``on_image(record)`` is called after each image is saved and recorded (a progress hook; an
    exception from it stops the run, which a rerun resumes).
    """
    from PIL import Image

    from lightdiff import outputs
    from lightdiff.evals import imagestats

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / MANIFEST, json.dumps(config.manifest(), indent=2, ensure_ascii=False))
    items = config.items()
    if engine is None:
        from lightdiff.workflows.engine import Engine

        engine = Engine()
    for model in config.models:  # every model's request is valid before anything loads
        first = next(i for i in items if i.model == model)
        engine.parse(config.request(first))

    recorded = {r["path"]: r for r in load_records(out)}
    generated = skipped = 0
    with open(out / RECORDS, "a", encoding="utf-8") as log:
        for n, item in enumerate(items, 1):
            rel = item.relpath()
            path = out / rel
            request = config.request(item)
            if _existing(path, request):
                skipped += 1
                if rel in recorded:
                    continue
                with Image.open(path) as im:  # image made, record lost (crash between the two): recompute
                    image, meta = im.convert("RGB"), outputs.read_metadata(path)
            else:
                if progress:
                    progress(f"[{n}/{len(items)}] {item.model} {item.key}")
                result = engine.run(request)
                image, meta = result.images[0], result.metadata[0]
                outputs.save_png(image, path, meta)
                generated += 1
            rec = record_for(item, rel, meta, imagestats.compute_all(image, size=stats_size))
            log.write(json.dumps(rec, ensure_ascii=False, allow_nan=True) + "\n")
            log.flush()
            recorded[rel] = rec
            if on_image:
                on_image(rec)
    sheets = write_contact_sheets(out, config)
    return RunSummary(generated, skipped, list(recorded.values()), sheets)


# ------------------------------------------------------------------------------- contact sheets


def contact_sheet(cells: dict[tuple[int, str], Any], seeds: list[int], models: list[str], title: str,
                  thumb: int = 256):
    """A grid image: rows = seeds, columns = models; a missing image is a grey cell."""
    from PIL import Image, ImageDraw

    pad, head, side = 4, 22, 56
    width = side + len(models) * (thumb + pad) + pad
    height = 2 * head + len(seeds) * (thumb + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)  # default font: no font file to ship or find
    draw.text((pad, pad), title, fill="black")
    for c, model in enumerate(models):
        draw.text((side + c * (thumb + pad) + pad, head + pad), model, fill="black")
    for r, seed in enumerate(seeds):
        y = 2 * head + r * (thumb + pad) + pad
        draw.text((pad, y + thumb // 2), f"seed {seed}", fill="black")
        for c, model in enumerate(models):
            x = side + c * (thumb + pad) + pad
            img = cells.get((seed, model))
            if img is None:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=(200, 200, 200))
                continue
            tile = img.convert("RGB")
            tile.thumbnail((thumb, thumb))
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
    return sheet


def write_contact_sheets(out_dir: str | Path, config: EvalConfig, thumb: int = 256) -> list[Path]:
    from PIL import Image

    from lightdiff import outputs

    out = Path(out_dir)
    paths = []
    for prompt in config.prompts():
        for lang in config.languages:
            cells = {}
            for model in config.models:
                for seed in config.seeds:
                    p = out / Item(model, prompt, lang, seed).relpath()
                    if p.is_file():
                        with Image.open(p) as im:
                            cells[(seed, model)] = im.convert("RGB")
            stem = prompt.id if lang == "en" else f"{prompt.id}-{lang}"
            sheet = contact_sheet(cells, config.seeds, config.models, f"{stem} ({prompt.scenario})", thumb)
            paths.append(outputs.save_png(sheet, out / "sheets" / f"{stem}.png",
                                          {"kind": "contact-sheet", "prompt": prompt.id, "lang": lang,
                                           "models": config.models, "seeds": config.seeds}))
    return paths


def images_by_unit(records: Iterable[dict]) -> dict[tuple[str, str, int], dict[str, dict]]:
    """(prompt, lang, seed) -> {model: record}: the units a rater compares."""
    units: dict[tuple[str, str, int], dict[str, dict]] = {}
    for r in records:
        units.setdefault((r["prompt"], r.get("lang", "en"), int(r["seed"])), {})[r["model"]] = r
    return units
