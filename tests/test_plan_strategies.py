"""Every memory strategy gives the resident plan's image (tiny twins, CPU), within a stated tolerance."""

import numpy as np
import pytest

from lightdiff.runtime import loader
from lightdiff.runtime import plan as plans
from lightdiff.runtime.plan import Strategy
from lightdiff.workflows import txt2img

# Max absolute pixel difference (0-255) from the resident plan at the same seed, measured on the
# tiny twins: lossless placements are bit-identical; fp8 storage changed up to 11 (sd15 twin) and
# 2 (Qwen twin) levels, torchao int8 up to 1. The tolerance leaves headroom over those.
TOLERANCE = {"lossless": 0, "fp8": 16, "int8": 4}
MODELS = ["tiny-sd15", "tiny-qwen-image"]
REQUEST = {"prompt": "a red cube on a table", "seed": 5, "steps": 2, "batch_size": 2}


def _pixels(loaded, **extra):
    r = txt2img.run(loaded, {"model": loaded.spec.id, **REQUEST, **extra})
    return np.stack([np.asarray(im).astype(int) for im in r.images])


@pytest.fixture(scope="module")
def baseline():
    return {m: _pixels(_placed(m, Strategy.RESIDENT)) for m in MODELS}


def _placed(model, strategy, **options):
    loaded = loader.load(model, device="cpu")
    plan = plans.plan_for(strategy, model, 64, 64, 2)
    if options:
        plan = plan.with_options(**options)
    strategy.apply(loaded, "cpu", plan=plan)
    return loaded


def _tolerance(strategy):
    if not strategy.value.lossy:
        return TOLERANCE["lossless"]
    return TOLERANCE["int8" if strategy is Strategy.INT8_WEIGHT else "fp8"]


@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.label)
@pytest.mark.parametrize("model", MODELS)
def test_every_strategy_matches_resident(model, strategy, baseline):
    if strategy.value.cuda_only:
        pytest.skip(f"{strategy.label} needs CUDA: accelerate cannot use the CPU as its execution device")
    if strategy is Strategy.INT8_WEIGHT and not plans.torchao_available():
        pytest.skip("int8-weight needs torchao (pip install torchao)")
    loaded = _placed(model, strategy)
    assert loaded.plan == strategy.label and loaded.plan_info["strategy"] == strategy.label
    diff = np.abs(_pixels(loaded) - baseline[model]).max()
    assert diff <= _tolerance(strategy), f"{strategy.label} on {model}: max pixel difference {diff}"


def test_partial_group_offload_keeps_some_blocks_resident():
    loaded = _placed("tiny-qwen-image", Strategy.GROUP_OFFLOAD)
    blocks = loaded.pipe.transformer.transformer_blocks
    layout = loaded.plan_info["predicted"]["options"]["layout"]
    hooked = [hasattr(b, "_diffusers_hook") and b._diffusers_hook.get_hook("group_offloading") is not None
              for b in blocks]
    assert layout["streamed"] == 1 and hooked == [False, True]  # block 0 resident, block 1 streamed


@pytest.mark.parametrize("mode", ["streamed", "paged"])
def test_text_encoder_runs_once_per_prompt_and_can_be_streamed(baseline, mode):
    loaded = _placed("tiny-qwen-image", Strategy.RESIDENT, text_encoder=mode)
    te = loaded.pipe.text_encoder
    assert any(hasattr(m, "_diffusers_hook") for m in te.modules())  # leaf-level group offloading
    first = _pixels(loaded)
    again = _pixels(loaded)
    assert loaded.plan_state.encoder_runs == 2  # the prompt and the negative prompt, once each
    assert np.array_equal(first, baseline["tiny-qwen-image"]) and np.array_equal(again, first)
    _pixels(loaded, prompt="another prompt")
    assert loaded.plan_state.encoder_runs == 3


def test_in_place_pinning_reports_what_it_did_in_every_images_metadata(monkeypatch):
    import torch

    # in-place pinning (the default): each streamed part's outcome is recorded; without CUDA nothing is pinned and
    # the images stay those of the resident plan
    loaded = _placed("tiny-qwen-image", Strategy.GROUP_OFFLOAD, text_encoder="streamed")
    expected = {"text_encoder": {"skipped": "no CUDA"}, "denoiser_blocks": {"skipped": "no CUDA"}}
    if torch.cuda.is_available():  # the CPU placement on a GPU machine pins for real
        expected = {part: {"pinned_bytes": loaded.pinned[part].get("pinned_bytes", -1)} for part in expected}
    assert loaded.plan_info["pinned"] == expected
    r = txt2img.run(loaded, {"model": loaded.spec.id, **REQUEST})
    assert r.metadata[0]["plan_info"]["pinned"] == expected
    monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", "0")
    assert "pinned" not in _placed("tiny-qwen-image", Strategy.GROUP_OFFLOAD, text_encoder="streamed").plan_info


def test_derived_pipelines_keep_fp8_storage_and_the_prompt_cache():
    import torch

    loaded = _placed("tiny-sd15", Strategy.FP8_STORAGE)
    img2img = loaded.pipeline("img2img")
    dtypes = {p.dtype for p in loaded.pipe.unet.parameters()}
    assert torch.float8_e4m3fn in dtypes  # diffusers' from_pipe would have cast it back
    assert img2img.unet is loaded.pipe.unet and getattr(img2img, "_lightdiff_cached_encode", False)
