"""The planner's estimates: calibrated on measured H100 rows, monotone, torch-free, honest when nothing fits."""

import subprocess
import sys

import pytest

from lightdiff import specs
from lightdiff.errors import DoesNotFit
from lightdiff.runtime import plan as plans
from lightdiff.runtime import plan_flops, plan_model
from lightdiff.runtime.plan import Strategy

# Measured on one H100 80GB, random weights at real size, diffusers 0.42.1, 20 steps:
# shared/reference/h100-random-weights-2026-11-26.jsonl and baselines.md (peak_alloc in GiB, s/call).
# sd15 ran with its text encoder on the GPU; Qwen-Image with prompt embeddings given (no text encoder).
SD15_ROWS = [(512, 1, 2.65, 0.61), (768, 1, 3.39, 0.65), (1024, 1, 4.43, 0.95), (512, 2, 3.24, 0.66),
             (512, 4, 4.43, 0.75)]
QWEN_ROWS = [(512, 39.37, 3.98), (768, 40.66, 4.59), (1024, 42.48, 7.47)]
QWEN_FP8_TILED_1024_PEAK = 19.7  # fp8 layerwise storage + VAE tiling, allocator capped at 24 GB


@pytest.mark.parametrize("size,batch,peak,sec_per_call", SD15_ROWS)
def test_sd15_prediction_is_within_10_percent_of_the_h100_rows(size, batch, peak, sec_per_call):
    e = Strategy.RESIDENT.estimate("sd15", size, size, batch, "H100", steps=20, fixed={"text_encoder": "device"})
    assert e.peak_vram_gb == pytest.approx(peak, rel=0.10)
    assert e.sec_per_image * batch == pytest.approx(sec_per_call, rel=0.15)


@pytest.mark.parametrize("size,peak,sec", QWEN_ROWS)
def test_qwen_prediction_is_within_10_percent_of_the_h100_rows(size, peak, sec):
    e = Strategy.RESIDENT.estimate("qwen-image-2512", size, size, 1, "H100", steps=20, fixed={"text_encoder": "none"})
    assert e.peak_vram_gb == pytest.approx(peak, rel=0.10)
    assert e.sec_per_image == pytest.approx(sec, rel=0.15)


