"""`lightdiff eval` generation on tiny twins: every prompt x seed x model, records, sheets, and resume."""

import json

import pytest
from PIL import Image

from lightdiff.errors import InvalidRequest
from lightdiff.evals import imagestats
from lightdiff.evals.run import EvalConfig, load_records, parse_identical, run_eval
from lightdiff.evals.suites import load_suite
from lightdiff.outputs import read_metadata

MODELS = ["tiny-sd15", "tiny-qwen-image"]
SETTINGS = {"width": 64, "height": 64, "steps": 2}


class CountingEngine:
    """The real engine, counting the images it is asked to make."""

    def __init__(self):
        from lightdiff.workflows.engine import Engine

        self.engine = Engine(device="cpu")
        self.calls = []

    def parse(self, request):
        return self.engine.parse(request)

    def run(self, request, **kw):
        self.calls.append((request["model"], request["prompt"], request["seed"]))
        return self.engine.run(request, **kw)


def config(**kw):
    return EvalConfig(models=MODELS, suite=load_suite("article5"), seeds=[0, 1], identical=dict(SETTINGS),
                      limit=2, **kw)


@pytest.fixture(scope="module")
def evalrun(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun")
    engine = CountingEngine()
    made = []

    def stop_after_three(record):
        made.append(record)
        if len(made) == 3:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        run_eval(config(), out, engine=engine, on_image=stop_after_three)
    first_calls = list(engine.calls)
    engine.calls.clear()
    summary = run_eval(config(), out, engine=engine)
    return out, first_calls, list(engine.calls), summary


def test_resume_makes_only_the_missing_images(evalrun):
    out, first, second, summary = evalrun
    assert len(first) == 3
    assert len(second) == 2 * 2 * 2 - 3  # models x prompts x seeds, less those already made
    assert not set(first) & set(second)
    assert (summary.generated, summary.skipped) == (5, 3)
    # Models are grouped: all of one model's images come before the next model's.
    order = [m for m, _, _ in first + second]
    assert order == sorted(order, key=MODELS.index)


def test_images_records_and_metadata(evalrun):
    out, *_ = evalrun
    records = load_records(out)
    assert len(records) == 8
    suite = load_suite("article5")
    for r in records:
        path = out / r["path"]
        assert path.parent == out / "images" / r["model"]
        assert path.name == f"{r['prompt']}-s{r['seed']}.png"
        meta = read_metadata(path)
        assert meta["model"] == r["model"] and meta["seed"] == r["seed"]
        assert meta["prompt"] == suite.prompt(r["prompt"]).en
        assert (meta["width"], meta["steps"]) == (64, 2)
        assert r["scenario"] == suite.prompt(r["prompt"]).scenario and r["lang"] == "en"
        with Image.open(path) as im:
            assert r["noise_sigma"] == pytest.approx(imagestats.compute_all(im)["noise_sigma"])
        assert set(imagestats.METRIC_NAMES) <= set(r)
    assert {(r["model"], r["prompt"], r["seed"]) for r in records} == {
        (m, p.id, s) for m in MODELS for p in suite.prompts[:2] for s in (0, 1)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"] == MODELS and manifest["identical"] == SETTINGS and len(manifest["prompts"]) == 2


def test_contact_sheets_rows_are_seeds_and_columns_models(evalrun):
    out, *_ = evalrun
    suite = load_suite("article5")
    sheets = sorted((out / "sheets").glob("*.png"))
    assert [p.stem for p in sheets] == sorted(p.id for p in suite.prompts[:2])
    with Image.open(sheets[0]) as im:
        sheet = im.convert("RGB")
    # The first model's seed-1 image sits in row 2, column 1 of the grid (thumb 256, 64 px scaled up).
    img = Image.open(out / "images" / MODELS[0] / f"{sheets[0].stem}-s1.png").convert("RGB")
    tile = sheet.crop((56 + 4, 44 + 260 + 4, 56 + 4 + 256, 44 + 260 + 4 + 256))
    assert tile.resize((64, 64)).getpixel((32, 32)) == pytest.approx(img.getpixel((32, 32)), abs=40)
    assert sheet.width > 2 * 256 and sheet.height > 2 * 256


def test_changed_settings_are_made_again(evalrun, tmp_path):
    out, *_ = evalrun
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    engine = CountingEngine()
    cfg = EvalConfig(models=MODELS[:1], suite=load_suite("article5"), seeds=[0],
                     identical={**SETTINGS, "steps": 1}, limit=1)
    summary = run_eval(cfg, copy, engine=engine)
    assert len(engine.calls) == 1 and summary.generated == 1  # the steps=2 image does not count as done
    assert read_metadata(copy / "images" / MODELS[0] / f"{load_suite('article5').prompts[0].id}-s0.png")["steps"] == 1


def test_cli_rerun_skips_everything(evalrun, capsys):
    from lightdiff.cli import main

    out, *_ = evalrun
    rc = main(["eval", "--models", ",".join(MODELS), "--suite", "article5", "--seeds", "2", "--limit", "2",
               "--identical", "width=64,height=64,steps=2", "--device", "cpu", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "0 image(s) made, 8 already there" in text
    assert "clip_score: skipped: weights not available" in text


def test_identical_settings_are_checked():
    assert parse_identical("steps=20, guidance=7") == {"steps": 20, "guidance": 7.0}
    with pytest.raises(InvalidRequest, match="unknown setting 'cfg'"):
        parse_identical("cfg=7")
    with pytest.raises(InvalidRequest, match="steps='x' is not a number"):
        parse_identical("steps=x")


def test_unknown_model_fails_before_anything_is_made(tmp_path):
    engine = CountingEngine()
    cfg = EvalConfig(models=["tiny-sd15", "no-such-model"], suite=load_suite("article5"), seeds=[0],
                     identical=dict(SETTINGS), limit=1)
    with pytest.raises(Exception, match="no-such-model"):
        run_eval(cfg, tmp_path, engine=engine)
    assert engine.calls == []
