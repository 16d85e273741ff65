"""fp8 compute (runtime/fp8.py): an Fp8Linear computes what its Linear does within fp8 rounding, for any
row count (padded for cuBLAS and trimmed back); a quantized Qwen twin draws nearly the resident image and
its blocks compile as one graph. torch._scaled_mm runs on the CPU, so all of this runs here; the plan
itself is CUDA-only and its gpu-marked test runs on an fp8 GPU."""

import numpy as np
import pytest
import torch

from lightdiff.runtime import fp8, loader
from lightdiff.workflows import txt2img

REQUEST = {"model": "tiny-qwen-image", "prompt": "a red cube", "seed": 3, "steps": 2, "width": 64, "height": 64}
FP8_PIXEL_TOLERANCE = 16  # the fp8 tolerance of test_plan_strategies


def test_fp8_linear_matches_the_linear_within_fp8_rounding_for_any_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    quant = fp8.Fp8Linear(linear)
    assert quant.weight_fp8.dtype == torch.float8_e4m3fn and quant.weight_scale.shape == (1, 48)
    for shape in [(1, 64), (2, 5, 64), (3, 16, 64), (300, 64)]:
        x = torch.randn(shape)
        want, got = linear(x), quant(x)
        assert got.shape == want.shape
        assert (got - want).norm() / want.norm() < 0.06  # e4m3: 3 mantissa bits on both operands
    zero = quant(torch.zeros(4, 64))  # an all-zero row: its tiny scale gives the bias (bf16-rounded), not NaN
    assert zero.dtype == torch.float32 and torch.allclose(zero, linear.bias.expand(4, 48), atol=1e-3)


def test_fast_accumulation_applies_the_same_row_and_column_scales_after_the_matmul():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():  # rows of very different magnitude: wrong or missing scales would show at once
        linear.weight.mul_(torch.logspace(-2, 2, 48)[:, None])
    quant = fp8.Fp8Linear(linear)
    x = torch.randn(2, 7, 64) * torch.logspace(-3, 3, 7)[None, :, None]
    rowwise = quant(x)
    assert fp8.set_fast_accum(torch.nn.Sequential(quant), True) == 1 and quant.fast_accum
    fast = quant(x)
    assert fast.shape == rowwise.shape == (2, 7, 48)
    assert (fast - rowwise).norm() / rowwise.norm() < 0.01  # bf16 rounding apart: the same products and scales
    assert (fast - linear(x)).norm() / linear(x).norm() < 0.06
    assert "unit_scale" not in quant.state_dict()  # a constant, not part of the saved layer


def test_rows_are_padded_to_what_the_fp8_matmul_accepts():
    assert [fp8.padded_rows(r) for r in (1, 16, 17, 300)] == [16, 16, 32, 304]
    # a shape cuBLAS refuses below 257 rows (pytorch/ao#4582) is padded to the rows it accepts
    assert fp8.padded_rows(5, min_rows=272) == 272 and fp8.padded_rows(300, min_rows=272) == 304


def test_quantized_qwen_twin_draws_nearly_the_resident_image():
    plain = loader.load("tiny-qwen-image", device="cpu")
    before = np.asarray(txt2img.run(plain, REQUEST).images[0]).astype(int)
    quant = loader.load("tiny-qwen-image", device="cpu")
    den = quant.pipe.transformer
    wanted = {n for n, mod in den.named_modules() if fp8.quantizable(mod, n)}
    # the text stream and the modulation layers (a few rows each) are converted; the latent's first and
    # last projections and the timestep embedding stay in the compute dtype
    assert any("txt_mod" in n for n in wanted) and "txt_in" in wanted
    assert not {"img_in", "proj_out", "norm_out.linear"} & wanted
    done = fp8.quantize_denoiser(den)
    assert done["layers"] == len(wanted) and not done["kept_precise"]
    assert all(isinstance(den.get_submodule(n), fp8.Fp8Linear) for n in wanted)
    assert done["fast_accum"] and all(den.get_submodule(n).fast_accum for n in wanted)  # the measured faster mode
    assert den.dtype == plain.pipe.transformer.dtype  # fp8 buffers do not change what the pipeline computes in
    after = np.asarray(txt2img.run(quant, REQUEST).images[0]).astype(int)
    assert np.abs(before - after).max() <= FP8_PIXEL_TOLERANCE