def test_qwen_fp8_compute_time_under_24_gb_is_within_15_percent_of_the_engine_row():
    # docs/benchmarks/2026-11-28b-h100: the engine, fp8 compute with fast accumulation, compiled blocks replayed
    # as CUDA graphs, lightdiff's Qwen attention, VAE in half tiles, text encoder streamed, prompt cached: 4.242 s
    # per image (median of 3) at 1024 on an H100
    e = Strategy.FP8_COMPUTE.estimate("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20)  # budget on the H100
    assert e.fits and e.options["vae_tile_px"] == 576
    assert e.sec_per_image == pytest.approx(4.242, rel=0.15)


# docs/benchmarks/2026-11-28c-h200: SD1.5 512, 20 steps, through the engine's compiled loop on an H200 (the H100's
# bf16 peak): 0.139 s per image at batch 1 (validate_planner), 10.83 images/s at batch 16 (speed_bench)
SD15_LOOP_ROWS = [(1, 0.139), (16, 1 / 10.83)]


@pytest.mark.parametrize("batch,sec", SD15_LOOP_ROWS)
def test_sd15_compiled_loop_time_is_within_15_percent_of_the_h200_rows(batch, sec):
    loop = plans.plan_for(Strategy.RESIDENT, "sd15", 512, 512, batch, card="H200", steps=20, compiled_loop=True)
    assert loop.estimate.sec_per_image == pytest.approx(sec, rel=0.15)
    plain = plans.plan_for(Strategy.RESIDENT, "sd15", 512, 512, batch, card="H200", steps=20)
    assert plain.estimate.sec_per_image > loop.estimate.sec_per_image  # diffusers' own loop, as before
    again = loop.at(512, 512, batch, 20)  # a loaded plan re-estimated keeps pricing the loop, unless told not to
    assert again.estimate.sec_per_image == pytest.approx(loop.estimate.sec_per_image)
    assert loop.at(512, 512, batch, 20, compiled_loop=False).estimate.sec_per_image == pytest.approx(
        plain.estimate.sec_per_image)


def test_only_a_family_with_a_compiled_loop_is_priced_as_one():
    for strategy in (Strategy.RESIDENT, Strategy.GROUP_OFFLOAD):
        a = plans.plan_for(strategy, "qwen-image-2512", 1024, 1024, card="H200", compiled_loop=True)
        b = plans.plan_for(strategy, "qwen-image-2512", 1024, 1024, card="H200")
        assert a.estimate.sec_per_image == b.estimate.sec_per_image
    a = plans.plan_for(Strategy.GROUP_OFFLOAD, "sd15", 512, 512, card="H200", compiled_loop=True)
    b = plans.plan_for(Strategy.GROUP_OFFLOAD, "sd15", 512, 512, card="H200")
    assert a.estimate.sec_per_image == b.estimate.sec_per_image  # the loop runs only on the resident plan


def test_qwen_fp8_storage_needs_tiling_in_24_gb_as_measured():
    # Measured: untiled it ran out of memory under a 24 GB cap; tiled it peaked at 19.7 GB.
    e = Strategy.FP8_STORAGE.estimate("qwen-image-2512", 1024, 1024, 1, 24.0, fixed={"text_encoder": "none"})
    assert e.fits and e.options["vae_tiling"] is True
    assert e.peak_vram_gb == pytest.approx(QWEN_FP8_TILED_1024_PEAK, rel=0.10)


@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.label)
@pytest.mark.parametrize("model", ["sd15", "qwen-image-2512"])
def test_estimates_grow_with_size_and_batch(strategy, model):
    def est(size, batch):  # no budget: the placement itself does not change with the request
        return strategy.estimate(model, size, size, batch, None, fixed={"text_encoder": "device"})

    by_size = [est(s, 1) for s in (512, 768, 1024, 1536)]
    by_batch = [est(512, b) for b in (1, 2, 4)]
    for a, b in zip(by_size, by_size[1:]):
        assert b.peak_vram_gb >= a.peak_vram_gb and b.sec_per_image > a.sec_per_image
    for a, b in zip(by_batch, by_batch[1:]):
        assert b.peak_vram_gb >= a.peak_vram_gb
        assert b.sec_per_image * 2 > a.sec_per_image  # a bigger batch takes longer per call


def test_choose_takes_the_fastest_plan_that_fits():
    assert plans.choose("sd15", 512, 512, 1, 4.0).name == "resident"
    whole_card = plans.choose("qwen-image-2512", 1024, 1024, 1, 80.0, exclude=(Strategy.FP8_COMPUTE,))
    assert whole_card.name == "resident"
    p24 = plans.choose("qwen-image-2512", 1024, 1024, 1, 24.0)
    assert p24.name != "resident" and p24.estimate.fits
    assert plan_model.VRAM_MARGIN_GIB + p24.estimate.peak_vram_gb * (1 + plan_model.VRAM_MARGIN_FRAC) <= 24.0
    every = plans.estimate_all("qwen-image-2512", 1024, 1024, 1, 24.0)
    assert p24.estimate.sec_per_image == min(p.estimate.sec_per_image for p in every
                                             if p.estimate.fits and p.strategy.value.auto)
    p12 = plans.choose("qwen-image-2512", 1024, 1024, 1, 12.0)
    assert p12.name in ("fp8-group-offload", "group-offload") and p12.options["layout"]["streamed"] > 0


def test_group_offload_streams_more_blocks_as_the_budget_shrinks():
    streamed = [plans.plan_for(Strategy.GROUP_OFFLOAD, "qwen-image-2512", 1024, 1024, 1, b).options["layout"]["streamed"]
                for b in (40, 24, 16, 12)]
    assert streamed == sorted(streamed) and streamed[0] < streamed[-1]


def test_nothing_fits_says_what_is_needed_and_what_to_change():
    with pytest.raises(DoesNotFit) as e:
        plans.choose("qwen-image-2512", 1024, 1024, 1, 4.0, ram_gb=16.0)
    msg, hint = e.value.message, e.value.hint
    assert "qwen-image-2512 at 1024x1024" in msg and "host RAM" in msg and "16.0 GB" in msg
    assert "GB of host RAM" in hint and "sd15" in hint
    assert e.value.details["needs_ram_gb"] > 16


