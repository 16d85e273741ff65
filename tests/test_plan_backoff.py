"""Out-of-memory and bad-output recovery in the engine, with faults injected into tiny twins on CPU."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.autoencoders.vae import Decoder

from lightdiff.errors import BadOutput, OutOfMemory
from lightdiff.workflows.engine import Engine

REQ = {"model": "tiny-sd15", "prompt": "a green bottle", "seed": 9, "steps": 2}


class Faults:
    """Make a module's forward fail for its first ``k`` calls (k=None: always)."""

    def __init__(self, monkeypatch, cls, k, make_error, method="forward"):
        self.calls, self.k = 0, k
        original = getattr(cls, method)

        def faulty(module, *args, **kwargs):
            self.calls += 1
            if self.k is None or self.calls <= self.k:
                return make_error(module, original, args, kwargs)
            return original(module, *args, **kwargs)

        monkeypatch.setattr(cls, method, faulty)


def oom(*_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def nan_pixels(module, original, args, kwargs):
    return original(module, *args, **kwargs).fill_(float("nan"))  # as an fp16 overflow would leave them


def _pixels(result):
    return np.stack([np.asarray(im).astype(int) for im in result.images])


@pytest.fixture(scope="module")
def clean():
    return _pixels(Engine(device="cpu").run({**REQ, "batch_size": 4}))


def test_oom_in_a_batch_splits_it_and_still_makes_every_image(monkeypatch, clean):
    Faults(monkeypatch, UNet2DConditionModel, 1, oom)
    result = Engine(device="cpu").run({**REQ, "batch_size": 4})
    assert len(result.images) == 4 and np.array_equal(_pixels(result), clean)
    assert result.metadata[0]["fallbacks"] == ["split-batch 4->2+2"]
    assert [m["index"] for m in result.metadata] == [0, 1, 2, 3]
    assert any("split-batch" in w for w in result.warnings)


def test_oom_at_vae_decode_turns_on_tiling(monkeypatch, clean):
    Faults(monkeypatch, AutoencoderKL, 1, oom, method="decode")
    result = Engine(device="cpu").run({**REQ, "batch_size": 4})
    assert result.metadata[0]["fallbacks"][0] == "vae-tiling"
    assert len(result.images) == 4
    # the same latents decoded in tiles (the twin's VAE tiles at 32 px, so seams are blended)
    assert np.abs(_pixels(result) - clean).mean() < 4


def test_oom_at_batch_one_moves_to_a_cheaper_plan(monkeypatch, clean):
    Faults(monkeypatch, UNet2DConditionModel, 2, oom)
    engine = Engine(device="cpu")
    result = engine.run(REQ)
    fallbacks = result.metadata[0]["fallbacks"]
    assert fallbacks[0] == "vae-tiling" and fallbacks[1].startswith("plan resident->")
    assert result.metadata[0]["plan"] != "resident" and len(result.images) == 1
    assert np.abs(_pixels(result)[0] - clean[0]).mean() < 4  # fp8 storage and tiled decoding change a few levels


def test_out_of_memory_text_in_a_runtime_error_counts_too(monkeypatch):
    def runtime_oom(*_):
        raise RuntimeError("CUDA error: out of memory")
    Faults(monkeypatch, UNet2DConditionModel, 1, runtime_oom)
    assert Engine(device="cpu").run({**REQ, "batch_size": 2}).metadata[0]["fallbacks"] == ["split-batch 2->1+1"]


def test_persistent_oom_is_a_clear_error_and_the_next_request_works(monkeypatch):
    engine = Engine(device="cpu", max_retries=12)
    with monkeypatch.context() as m:
        Faults(m, UNet2DConditionModel, None, oom)
        with pytest.raises(OutOfMemory) as e:
            engine.run({**REQ, "batch_size": 2})
    assert "tiny-sd15 at 64x64, batch 2 ran out of GPU memory during denoise" in e.value.message
    assert "split-batch" in e.value.message and "--plan sequential-offload" in e.value.hint
    result = engine.run(REQ)
    assert len(result.images) == 1 and result.metadata[0]["fallbacks"] == []


def test_nan_at_decode_is_retried_in_float32_then_is_bad_output(monkeypatch):
    engine = Engine(device="cpu")
    with monkeypatch.context() as m:
        Faults(m, Decoder, 1, nan_pixels)
        result = engine.run(REQ)
    assert result.metadata[0]["fallbacks"] == ["vae-fp32"]
    assert np.asarray(result.images[0]).max() > 0
    with monkeypatch.context() as m:
        Faults(m, Decoder, None, nan_pixels)
        with pytest.raises(BadOutput) as e:
            engine.run(REQ)
    assert "NaN" in e.value.message and "float32" in e.value.message
    assert len(engine.run(REQ).images) == 1  # and the engine still works


def test_tiling_from_one_request_does_not_outlive_it(monkeypatch, clean):
    """The next request decodes as its own plan says (whole images here), so its predicted peak holds."""
    engine = Engine(device="cpu")
    faults = Faults(monkeypatch, AutoencoderKL, 1, oom, method="decode")
    first = engine.run({**REQ, "batch_size": 4})
    assert first.metadata[0]["fallbacks"][0] == "vae-tiling" and faults.calls >= 2
    vae = engine.pool.loaded()[0].pipe.vae
    again = engine.run({**REQ, "batch_size": 4})
    assert again.metadata[0]["fallbacks"] == [] and not vae.use_tiling
    assert again.metadata[0]["plan_info"]["predicted"]["options"]["vae_tiling"] is False
    assert np.array_equal(_pixels(again), clean)


def test_half_tiles_are_set_on_the_qwen_vae_and_default_tiles_restored(tiny_qwen):
    """The planner's half tiles reach diffusers' Qwen VAE (tile side and stride), a later request's default tiles
    restore diffusers' own sizes, and a 2 x 2 tiled decode still gives the untiled image where the tiles overlap."""
    from types import SimpleNamespace

    from lightdiff.runtime.plan_apply import set_vae_tiling

    vae = tiny_qwen.pipe.vae
    own = (vae.tile_sample_min_height, vae.tile_sample_stride_height)
    loaded = SimpleNamespace(pipe=tiny_qwen.pipe, plan_info={})
    torch.manual_seed(0)
    side = 192 // vae.spatial_compression_ratio  # latents that decode to 192 px
    z = torch.randn(1, vae.config.z_dim, 1, side, side)
    try:
        vae.disable_tiling()
        whole = vae.decode(z).sample
        set_vae_tiling(loaded, True, 160)  # 192 // 2 + 64: 2 x 2 tiles at stride 96
        assert (vae.use_tiling, vae.tile_sample_min_height, vae.tile_sample_stride_width) == (True, 160, 96)
        assert loaded.plan_info["vae_tile_px"] == 160
        tiled = vae.decode(z).sample
        assert tiled.shape == whole.shape == (1, 3, 1, 192, 192) and not torch.equal(tiled, whole)  # it did tile
        assert (tiled - whole).abs().mean() < 0.25 * whole.abs().mean()
        set_vae_tiling(loaded, True)
        assert (vae.tile_sample_min_height, vae.tile_sample_stride_height) == own
        set_vae_tiling(loaded, False)
        assert not vae.use_tiling and loaded.plan_info["vae_tile_px"] is None
    finally:
        vae.disable_tiling()
        vae.disable_slicing()


def test_oom_beside_recorded_cuda_graphs_drops_them_first(monkeypatch):
    # each image size records its own block graphs and keeps their pool (H100, 24 GB budget: a 768 request
    # after a 1024 one); the back-off drops the graphs before it gives up anything the user asked for
    from lightdiff.runtime import fastpath
    from lightdiff.workflows import engine as engine_mod

    req = {"model": "tiny-qwen-image", "prompt": "a red kite", "seed": 3, "steps": 2, "width": 64, "height": 64}
    engine = Engine(device="cpu")
    clean = _pixels(engine.run(req))
    loaded = engine.pool.peek("tiny-qwen-image", "auto")
    loaded.plan_info = {**loaded.plan_info, "compiled": "repeated blocks, CUDA graphs"}  # as attach_fast_path on CUDA
    resets = []
    monkeypatch.setattr(engine_mod, "reset_cuda_graphs", lambda den=None: resets.append(1))
    Faults(monkeypatch, type(loaded.pipe.transformer), 1, oom)
    result = engine.run(req)
    assert result.metadata[0]["fallbacks"] == ["cuda-graphs-reset"] and resets == [1]
    assert result.metadata[0]["plan"] == loaded.plan and np.array_equal(_pixels(result), clean)
    assert fastpath.has_cuda_graph_blocks(loaded) and not fastpath.has_cuda_graph_blocks(object())
