"""`lightdiff report`: the fixture rows become report.md + a self-contained report.html with charts."""

import base64
import copy
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lightdiff.cli import main
from lightdiff.reports.claims import load_claims
from lightdiff.reports.load import read_jsonl

FIXTURE = Path(__file__).parent / "fixtures" / "bench_sample.jsonl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Setup and stamp", "Deployment: startup and idle VRAM", "Speed and memory by size", "Batch test",
            "Out-of-memory boundary", "Workflows", "FLOPs and physics", "Claims against measurement",
            "Predictions for cards not measured", "Recommendations by user profile"]
CHARTS = ["speed_by_size", "vram_by_size", "throughput_by_batch"]


class Attrs(HTMLParser):
    """Collects tags and their src/href attribute values."""

    def __init__(self):
        super().__init__()
        self.tags, self.links, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.tables += tag == "table"
        self.links += [(tag, k, v or "") for k, v in attrs if k in ("src", "href")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(FIXTURE), "-o", str(out)]) == 0
    return out, (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")


def test_every_section_is_in_both_formats(report):
    _, md, html = report
    for title in SECTIONS:
        assert f"## {title}" in md
        assert f"<h2>{title}</h2>" in html


def test_every_table_is_in_both_formats(report):
    _, md, html = report
    parser = Attrs()
    parser.feed(html)
    md_tables = sum(1 for line in md.splitlines() if line.startswith("|---"))
    assert md_tables == parser.tables >= 10
    for header in ("| import s | load s |", "| s/image | first call s |", "| requested | produced | fallbacks |",
                   "| max batch at size |", "speedup (baseline / lightdiff)", "| floor s |", "| verdict |",
                   "| predicted s/image |", "| profile | rule |"):
        assert header in md, header


def test_charts_are_png_files_linked_from_markdown_and_embedded_in_html(report):
    out, md, html = report
    for name in CHARTS:
        assert (out / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
        assert f"]({name}.png)" in md
    parser = Attrs()
    parser.feed(html)
    images = [v for tag, k, v in parser.links if tag == "img"]
    assert len(images) == len(CHARTS)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_html_is_self_contained(report):
    _, _, html = report
    parser = Attrs()
    parser.feed(html)
    for tag, attr, value in parser.links:
        assert value.startswith(("data:", "#")), (tag, attr, value[:80])
        assert "http" not in value.split(",", 1)[0]
    assert "<style>" in html
    assert not {"link", "script", "iframe"} & set(parser.tags)
    assert "://" not in html


def test_stamp_synthetic_label_and_predictions_label(report):
    _, md, html = report
    env = read_jsonl(FIXTURE)[0]["env"]
    for text in (md, html):
        for key in ("gpu", "driver", "torch", "diffusers", "date"):
            assert str(env[key]) in text
        assert "Synthetic weights" in text and "images are noise" in text
        assert "PREDICTIONS, not measurements" in text


def test_lightdiff_vs_baseline_ratio_is_computed_from_the_rows(report):
    _, md, _ = report
    rows = read_jsonl(FIXTURE)

    def spi(variant):
        return next(r["sec_per_image"] for r in rows if r["kind"] == "speed" and r["model"] == "sd15"
                    and r["variant"] == variant and r["width"] == 768 and r["vram_budget_gb"] is None)

    line = next(line for line in md.splitlines() if line.startswith("| sd15 | txt2img | 768x768 | 1 | whole card"))
    assert f"{spi('baseline') / spi('lightdiff'):.2f}x" in line
    assert "baseline fails, lightdiff runs" in md  # qwen at 24 GB: plain diffusers OOMs


def test_verdicts_appear_in_the_report_and_change_with_the_claims_file(tmp_path, report):
    _, md, html = report
    line = next(line for line in md.splitlines() if "| qwen-image-2512 512x512 peak VRAM |" in line)
    assert "physically impossible" in line
    assert 'class="v-impossible"' in html
    claims = copy.deepcopy(load_claims())
    for c in claims["speed_memory"]:
        if c["model"] == "qwen-image-2512" and c["resolution"] == 512:
            c["peak_vram_gb"] = 45
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(claims))
    assert main(["report", str(FIXTURE), "-o", str(tmp_path / "out"), "--claims", str(path), "--no-charts"]) == 0
    md2 = (tmp_path / "out" / "report.md").read_text()
    line = next(line for line in md2.splitlines() if "| qwen-image-2512 512x512 peak VRAM |" in line)
    assert "| consistent |" in line
    assert not list((tmp_path / "out").glob("*.png"))


def test_recommendations_come_from_prediction_rows(report):
    _, md, _ = report
    rows = read_jsonl(FIXTURE)
    p = next(r for r in rows
             if r["kind"] == "prediction" and r["card"] == "RTX 4090D" and r["model"] == "qwen-image-2512")
    line = next(line for line in md.splitlines() if line.startswith("| Small studios and creators |"))
    assert f"{3600 / p['predicted']['sec_per_image']:.0f} images/hour" in line
    assert "different families" in md  # SD LoRAs do not carry over to Qwen-Image


def test_rendering_does_not_import_torch(tmp_path):
    code = ("import sys; from lightdiff.cli import main; "
            f"rc = main(['report', {str(FIXTURE)!r}, '-o', {str(tmp_path)!r}]); "
            "print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["0", "False"]
    assert (tmp_path / "report.html").exists()


def test_command_module_is_cheap_to_import():
    code = ("import sys, lightdiff.commands.report as m; "
            "print(m.NAME, 'matplotlib' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["report", "False", "False"], done.stderr
