"""txt2img end to end on both families' tiny twins (the real diffusers code path, on the CPU)."""

import math

import numpy as np
import pytest

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import txt2img


def _px(result, i=0):
    return np.asarray(result.images[i]).astype(int)


def _run(loaded, **kw):
    return txt2img.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", **kw})


def test_same_seed_same_pixels_and_other_seed_differs(twin):
    a, b, c = _run(twin, seed=7), _run(twin, seed=7), _run(twin, seed=8)
    assert a.images[0].size == (twin.spec.defaults.width, twin.spec.defaults.height)
    assert np.array_equal(_px(a), _px(b))
    assert np.abs(_px(a) - _px(c)).max() > 10


def test_batch_gives_n_images_each_reproducible_alone(twin):
    batch = _run(twin, seed=100, batch_size=3)
    assert len(batch.images) == 3
    assert [m["seed"] for m in batch.metadata] == [100, 101, 102]
    alone = _run(twin, seed=101)
    assert np.abs(_px(batch, 1) - _px(alone)).max() <= 2  # batched matmuls may round differently


def test_negative_prompt_changes_the_image(twin):
    a = _run(twin, seed=3, negative_prompt="blurry")
    b = _run(twin, seed=3, negative_prompt="sharp, detailed, colourful")
    assert not np.array_equal(_px(a), _px(b))


def test_metadata_holds_what_reproduces_the_image(twin):
    r = _run(twin, seed=5, steps=3)
    m = r.metadata[0]
    assert (m["model"], m["seed"], m["steps"], m["plan"]) == (twin.spec.id, 5, 3, "resident")
    assert m["synthetic"] is True and "noise" in m["note"]
    assert m["request"]["prompt"] == "a red circle" and m["request"]["seed"] == 5
    assert m["versions"]["diffusers"].startswith("0.42")


def test_long_prompt_is_not_cut_silently(twin):
    r = _run(twin, seed=1, prompt="a red circle on a blue square " * 150)
    assert r.warnings and "ignored" in r.warnings[0]
    assert not _run(twin, seed=1).warnings


def test_sd15_schedulers_all_run(tiny_sd15):
    for name in ("euler", "euler_a", "dpm++2m", "ddim"):
        r = _run(tiny_sd15, seed=1, scheduler=name)
        assert r.metadata[0]["scheduler"] == name and np.isfinite(_px(r)).all()


def test_a_scheduler_keeps_no_state_from_the_request_before(tiny_sd15):
    # each request gets a fresh scheduler (a copy of one built per class): DPM++ keeps earlier steps' outputs
    first = {name: _px(_run(tiny_sd15, seed=3, scheduler=name)) for name in ("dpm++2m", "euler_a")}
    _run(tiny_sd15, seed=9, scheduler="dpm++2m", steps=3)  # another request in between, with another step count
    for name, pixels in first.items():
        assert np.array_equal(_px(_run(tiny_sd15, seed=3, scheduler=name)), pixels)
    import diffusers

    a, b = (tiny_sd15.new_scheduler(diffusers.DPMSolverMultistepScheduler) for _ in range(2))
    assert a is not b and a.model_outputs is not b.model_outputs
    assert dict(a.config) == dict(diffusers.DPMSolverMultistepScheduler.from_config(tiny_sd15.scheduler_config).config)


@pytest.mark.parametrize("field,value,words", [
    ("width", 65, ["65", "multiple of 8", "64 or 72"]),
    ("steps", 0, ["steps"]),
    ("guidance", math.nan, ["guidance"]),
    ("batch_size", 0, ["batch_size"]),
    ("scheduler", "plms", ["plms", "euler"]),
    ("seed", -1, ["seed"]),
])
def test_bad_input_names_the_field_and_value(tiny_sd15, field, value, words):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, **{field: value})
    assert e.value.field == field
    text = str(e.value)
    for w in words:
        assert w in text


def test_qwen_sizes_must_be_multiples_of_16(tiny_qwen):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_qwen, width=72)
    assert "16" in e.value.message and "64 or 80" in e.value.hint


def test_unknown_fields_are_refused(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, cfg_scale=7)
    assert e.value.field == "cfg_scale"
