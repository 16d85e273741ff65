"""Image inputs of workflows: one convention (path, data URI, base64), and refusals that name the field."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lightdiff.errors import InvalidRequest
from lightdiff.workflows import images
from lightdiff.workflows.engine import Engine


def _picture(w=32, h=24, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _encoded(im, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_path_data_uri_and_base64_give_the_same_pixels(tmp_path):
    im = _picture()
    data = _encoded(im)
    (tmp_path / "in.png").write_bytes(data)
    for value in (str(tmp_path / "in.png"), "data:image/png;base64," + _b64(data), _b64(data)):
        assert np.array_equal(np.asarray(images.load(value, "init_image")), np.asarray(im))


def test_jpeg_and_webp_are_accepted_gif_is_not():
    for fmt in ("JPEG", "WEBP"):
        assert images.load(_b64(_encoded(_picture(), fmt)), "init_image").size == (32, 24)
    with pytest.raises(InvalidRequest) as e:
        images.load(_b64(_encoded(_picture(), "GIF")), "mask_image")
    assert e.value.field == "mask_image" and "PNG, JPEG or WebP" in e.value.hint


@pytest.mark.parametrize("value,words", [
    (_b64(b"this is not an image at all"), ["could not be decoded"]),
    ("%%% not base64 %%%", ["neither an existing file nor valid base64"]),
    ("./no/such/picture.png", ["there is no file"]),
    ("data:image/png;base64,@@@", ["valid base64"]),
])
def test_undecodable_input_names_the_field(value, words):
    with pytest.raises(InvalidRequest) as e:
        images.load(value, "control_image")
    assert e.value.field == "control_image"
    for w in words:
        assert w in e.value.message


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header declares width x height (what a decompression bomb looks like)."""
    data = bytearray(_encoded(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("side", [9000, 20000])  # over our limit; also over Pillow's own bomb limit
def test_oversized_canvas_is_refused_before_its_pixels_are_read(side):
    with pytest.raises(InvalidRequest) as e:
        images.load(_b64(_png_claiming(side, side)), "init_image")
    assert e.value.field == "init_image" and "pixels" in e.value.message and "Resize" in e.value.hint


def test_transparency_is_white_in_a_picture_and_keep_in_a_mask():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 255, 255, 255))
    value = _b64(_encoded(rgba))
    assert images.load(value, "init_image").getpixel((5, 5)) == (255, 255, 255)
    mask = images.load(value, "mask_image", mode="L")
    assert mask.getpixel((5, 5)) == 0 and mask.getpixel((0, 0)) == 255


def test_paths_can_be_refused_for_remote_callers(tmp_path):
    (tmp_path / "in.png").write_bytes(_encoded(_picture()))
    with pytest.raises(InvalidRequest) as e:
        images.load(str(tmp_path / "in.png"), "init_image", allow_paths=False)
    assert "not accepted" in e.value.message


def test_relative_paths_are_kept_absolute(tmp_path, monkeypatch):
    (tmp_path / "in.png").write_bytes(_encoded(_picture()))
    monkeypatch.chdir(tmp_path)
    assert images.compact_request({"init_image": "in.png"})["init_image"] == str(tmp_path.resolve() / "in.png")


def test_large_inline_images_are_kept_as_a_hash_and_asked_for_again():
    big = _b64(_encoded(_picture(400, 400)))
    assert len(big) > images.INLINE_LIMIT
    kept = images.compact_request({"init_image": big, "mask_image": "small", "prompt": "x"})
    assert kept["init_image"].startswith("sha256:") and kept["mask_image"] == "small"
    with pytest.raises(InvalidRequest) as e:
        images.load(kept["init_image"], "init_image")
    assert e.value.field == "init_image" and "--set init_image=" in e.value.hint


@pytest.mark.parametrize("workflow,field,extra", [
    ("img2img", "init_image", {}),
    ("inpaint", "mask_image", {"init_image": _b64(_encoded(_picture(64, 64)))}),
    ("controlnet", "control_image", {}),
])
def test_engine_refuses_bad_images_before_loading_weights(workflow, field, extra):
    engine = Engine(device="cpu")
    request = {"workflow": workflow, "model": "tiny-sd15", "prompt": "x", field: _b64(b"GIF89a broken"), **extra}
    with pytest.raises(InvalidRequest) as e:
        engine.parse(request)
    assert e.value.field == field
    assert engine.pool.loaded() == []
