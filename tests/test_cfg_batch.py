"""Qwen-Image's true CFG in one batched forward gives the two-call pipeline's images (tiny twin, CPU)."""

import numpy as np
import pytest
import torch

from lightdiff.runtime import cfg_batch
from lightdiff.workflows.base import generators


def _run(pipe, prompt="a red cube on a table", negative="blurry", steps=4, **kw):
    return pipe(prompt=prompt, negative_prompt=negative, true_cfg_scale=4.0, width=64, height=64,
                num_inference_steps=steps, generator=generators(3, 1), output_type="np", **kw).images


@pytest.fixture
def qwen_pipe(tiny_qwen):
    yield tiny_qwen.pipe
    cfg_batch.disable(tiny_qwen.pipe.transformer)


@pytest.mark.parametrize("negative", ["blurry", "blurry, low quality, watermark, extra fingers, text"])
def test_batched_cfg_matches_two_calls(qwen_pipe, negative):
    # negatives shorter and longer than the prompt: the shorter text is padded and masked either way
    ref = _run(qwen_pipe, negative=negative)
    hook = cfg_batch.enable(qwen_pipe.transformer)
    out = _run(qwen_pipe, negative=negative)
    assert hook.batched_steps == 3  # every step but the first, whose negative text was not known yet
    assert np.abs(out - ref).max() < 1e-4


def test_batched_cfg_state_does_not_leak_between_runs(qwen_pipe):
    """A second run with another negative prompt must not reuse the first run's negative text."""
    hook = cfg_batch.enable(qwen_pipe.transformer)
    _run(qwen_pipe, negative="blurry")
    out = _run(qwen_pipe, negative="dark, grainy photo")
    cfg_batch.disable(qwen_pipe.transformer)
    ref = _run(qwen_pipe, negative="dark, grainy photo")
    assert np.abs(out - ref).max() < 1e-4
    assert hook.batched_steps == 6


def test_unknown_inputs_run_unbatched(qwen_pipe):
    """Inputs the hook cannot batch (a ControlNet's residuals differ between the two calls) are left alone."""
    hook = cfg_batch.enable(qwen_pipe.transformer)
    den = qwen_pipe.transformer
    calls = []
    original = hook.fn_ref.original_forward

    def recording(*args, **kwargs):
        calls.append(kwargs["hidden_states"].shape[0])
        return original(*args, **kwargs)

    hook.fn_ref.original_forward = recording
    try:
        h = torch.randn(1, 16, den.config.in_channels)
        text = torch.randn(1, 5, den.config.joint_attention_dim)
        kw = dict(hidden_states=h, timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)], return_dict=False)
        residuals = [torch.zeros(1, 16, den.inner_dim)] * len(den.transformer_blocks)
        for _ in range(2):
            with den.cache_context("cond"):
                den(encoder_hidden_states=text, controlnet_block_samples=residuals, **kw)
            with den.cache_context("uncond"):
                den(encoder_hidden_states=text[:, :3], controlnet_block_samples=[r + 1 for r in residuals], **kw)
    finally:
        hook.fn_ref.original_forward = original
    assert calls == [1, 1, 1, 1] and hook.batched_steps == 0


def test_join_text_pads_and_masks_only_when_needed():
    a, b = torch.randn(1, 5, 8), torch.randn(1, 3, 8)
    text, mask = cfg_batch.join_text(a, None, b, None)
    assert text.shape == (2, 5, 8) and mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert torch.equal(text[1, 3:], torch.zeros(2, 8))
    same, none = cfg_batch.join_text(a, None, a.clone(), None)
    assert same.shape == (2, 5, 8) and none is None  # equal lengths, no padding: unmasked attention kernels


def test_engine_batches_qwen_cfg_where_the_plan_streams_the_denoiser():
    """Batched where the streamed blocks then cross to the GPU once per step (group offload), not on a
    resident plan (slower there, measured on an H200) nor with the speed path off; the image is the same."""
    from lightdiff.workflows.engine import Engine

    request = {"model": "tiny-qwen-image", "prompt": "a blue sphere", "negative_prompt": "blurry", "seed": 4,
               "steps": 3, "width": 64, "height": 64, "guidance": 4.0}
    streamed = Engine(device="cpu", fast="eager", plan="group-offload")
    res = streamed.run(request)
    assert res.metadata[0]["plan_info"]["predicted"]["options"]["layout"]["streamed"] > 0
    hook = cfg_batch.enabled(streamed.pool.loaded()[0].pipe.transformer)
    assert hook is not None and hook.batched_steps == 2
    assert res.metadata[0]["plan_info"].get("cfg") == "batched"
    resident = Engine(device="cpu", fast="eager")
    kept = resident.run(request)
    assert cfg_batch.enabled(resident.pool.loaded()[0].pipe.transformer) is None
    assert "cfg" not in kept.metadata[0]["plan_info"]
    off = Engine(device="cpu", fast="off", plan="group-offload")
    plain = off.run(request)
    assert cfg_batch.enabled(off.pool.loaded()[0].pipe.transformer) is None
    a, b = (np.asarray(r.images[0], dtype=int) for r in (res, plain))
    assert np.abs(a - b).max() <= 1
