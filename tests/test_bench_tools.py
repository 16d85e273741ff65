"""The speed tools' own arithmetic, on the CPU: how a profile's GPU kernels are sorted into classes (the rows a
note's "what bounds it" comes from) and the exactness of attention with zero-padded heads."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel, cls", [
    # names as an H200 profile printed them (2026-11-29)
    ("triton_red_fused__scaled_mm__to_copy_abs_add_amax_clamp_div", "triton reduction"),  # fp8 quantization
    ("triton_per_fused_add_clone_convolution_div_native_group_norm", "triton reduction"),
    ("triton_poi_fused__scaled_dot_product_cudnn_attention_0", "triton pointwise"),  # not the attention itself
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("nvjet_sm90_qqtst_256x128_128x4_1x2_h_bz_coopA_TNT", "matmul (fp8)"),
    ("nvjet_sm90_hsh_168x128_64x5_1x2_h_bz_coopA_bias_TNN", "matmul"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half>", "copy/memset"),
    ("void at::native::elementwise_kernel<128, 4>", "other"),
])
def test_kernels_are_sorted_by_what_they_do(kernel, cls):
    assert tool("speed_bench").kernel_class(kernel) == cls


def test_attention_with_zero_padded_heads_is_exact():
    padded_heads = tool("attention_bench").padded_heads
    q, k, v = (torch.randn(2, 8, 64, 40, generator=torch.Generator().manual_seed(i)) for i in range(3))
    plain = F.scaled_dot_product_attention(q, k, v)
    padded = F.scaled_dot_product_attention(padded_heads(q, 64), padded_heads(k, 64), padded_heads(v, 64),
                                            scale=40 ** -0.5)
    assert padded.shape[-1] == 64
    torch.testing.assert_close(padded[..., :40], plain)
    assert padded[..., 40:].abs().max() == 0
