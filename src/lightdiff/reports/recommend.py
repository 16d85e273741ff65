"""Recommendations by user profile (the article's profiles), derived from the rows with the rule shown.

A model "fits" a card class (24 GB, 12 GB) when the planner predicts it fits a card of that class,
or when a measured run stayed within that much VRAM (a run under a budget of at most that size, or
a measured peak at most that size: VRAM for a plan is the same on any card). Speeds on cards we did
not measure come only from predictions, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightdiff.reports.document import Note, Paragraph, Section, Table, num
from lightdiff.reports.load import Results, vram_seen

CLASSES = {"24 GB": (16.0, 24.0), "12 GB": (8.0, 12.0)}  # card VRAM ranges (exclusive low, inclusive high)
INTERACTIVE_S = 10.0  # seconds per image a person waits for while iterating on a prompt
STUDIO_SIZE = 1024  # deliverable resolution for studio work


@dataclass(frozen=True)
class Option:
    model: str
    plan: str
    size: int
    sec_per_image: float | None
    peak_gb: float | None
    evidence: str


def _predicted(results: Results, low: float, high: float) -> list[Option]:
    out = []
    for r in results.of("prediction", ok=True):
        pred = r.get("predicted") or {}
        if r.get("fits") and r.get("vram_gb") is not None and low < float(r["vram_gb"]) <= high:
            out.append(Option(r["model"], r.get("plan") or "-", int(r.get("width") or 0), pred.get("sec_per_image"),
                              pred.get("peak_vram_gb"), f"predicted for {r.get('card')} ({r['_source']})"))
    return out


def _measured(results: Results, high: float) -> list[Option]:
    out = []
    for r in results.of("speed", ok=True, workflow="txt2img"):
        peak, how = vram_seen(r.get("peak_vram"))
        budget = r.get("vram_budget_gb")
        if (budget is not None and budget <= high) or (peak is not None and peak <= high):
            why = f"ran under a {budget:g} GB budget" if budget is not None and budget <= high else "measured peak"
            out.append(Option(r["model"], r.get("plan") or "-", int(r.get("width") or 0), None, peak,
                              f"{why}, peak {num(peak)} GB ({how}; {r['_source']})"))
    return out


def best_per_model(results: Results, cls: str, min_size: int = 0) -> dict[str, Option]:
    """Per model: the fastest predicted option for the card class, else the largest measured fit."""
    low, high = CLASSES[cls]
    best: dict[str, Option] = {}
    for o in _predicted(results, low, high):
        if o.size >= min_size and o.sec_per_image is not None:
            cur = best.get(o.model)
            if cur is None or o.sec_per_image < cur.sec_per_image:
                best[o.model] = o
    predicted = set(best)
    for o in _measured(results, high):
        if o.size >= min_size and o.model not in predicted:
            cur = best.get(o.model)
            if cur is None or o.size > cur.size:
                best[o.model] = o
    return best


def _describe(o: Option) -> str:
    speed = (f"{o.sec_per_image:.3g} s/image (predicted)" if o.sec_per_image is not None
             else "speed not predicted for this card class")
    return f"{o.model}: plan {o.plan} at {o.size}x{o.size}, {speed}, peak {num(o.peak_gb)} GB"


def recommendations_section(results: Results) -> Section:
    s = Section("Recommendations by user profile")
    s.add(Paragraph(__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()))
    fit_rows = []
    best = {cls: best_per_model(results, cls) for cls in CLASSES}
    for cls, options in best.items():
        for model in results.models():
            o = options.get(model)
            fit_rows.append([cls, model, o.plan if o else "-", f"{o.size}x{o.size}" if o else "-",
                             num(o.sec_per_image) if o else "-", num(o.peak_gb) if o else "-",
                             o.evidence if o else "no prediction or measurement fits this class"])
    s.add(Table(["card class", "model", "plan", "size", "s/image", "peak GB", "evidence"], fit_rows,
                "What fits each card class: fastest predicted plan, else the largest measured case that fits."))

    profiles = []
    b24 = best["24 GB"]
    profiles.append(["Single consumer GPU or cloud tenant (24 GB)",
                     "Models that fit a 24 GB card; the fastest plan per model.",
                     "; ".join(_describe(o) for o in b24.values()) or "nothing fits 24 GB in these rows"])
    b12 = best["12 GB"]
    profiles.append(["Education (12 GB lab cards)",
                     f"Models that fit a 12 GB card; interactive if <= {INTERACTIVE_S:g} s/image.",
                     "; ".join(_describe(o) + (" - interactive" if o.sec_per_image and o.sec_per_image <= INTERACTIVE_S
                                               else " - not interactive" if o.sec_per_image else "")
                               for o in b12.values()) or "nothing fits 12 GB in these rows"])
    studio = best_per_model(results, "24 GB", min_size=STUDIO_SIZE)
    batch_ok = {r["model"] for r in results.of("batch", ok=True)
                if r.get("images_produced") == r.get("images_requested") and not r.get("fallbacks")}
    studio_text = []
    for model, o in studio.items():
        per_hour = f"{3600 / o.sec_per_image:.0f} images/hour" if o.sec_per_image else "images/hour not predicted"
        stable = "batch test clean" if model in batch_ok else "no clean batch test"
        studio_text.append(f"{model}: {o.plan} at {o.size}x{o.size}, {per_hour}, {stable}")
    profiles.append(["Small studios and creators",
                     f"Deliverables at >= {STUDIO_SIZE}px on one 24 GB card: images per hour = 3600 / s/image; "
                     "the batch test must produce every image without a fallback.",
                     "; ".join(studio_text) or f"no 24 GB option at >= {STUDIO_SIZE}px in these rows"])
    fast = sorted([o for o in b24.values() if o.sec_per_image is not None], key=lambda o: o.sec_per_image)
    profiles.append(["Creative exploration",
                     f"Fast iteration on a 24 GB card: <= {INTERACTIVE_S:g} s/image counts as interactive.",
                     "; ".join(f"{_describe(o)} - {'interactive' if o.sec_per_image <= INTERACTIVE_S else 'slow'}"
                               for o in fast) or "no predicted speeds for a 24 GB card"])
    s.add(Table(["profile", "rule", "from the numbers"], profiles, "The article's profiles, answered from the rows."))
    s.add(Paragraph("Not recommended for (the article's exclusions): film-grade realism and industrial precision "
                    "are judgements of image quality, which speed and memory rows cannot confirm or refute. "
                    + _lora_text(results.models())))
    if results.any_synthetic():
        s.add(Note("Speeds and memory above come partly from synthetic-weight runs; they stand for the real "
                   "models, while the quality profiles do not follow from them."))
    return s


def _lora_text(models: list[str]) -> str:
    """LoRAs are trained for one architecture: say which models share one, from the specs."""
    from lightdiff import specs
    from lightdiff.errors import LightdiffError

    families: dict[str, list[str]] = {}
    for m in models:
        try:
            families.setdefault(specs.get(m).family, []).append(m)
        except LightdiffError:
            continue
    if len(families) < 2:
        return ""
    parts = [f"{'/'.join(ms)} (family {fam})" for fam, ms in families.items()]
    return ("Teams with large SD LoRA assets: a LoRA loads only into its own architecture family, and these models "
            "are in different families: " + ", ".join(parts) + ". Moving to another family means retraining them.")
