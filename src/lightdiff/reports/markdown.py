"""The report as Markdown (GitHub-flavoured tables); charts are PNG files linked beside it.

Written by hand: a few tables and headings need no Markdown library.
"""

from __future__ import annotations

from lightdiff.reports.document import Chart, Document, Note, Paragraph, Table


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [f"*{_cell(t.caption)}*", ""]
    lines.append("| " + " | ".join(_cell(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---" for _ in t.headers) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += ["Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections), ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Note):
                out += [f"> **{'Prediction' if block.kind == 'prediction' else 'Note'}:** {block.text}", ""]
            elif isinstance(block, Table):
                out += _table(block) + [""]
            elif isinstance(block, Chart):
                out += [f"![{block.title}]({block.name}.png)", ""]
                if block.caption:
                    out += [f"*{block.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"
