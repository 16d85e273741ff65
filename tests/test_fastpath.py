"""The speed path computes the same images as plain diffusers (where it runs on the CPU)."""

from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

from lightdiff.runtime import fastpath
from lightdiff.workflows.base import generators


@pytest.mark.parametrize("batch", [1, 2])
def test_sd15_graph_loop_matches_diffusers_euler(tiny_sd15, batch):
    pipe = tiny_sd15.pipe
    original = pipe.scheduler
    try:
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(tiny_sd15.scheduler_config)
        ref = pipe(prompt="a red circle", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
                   guidance_scale=7.0, num_images_per_prompt=batch, generator=generators(5, batch)).images
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(tiny_sd15.scheduler_config)
        loop = fastpath.SD15GraphLoop(pipe, compiled=False)
        steps = []
        out = loop("a red circle", "blurry", 64, 64, 4, 7.0, generators(5, batch), num_images_per_prompt=batch,
                   callback=lambda p, i, t, kw: steps.append(i))
    finally:
        pipe.scheduler = original
    assert steps == [0, 1, 2, 3]
    for a, b in zip(ref, out):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_graph_loop_supports_only_what_it_reproduces(tiny_sd15):
    loop = fastpath.SD15GraphLoop(tiny_sd15.pipe, compiled=False)
    assert loop.supports("sd15", "euler", 7.0)
    assert not loop.supports("sd15", "dpm++2m", 7.0)
    assert not loop.supports("qwen-image", "euler", 4.0)
    assert not loop.supports("sd15", "euler", 1.0)  # no CFG: diffusers runs a single branch


def test_persistent_compile_cache_lives_in_lightdiff_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    assert fastpath.persist_compile_cache() == str(tmp_path / "inductor")


def test_graph_loop_marks_steps_for_every_mode_that_replays_cuda_graphs():
    """A replayed graph overwrites its output: the loop must mark each step and copy the latents for every
    compile mode that records CUDA graphs, max-autotune included, and for no other."""
    pipe = SimpleNamespace(unet=None, scheduler=SimpleNamespace(config={}))
    modes = {m: fastpath.SD15GraphLoop(pipe, compiled=True, mode=m).graphed
             for m in ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")}
    assert modes == {"reduce-overhead": True, "max-autotune": True, "max-autotune-no-cudagraphs": False,
                     "default": False}
    assert not fastpath.SD15GraphLoop(pipe, compiled=False, mode="reduce-overhead").graphed


@pytest.mark.gpu
@pytest.mark.parametrize("mode", fastpath.CUDA_GRAPH_MODES)
def test_compiled_graph_loop_matches_eager_on_gpu(mode):
    from lightdiff.runtime import loader

    lm = loader.load("tiny-sd15", device="cuda", dtype=torch.float16)
    pipe = lm.pipe
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    ref = pipe(prompt="x", width=64, height=64, num_inference_steps=4, guidance_scale=7.0,
               generator=generators(1, 1)).images[0]
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    out = fastpath.SD15GraphLoop(pipe, compiled=True, mode=mode)("x", None, 64, 64, 4, 7.0, generators(1, 1))[0]
    assert np.abs(np.asarray(ref, dtype=int) - np.asarray(out, dtype=int)).max() <= 3


def test_engine_fast_path_gives_the_plain_pipelines_pixels_and_says_so():
    from lightdiff.workflows.engine import Engine

    request = {"model": "tiny-sd15", "prompt": "a red circle", "seed": 4, "steps": 3, "batch_size": 2}
    plain = Engine(device="cpu", fast="off").run(request)
    fast = Engine(device="cpu", fast="eager").run(request)
    assert [m.get("fast_path") for m in fast.metadata] == ["graph-loop (eager)"] * 2
    assert all("fast_path" not in m for m in plain.metadata)
    for a, b in zip(plain.images, fast.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = Engine(device="cpu", fast="eager").run({**request, "scheduler": "dpm++2m"})
    assert all("fast_path" not in m for m in other.metadata)  # the loop only reproduces Euler


def test_engine_rejects_unknown_fast_mode():
    from lightdiff.errors import InvalidRequest
    from lightdiff.workflows.engine import Engine

    with pytest.raises(InvalidRequest) as e:
        Engine(device="cpu", fast="turbo")
    assert e.value.field == "fast"
