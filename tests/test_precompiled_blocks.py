"""Qwen-Image's precompiled blocks (runtime/precompiled_blocks.py): compiled once for every block and text length,
loaded by a later process without tracing, with the plain blocks' outputs; failures fall back without loss."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightdiff.runtime import fastpath, fp8, loader, precompiled
from lightdiff.runtime.precompiled_blocks import BLOCK_FN, PrecompiledBlocks

needs_aot = pytest.mark.skipif(not hasattr(torch.compiler, "load_compiled_function"),
                               reason="this torch has no AOT compile")

SCRIPT = r"""
import json, sys, numpy as np, torch
from lightdiff.runtime import fastpath, loader
from lightdiff.runtime.precompiled_blocks import PrecompiledBlocks

fastpath.persist_compile_cache()
pipe = loader.load("tiny-qwen-image", device="cpu").pipe
pairs = [("a red cube on a table in the garden", " "), ("a cat", "blurry, low quality, extra fingers")]

def draw():
    return [pipe(p, negative_prompt=n, true_cfg_scale=4.0, num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images for p, n in pairs]

plain = draw()
blocks = PrecompiledBlocks(pipe.transformer, cuda_graphs=False)
torch._dynamo.utils.counters.clear()
fast = draw()
print("RESULT " + json.dumps({"notes": blocks.notes, "graphs": fastpath.compile_stats()["graphs"],
                              "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(plain, fast))}))
"""


def run_process(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR", "TORCH_COMPILE_JOB"))}
    env["LIGHTDIFF_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])


@needs_aot
def test_blocks_compile_once_for_every_text_length_and_load_in_a_later_process_without_tracing(tmp_path):
    """True CFG's prompt and negative prompt differ in length, and so do two requests' prompts: one trace serves
    all of them and all blocks; the next process traces nothing. Images as the plain pipeline draws them."""
    first = run_process(tmp_path)
    assert first["notes"] == {BLOCK_FN: "compiled"} and first["graphs"] == 1, first
    assert first["max_diff"] < 1e-5
    second = run_process(tmp_path)
    assert second["notes"] == {BLOCK_FN: "loaded"} and second["graphs"] == 0, second
    assert second["max_diff"] < 1e-5


def block_inputs(den, text_length, seed=0):
    inner = den.config.num_attention_heads * den.config.attention_head_dim
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, inner, generator=g),
                encoder_hidden_states=torch.randn(1, text_length, inner, generator=g),
                encoder_hidden_states_mask=None, temb=torch.randn(1, inner, generator=g),
                image_rotary_emb=den.pos_embed([(1, 4, 4)], max_txt_seq_len=text_length, device="cpu"))


@needs_aot
def test_fp8_blocks_serve_text_lengths_on_and_off_the_padding_multiple(monkeypatch, tmp_path):
    """fp8 layers pad their rows to a multiple of 16: the compiled code must not be tied to the first length's
    remainder (a guard that failed at 16 and 32 tokens before the padding became guard-free)."""
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    fp8.quantize_denoiser(den)
    block = den.transformer_blocks[1]
    with torch.no_grad():
        inputs = {n: block_inputs(den, n) for n in (5, 16, 32, 33)}
        want = {n: block._call_impl(**kw) for n, kw in inputs.items()}
        blocks = PrecompiledBlocks(den, cuda_graphs=False)
        got = {n: block(**kw) for n, kw in inputs.items()}
    assert blocks.notes == {BLOCK_FN: "compiled"}, blocks.notes  # no guard miss: every length ran compiled
    for n in inputs:
        for a, b in zip(want[n], got[n]):
            assert (a - b).norm() / a.norm() < 0.01  # fp8 rounding in fused kernels, not a different computation


def test_a_failed_precompile_compiles_the_blocks_regionally_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))

    def fail(*args, **kwargs):
        raise precompiled.PrecompileFailed("no AOT compile in this build")

    monkeypatch.setattr(precompiled, "load_or_compile", fail)
    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    block = den.transformer_blocks[0]
    with torch.no_grad():
        kw = block_inputs(den, 7)
        want = block._call_impl(**kw)
        blocks = PrecompiledBlocks(den, cuda_graphs=False)
        torch._dynamo.reset()
        got = block(**kw)
    assert "no AOT compile in this build" in blocks.notes[BLOCK_FN]
    # every block now runs torch.compile's code (regional compilation), not this object's
    assert all(b._compiled_call_impl is not None and not hasattr(b._compiled_call_impl, "func")
               for b in den.transformer_blocks)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5)
    torch._dynamo.reset()


def test_calls_the_artifact_was_not_traced_for_run_the_plain_block(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    block = den.transformer_blocks[0]
    blocks = PrecompiledBlocks(den, cuda_graphs=False)
    kw = block_inputs(den, 7)
    with torch.no_grad():
        want = block._call_impl(**kw)
        got = block(**kw, joint_attention_kwargs={"scale": 1.0})  # extra arguments: no artifact is made for them
    assert not blocks.notes and all(torch.equal(a, b) for a, b in zip(want, got))


def test_step_caches_set_the_precompiled_blocks_aside_and_reset_forgets_their_functions(tmp_path):
    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    blocks = PrecompiledBlocks(den, cuda_graphs=False)
    calls = [b._compiled_call_impl for b in den.transformer_blocks]
    with fastpath.uncompiled_blocks(den):
        assert all(b._compiled_call_impl is None for b in den.transformer_blocks)
    assert [b._compiled_call_impl for b in den.transformer_blocks] == calls
    blocks._fns[("any",)] = object()
    fastpath.reset_cuda_graphs(den)  # the engine's out-of-memory back-off: graphs go with the loaded functions
    assert not blocks._fns


class EagerStandIn:
    """precompiled.GraphedCall without CUDA: runs the function each call (and counts), so the stack's plumbing
    (first block runs all, the rest pass the result on) is checked here; the graph itself is checked on a GPU."""

    calls = 0

    def __init__(self, fn, args, pool=None):
        self.fn = fn

    def __call__(self, *args):
        EagerStandIn.calls += 1
        return self.fn(*args)


def test_the_first_block_runs_the_whole_stack_and_the_rest_pass_it_on(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    monkeypatch.setattr(precompiled, "GraphedCall", EagerStandIn)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    EagerStandIn.calls = 0
    pipe = loader.load("tiny-qwen-image", device="cpu").pipe
    den = pipe.transformer

    def draw():
        return pipe("a red cube", negative_prompt="blurry, low quality, extra fingers, watermark", true_cfg_scale=4.0,
                    num_inference_steps=3,
                    width=64, height=64, generator=torch.Generator().manual_seed(0), output_type="np").images

    plain = draw()
    blocks = PrecompiledBlocks(den, cuda_graphs=True)
    fast = draw()
    assert EagerStandIn.calls == 2 * 3  # one stack run per denoiser call: true CFG's two calls, three steps
    assert len(blocks._graphs) == 2  # the prompt and the negative prompt differ in length: a graph each
    assert np.abs(plain - fast).max() < 1e-5
    # a call with ControlNet residuals (added between blocks) cannot be one stack run: block by block
    inner = den.config.num_attention_heads * den.config.attention_head_dim
    with torch.no_grad():
        kw = dict(hidden_states=torch.randn(1, 16, den.config.in_channels),
                  encoder_hidden_states=torch.randn(1, 7, den.config.joint_attention_dim),
                  encoder_hidden_states_mask=None, timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)],
                  return_dict=False)
        residuals = [torch.full((1, 16, inner), 0.1)]
        want = den(**kw, controlnet_block_samples=residuals)[0]
        before = EagerStandIn.calls
        blocks._hook.remove()  # compare with the plain blocks: take this object out for the reference call
        for b in den.transformer_blocks:
            b._compiled_call_impl = None
        plain_out = den(**kw, controlnet_block_samples=residuals)[0]
    assert EagerStandIn.calls == before and torch.allclose(want, plain_out, atol=1e-5)


def test_only_qwen_image_blocks_are_precompiled():
    sd15 = loader.load("tiny-sd15", device="cpu").pipe.unet
    qwen = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    from lightdiff.runtime import precompiled_blocks

    assert precompiled_blocks.supported(qwen) and not precompiled_blocks.supported(sd15)


@pytest.mark.gpu
@needs_aot
def test_engine_precompiled_cuda_graph_blocks_draw_the_plain_image(monkeypatch, tmp_path):
    """On CUDA the engine runs Qwen-Image's blocks precompiled, the block stack as one CUDA graph per input size
    (two text lengths, two image sizes), a second engine loading the artifact, with the plain pipeline's pixels."""
    from lightdiff.workflows.engine import Engine

    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    request = {"model": "tiny-qwen-image", "prompt": "a red cube",
               "negative_prompt": "blurry, low quality, extra fingers, watermark", "seed": 3, "steps": 3}
    for size in (64, 96):
        req = {**request, "width": size, "height": size}
        plain = np.asarray(Engine(device="cuda", fast="off").run(req).images[0]).astype(int)
        for expect in ("compiled", "loaded"):
            torch._dynamo.reset()
            out = Engine(device="cuda").run(req)
            meta = out.metadata[0]
            assert meta["plan_info"]["compiled"] == "repeated blocks precompiled, CUDA graphs", meta["plan_info"]
            assert meta["plan_info"]["attention"] == "lightdiff joint attention: real rotary, fused qkv"
            assert meta["precompiled"] == {BLOCK_FN: expect, "cuda graph": "the block stack, one graph per input size"}
            assert np.abs(np.asarray(out.images[0]).astype(int) - plain).max() <= 3
