"""The report as plain data: sections of paragraphs, notes, tables and charts.

Sections are built once (sections.py) and written twice, as Markdown and as HTML, so the two
formats cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Paragraph:
    text: str


@dataclass
class Note:
    """A highlighted statement the reader must not miss (synthetic weights, predictions)."""

    text: str
    kind: str = "warning"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    verdict_column: int | None = None  # cells of this column get a colour per verdict in HTML


@dataclass
class Chart:
    name: str  # file stem: <name>.png beside report.md
    title: str
    png: bytes
    caption: str = ""


Block = Paragraph | Note | Table | Chart


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def add(self, *blocks: Block) -> "Section":
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    sections: list[Section]

    def charts(self) -> list[Chart]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Chart)]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]


def num(x, digits: int = 3, unit: str = "") -> str:
    """A number with ``digits`` significant figures, or "-" when not measured."""
    if x is None or x == "":
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or (isinstance(x, float) and abs(x) >= 10**digits):
        return f"{x:.0f}{unit}"  # no exponent for large values (1536 px, not 1.54e+03)
    if isinstance(x, float):
        return f"{x:.{digits}g}{unit}"
    return str(x)


def size_text(row: dict) -> str:
    return f"{row['width']}x{row['height']}" if row.get("width") and row.get("height") else "-"


def budget_text(gb) -> str:
    return "whole card" if gb is None else f"{gb:g} GB"
