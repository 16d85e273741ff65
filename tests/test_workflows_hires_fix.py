"""hires fix on both families' tiny twins: the target size comes out and metadata keep both sizes."""

import numpy as np
import pytest

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import hires_fix


def _run(loaded, **kw):
    return hires_fix.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", "steps": 2, "seed": 11,
                                  "width": 64, "height": 64, **kw})


@pytest.mark.parametrize("model,upscaler", [("sd15", "latent"), ("sd15", "lanczos"), ("qwen", "lanczos")])
def test_target_size_and_both_sizes_in_metadata(request, model, upscaler):
    loaded = request.getfixturevalue("tiny_sd15" if model == "sd15" else "tiny_qwen")
    events = []
    r = hires_fix.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", "steps": 2, "seed": 11,
                               "width": 80, "height": 64, "hr_scale": 2.0, "hr_upscaler": upscaler,
                               "batch_size": 2}, progress=events.append)
    assert [im.size for im in r.images] == [(160, 128), (160, 128)]
    m = r.metadata[1]
    assert (m["width"], m["height"], m["seed"]) == (160, 128, 12)
    assert m["hires"] == {"base_width": 80, "base_height": 64, "target_width": 160, "target_height": 128,
                          "scale": 2.0, "upscaler": upscaler, "steps": 2, "denoise": 0.7}
    steps = [e["step"] for e in events if e["stage"] == "running"]
    assert steps == sorted(steps) and steps[-1] == events[-1]["steps"] > 2  # one bar over both passes


def test_same_seed_same_pixels_and_the_second_pass_refines_the_upscale(tiny_sd15):
    from PIL import Image

    from lightdiff.workflows import txt2img

    a, b = _run(tiny_sd15, hr_upscaler="lanczos"), _run(tiny_sd15, hr_upscaler="lanczos")
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    base = txt2img.run(tiny_sd15, {"model": "tiny-sd15", "prompt": "a red circle", "steps": 2, "seed": 11,
                                   "width": 64, "height": 64}).images[0]
    upscaled = np.asarray(base.resize((128, 128), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(np.asarray(a.images[0]).astype(int) - upscaled).mean() > 5


def test_default_upscaler_is_per_family(tiny_sd15, tiny_qwen):
    assert _run(tiny_sd15, hr_scale=1.5).metadata[0]["hires"]["upscaler"] == "latent"
    assert _run(tiny_qwen, hr_scale=1.5).metadata[0]["hires"]["upscaler"] == "lanczos"


@pytest.mark.parametrize("scale", [1.0, 0.5, 4.5])
def test_scale_outside_the_range_is_refused(tiny_sd15, scale):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, hr_scale=scale)
    assert e.value.field == "hr_scale" and str(scale) in e.value.message


def test_target_over_the_family_max_size_names_the_largest_scale(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, width=1024, height=512, hr_scale=3.0)
    assert e.value.field == "hr_scale" and "3072x1536" in e.value.message and "hr_scale <= 2.00" in e.value.hint


def test_latent_upscaler_is_refused_for_qwen(tiny_qwen):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_qwen, hr_upscaler="latent")
    assert e.value.field == "hr_upscaler" and "lanczos" in e.value.hint


def test_second_pass_without_a_whole_step_is_refused(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, hr_steps=2, hr_denoise=0.3)
    assert e.value.field == "hr_denoise" and "hr_steps >= 4" in e.value.hint


def test_the_memory_plan_is_sized_for_the_second_pass(monkeypatch):
    """A hires fix from 64 to 128 must be planned at 128x128, or a tight budget runs out of memory."""
    from lightdiff.runtime import plan as plans
    from lightdiff.workflows.engine import Engine

    seen = []
    real_choose = plans.choose

    def spy(spec, width, height, *args, **kw):
        seen.append((width, height))
        return real_choose(spec, width, height, *args, **kw)

    monkeypatch.setattr(plans, "choose", spy)
    Engine(device="cpu").run({"workflow": "hires_fix", "model": "tiny-sd15", "prompt": "x", "seed": 1, "steps": 2,
                              "hr_scale": 2.0, "hr_steps": 2})
    assert seen and seen[0] == (128, 128)
