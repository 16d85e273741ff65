"""Benchmark reports: JSONL rows in, Markdown and self-contained HTML with charts out.

Reports read files only: no torch, no GPU. matplotlib is imported when a chart is drawn.
Entry point: lightdiff.reports.render.render_report(paths, out_dir).
"""