def test_quantized_blocks_compile_as_one_graph():
    """Compile time is paid once for all blocks, as in bf16: no per-block recompiles (the torchao tensor
    subclass this replaced did not finish compiling Qwen-Image's 60 blocks in ~4 minutes on an H100)."""
    quant = loader.load("tiny-qwen-image", device="cpu")
    den = quant.pipe.transformer
    assert len(den.transformer_blocks) > 1
    fp8.quantize_denoiser(den)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    den.compile_repeated_blocks(fullgraph=True, backend="aot_eager")  # graph capture without codegen: fast
    try:
        # the same prompt on both sides of true CFG: one text length, so one shape
        txt2img.run(quant, {**REQUEST, "negative_prompt": REQUEST["prompt"]})
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_fp8_compute_refuses_a_device_without_fp8():
    assert "CUDA" in fp8.unsupported_reason("cpu")


def test_fp8_compute_plan_that_converts_nothing_is_refused_not_run_in_bf16(monkeypatch):
    """A GPU that refuses every shape would leave the model in bf16 under a plan priced for fp8 bytes."""
    from lightdiff.errors import LightdiffError
    from lightdiff.runtime import plan as plans

    monkeypatch.setattr(fp8, "unsupported_reason", lambda device: None)
    monkeypatch.setattr(fp8, "fewest_rows", lambda *a, **k: None)
    loaded = loader.load("tiny-qwen-image", device="cpu")
    with pytest.raises(LightdiffError) as e:
        plans.Strategy.FP8_COMPUTE.apply(loaded, "cpu")
    assert "converted no layer" in e.value.message and "fp8-storage" in e.value.hint


@pytest.mark.gpu
def test_fp8_compute_plan_runs_the_qwen_twin_close_to_bf16():
    if fp8.unsupported_reason("cuda"):
        pytest.skip(fp8.unsupported_reason("cuda"))
    from lightdiff.runtime import plan as plans

    ref = loader.load("tiny-qwen-image", device="cuda")
    plans.Strategy.RESIDENT.apply(ref, "cuda")
    want = np.asarray(txt2img.run(ref, REQUEST).images[0]).astype(int)
    quant = loader.load("tiny-qwen-image", device="cpu")
    plans.Strategy.FP8_COMPUTE.apply(quant, "cuda")
    got = np.asarray(txt2img.run(quant, REQUEST).images[0]).astype(int)
    assert np.abs(want - got).max() <= FP8_PIXEL_TOLERANCE


@pytest.mark.gpu
def test_engine_compiles_fp8_compute_and_draws_close_to_resident():
    """The engine's default speed path (--fast auto) on an fp8 GPU: the fp8-compute plan's blocks compiled."""
    if fp8.unsupported_reason("cuda"):
        pytest.skip(fp8.unsupported_reason("cuda"))
    from lightdiff.workflows.engine import Engine

    want = Engine(device="cuda", plan="resident", fast="off").run(REQUEST)
    engine = Engine(device="cuda", plan="fp8-compute", fast="auto")
    got = engine.run(REQUEST)
    info = got.metadata[0]["plan_info"]
    assert got.metadata[0]["plan"] == "fp8-compute" and info.get("compiled") == "repeated blocks precompiled, CUDA graphs"
    assert info["fp8"]["layers"] > 0 and info["fp8"]["fast_accum"]
    # a request of another size re-estimates the plan; what loading did stays in its metadata
    again = engine.run({**REQUEST, "width": 96, "height": 96}).metadata[0]["plan_info"]
    assert again["fp8"] == info["fp8"] and again["for"]["width"] == 96
    diff = np.abs(np.asarray(want.images[0]).astype(int) - np.asarray(got.images[0]).astype(int)).max()
    assert diff <= FP8_PIXEL_TOLERANCE


