"""fp8 compute's row padding (runtime/fp8.py): every converted layer sees a multiple of 16 rows, and
the model's output is unchanged by the padding. torchao's float8 itself needs an fp8 GPU: the
gpu-marked test runs it there."""

import numpy as np
import pytest
import torch

from lightdiff.runtime import fp8, loader
from lightdiff.workflows import txt2img

REQUEST = {"model": "tiny-qwen-image", "prompt": "a red cube", "seed": 3, "steps": 2, "width": 64, "height": 64}


def test_row_padding_keeps_the_rows_and_pads_what_the_matmul_sees():
    linear = torch.nn.Linear(32, 48)
    seen = []
    linear.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    wrapped = fp8.RowPadded(linear)
    for shape in [(1, 32), (2, 5, 32), (3, 16, 32), (17, 32)]:
        x = torch.randn(shape)
        out = wrapped(x)
        rows = seen[-1][0]
        assert rows % 16 == 0 and 0 <= rows - np.prod(shape[:-1]) < 16
        assert torch.allclose(out, linear(x), atol=1e-6)  # another GEMM kernel: rounding only
    assert wrapped.weight is linear.weight and wrapped.out_features == 48
    # a shape cuBLAS refuses below 257 rows (pytorch/ao#4582) is padded to the rows it accepts
    at_least = fp8.RowPadded(linear, min_rows=272)
    out = at_least(torch.randn(5, 32))
    assert seen[-1][0] == 272 and out.shape == (5, 48)
    at_least(torch.randn(300, 32))
    assert seen[-1][0] == 304


def test_padded_qwen_twin_draws_the_same_image():
    plain = loader.load("tiny-qwen-image", device="cpu")
    before = np.asarray(txt2img.run(plain, REQUEST).images[0])
    padded = loader.load("tiny-qwen-image", device="cpu")
    den = padded.pipe.transformer
    names = {n for n, mod in den.named_modules() if fp8.quantizable(mod, n)}
    # the text stream and the modulation layers (a few rows each) are converted; the latent's first and
    # last projections and the timestep embedding stay in the compute dtype
    assert any("txt_mod" in n for n in names) and "txt_in" in names
    assert not {"img_in", "proj_out", "norm_out.linear"} & names
    rows = []
    for n in names:
        den.get_submodule(n).register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    fp8.wrap_rows(den, {n: 16 for n in names})
    after = np.asarray(txt2img.run(padded, REQUEST).images[0])
    assert rows and all(r % 16 == 0 for r in rows)
    assert np.abs(before.astype(int) - after.astype(int)).max() <= 1  # float reassociation at most


def test_fp8_compute_refuses_a_device_without_fp8():
    assert "CUDA" in fp8.unsupported_reason("cpu")


@pytest.mark.gpu
def test_fp8_compute_plan_runs_the_qwen_twin_close_to_bf16():
    pytest.importorskip("torchao")
    if fp8.unsupported_reason("cuda"):
        pytest.skip(fp8.unsupported_reason("cuda"))
    from lightdiff.runtime import plan as plans

    ref = loader.load("tiny-qwen-image", device="cuda")
    plans.Strategy.RESIDENT.apply(ref, "cuda")
    want = np.asarray(txt2img.run(ref, REQUEST).images[0]).astype(int)
    quant = loader.load("tiny-qwen-image", device="cpu")
    plans.Strategy.FP8_COMPUTE.apply(quant, "cuda")
    got = np.asarray(txt2img.run(quant, REQUEST).images[0]).astype(int)
    assert np.abs(want - got).max() <= 16  # the fp8 tolerance of test_plan_strategies
