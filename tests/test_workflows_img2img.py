"""img2img on both families' tiny twins: strength 0 keeps the image, strength > 0 repaints it."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import img2img


def _picture(w, h, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _px(im):
    return np.asarray(im).astype(int)


def _run(loaded, init, **kw):
    return img2img.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", "init_image": _b64(init),
                                "steps": 2, "seed": 5, **kw})


def test_strength_zero_returns_the_init_image(twin):
    init = _picture(64, 64)
    r = _run(twin, init, strength=0.0, batch_size=2)
    assert len(r.images) == 2
    for im in r.images:
        assert np.array_equal(_px(im), _px(init))
    assert any("strength 0" in w for w in r.warnings)


def test_strength_zero_with_another_size_returns_the_init_image_resized(twin):
    init = _picture(96, 80)
    r = _run(twin, init, strength=0.0, width=64, height=64)
    assert r.images[0].size == (64, 64)
    assert np.array_equal(_px(r.images[0]), _px(init.resize((64, 64), Image.Resampling.LANCZOS)))
    assert any("resized to 64x64" in w for w in r.warnings)


def test_strength_repaints_and_same_seed_repeats(twin):
    init = _picture(64, 64)
    a, b = _run(twin, init, strength=0.75), _run(twin, init, strength=0.75)
    assert np.array_equal(_px(a.images[0]), _px(b.images[0]))
    assert np.abs(_px(a.images[0]) - _px(init)).mean() > 5
    m = a.metadata[0]
    assert m["workflow"] == "img2img" and m["denoising_strength"] == 0.75
    assert m["inputs"]["init_image"]["width"] == 64
    again = img2img.run(twin, m["request"])  # the stored request alone makes the same image
    assert np.array_equal(_px(again.images[0]), _px(a.images[0]))


def test_size_defaults_to_the_init_image_rounded_to_the_family_multiple(twin):
    r = _run(twin, _picture(72, 88), strength=0.5)
    multiple = twin.spec.rules.size_multiple
    assert r.images[0].size == (72 // multiple * multiple, 88 // multiple * multiple)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_zero_one_is_refused(tiny_sd15, strength):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, _picture(64, 64), strength=strength)
    assert e.value.field == "strength" and str(strength) in e.value.message


def test_strength_too_small_for_the_steps_names_the_fix(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, _picture(64, 64), strength=0.2, steps=2)
    assert e.value.field == "strength" and "steps >= 5" in e.value.hint


def test_undecodable_init_image_is_refused(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        img2img.run(tiny_sd15, {"model": "tiny-sd15", "prompt": "x",
                                "init_image": base64.b64encode(b"\x89PNG broken").decode()})
    assert e.value.field == "init_image" and "could not be decoded" in e.value.message
