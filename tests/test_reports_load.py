"""Reading benchmark JSONL: bad input stops the report with the file and line to fix."""

import json
from pathlib import Path

import pytest

from lightdiff.cli import main
from lightdiff.errors import LightdiffError
from lightdiff.reports.load import Results, read_jsonl

FIXTURE = Path(__file__).parent / "fixtures" / "bench_sample.jsonl"
GOOD = {"schema": 1, "kind": "speed", "status": "ok", "model": "sd15", "width": 512, "height": 512}


def _write(tmp_path, lines, name="bench.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_fixture_rows_all_load_and_point_back_to_their_line():
    rows = read_jsonl(FIXTURE)
    assert len(rows) == sum(1 for line in FIXTURE.read_text().splitlines() if line.strip())
    assert rows[2]["_source"] == "bench_sample.jsonl:3"
    assert {r["kind"] for r in rows} == {"speed", "batch", "boundary", "workflow", "prediction"}


def test_missing_optional_fields_get_schema_defaults(tmp_path):
    (row,) = read_jsonl(_write(tmp_path, [json.dumps(GOOD)]))
    assert row["workflow"] == "txt2img" and row["batch_size"] == 1 and row["fallbacks"] == []
    assert row["synthetic"] is False and row["env"] == {}


def test_empty_file_names_the_file(tmp_path):
    p = _write(tmp_path, ["", "   "], name="empty.jsonl")
    with pytest.raises(LightdiffError) as e:
        read_jsonl(p)
    assert "empty.jsonl" in e.value.message and "no rows" in e.value.message
    assert e.value.hint


def test_malformed_json_names_file_and_line(tmp_path):
    p = _write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), '{"schema": 1, "kind": "speed",'])
    with pytest.raises(LightdiffError) as e:
        read_jsonl(p)
    assert "bench.jsonl:3" in e.value.message and "not valid JSON" in e.value.message


def test_bad_field_value_names_field_line_and_value(tmp_path):
    p = _write(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "kind": "sped"})])
    with pytest.raises(LightdiffError) as e:
        read_jsonl(p)
    assert "bench.jsonl:2" in e.value.message and "'kind'" in e.value.message and "sped" in e.value.message


@pytest.mark.parametrize("line, expect", [
    ('[1, 2]', "expected a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "schema"}), "'schema' is missing"),
    (json.dumps({**GOOD, "schema": 2}), "schema 1"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "model"}), "'model'"),
])
def test_other_malformed_rows(tmp_path, line, expect):
    with pytest.raises(LightdiffError) as e:
        read_jsonl(_write(tmp_path, [line]))
    assert "bench.jsonl:1" in e.value.message and expect in e.value.message


def test_missing_file_and_no_files():
    with pytest.raises(LightdiffError, match="does not exist"):
        Results.from_files(["/nonexistent/results.jsonl"])
    with pytest.raises(LightdiffError, match="No benchmark results"):
        Results.from_files([])


def test_cli_prints_the_error_with_file_and_line(tmp_path, capsys):
    p = _write(tmp_path, [json.dumps(GOOD), "not json"])
    assert main(["report", str(p), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bench.jsonl:2" in err and "fix:" in err
    assert not (tmp_path / "out" / "report.md").exists()
