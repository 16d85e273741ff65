"""PNG metadata (A1111 infotext + lightdiff JSON) and atomic writes."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lightdiff import outputs
from lightdiff.errors import InvalidRequest
from lightdiff.workflows import txt2img
from lightdiff.workflows.engine import Engine


def test_metadata_round_trip_and_a1111_infotext(tmp_path, tiny_sd15):
    r = txt2img.run(tiny_sd15, {"model": "tiny-sd15", "prompt": "a red circle", "negative_prompt": "blurry",
                                "seed": 42, "steps": 3, "guidance": 6.5})
    paths = Engine.save(r, tmp_path)
    meta = outputs.read_metadata(paths[0])
    assert meta["seed"] == 42 and meta["model"] == "tiny-sd15" and meta["steps"] == 3
    assert meta["request"]["negative_prompt"] == "blurry"
    lines = meta["parameters"].splitlines()
    assert lines[0] == "a red circle" and lines[1] == "Negative prompt: blurry"
    fields = dict(kv.split(": ", 1) for kv in lines[2].split(", "))
    assert fields["Steps"] == "3" and fields["Seed"] == "42" and fields["CFG scale"] == "6.5"
    assert fields["Size"] == "64x64" and fields["Sampler"] == "Euler"
    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(r.images[0]))


def test_file_names_never_come_from_the_prompt(tmp_path, tiny_sd15):
    r = txt2img.run(tiny_sd15, {"model": "tiny-sd15", "prompt": "../../etc/passwd; rm -rf ~", "seed": 1, "steps": 2})
    paths = Engine.save(r, tmp_path)
    assert all("passwd" not in p and p.startswith(str(tmp_path)) for p in paths)
    again = Engine.save(r, tmp_path)
    assert again != paths  # same second, same seed: a new name, nothing overwritten


def test_reading_a_png_without_metadata_is_explained(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(InvalidRequest) as e:
        outputs.read_metadata(tmp_path / "plain.png")
    assert "no lightdiff metadata" in e.value.message


def test_no_partial_file_when_the_process_dies_mid_write(tmp_path):
    # A child process starts writing a PNG and is killed (os._exit) halfway: the target name must
    # not exist, and only a hidden temporary file may remain.
    code = f"""
import os
from PIL import Image
from lightdiff import outputs
real_write = None
class Dying:
    def __init__(self, f): self.f = f
def die_midway(self, fp, *a, **k):
    fp.write(b"\\x89PNG partial")
    fp.flush()
    os._exit(9)
Image.Image.save = die_midway
outputs.save_png(Image.new("RGB", (64, 64)), {str(tmp_path / 'out.png')!r}, {{"seed": 1}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9
    assert not (tmp_path / "out.png").exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())
