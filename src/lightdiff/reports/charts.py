"""Charts as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot: it keeps global figure state, and a report drawn inside a server or a test must not
leak figures. matplotlib is imported here only, when a chart is drawn.
"""

from __future__ import annotations

import io

from lightdiff.errors import LightdiffError
from lightdiff.reports.document import Chart, budget_text
from lightdiff.reports.load import Results, vram_seen


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LightdiffError("lightdiff report draws its charts with matplotlib, which is not installed.",
                             "pip install matplotlib, or pass --no-charts.", code="missing_dependency") from None
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No metadata: matplotlib would write its version and web address into the PNG.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _series_label(r: dict) -> str:
    return f"{r['model']} {r.get('variant') or ''} {r.get('plan') or ''} ({budget_text(r.get('vram_budget_gb'))})"


def _txt2img_batch1(results: Results) -> list[dict]:
    return [r for r in results.of("speed", ok=True, workflow="txt2img", batch_size=1)
            if r.get("width") and r.get("width") == r.get("height")]


def _by_series(rows: list[dict], key) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(_series_label(r), []).append(r)
    return {k: sorted(v, key=key) for k, v in out.items()}


def _synthetic_mark(rows: list[dict]) -> str:
    return " (synthetic weights)" if any(r.get("synthetic") for r in rows) else ""


def speed_by_size(results: Results) -> Chart | None:
    rows = [r for r in _txt2img_batch1(results) if r.get("sec_per_image")]
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for label, series in _by_series(rows, key=lambda r: r["width"]).items():
        ax.plot([r["width"] for r in series], [r["sec_per_image"] for r in series], marker="o", label=label)
    ax.set_yscale("log")  # SD1.5 and a 20B model differ by an order of magnitude
    ax.set_xlabel("image size (px, square)")
    ax.set_ylabel("seconds per image (log scale)")
    ax.set_title("Seconds per image by size, batch 1" + _synthetic_mark(rows))
    ax.set_xticks(sorted({r["width"] for r in rows}))
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    return Chart("speed_by_size", "Seconds per image by size", _png(fig),
                 "Median seconds per image at batch 1, one line per model, variant, plan and VRAM budget.")


def vram_by_size(results: Results, budget_lines: dict[str, float]) -> Chart | None:
    """Peak VRAM by size with a horizontal line for each budget (and the article's card)."""
    rows = [r for r in _txt2img_batch1(results) if vram_seen(r.get("peak_vram"))[0] is not None]
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for label, series in _by_series(rows, key=lambda r: r["width"]).items():
        ax.plot([r["width"] for r in series], [vram_seen(r["peak_vram"])[0] for r in series], marker="o", label=label)
    at_level: dict[float, list[str]] = {}  # one line per level, naming every budget that sits on it
    for label, gb in budget_lines.items():
        at_level.setdefault(gb, []).append(label)
    for gb, labels in sorted(at_level.items()):
        ax.axhline(gb, color="crimson", linestyle="--", linewidth=1.2)
        ax.annotate(f"{' = '.join(labels)}: {gb:g} GB", xy=(0.01, gb), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="crimson")
    ax.set_xlabel("image size (px, square)")
    ax.set_ylabel("peak VRAM (GB)")
    ax.set_title("Peak VRAM by size, batch 1" + _synthetic_mark(rows))
    ax.set_xticks(sorted({r["width"] for r in rows}))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return Chart("vram_by_size", "Peak VRAM by size", _png(fig),
                 "Peak VRAM as nvidia-smi shows it (else reserved, else allocated); dashed lines are VRAM budgets.")


def throughput_by_batch(results: Results) -> Chart | None:
    groups: dict[str, list[tuple[int, float, dict]]] = {}
    for r in results.of("speed", ok=True, workflow="txt2img"):
        ips = r.get("images_per_s") or (1 / r["sec_per_image"] if r.get("sec_per_image") else None)
        if r.get("width") and ips:
            groups.setdefault(f"{_series_label(r)} {r['width']}x{r['height']}", []).append((r["batch_size"], ips, r))
    groups = {k: sorted(v, key=lambda p: p[0]) for k, v in groups.items() if len({p[0] for p in v}) > 1}
    if not groups:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for label, series in groups.items():
        ax.plot([p[0] for p in series], [p[1] for p in series], marker="o", label=label)
    batches = sorted({p[0] for v in groups.values() for p in v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (images per call)")
    ax.set_ylabel("images per second")
    ax.set_title("Throughput by batch size" + _synthetic_mark([p[2] for v in groups.values() for p in v]))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return Chart("throughput_by_batch", "Throughput by batch size", _png(fig),
                 "Images per second against images per call, for each case measured at more than one batch size.")
