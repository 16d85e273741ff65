"""inpaint on both families' tiny twins: the white part of the mask is repainted, the rest is untouched."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import inpaint


def _picture(w=64, h=64, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _mask(w=64, h=64, box=(24, 24, 40, 40)):
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def _b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _px(im):
    return np.asarray(im).astype(int)


def _far_from(box, size=64, margin=12):
    """Pixels further than ``margin`` from the box: beyond any blur of the mask edge."""
    far = np.ones((size, size), bool)
    x0, y0, x1, y1 = box
    far[max(0, y0 - margin):y1 + margin + 1, max(0, x0 - margin):x1 + margin + 1] = False
    return far


def _run(loaded, init, mask, **kw):
    return inpaint.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", "init_image": _b64(init),
                                "mask_image": _b64(mask), "strength": 1.0, "steps": 2, "seed": 3, **kw})


@pytest.mark.parametrize("padding", [None, 8])
def test_outside_the_mask_stays_unchanged_inside_is_repainted(twin, padding):
    init, box = _picture(), (24, 24, 40, 40)
    r = _run(twin, init, _mask(box=box), mask_padding=padding)
    diff = np.abs(_px(r.images[0]) - _px(init)).max(axis=-1)
    assert r.images[0].size == (64, 64)
    assert diff[_far_from(box)].max() <= 1
    assert diff[box[1]:box[3], box[0]:box[2]].mean() > 5
    assert r.metadata[0]["mask_padding"] == padding and r.metadata[0]["mask_blur"] == 4


def test_inverted_mask_keeps_the_inside(tiny_sd15):
    init, box = _picture(), (16, 16, 48, 48)
    r = _run(tiny_sd15, init, _mask(box=box), invert_mask=True, mask_blur=0)
    diff = np.abs(_px(r.images[0]) - _px(init)).max(axis=-1)
    assert diff[box[1] + 1:box[3], box[0] + 1:box[2]].max() == 0
    assert diff[_far_from(box, margin=2)].mean() > 5


def test_mask_of_another_size_is_stretched_with_a_warning(twin):
    init = _picture()
    r = _run(twin, init, _mask(32, 32, box=(12, 12, 19, 19)))  # the same region at half the size
    assert any("mask_image is 32x32 but init_image is 64x64" in w for w in r.warnings)
    diff = np.abs(_px(r.images[0]) - _px(init)).max(axis=-1)
    assert diff[_far_from((24, 24, 39, 39))].max() <= 1
    assert diff[24:40, 24:40].mean() > 5


def test_all_black_mask_returns_the_image_unchanged(tiny_sd15):
    init = _picture()
    r = _run(tiny_sd15, init, Image.new("L", (64, 64), 0))
    assert np.array_equal(_px(r.images[0]), _px(init))
    assert any("all black" in w for w in r.warnings)


def test_inpainting_checkpoint_with_a_9_channel_unet(tmp_path, tiny_sd15):
    """An SD1.5 inpainting checkpoint (UNet reads latents + mask + masked image), from a diffusers folder."""
    import torch
    from diffusers import UNet2DConditionModel

    from lightdiff.runtime import loader

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**tiny_sd15.pipe.unet.config, "in_channels": 9})
    pipe = type(tiny_sd15.pipe)(**{**tiny_sd15.pipe.components, "unet": unet})
    pipe.save_pretrained(tmp_path / "inpainting")
    loaded = loader.load("tiny-sd15", weights=str(tmp_path / "inpainting"))
    assert loaded.pipe.unet.config.in_channels == 9
    init, box = _picture(), (24, 24, 40, 40)
    r = _run(loaded, init, _mask(box=box))
    diff = np.abs(_px(r.images[0]) - _px(init)).max(axis=-1)
    assert diff[_far_from(box)].max() <= 1 and diff[24:40, 24:40].mean() > 5
    assert r.metadata[0]["weights"].startswith("local:")


def test_undecodable_mask_is_refused(tiny_sd15):
    with pytest.raises(InvalidRequest) as e:
        inpaint.run(tiny_sd15, {"model": "tiny-sd15", "prompt": "x", "init_image": _b64(_picture()),
                                "mask_image": "bm90IGFuIGltYWdl"})
    assert e.value.field == "mask_image" and "could not be decoded" in e.value.message


@pytest.mark.parametrize("field,value", [("strength", 1.01), ("mask_blur", -1), ("mask_padding", -5)])
def test_out_of_range_options_name_the_field(tiny_sd15, field, value):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, _picture(), _mask(), **{field: value})
    assert e.value.field == field
