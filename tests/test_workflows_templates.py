"""Shipped templates and `lightdiff run`: templates load and run on both families; --from reproduces pixels."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from lightdiff import outputs
from lightdiff.cli import main
from lightdiff.workflows import _templates
from lightdiff.workflows.engine import Engine


SHIPPED = ["batch-10x2", "controlnet-canny", "hires-fix-2x", "img2img", "inpaint", "txt2img-basic"]
TINY = ["--set", "width=64", "--set", "height=64", "--set", "steps=2"]


def _pngs(folder):
    return sorted(p for p in folder.glob("*.png") if p.suffixes == [".png"])


def _px(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_the_shipped_templates_are_the_documented_ones():
    assert _templates.names() == SHIPPED
    for name in SHIPPED:
        request, description = _templates.read(name)
        assert description and request["workflow"] in {"txt2img", "img2img", "inpaint", "hires_fix", "batch",
                                                       "controlnet"}


@pytest.fixture(scope="module")
def engine_for():
    """One engine per tiny twin for this module, its model built once (the pool's load_fn hook)."""
    from lightdiff.runtime import loader

    made = {}

    def get(model_id):
        if model_id not in made:
            engine = Engine(device="cpu")
            prebuilt = loader.load(model_id, device="cpu")
            engine.pool.load_fn = lambda spec, weights, **kw: prebuilt
            made[model_id] = engine
        return made[model_id]
    return get


SIZES = {"txt2img-basic": (1, 64), "img2img": (1, 64), "inpaint": (1, 64), "hires-fix-2x": (1, 128),
         "batch-10x2": (10, 64), "controlnet-canny": (1, 64)}
# every template on SD1.5; on Qwen-Image those whose family defaults differ (upscaler, ControlNet) or
# that mix two inputs (the rest run on Qwen in each workflow's own tests; the tiny Qwen VAE is slow)
TEMPLATE_RUNS = [("tiny-sd15", name) for name in SHIPPED] + [
    ("tiny-qwen-image", name) for name in ("hires-fix-2x", "controlnet-canny", "inpaint")]


@pytest.mark.parametrize("model,name", TEMPLATE_RUNS)
def test_each_template_runs(engine_for, model, name):
    request, _ = _templates.read(name)
    request = _templates.apply_sets(request, [f"model={model}", *TINY[1::2]])
    result = engine_for(model).run(request)
    count, size = SIZES[name]
    assert len(result.images) == count
    assert all(im.size == (size, size) for im in result.images)
    assert result.metadata[0]["model"] == model


def test_a_template_runs_from_the_cli_and_saves_the_edge_map(tmp_path, capsys):
    rc = main(["run", "controlnet-canny", "--set", "model=tiny-sd15", *TINY, "-o", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    assert len(_pngs(tmp_path)) == 1 and len(list(tmp_path.glob("*.edges.png"))) == 1
    assert str(_pngs(tmp_path)[0]) in capsys.readouterr().out


def test_set_reads_json_values_and_falls_back_to_text():
    out = _templates.apply_sets({"steps": 4}, ["steps=30", "prompt=a cat", "guidance=7.5", "seed=null",
                                               'prompts=["a", "b"]', "negative_prompt=\"quoted\""])
    assert out == {"steps": 30, "prompt": "a cat", "guidance": 7.5, "seed": None, "prompts": ["a", "b"],
                   "negative_prompt": "quoted"}


def test_template_images_are_found_relative_to_the_template(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "pics" / "start.png")
    (folder / "job.json").write_text(json.dumps({"workflow": "img2img", "model": "tiny-sd15", "prompt": "x",
                                                 "init_image": "pics/start.png", "strength": 0.5, "steps": 2,
                                                 "seed": 1}))
    monkeypatch.chdir(tmp_path)  # anywhere else
    assert main(["run", str(folder / "job.json"), "-o", str(tmp_path / "out")]) == 0
    meta = outputs.read_metadata(_pngs(tmp_path / "out")[0])
    assert meta["request"]["init_image"] == str((folder / "pics" / "start.png").resolve())


def _b64_png(w, h, seed=0):
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


REPRODUCE = {
    "txt2img": {},
    "img2img": {"init_image": _b64_png(64, 64), "strength": 0.6},
    "inpaint": {"init_image": _b64_png(64, 64), "mask_image": _b64_png(64, 64, 1), "strength": 1.0},
    "hires_fix": {"hr_scale": 1.5},
    "controlnet": {"control_image": _b64_png(64, 64)},
    "batch": {"count": 3, "batch_size": 1},
}
# every workflow on SD1.5; on Qwen-Image the ones that sample a VAE encoding of an input image
REPRODUCE_RUNS = [("tiny-sd15", wf) for wf in REPRODUCE] + [
    ("tiny-qwen-image", wf) for wf in ("img2img", "inpaint", "controlnet")]


@pytest.mark.parametrize("model,workflow", REPRODUCE_RUNS)
def test_the_request_in_a_png_reproduces_its_pixels(tmp_path, engine_for, model, workflow):
    engine = engine_for(model)
    first = engine.run({"workflow": workflow, "model": model, "prompt": "a red circle", "steps": 2, "seed": 77,
                        "width": 64, "height": 64, **REPRODUCE[workflow]})
    original = Engine.save(first, tmp_path)[-1]
    again = engine.run(outputs.read_metadata(original)["request"])
    assert len(again.images) == 1
    assert np.array_equal(np.asarray(again.images[0]).astype(int), _px(original))


def test_run_from_a_png_on_the_command_line(tmp_path, engine_for):
    first = engine_for("tiny-sd15").run({"workflow": "img2img", "model": "tiny-sd15", "prompt": "a red circle",
                                         "steps": 2, "seed": 8, "init_image": _b64_png(64, 64), "strength": 0.5})
    original = Engine.save(first, tmp_path / "first")[0]
    assert main(["run", "--from", original, "-o", str(tmp_path / "again")]) == 0
    again = _pngs(tmp_path / "again")
    assert len(again) == 1 and np.array_equal(_px(again[0]), _px(original))


def test_an_input_too_large_to_store_is_asked_for_again(tmp_path, engine_for, capsys):
    big = Image.fromarray((np.random.RandomState(3).rand(320, 320, 3) * 255).astype("uint8"))
    big.save(tmp_path / "big.png")
    first = engine_for("tiny-sd15").run({
        "workflow": "img2img", "model": "tiny-sd15", "prompt": "x", "steps": 2, "seed": 5, "width": 64, "height": 64,
        "init_image": base64.b64encode((tmp_path / "big.png").read_bytes()).decode()})
    original = Engine.save(first, tmp_path / "first")[0]
    assert outputs.read_metadata(original)["request"]["init_image"].startswith("sha256:")
    assert main(["run", "--from", original, "-o", str(tmp_path / "again")]) == 2
    assert "init_image" in capsys.readouterr().err
    assert main(["run", "--from", original, "--set", f"init_image={tmp_path / 'big.png'}",
                 "-o", str(tmp_path / "again")]) == 0
    assert np.array_equal(_px(_pngs(tmp_path / "again")[0]), _px(original))


def test_unknown_template_lists_the_shipped_ones(capsys):
    assert main(["run", "no-such-template"]) == 2
    err = capsys.readouterr().err
    assert "no-such-template" in err and "hires-fix-2x" in err


def test_show_prints_the_final_request(capsys):
    assert main(["run", "inpaint", "--set", "strength=0.5", "--show"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["strength"] == 0.5 and request["workflow"] == "inpaint"
    assert request["mask_image"].endswith("templates/images/house-door-mask.png")


def test_list_names_each_template_with_its_description(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