@pytest.mark.gpu
def test_fast_accumulation_runs_on_the_gpu_for_qwen_shapes_and_stays_close_to_row_wise():
    """cuBLAS takes fast accumulation with unit per-tensor scales (it refuses it with row-wise ones), at
    Qwen-Image's shapes and at the text stream's few rows."""
    if fp8.unsupported_reason("cuda"):
        pytest.skip(fp8.unsupported_reason("cuda"))
    torch.manual_seed(0)
    for k, n in [(3072, 3072), (3072, 12288), (12288, 3072)]:
        layer = fp8.Fp8Linear(torch.nn.Linear(k, n, dtype=torch.bfloat16, device="cuda"),
                              min_rows=fp8.fewest_rows(k, n, "cuda"))
        for rows in (7, 4096):
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            layer.fast_accum = False
            rowwise = layer(x).float()
            layer.fast_accum = True
            fast = layer(x).float()
            assert (fast - rowwise).norm() / rowwise.norm() < 0.01, (k, n, rows)


def test_block_scales_round_trip_and_their_shapes():
    torch.manual_seed(0)
    w = torch.randn(256, 384)
    values, scale = fp8.quantize_blocks(w, 128)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (256, 384) and scale.shape == (2, 3)
    assert (fp8.dequantize_blocks(values, scale) - w).norm() / w.norm() < 0.04  # e4m3: 3 mantissa bits
    values, scale = fp8.quantize_blocks(w)  # the input's 1 x 128 blocks
    assert scale.shape == (256, 3)
    assert (fp8.dequantize_blocks(values, scale) - w).norm() / w.norm() < 0.04