def test_vram_shortfall_names_the_budget_and_the_fix():
    with pytest.raises(DoesNotFit) as e:
        plans.choose("qwen-image-2512", 2048, 2048, 4, 2.0)
    assert "needs about" in e.value.message and "the budget is 2.0 GB" in e.value.message
    assert "--vram-budget" in e.value.hint and "smaller size" in e.value.hint


def test_fp8_compute_is_the_24_gb_pick_where_the_card_has_fp8():
    # an H100 at 24 GB: fp8 compute keeps the whole denoiser resident in half the bytes and, compiled,
    # runs faster than streaming part of it (fp8-group-offload, the pick without it)
    fp8c = Strategy.FP8_COMPUTE.estimate("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20)
    assert fp8c.fits and fp8c.options["compute"] == "fp8" and "compiled" in fp8c.reason
    streamed = Strategy.FP8_GROUP_OFFLOAD.estimate("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20)
    assert fp8c.sec_per_image < streamed.sec_per_image
    assert plans.choose("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20).name == "fp8-compute"
    # without it (the engine's speed path off: fp8 compute would run eager), the pick is the stream
    off = plans.choose("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20, exclude=(Strategy.FP8_COMPUTE,))
    assert off.name == "fp8-group-offload"
    # a card without fp8 (RTX 3090, 24 GB) and a UNet: refused, and the reason says why
    on_3090 = Strategy.FP8_COMPUTE.estimate("qwen-image-2512", 1024, 1024, 1, "RTX 3090")
    assert not on_3090.fits and "fp8 tensor cores" in on_3090.reason and "RTX 3090" in on_3090.reason
    unet = Strategy.FP8_COMPUTE.estimate("sd15", 512, 512, 1, 24.0)
    assert not unet.fits and "UNet" in unet.reason


def test_the_engine_lets_the_planner_pick_fp8_compute_only_when_it_compiles_it():
    from lightdiff.workflows.engine import Engine

    assert Engine(device="cpu", fast="auto")._not_automatic() == ()
    for fast in ("off", "eager"):
        assert Engine(device="cpu", fast=fast)._not_automatic() == (Strategy.FP8_COMPUTE,)


def test_qwen_decodes_in_half_tiles_where_it_must_tile_and_the_peak_counts_them():
    """Measured (H100, 2026-11-27, docs/benchmarks/2026-11-27c-h100): under 24 GB at 1024 diffusers' 256-px tiles
    (36 of them) decoded in 0.81 s, 2 x 2 tiles of 576 px in 0.10 s for 1.04 GB more peak."""
    at_24 = plans.choose("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20)
    assert at_24.options["vae_tiling"] is True and at_24.options["vae_tile_px"] == 576
    assert "VAE tiled (576 px)" in at_24.estimate.reason
    whole = plans.choose("qwen-image-2512", 1024, 1024, 1, 80.0, steps=20)
    assert whole.options["vae_tiling"] is False and "vae_tile_px" not in whole.options
    r = plans.request_for(specs.get("qwen-image-2512"), 1024, 1024, 1, 24.0)
    assert plan_model.vae_tile_modes(r) == [False, 576, True]
    half, default = plan_model.vae_act_gib(r, 576, True), plan_model.vae_act_gib(r, True, True)
    assert half == pytest.approx(default * (576 / 256) ** 2) and half < plan_model.vae_act_gib(r, False, False)
    # the decode time counts every tile: both measured decodes within 10%
    assert plan_model.tile_grid(r, True)[0] == 36 and plan_model.tile_grid(r, 576)[0] == 4
    assert plan_model.vae_s(r, True) == pytest.approx(0.81, rel=0.10)
    assert plan_model.vae_s(r, 576) == pytest.approx(0.10, rel=0.10)
    assert plan_model.vae_s(r, False) < plan_model.vae_s(r, 576) < plan_model.vae_s(r, True)
    # another size under the same budget keeps the loaded placement: half tiles are a VAE mode the engine sets
    # per request, not a reason to reload 20B weights (H100, 2026-11-27: a 768 request after a 1024 one reloaded)
    for side in (768, 512):
        smaller = plans.choose("qwen-image-2512", side, side, 1, 24.0, steps=20)
        assert "vae_tile_px" not in smaller.options and plans.plan_key(smaller) == plans.plan_key(at_24)
        assert plans.plan_key(at_24.at(side, side, 1, 20)) == plans.plan_key(at_24)
    # sd15's VAE tiles at its own size only: no half tiles in its plans
    sd15 = plans.choose("sd15", 1024, 1024, 1, 2.0, steps=20)
    assert "vae_tile_px" not in sd15.options
    assert plan_model.vae_tile_modes(plans.request_for(specs.get("sd15"), 1024, 1024, 1, 2.0)) == [False, True]


def test_int8_without_torchao_does_not_fit_and_says_why(monkeypatch):
    monkeypatch.setattr(plans, "torchao_available", lambda: False)
    e = Strategy.INT8_WEIGHT.estimate("sd15", 512, 512, 1, 24.0)
    assert not e.fits and "torchao" in e.reason


def test_flop_table_matches_a_fresh_count_on_the_meta_device():
    for model, component, size in [("sd15", "unet", 768), ("qwen-image", "transformer", 768)]:
        spec = specs.get(model)
        counted = plan_flops.count_tflops(spec, component, size, size)
        assert plan_flops.tflops(spec, component, size, size) == pytest.approx(counted, rel=0.02)
    assert plan_flops.tflops(specs.get("sd15"), "unet", 512, 512) * 2 == pytest.approx(1.6, rel=0.05)  # baselines.md: 0.80 per item


def test_block_table_matches_the_architecture():
    from lightdiff.runtime.build import build_on_meta

    for model in ("qwen-image", "tiny-qwen-image"):
        spec = specs.get(model)
        module = build_on_meta(spec, ["transformer"])["transformer"]
        blocks = module.transformer_blocks
        n, params_M = plan_model.block_info(spec, "transformer")
        assert n == len(blocks)
        assert params_M == pytest.approx(sum(p.numel() for p in blocks.parameters()) / 1e6, rel=1e-4)


def test_estimating_does_not_import_torch():
    code = ("import sys\nfrom lightdiff.runtime import plan\n"
            "plan.estimate_all('qwen-image-2512', 1024, 1024, 1, 24.0)\n"
            "plan.choose('sd15', 512, 512, 1, 4.0)\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_workflows_plan_for_their_own_weights_and_largest_pass():
    """A ControlNet's weights and hires fix's second pass are in the plan before anything loads: the
    engine and the benchmark size plans the same way (an unplanned ControlNet ran out of memory at 24 GB)."""
    import types

    from lightdiff.bench.cases import Item
    from lightdiff.bench.planner import Hardware, memory_of, plan_for_item
    from lightdiff.workflows import controlnet

    spec = specs.get("qwen-image-2512")
    width, height, extra = memory_of(spec, Item("workflow", 1024, 1024, workflow="controlnet"))
    assert (width, height) == (1024, 1024) and extra == pytest.approx(1768.0, rel=0.01)  # InstantX union, 5 blocks
    assert memory_of(spec, Item("workflow", 512, 512, workflow="hires_fix"))[:2] == (1024, 1024)
    assert memory_of(spec, Item("speed", 512, 512)) == (512, 512, 0.0)
    sd15 = specs.get("sd15")
    assert controlnet.memory_extra_params_M(None, sd15) == pytest.approx(361.3, rel=0.01)  # control_v11p_sd15_canny

    group = types.SimpleNamespace(steps=20, vram_budget_gb=24.0, plan=None)
    hw = Hardware("NVIDIA H100 80GB HBM3", 79.2, 125.0)
    plain = plan_for_item(plans, spec, Item("speed", 1024, 1024), group, hw, "fp8-group-offload")
    with_cn = plan_for_item(plans, spec, Item("workflow", 1024, 1024, workflow="controlnet"), group, hw,
                            "fp8-group-offload")
    # the same budget holds 3.3 GB more weights: the denoiser keeps less on the GPU, and it still fits
    cn_gib = 1768.0e6 * 2 / 2**30
    assert with_cn.options["layout"] != plain.options["layout"]
    assert with_cn.estimate.peak_vram_gb - cn_gib < plain.estimate.peak_vram_gb - 1.0
    assert with_cn.estimate.fits and with_cn.info()["for"]["extra_params_M"] == pytest.approx(1768.0, rel=0.01)
    at = plans.plan_for(Strategy.RESIDENT, spec, 1024, 1024, 1, 80.0)
    assert at.at(1024, 1024, extra_params_M=1768.0).estimate.peak_vram_gb == pytest.approx(
        at.estimate.peak_vram_gb + 1768.0e6 * 2 / 2**30, abs=0.01)


def test_bench_predicts_each_item_under_the_placement_its_process_applied():
    """A process runs every item of its group under the layout sized for the most demanding one, so each
    row's prediction re-estimates that placement (as the engine does), not the layout the item alone would get."""
    import dataclasses

    from lightdiff.bench import planner as bench_planner
    from lightdiff.bench.cases import Group, Item

    small, large = Item("speed", 512, 512), Item("speed", 1024, 1024)
    fields = {f.name for f in dataclasses.fields(Group)}
    group = Group(**{k: v for k, v in dict(model="qwen-image-2512", variant="lightdiff", vram_budget_gb=24.0,
                                          weights="synthetic", steps=20, items=[small, large],
                                          plan="fp8-group-offload").items() if k in fields})
    choice = bench_planner.choose(group, specs.get("qwen-image-2512"), "cpu", {})
    layout = choice.plan.options["layout"]
    got = choice.predicted(small)
    want = choice.plan.at(512, 512, 1, 20).estimate
    alone = bench_planner.plan_for_item(plans, specs.get("qwen-image-2512"), small, group,
                                        bench_planner.Hardware(None, None, None), "fp8-group-offload")
    assert alone.options["layout"] != layout  # 512 alone would stream fewer blocks...
    assert got["sec_per_image"] == pytest.approx(round(want.sec_per_image, 3))  # ...but ran under 1024's layout
    assert got["peak_vram_gb"] == pytest.approx(round(want.peak_vram_gb, 2))


def test_pinned_rounding_table_matches_the_architectures_on_the_meta_device():
    # torch's host allocator rounds each pinned tensor up to a power of two (measured: tools/pin_bench.py)
    from lightdiff.runtime.build import build_on_meta

    def pow2(n):
        return 1 << (n - 1).bit_length()

    checked = set()
    for model, component in (("qwen-image-2512", "text_encoder"), ("qwen-image-2512", "transformer"),
                             ("sd15", "text_encoder"), ("sd15", "unet")):
        spec = specs.get(model)
        module = build_on_meta(spec, [component])[component]
        streamed = getattr(module, "transformer_blocks", module)  # the blocks where the planner streams blocks
        tensors = {id(t): t for t in [*streamed.parameters(), *streamed.buffers()] if t.numel()}.values()
        ratio = sum(pow2(t.numel() * t.element_size()) for t in tensors) / sum(t.numel() * t.element_size()
                                                                                for t in tensors)
        comp = spec.components[component]
        key = (comp.cls, round(comp.params_M, 2))
        assert plan_model.PINNED_ROUNDING[key] == pytest.approx(ratio, abs=1e-3)
        checked.add(key)
    assert checked == set(plan_model.PINNED_ROUNDING)


def test_streamed_weights_count_pinned_host_ram_as_torch_rounds_it(monkeypatch):
    spec = specs.get("qwen-image-2512")
    te_gib = plan_model.gib(spec.params_M("text_encoder"), plan_model.compute_dtype(spec))

    def host(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return Strategy.FP8_COMPUTE.estimate("qwen-image-2512", 1024, 1024, 1, 24.0, steps=20,
                                             fixed={"text_encoder": "streamed"}).host_ram_gb

    in_place, rounded = host(), host(LIGHTDIFF_PIN_IN_PLACE="0")  # the default, then turned off
    assert rounded - in_place == pytest.approx(te_gib * (1.8921 - 1), rel=1e-6)
    assert rounded > 31.25 / 1.0737  # at least what its pinned copy measured, in GiB
    blocks = plans.plan_for(Strategy.GROUP_OFFLOAD, "qwen-image-2512", 1024, 1024, 1, 16.0).estimate
    monkeypatch.delenv("LIGHTDIFF_PIN_IN_PLACE")
    blocks_in_place = plans.plan_for(Strategy.GROUP_OFFLOAD, "qwen-image-2512", 1024, 1024, 1, 16.0).estimate
    assert blocks.host_ram_gb > blocks_in_place.host_ram_gb  # streamed blocks too


def test_a_paged_text_encoder_is_the_way_out_when_the_pinned_copy_does_not_fit_host_ram(monkeypatch):
    # a 4090D host with 32 GB and in-place pinning off: the text encoder pinned as torch rounds it (31 GB) does not
    # fit beside the process; paged, it does. With in-place pinning (the default) it is streamed
    assert plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 24.0, ram_gb=32.0, card="RTX 4090D",
                        steps=20).options["text_encoder"] == "streamed"
    monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", "0")
    roomy = plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 24.0, ram_gb=64.0, card="RTX 4090D", steps=20)
    assert roomy.name == "fp8-compute" and roomy.options["text_encoder"] == "streamed"
    tight = plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 24.0, ram_gb=32.0, card="RTX 4090D", steps=20)
    assert tight.name == "fp8-compute" and tight.options["text_encoder"] == "paged"
    assert tight.estimate.host_ram_gb + plan_model.HOST_MARGIN_GIB <= 32.0
    assert tight.estimate.sec_per_image == pytest.approx(roomy.estimate.sec_per_image)  # prompts are cached
    assert "text encoder paged from host RAM (a new prompt: about" in tight.estimate.reason


def test_a_paged_text_encoder_costs_what_it_measured_per_new_prompt():
    # qwen-image-2512 paged on an H100 host (docs/benchmarks/2026-11-28-h100): 12.68 s per new prompt, the host's
    # copies the bound (the same weights streamed from pinned memory at 39 GB/s), so the card does not change it
    spec = specs.get("qwen-image-2512")
    te = plan_model.gib(spec.params_M("text_encoder"), plan_model.compute_dtype(spec))
    secs = [plan_model.te_paged_encode_s(plan_model.make_request(spec, 1024, 1024, card=card), te)
            for card in ("H100", "RTX 4090D")]
    assert secs[0] == pytest.approx(12.68, rel=0.1) and secs[1] == secs[0]


def test_the_engine_plans_for_the_host_ram_it_has(monkeypatch):
    # without --ram-budget the engine counts what the host has (available, plus what the process holds), so a plan
    # whose pinned weights would run the host out of memory is refused (or paged) instead of started
    import types

    import psutil

    from lightdiff.workflows.engine import Engine

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=int(2.5 * 2**30)))
    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: types.SimpleNamespace(rss=2**29))
    request = {"model": "tiny-sd15", "prompt": "a red cube", "steps": 2}
    engine = Engine(device="cpu")
    assert engine.ram_gb() == pytest.approx(3.0)
    with pytest.raises(DoesNotFit, match="host RAM"):
        engine.plan_for(request)
    plan, _ = Engine(device="cpu", ram_budget_gb=64.0).plan_for(request)  # a budget given wins
    assert plan.estimate.fits
    assert Engine(device="cpu", ram_share=2).ram_gb() == pytest.approx(1.75)  # a server's two workers: half each


def test_a_servers_workers_share_the_host_ram(tmp_path):
    from lightdiff.server.config import ServerConfig
    from lightdiff.server.worker import make_engine

    config = ServerConfig(data_dir=tmp_path, devices=("cpu", "cpu"))
    assert make_engine(config, "cpu").ram_share == 2


def test_a_host_ram_shortfall_from_rounded_pinning_names_the_in_place_pinning(monkeypatch):
    # 12 GB card, 32 GB host, in-place pinning off: fp8-group-offload's streamed blocks pinned as torch rounds them
    # need ~36 GB
    monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", "0")
    with pytest.raises(DoesNotFit) as err:
        plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 12.0, ram_gb=32.0, steps=20)
    assert "host RAM" in str(err.value) and "LIGHTDIFF_PIN_IN_PLACE=1" in err.value.hint
    monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", "1")  # then the same plan fits
    assert plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 12.0, ram_gb=32.0, steps=20).estimate.fits


def test_an_on_off_setting_with_a_value_that_is_neither_is_an_error_naming_it(monkeypatch):
    # a typo must not silently turn in-place pinning off (twice the host RAM, 14 s more to load qwen-image-2512)
    from lightdiff import settings
    from lightdiff.errors import LightdiffError

    for value, on in (("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)):
        monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", value)
        assert settings.flag("pin_in_place") is on
    monkeypatch.setenv("LIGHTDIFF_PIN_IN_PLACE", "ture")
    with pytest.raises(LightdiffError) as err:
        plans.choose(specs.get("qwen-image-2512"), 1024, 1024, 1, 12.0, ram_gb=32.0, steps=20)
    assert "LIGHTDIFF_PIN_IN_PLACE='ture'" in err.value.message and "1 or 0" in err.value.hint
