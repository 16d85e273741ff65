"""The quality report of an eval folder: ratings, agreement, study power, image statistics, sheets.

Reads files only (manifest.json, records.jsonl, ratings.sqlite, learned.jsonl, sheets/*.png) and
builds a ``reports.document.Document``, written as Markdown and self-contained HTML by the same
writers as the benchmark report.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path

from lightdiff.errors import InvalidRequest
from lightdiff.evals import imagestats, ratings
from lightdiff.evals.learned import load_learned
from lightdiff.evals.run import load_manifest, load_records
from lightdiff.evals.store import RatingStore
from lightdiff.evals.suites import SCENARIOS
from lightdiff.reports.document import Chart, Document, Note, Paragraph, Section, Table, num

ARTICLE_PROMPTS, ARTICLE_SEEDS, ARTICLE_RATERS = 5, 1, 3

# The article's remarks, each with the scenario where it was made (None: said of all images).
REMARKS: tuple[tuple[str, str | None], ...] = (
    ("more saturated colour", None),
    ("cooler skin tones", "portrait"),
    ("slight noise in the product render", "product"),
    ("less smooth edges (jaggies)", None),
    ("stronger light layering", None),
)


def _ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{num(mean, digits)} (n=1)"
    return f"{num(mean, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


def _scenario_order(values) -> list:
    return sorted(values, key=lambda s: (list(SCENARIOS).index(s) if s in SCENARIOS else 99, str(s)))


# ------------------------------------------------------------------------------------- sections


def setup_section(manifest: dict, records: list[dict]) -> Section:
    s = Section("Setup")
    settings = ", ".join(f"{k}={v}" for k, v in manifest.get("identical", {}).items()) or "each model's own defaults"
    s.add(Table(["item", "value"], [
        ["suite", f"{manifest.get('suite')} {manifest.get('suite_version', '')}".strip()],
        ["models", ", ".join(manifest.get("models", []))],
        ["prompts", str(len(manifest.get("prompts", [])))],
        ["seeds", ", ".join(map(str, manifest.get("seeds", [])))],
        ["languages", ", ".join(manifest.get("languages", []))],
        ["settings", settings],
        ["weights", str(manifest.get("weights"))],
        ["images", str(len(records))],
    ]))
    if any(r.get("synthetic") for r in records):
        s.add(Note("Some images were made with synthetic (random) weights: they are noise, and every quality "
                   "number below describes the test harness, not the models."))
    return s


def scores_section(scores: list[dict]) -> Section:
    s = Section("Absolute scores (1-10)")
    if not scores:
        return s.add(Paragraph("No absolute scores yet. Collect them with `lightdiff rate FOLDER` in score mode."))
    # Each image's score is first averaged over raters, so an image rated by three people counts once.
    per_image: dict[tuple, list[float]] = defaultdict(list)
    for r in scores:
        per_image[(r["scenario"], r["model"], r["prompt"], r["seed"])].append(r["score"])
    models = sorted({k[1] for k in per_image})
    table_rows = []
    for scenario in [*_scenario_order({k[0] for k in per_image}), "all"]:
        row = [str(scenario)]
        for m in models:
            vals = [sum(v) / len(v) for k, v in per_image.items() if k[1] == m and scenario in (k[0], "all")]
            row.append(_ci(*imagestats.mean_ci(vals), digits=3))
        table_rows.append(row)
    return s.add(Table(["scenario", *models], table_rows,
                       caption="Mean score per image (raters averaged) with a 95% bootstrap interval over images, "
                               "as in the article's table."))


def pairwise_section(comparisons: list[dict], n_boot: int) -> Section:
    s = Section("Blind pairwise comparisons")
    if not comparisons:
        return s.add(Paragraph("No pairwise comparisons yet. Collect them with `lightdiff rate FOLDER`."))
    first = {}
    for c in comparisons:  # a rater's repeats measure consistency; only their first answer is evidence
        first.setdefault((c["rater"], c["prompt"], c["seed"], *sorted((c["model_a"], c["model_b"]))), c)
    try:
        rows = ratings.bradley_terry_by(list(first.values()), by="scenario", n_boot=n_boot)
    except InvalidRequest as e:
        return s.add(Note(f"Bradley-Terry strengths are not available: {e.message} {e.hint}"))
    s.add(Table(["scenario", "model", "strength", "95% CI", "win rate", "wins", "ties", "losses", "n"],
                [[str(r["scenario"]), r["model"], num(r["strength"]), f"[{num(r['ci_low'])}, {num(r['ci_high'])}]",
                  f"{r['win_rate']:.0%}", str(r["wins"]), str(r["ties"]), str(r["losses"]), str(r["n"])]
                 for r in rows],
                caption="Bradley-Terry strengths (log scale, mean 0; a gap of 1.0 = preferred 73% of the time), "
                        "bootstrap intervals over comparisons; ties count half."))
    return s


def agreement_section(comparisons: list[dict], scores: list[dict]) -> Section:
    s = Section("Rater agreement and consistency")
    rows = []

    def add(name: str, fn, fmt) -> None:
        try:
            rows.append([name, fmt(fn())])
        except InvalidRequest as e:
            rows.append([name, f"not available: {e.message}"])

    add("Krippendorff's alpha, pairwise (nominal)", lambda: ratings.krippendorff_pairwise(comparisons) if comparisons
        else _missing("comparisons"), lambda r: f"{num(r['alpha'])} ({r['raters']} raters, {r['units']} pairs)")
    add("Krippendorff's alpha, scores (interval)", lambda: ratings.krippendorff_scores(scores) if scores
        else _missing("scores"), lambda r: f"{num(r['alpha'])} ({r['raters']} raters, {r['units']} images)")
    add("ICC(2,1) / ICC(2,k), scores", lambda: ratings.icc(scores) if scores else _missing("scores"),
        lambda r: f"{num(r['icc2_1'])} / {num(r['icc2_k'])} ({r['raters']} raters, {r['targets']} images)")
    s.add(Table(["measure", "value"], rows, caption="1 = perfect agreement, 0 = chance."))
    if comparisons:
        cons = ratings.rater_consistency(comparisons)
        s.add(Table(["rater", "repeated pairs", "answer pairs", "agreeing", "consistency"],
                    [[r["rater"], str(r["repeated_units"]), str(r["pairs"]), str(r["agreeing_pairs"]),
                      "-" if math.isnan(r["consistency"]) else f"{r['consistency']:.0%}"] for r in cons],
                    caption="Self-consistency on pairs shown twice (sides re-drawn); random clicking gives ~50%."))
    return s


def _missing(what: str):
    raise InvalidRequest(what, f"no {what} were collected.", "Collect ratings with `lightdiff rate FOLDER`.")


def power_section(manifest: dict, comparisons: list[dict], scores: list[dict]) -> Section:
    s = Section("What this study can detect")
    raters = sorted({r["rater"] for r in [*comparisons, *scores]})
    sd_kw, note = {}, "assumed"
    if scores:
        try:
            est = ratings.paired_difference_sd(scores)
            sd_kw, note = {"sd_diff": est["sd_diff"]}, f"estimated from {est['pairs']} paired scores"
        except InvalidRequest:
            pass
    n_prompts = max(1, len(manifest.get("prompts", [])) * max(1, len(manifest.get("languages", ["en"]))))
    this = ratings.minimum_detectable_difference(n_prompts, max(1, len(manifest.get("seeds", [1]))),
                                                 max(1, len(raters)) if raters else ARTICLE_RATERS,
                                                 sd_note=note, **sd_kw)
    article = ratings.minimum_detectable_difference(ARTICLE_PROMPTS, ARTICLE_SEEDS, ARTICLE_RATERS,
                                                    sd_note=note, **sd_kw)
    if not raters:
        s.add(Note(f"No ratings yet: this study is sized for {ARTICLE_RATERS} raters.", kind="prediction"))
    return s.add(Paragraph("This study: " + this.sentence()),
                 Paragraph("The article's study: " + article.sentence()))


def statistics_section(records: list[dict], n_resamples: int) -> Section:
    s = Section("Image statistics and the article's remarks")
    s.add(Paragraph("Each remark the article's raters made is tested with the statistics in "
                    "lightdiff.evals.imagestats (whole-image measures at 512 px). Values are means over images with "
                    "95% bootstrap intervals. 'Clear' means the intervals of the two extreme models do not overlap."))
    models = sorted({r["model"] for r in records})
    scenarios = _scenario_order({r["scenario"] for r in records})
    everything = [{**r, "scenario": "all"} for r in records]
    for remark, where in REMARKS:
        metrics = [m for m in imagestats.METRICS if m.remark == remark]
        scope = [r for r in records if r["scenario"] == where] if where else everything
        scope_name = where or "all scenarios"
        findings = []
        for metric in metrics:
            agg = imagestats.aggregate(scope, by=("model",), metric=metric.name, n_resamples=n_resamples)
            findings.append(_verdict(metric, agg, scope_name))
        s.add(Paragraph(f"Remark: \"{remark}\" (checked on {scope_name}). " + " ".join(findings)))
        rows = []
        for scenario in [*scenarios, "all"]:
            subset = records if scenario == "all" else [r for r in records if r["scenario"] == scenario]
            for metric in metrics:
                agg = {a["model"]: a for a in imagestats.aggregate(subset, by=("model",), metric=metric.name,
                                                                   n_resamples=n_resamples)}
                rows.append([scenario, metric.name, *[_ci(agg[m]["mean"], agg[m]["ci_low"], agg[m]["ci_high"])
                                                      if m in agg else "-" for m in models]])
        s.add(Table(["scenario", "statistic", *models], rows, caption=f"{remark}: " + "; ".join(
            f"{m.name} ({m.direction} = more so)" for m in metrics)))
    return s


def _verdict(metric: imagestats.Metric, agg: list[dict], scope: str) -> str:
    rows = [a for a in agg if a["n"] > 0 and math.isfinite(a["mean"])]
    if len(rows) < 2:
        return f"{metric.name}: fewer than two models measured on {scope}."
    rows.sort(key=lambda a: a["mean"], reverse=metric.direction == "higher")
    most, least = rows[0], rows[-1]
    separated = (math.isfinite(most["ci_low"]) and math.isfinite(least["ci_high"])
                 and (most["ci_low"] > least["ci_high"] if metric.direction == "higher"
                      else most["ci_high"] < least["ci_low"]))
    verdict = "clear" if separated else "within noise (intervals overlap)"
    return (f"{metric.name}: {most['model']} {num(most['mean'])} vs {least['model']} {num(least['mean'])}, "
            f"{verdict}.")


def learned_section(records: list[dict], run_dir: Path, n_resamples: int) -> Section:
    s = Section("Learned metrics")
    values, status = load_learned(run_dir)
    s.add(Table(["metric", "status"], [[k, v] for k, v in status.items()]))
    rows = [{**r, **{k: v for k, v in values.get(r["path"], {}).items() if k != "path"}} for r in records]
    present = [k for k, v in status.items() if v == "ok"]
    if present:
        agg = []
        for name in present:
            agg += imagestats.aggregate(rows, by=("model", "scenario"), metric=name, n_resamples=n_resamples)
        s.add(Table(["model", "scenario", "metric", "mean [95% CI]", "n"],
                    [[a["model"], a["scenario"], a["metric"], _ci(a["mean"], a["ci_low"], a["ci_high"]), str(a["n"])]
                     for a in agg]))
    return s


def sheets_section(run_dir: Path, max_width: int = 768, limit: int | None = None) -> Section | None:
    from PIL import Image

    paths = sorted((run_dir / "sheets").glob("*.png"))[:limit]
    if not paths:
        return None
    s = Section("Contact sheets")
    s.add(Paragraph("Rows are seeds, columns are models; the same prompt and seed in every row."))
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
        s.add(Chart(f"sheet-{p.stem}", p.stem, buf.getvalue(), caption=p.stem))
    return s


# ------------------------------------------------------------------------------------- document


def build_eval_document(run_dir: str | Path, *, n_boot: int = 1000, n_resamples: int = 2000,
                        sheet_limit: int | None = None) -> Document:
    run = Path(run_dir)
    manifest = load_manifest(run)
    records = load_records(run)
    if not records:
        raise InvalidRequest("run_dir", f"{run} has no image records (records.jsonl is missing or empty).",
                             f"Generate images first: `lightdiff eval ... -o {run}`.")
    db = run / "ratings.sqlite"
    store = RatingStore(db) if db.is_file() else None
    comparisons = store.comparisons() if store else []
    scores = store.scores() if store else []
    built = [setup_section(manifest, records), scores_section(scores), pairwise_section(comparisons, n_boot),
             agreement_section(comparisons, scores), power_section(manifest, comparisons, scores),
             statistics_section(records, n_resamples), learned_section(records, run, n_resamples),
             sheets_section(run, limit=sheet_limit)]
    return Document(f"lightdiff quality evaluation: {', '.join(manifest.get('models', []))}",
                    [s for s in built if s is not None])


def render_eval_report(run_dir: str | Path, out_dir: str | Path, **kwargs):
    """Write report.md (+ sheet PNGs beside it) and a self-contained report.html into ``out_dir``."""
    from lightdiff.reports.render import write_document

    return write_document(build_eval_document(run_dir, **kwargs), out_dir)
