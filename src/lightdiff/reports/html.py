"""The report as one self-contained HTML file: inline CSS, charts as data URIs, no external address.

Written by hand with html.escape: the document is headings, tables and images, and a template
engine would add a dependency without removing any code.
"""

from __future__ import annotations

import base64
from html import escape

from lightdiff.reports.claims import CONSISTENT, CONTRADICTED, IMPOSSIBLE, NOT_MEASURED
from lightdiff.reports.document import Chart, Document, Note, Paragraph, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem;
       margin-top: 2.2rem; }
nav { font-size: .9rem; } nav a { margin-right: .8rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .82rem; }
caption { caption-side: top; text-align: left; font-style: italic; padding: .2rem 0; color: #444; }
th, td { border: 1px solid #ccc; padding: .25rem .45rem; vertical-align: top; text-align: left; }
th { background: #f2f2f4; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
.note { border-left: 4px solid #d08700; background: #fff7e6; padding: .5rem .8rem; margin: .8rem 0; }
.note.prediction { border-color: #5b5bd6; background: #f0f0ff; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #444; }
td.v-consistent { background: #e6f4ea !important; }
td.v-contradicted { background: #fde7e9 !important; }
td.v-impossible { background: #f8d0d0 !important; font-weight: 600; }
td.v-not-measured { background: #eee !important; color: #555; }
"""

_VERDICT_CLASS = {CONSISTENT: "v-consistent", CONTRADICTED: "v-contradicted", IMPOSSIBLE: "v-impossible",
                  NOT_MEASURED: "v-not-measured"}


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            cls = _VERDICT_CLASS.get(c) if i == t.verdict_column else None
            cells.append(f'<td class="{cls}">{escape(str(c))}</td>' if cls else f"<td>{escape(str(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return (f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _chart(c: Chart) -> str:
    data = base64.b64encode(c.png).decode("ascii")
    caption = f"<figcaption>{escape(c.caption)}</figcaption>" if c.caption else ""
    return f'<figure><img alt="{escape(c.title)}" src="data:image/png;base64,{data}">{caption}</figure>'


def to_html(doc: Document) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(doc.title)}</h1>",
             "<nav>" + "".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in doc.sections) + "</nav>"]
    for section in doc.sections:
        parts.append(f'<section id="{section.anchor}"><h2>{escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<p>{escape(block.text)}</p>")
            elif isinstance(block, Note):
                label = "Prediction" if block.kind == "prediction" else "Note"
                parts.append(f'<div class="note {escape(block.kind)}"><strong>{label}:</strong> '
                             f"{escape(block.text)}</div>")
            elif isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Chart):
                parts.append(_chart(block))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