def test_block_scaled_linear_matches_the_linear_and_keeps_outliers_local():
    """A row with one block 1e5 times the rest: a per-row scale flushes the rest to e4m3's few smallest steps, 1 x 128 block
    scales keep every other block's precision (the reason for them besides their short reductions)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    blocks = fp8.Fp8Linear(linear, scaling="blockwise")
    assert blocks.weight_scale.shape == (1, 2) and not blocks.cublas_blocks  # on the CPU: dequantized arithmetic
    for shape in [(1, 256), (2, 5, 256), (300, 256)]:
        x = torch.randn(shape)
        want, got = linear(x), blocks(x)
        assert got.shape == want.shape and (got - want).norm() / want.norm() < 0.06
    x = torch.randn(8, 256)
    x[:, :128] *= 1e5  # the outlier block: the rest of the row falls below e4m3's smallest steps under its scale
    by_rows = (lambda v, s: v.float() * s)(*fp8.quantize_rows(x))
    by_blocks = fp8.dequantize_blocks(*fp8.quantize_blocks(x))
    rest = x[:, 128:]
    assert (by_blocks[:, 128:] - rest).norm() / rest.norm() < 0.04
    assert (by_rows[:, 128:] - rest).norm() / rest.norm() > 0.3  # rounded to the smallest steps, or to zero
    with pytest.raises(ValueError, match="multiple of 128"):
        fp8.Fp8Linear(torch.nn.Linear(64, 128), scaling="blockwise")
    with pytest.raises(ValueError, match="unknown fp8 scaling"):
        fp8.Fp8Linear(linear, scaling="tensorwise")


def test_blockwise_quantization_takes_the_shapes_that_have_whole_blocks_and_says_so():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.GELU(), torch.nn.Linear(128, 48))
    x = torch.randn(4, 256)
    want = model(x)
    done = fp8.quantize_denoiser(model, scaling="blockwise")
    assert [m.scaling for m in model if isinstance(m, fp8.Fp8Linear)] == ["blockwise", "rowwise"]
    assert done["scaling"] == {"asked": "blockwise", "blockwise": 1, "rowwise": 1} and done["layers"] == 2
    assert (model(x) - want).norm() / want.norm() < 0.08
    assert "scaling" not in fp8.quantize_denoiser(torch.nn.Sequential(torch.nn.Linear(256, 128)))


def test_row_scaled_layers_requantize_to_block_scales_close_to_what_they_computed():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 48))
    fp8.quantize_denoiser(model, fast_accum=False)
    x = torch.randn(16, 256)
    before = model(x)
    assert fp8.set_scaling(model, "blockwise") == 1  # 48 outputs are no whole block: that layer stays
    assert [m.scaling for m in model] == ["blockwise", "rowwise"]
    assert model[0].weight_scale.shape == (2, 2)
    assert (model(x) - before).norm() / before.norm() < 0.06
    assert fp8.set_scaling(model, "blockwise") == 0
    assert fp8.set_scaling(model, "rowwise") == 1 and model[0].weight_scale.shape == (1, 256)


@pytest.mark.gpu
def test_block_scales_run_through_cublas_at_qwen_shapes_as_their_dequantized_arithmetic():
    """cuBLAS reads the 1 x 128 and 128 x 128 scales in the layouts the layer gives it: its product is the one the
    dequantized values give (the CPU's path), for the text stream's few rows and the image stream's 4096."""
    if not fp8.cublas_blocks("cuda"):
        pytest.skip("block scales run through cuBLAS on Hopper only")
    torch.manual_seed(0)
    for k, n in [(3072, 3072), (3072, 12288), (12288, 3072), (3584, 3072)]:
        rows_needed = fp8.fewest_rows(k, n, "cuda", scaling="blockwise")
        assert rows_needed is not None, (k, n)
        linear = torch.nn.Linear(k, n, dtype=torch.bfloat16, device="cuda")
        layer = fp8.Fp8Linear(linear, min_rows=rows_needed, scaling="blockwise")
        assert layer.cublas_blocks
        for rows in (7, 4096):
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            got = layer(x).float()
            layer.cublas_blocks = False  # the same values and scales, multiplied dequantized
            want = layer(x).float()
            layer.cublas_blocks = True
            assert (got - want).norm() / want.norm() < 1e-2, (k, n, rows)
            assert (got - linear(x).float()).norm() / linear(x).float().norm() < 0.06


def test_the_fp8_plan_takes_its_scaling_from_the_setting_and_refuses_a_bad_one(monkeypatch):
    from lightdiff.errors import LightdiffError
    from lightdiff.runtime import plan as plans

    monkeypatch.setattr(fp8, "unsupported_reason", lambda device: None)  # the plan on the CPU: its arithmetic only
    monkeypatch.setenv("LIGHTDIFF_FP8_SCALING", "blockwise")
    loaded = loader.load("tiny-qwen-image", device="cpu")
    plans.Strategy.FP8_COMPUTE.apply(loaded, "cpu")
    done = loaded.plan_info["fp8"]
    # the twin's layers are narrower than one 128-wide block: every one keeps row scales, and the record says so
    assert done["scaling"] == {"asked": "blockwise", "rowwise": done["layers"]}
    monkeypatch.setenv("LIGHTDIFF_FP8_SCALING", "row-wise")
    with pytest.raises(LightdiffError) as e:
        plans.Strategy.FP8_COMPUTE.apply(loader.load("tiny-qwen-image", device="cpu"), "cpu")
    assert "LIGHTDIFF_FP8_SCALING='row-wise'" in e.value.message and "rowwise" in e.value.message


def test_a_block_scaled_layer_traces_as_one_graph_for_any_row_count():
    """The compiled blocks trace every Fp8Linear with fullgraph=True and a dynamic text length."""
    torch.manual_seed(0)
    layer = fp8.Fp8Linear(torch.nn.Linear(256, 128), scaling="blockwise")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager", dynamic=True)
    try:
        for rows in (3, 40):
            x = torch.randn(1, rows, 256)
            assert torch.allclose(compiled(x), layer(x), rtol=1e-3, atol=1e-3)
    finally:
        torch._dynamo.reset()
