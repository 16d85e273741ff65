"""Qwen-Image's joint attention rewritten for Inductor (runtime/qwen_attention.py): the real-arithmetic rotation is
diffusers' complex one to the bit and compiles without complex kernels; the processor, with or without fused
projections (bf16 or fp8 layers), draws the images diffusers' processor draws."""

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from torch._inductor.utils import run_and_get_code

from lightdiff.runtime import fp8, loader, qwen_attention

PAIRS = [("a red cube on a table in the garden", " "), ("a cat", "blurry, low quality, extra fingers")]


def draw(pipe):
    return [pipe(p, negative_prompt=n, true_cfg_scale=4.0, num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0] for p, n in PAIRS]


def rotary_inputs(dtype, tokens=24, heads=3, head_dim=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, tokens, heads, head_dim, generator=g).to(dtype)
    freqs = torch.polar(torch.ones(tokens, head_dim // 2), torch.randn(tokens, head_dim // 2, generator=g) * 3)
    return x, freqs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_is_diffusers_complex_rotation_to_the_bit(dtype):
    x, freqs = rotary_inputs(dtype)
    want = apply_rotary_emb_qwen(x, freqs, use_real=False)
    got = qwen_attention.rotate_real(x, freqs)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(qwen_attention.rotate(x, freqs), want)  # eager: diffusers' own kernels


def test_rotation_compiles_without_complex_kernels():
    """The reason the processor exists: Inductor falls back to eager kernels for complex operators, so diffusers'
    rotation splits the compiled block; ``rotate`` under compile is ``rotate_real``, generated code."""
    x, freqs = rotary_inputs(torch.bfloat16)
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(lambda a, f: apply_rotary_emb_qwen(a, f, use_real=False)), x, freqs)
    assert "view_as_complex" in "\n".join(code)  # the check below can see the difference
    torch._dynamo.reset()
    got, code = run_and_get_code(torch.compile(qwen_attention.rotate, fullgraph=True), x, freqs)  # as in a block
    assert "view_as_complex" not in "\n".join(code)
    assert torch.equal(got, qwen_attention.rotate_real(x, freqs))


def test_processor_draws_diffusers_images_and_keeps_the_attention_backend():
    pipe = loader.load("tiny-qwen-image", device="cpu").pipe
    den = pipe.transformer
    want = draw(pipe)
    den.set_attention_backend("native")
    assert qwen_attention.install(den) == len(den.transformer_blocks)
    block_attn = den.transformer_blocks[0].attn
    assert isinstance(block_attn.processor, qwen_attention.QwenJointAttnProcessor)
    assert str(block_attn.processor._attention_backend) == "AttentionBackendName.NATIVE"
    assert qwen_attention.install(den) == len(den.transformer_blocks)  # again: nothing changes
    for a, b in zip(want, draw(pipe)):
        assert np.abs(a - b).max() < 1e-5


def weight_bytes(den):
    return sum(t.numel() * t.element_size() for t in den.state_dict().values())


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_projections_draw_the_same_images_without_a_second_copy_of_the_weights(quantized):
    pipe = loader.load("tiny-qwen-image", device="cpu").pipe
    den = pipe.transformer
    if quantized:
        fp8.quantize_denoiser(den)
    want = draw(pipe)
    held = weight_bytes(den)
    with pytest.raises(ValueError, match="install first"):
        qwen_attention.fuse_projections(den)
    qwen_attention.install(den)
    assert qwen_attention.fuse_projections(den) == 2 * len(den.transformer_blocks)
    attn = den.transformer_blocks[0].attn
    assert not hasattr(attn, "to_q") and not hasattr(attn, "add_v_proj")
    assert isinstance(attn.to_qkv, fp8.Fp8Linear if quantized else torch.nn.Linear)
    assert attn.to_qkv.out_features == 3 * attn.inner_dim
    assert weight_bytes(den) == held
    assert qwen_attention.fuse_projections(den) == 0  # already fused
    # the same products (fp8: the same values and per-row scales), summed in another kernel order at most
    for a, b in zip(want, draw(pipe)):
        assert np.abs(a - b).max() < 1e-5


def test_layers_of_different_inputs_are_not_fused():
    with pytest.raises(ValueError, match="different kinds or inputs"):
        qwen_attention.concat_rows([torch.nn.Linear(8, 4), torch.nn.Linear(16, 4)])
    rows, blocks = (fp8.Fp8Linear(torch.nn.Linear(256, 128), scaling=s) for s in ("rowwise", "blockwise"))
    with pytest.raises(ValueError, match="different scalings"):
        qwen_attention.concat_rows([rows, blocks])


def test_block_scaled_projections_fuse_into_the_layer_they_compute_together():
    torch.manual_seed(0)
    layers = [fp8.Fp8Linear(torch.nn.Linear(256, 128), scaling="blockwise") for _ in range(3)]
    fused = qwen_attention.concat_rows(layers)
    assert fused.scaling == "blockwise" and fused.weight_scale.shape == (3, 2)  # the parts' (1, 2) block scales stacked
    x = torch.randn(2, 5, 256)
    want = torch.cat([layer(x) for layer in layers], dim=-1)
    assert torch.allclose(fused(x), want, rtol=1e-2, atol=1e-2)


def test_the_fast_path_rewrites_qwen_attention_unless_the_setting_says_no(monkeypatch, tiny_sd15):
    from lightdiff.errors import LightdiffError
    from lightdiff.runtime import fastpath

    den = loader.load("tiny-qwen-image", device="cpu").pipe.transformer
    monkeypatch.setenv("LIGHTDIFF_QWEN_ATTENTION", "0")
    assert fastpath.rewrite_attention(den) is None
    assert type(den.transformer_blocks[0].attn.processor).__name__ == qwen_attention.DIFFUSERS_PROCESSOR
    monkeypatch.setenv("LIGHTDIFF_QWEN_ATTENTION", "ture")
    with pytest.raises(LightdiffError, match="LIGHTDIFF_QWEN_ATTENTION='ture'"):
        fastpath.rewrite_attention(den)
    monkeypatch.delenv("LIGHTDIFF_QWEN_ATTENTION")
    assert "fused qkv" in fastpath.rewrite_attention(den)
    attn = den.transformer_blocks[0].attn
    assert isinstance(attn.processor, qwen_attention.QwenJointAttnProcessor) and hasattr(attn, "to_added_qkv")
    assert fastpath.rewrite_attention(tiny_sd15.pipe.unet) is None  # not Qwen-Image: left alone


@pytest.mark.skipif(not hasattr(torch.compiler, "load_compiled_function"), reason="this torch has no AOT compile")
def test_precompiled_blocks_on_the_rewritten_attention_draw_the_plain_images(monkeypatch, tmp_path):
    """What the engine runs on a GPU (runtime/precompiled_blocks.py traces the block with this processor), here on
    the CPU without CUDA graphs."""
    from lightdiff.runtime import fastpath
    from lightdiff.runtime.precompiled_blocks import BLOCK_FN, PrecompiledBlocks

    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    pipe = loader.load("tiny-qwen-image", device="cpu").pipe
    want = draw(pipe)
    fastpath.rewrite_attention(pipe.transformer)
    blocks = PrecompiledBlocks(pipe.transformer, cuda_graphs=False)
    got = draw(pipe)
    assert blocks.notes == {BLOCK_FN: "compiled"}, blocks.notes
    for a, b in zip(want, got):
        assert np.abs(a - b).max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("fast_accum,scaling", [(True, "rowwise"), (False, "rowwise"), (False, "blockwise")])
def test_fused_fp8_projections_run_at_qwen_shapes_on_the_gpu(fast_accum, scaling):
    """cuBLAS's fp8 support is by shape: the fused 3072 -> 9216 layer runs for the text stream's few rows and the
    image stream's 4096, computing what the three layers do (bf16 rounding apart)."""
    if scaling == "blockwise" and not fp8.cublas_blocks("cuda"):
        pytest.skip("block scales run through cuBLAS on Hopper only")
    torch.manual_seed(0)
    layers = [fp8.Fp8Linear(torch.nn.Linear(3072, 3072, device="cuda", dtype=torch.bfloat16), fast_accum=fast_accum,
                            scaling=scaling) for _ in range(3)]
    fused = qwen_attention.concat_rows(layers)
    assert fp8.fewest_rows(3072, 9216, "cuda", fast_accum=fast_accum, scaling=scaling) is not None
    for rows in (7, 4096):
        x = torch.randn(1, rows, 3072, device="cuda", dtype=torch.bfloat16)
        want, got = torch.cat([layer(x) for layer in layers], dim=-1).float(), fused(x).float()
        assert got.shape == want.shape == (1, rows, 9216)
        assert (got - want).norm() / want.norm() < 1e-2
