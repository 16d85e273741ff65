"""JSONL in, report.md + report.html (+ chart PNGs) out. Reads files only; never touches a GPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightdiff.errors import LightdiffError
from lightdiff.reports import recommend, sections
from lightdiff.reports.claims import judge_claims, load_claims
from lightdiff.reports.document import Document, Paragraph, Section
from lightdiff.reports.html import to_html
from lightdiff.reports.load import Results
from lightdiff.reports.markdown import to_markdown
from lightdiff.reports.physics import card_of


@dataclass
class Written:
    markdown: Path
    html: Path
    charts: list[Path]


def build_document(results: Results, claims: dict, *, charts: bool = True) -> Document:
    hw = claims.get("hardware") or {}
    article = card_of(hw.get("gpu"))
    budget_lines = {f"budget {b:g} GB": b for b in sorted({r["vram_budget_gb"] for r in results.rows
                                                            if r.get("vram_budget_gb") is not None})}
    if hw.get("vram_gb"):
        budget_lines[f"article card ({article.name if article else hw.get('gpu')})"] = float(hw["vram_gb"])
    verdicts = judge_claims(results, claims)
    built = [
        sections.stamp_section(results),
        sections.deployment_section(results),
        sections.speed_section(results, budget_lines, charts),
        sections.batch_section(results, charts),
        sections.boundary_section(results),
        sections.workflow_section(results),
        sections.physics_section(results, article),
        sections.claims_section(verdicts, claims),
        sections.predictions_section(results),
        recommend.recommendations_section(results),
        Section("Method").add(Paragraph(
            "GB means GiB (2**30 bytes) everywhere, as torch reports it. Rows follow docs/bench-rows.md. "
            "Every number in this report is read from the rows listed under 'Setup and stamp' or computed from "
            "them, the model specs (parameter counts) and card datasheets (lightdiff.specs.cards); the "
            "arithmetic is shown beside each verdict.")),
    ]
    models = ", ".join(results.models())
    return Document(f"lightdiff benchmark report: {models}", [s for s in built if s is not None])


def render_report(paths, out_dir: str | Path, *, claims_path: str | Path | None = None,
                  charts: bool = True) -> Written:
    results = Results.from_files(paths)
    claims = load_claims(claims_path)
    return write_document(build_document(results, claims, charts=charts), out_dir)


def write_document(doc, out_dir: str | Path) -> Written:
    """report.md, report.html and one PNG per chart in ``out_dir`` (the benchmark and eval reports alike)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LightdiffError(f"Cannot create the report folder {out}: {e.strerror}.",
                             "Pass -o with a folder you can write to.", code="invalid_request") from None
    chart_paths = []
    for chart in doc.charts():
        p = out / f"{chart.name}.png"
        p.write_bytes(chart.png)
        chart_paths.append(p)
    md, html = out / "report.md", out / "report.html"
    md.write_text(to_markdown(doc), encoding="utf-8")
    html.write_text(to_html(doc), encoding="utf-8")
    return Written(md, html, chart_paths)
