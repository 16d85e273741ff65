"""FLOPs per image, counted on the meta device, agree with the physics the report relies on
(reference/baselines.md: SD1.5 UNet 0.80 TFLOP per forward at 512, about 35 TFLOP per 20-step image;
Qwen-Image transformer 70.6 TFLOP per forward at 1024), and the cached table reads without torch."""

import json
import subprocess
import sys
import time

import pytest

from lightdiff.bench import flops


def test_sd15_unet_forward_at_512_is_0_8_tflop_on_meta():
    t0 = time.perf_counter()
    one = flops.denoiser_forward("sd15", 512, 512, batch=1)
    cfg_step = flops.denoiser_forward("sd15", 512, 512, batch=2)  # cond + uncond in one forward
    assert one == pytest.approx(0.80e12, rel=0.10)
    assert cfg_step == pytest.approx(2 * one, rel=0.01)
    assert time.perf_counter() - t0 < 30  # meta device: shapes only, no weights, no memory


def test_qwen_transformer_forward_at_1024_is_70_tflop_on_meta():
    assert flops.denoiser_forward("qwen-image-2512", 1024, 1024, batch=1, text_tokens=64) == pytest.approx(
        70.6e12, rel=0.10)


def test_sd15_image_at_512_costs_about_35_tflop_and_true_cfg_doubles_qwen():
    sd = flops.flops_per_image("sd15", 512, 512, steps=20, batch=1)
    assert 30e12 < sd < 40e12
    with_cfg = flops.count_call("qwen-image-2512", 512, 512, 1, cfg=True)
    without = flops.count_call("qwen-image-2512", 512, 512, 1, cfg=False)
    # true CFG runs the transformer twice per step (the negative prompt is shorter: a little under 2x)
    assert 1.9 < with_cfg["denoiser_per_step"] / without["denoiser_per_step"] <= 2.0
    assert with_cfg["text_encoder"] > without["text_encoder"]


def test_per_image_is_the_parts_over_the_batch_and_the_table_reads_without_torch(tmp_path):
    parts = flops.count_call("tiny-sd15", 64, 64, 2)
    value = flops.flops_per_image("tiny-sd15", 64, 64, steps=20, batch=2)
    assert value == pytest.approx((20 * parts["denoiser_per_step"] + parts["text_encoder"] + parts["vae_decode"]) / 2)
    code = ("import sys, json; from lightdiff.bench.flops import cached_flops_per_image as c; "
            "print(json.dumps([c('tiny-sd15', 64, 64, 20, 2), c('tiny-sd15', 64, 64, 20, 3), "
            "'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cached, uncounted, torch_loaded = json.loads(out.stdout)
    assert cached == pytest.approx(value) and uncounted is None and torch_loaded is False
