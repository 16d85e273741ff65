"""Weight sources: a local diffusers folder, a single-file checkpoint, refused pickles, offline hub,
synthetic real-size builds (meta, then materialised on the device)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightdiff import specs
from lightdiff.errors import InvalidRequest, UnsafeWeightsFormat, WeightsNotFound
from lightdiff.runtime import build, loader
from lightdiff.runtime.loader import resolve_source
from lightdiff.workflows import txt2img


def _pixels(loaded, seed=11):
    r = txt2img.run(loaded, {"model": loaded.spec.id, "prompt": "a blue star", "seed": seed, "steps": 2})
    return np.asarray(r.images[0]).astype(int)


def test_resolve_source_kinds(tmp_path):
    sd = specs.get("sd15")
    assert resolve_source(sd, "auto").location == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_source(sd, "hub:someone/fork") == loader.WeightSource("hub", "someone/fork")
    assert resolve_source(sd, "twin") == loader.WeightSource("twin", "tiny-sd15")
    assert resolve_source(sd, "synthetic").kind == "synthetic"
    assert resolve_source(sd, str(tmp_path)).kind == "local"
    assert resolve_source(sd, "model.safetensors").kind == "single-file"
    with pytest.raises(InvalidRequest):
        resolve_source(sd, "nonsense")


@pytest.mark.parametrize("model_id", ["tiny-sd15", "tiny-qwen-image"])
def test_local_diffusers_folder_gives_identical_pixels(tmp_path, model_id, request):
    twin = request.getfixturevalue("tiny_sd15" if "sd15" in model_id else "tiny_qwen")
    twin.pipe.save_pretrained(tmp_path / "model")
    local = loader.load(model_id, str(tmp_path / "model"))
    assert local.source.kind == "local"
    assert np.array_equal(_pixels(local), _pixels(twin))


def test_local_folder_without_model_index_is_explained(tmp_path):
    with pytest.raises(WeightsNotFound) as e:
        loader.load("tiny-sd15", str(tmp_path))
    assert "model_index.json" in e.value.message and str(tmp_path) in e.value.message


def test_single_file_checkpoint_round_trip(tmp_path, tiny_sd15):
    from lightdiff.runtime.single_file import export_single_file

    path = export_single_file(tiny_sd15.pipe, tmp_path / "tiny.safetensors")
    loaded = loader.load("tiny-sd15", str(path))
    assert loaded.source.kind == "single-file"
    assert np.array_equal(_pixels(loaded), _pixels(tiny_sd15))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeWeightsFormat) as e:
        loader.load("tiny-sd15", str(path), allow_unsafe_pickle=False)
    assert "pickle" in e.value.message and "--allow-unsafe-pickle" in e.value.hint


def test_offline_hub_error_lists_missing_files(tmp_path):
    code = ("from lightdiff.runtime import loader\n"
            "from lightdiff.errors import WeightsNotFound\n"
            "try:\n    loader.load('sd15', 'hub')\n"
            "except WeightsNotFound as e:\n    print('MSG', e.message); print('HINT', e.hint)\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MSG" in out.stdout, out.stderr[-2000:]
    assert "model_index.json" in out.stdout and "stable-diffusion-v1-5/stable-diffusion-v1-5" in out.stdout
    assert "HF_HUB_OFFLINE" in out.stdout and "huggingface-cli download" in out.stdout


def test_single_file_of_a_real_model_without_tokenizer_says_what_is_missing(tmp_path, tiny_sd15, monkeypatch):
    from lightdiff.runtime.single_file import export_single_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = export_single_file(tiny_sd15.pipe, tmp_path / "x.safetensors")
    with pytest.raises(WeightsNotFound) as e:
        loader.load("sd15", str(path))
    assert "tokenizer" in e.value.message and "huggingface-cli download" in e.value.hint


def test_synthetic_materialises_on_device_with_buffers_intact():
    spec = specs.get("tiny-qwen-image")
    comps = build.build_synthetic(spec, "cpu", torch.bfloat16, seed=1)
    for name in spec.weight_components():
        params = list(comps[name].parameters())
        assert params and all(not p.is_meta and p.dtype == torch.bfloat16 for p in params)
        assert all(not b.is_meta for b in comps[name].buffers())
    again = build.build_synthetic(spec, "cpu", torch.bfloat16, seed=1)
    w1 = next(comps["transformer"].parameters())
    assert torch.equal(w1, next(again["transformer"].parameters()))  # deterministic by seed


def test_synthetic_source_runs_and_is_labelled():
    loaded = loader.load("tiny-sd15", "synthetic", dtype=torch.float32)
    r = txt2img.run(loaded, {"model": "tiny-sd15", "prompt": "x", "seed": 1, "steps": 2})
    assert np.isfinite(np.asarray(r.images[0], dtype=float)).all()
    assert r.metadata[0]["synthetic"] and r.metadata[0]["weights"] == "synthetic"
