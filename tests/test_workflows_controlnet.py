"""ControlNet canny on both families' tiny twins: edges come back, scale 0 is txt2img, wrong family is refused."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lightdiff.errors import InvalidRequest, WeightsNotFound
from lightdiff.workflows import controlnet, txt2img


def _square() -> Image.Image:
    """A white square on black: Canny edges lie on its border and nowhere else."""
    im = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(im).rectangle([16, 16, 47, 47], fill="white")
    return im


def _b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _px(im):
    return np.asarray(im).astype(int)


def _run(loaded, **kw):
    return controlnet.run(loaded, {"model": loaded.spec.id, "prompt": "a red circle", "control_image": _b64(_square()),
                                   "steps": 2, "seed": 21, **kw})


def test_scale_zero_equals_txt2img_with_the_same_seed_and_scale_one_differs(twin):
    plain = txt2img.run(twin, {"model": twin.spec.id, "prompt": "a red circle", "steps": 2, "seed": 21,
                               "width": 64, "height": 64, "batch_size": 2})
    off = _run(twin, control_scale=0.0, batch_size=2)
    on = _run(twin, control_scale=1.0, batch_size=2)
    for i in range(2):
        assert np.array_equal(_px(off.images[i]), _px(plain.images[i]))
        assert np.abs(_px(on.images[i]) - _px(plain.images[i])).max() > 5
    assert on.metadata[0]["controlnet"] == "twin" and on.metadata[0]["control_scale"] == 1.0


def test_canny_edges_are_returned_and_lie_on_the_shape_border(tiny_sd15):
    r = _run(tiny_sd15, canny_low=50, canny_high=150)
    edges = _px(r.extras["edges"])[..., 0]
    assert set(np.unique(edges)) == {0, 255}
    border = np.zeros((64, 64), bool)
    border[14:50, 14:50] = True
    border[18:46, 18:46] = False
    assert edges[border].sum() > 0 and edges[~border].sum() == 0
    assert r.metadata[0]["canny"] == [50, 150]


def test_preprocessor_none_uses_the_image_as_the_control_map(tiny_sd15):
    r = _run(tiny_sd15, preprocessor="none")
    assert np.array_equal(_px(r.extras["edges"]), _px(_square()))


def test_a_controlnet_folder_loads_and_matches_the_same_weights(tmp_path, tiny_sd15):
    cn, _ = controlnet.get_controlnet(tiny_sd15, "twin")
    cn.save_pretrained(tmp_path / "cn")
    from_twin = _run(tiny_sd15)
    from_folder = _run(tiny_sd15, controlnet=str(tmp_path / "cn"))
    assert from_folder.metadata[0]["controlnet"] == f"local:{tmp_path / 'cn'}"
    assert np.array_equal(_px(from_folder.images[0]), _px(from_twin.images[0]))


def test_controlnet_of_the_wrong_family_is_refused(tmp_path, tiny_sd15, tiny_qwen):
    with pytest.raises(InvalidRequest) as e:  # a known hub id, refused before any download
        _run(tiny_qwen, controlnet="lllyasviel/control_v11p_sd15_canny")
    assert e.value.field == "controlnet" and "sd15" in e.value.message and "qwen-image" in e.value.message
    qwen_cn, _ = controlnet.get_controlnet(tiny_qwen, "twin")
    qwen_cn.save_pretrained(tmp_path / "qwen-cn")
    with pytest.raises(InvalidRequest) as e:  # a folder: its config names the class
        _run(tiny_sd15, controlnet=str(tmp_path / "qwen-cn"))
    assert e.value.field == "controlnet" and "is for qwen-image" in e.value.message


def test_controlnet_of_another_model_size_is_refused(tmp_path, tiny_qwen):
    import diffusers

    config = {**controlnet.CONTROLNETS["qwen-image"]["twin_config"], "joint_attention_dim": 32}
    diffusers.QwenImageControlNetModel.from_config(config).save_pretrained(tmp_path / "wide")
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_qwen, controlnet=str(tmp_path / "wide"))
    assert e.value.field == "controlnet" and "joint_attention_dim 32 vs 16" in e.value.message


def test_hub_controlnet_missing_offline_says_how_to_get_it(tiny_sd15):
    with pytest.raises(WeightsNotFound) as e:
        _run(tiny_sd15, controlnet="hub")
    assert "lllyasviel/control_v11p_sd15_canny" in e.value.message and "huggingface-cli download" in e.value.hint


@pytest.mark.parametrize("fields,bad", [
    ({"control_start": 0.6, "control_end": 0.4}, "control_start"),
    ({"canny_low": 200, "canny_high": 100}, "canny_low"),
    ({"control_scale": 2.5}, "control_scale"),
    ({"control_end": 1.5}, "control_end"),
])
def test_bad_control_options_name_the_field(tiny_sd15, fields, bad):
    with pytest.raises(InvalidRequest) as e:
        _run(tiny_sd15, **fields)
    assert e.value.field == bad
