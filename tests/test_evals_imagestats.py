"""Image statistics on synthetic images whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lightdiff.errors import InvalidRequest
from lightdiff.evals import imagestats as stats


def _solid(rgb, size=64):
    return np.full((size, size, 3), rgb, dtype=np.uint8)


def _smooth_gradient(size=256):
    """A smooth colour ramp kept away from 0 and 255, so added noise is never clipped."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = 70 + 90 * x + 40 * y
    return np.stack([base, 0.9 * base + 10, 0.8 * base + 20], axis=-1)


def _with_noise(img_float, sigma, seed=0):
    noisy = img_float + np.random.default_rng(seed).normal(0.0, sigma, img_float.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _ellipse(supersample: int, size=256):
    """A light ellipse on dark ground: drawn directly (aliased) or at N x size and LANCZOS-downsampled."""
    big = size * supersample
    im = Image.new("RGB", (big, big), (30, 30, 40))
    c, r = big / 2, big * 0.36
    ImageDraw.Draw(im).ellipse([c - r, c - 0.8 * r, c + r, c + 0.8 * r], fill=(225, 220, 210))
    if supersample > 1:
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im)


def test_warm_and_cool_casts_order_cct_and_b_star():
    warm, cool, neutral = _solid((235, 170, 115)), _solid((165, 195, 240)), _solid((200, 200, 200))
    assert stats.cct_kelvin(warm) < stats.cct_kelvin(neutral) < stats.cct_kelvin(cool)
    assert stats.lab_b(warm) > 0 > stats.lab_b(cool)
    # sRGB white is D65, whose correlated colour temperature is about 6504 K.
    assert stats.cct_kelvin(neutral) == pytest.approx(6504, abs=60)


def test_cct_is_nan_far_from_the_black_body_locus():
    # Pure blue has a chromaticity no black body emits: McCamy's formula would say ~1700 K ("warm").
    assert math.isnan(stats.cct_kelvin(_solid((0, 0, 255))))
    assert math.isnan(stats.cct_kelvin(_solid((0, 0, 0))))


@pytest.mark.parametrize("sigma", [5.0, 10.0])
def test_noise_sigma_recovers_added_gaussian_noise(sigma):
    estimate = stats.noise_sigma(_with_noise(_smooth_gradient(), sigma))
    assert estimate == pytest.approx(sigma, rel=0.15)


def test_noise_sigma_ignores_edges():
    # Noise of sigma 5 on a scene of sharp-edged discs: unmasked, the curved edges read as extra noise.
    # (Straight axis-aligned edges would not: Immerkaer's kernel cancels anything constant along x or y.)
    shapes = Image.new("L", (256, 256), 0)
    draw = ImageDraw.Draw(shapes)
    for cx in range(20, 256, 36):
        for cy in range(20, 256, 36):
            draw.ellipse([cx - 13, cy - 13, cx + 13, cy + 13], fill=1)
    img = _smooth_gradient() - 60.0 * np.asarray(shapes)[..., None]
    noisy = _with_noise(img, 5.0)
    assert stats.noise_sigma(noisy) == pytest.approx(5.0, rel=0.15)
    assert stats.noise_sigma(noisy, edge_fraction=0.0) > 6.0


def test_clean_image_has_little_noise_and_noise_raises_sharpness():
    clean = _with_noise(_smooth_gradient(), 0.0)
    noisy = _with_noise(_smooth_gradient(), 8.0)
    assert stats.noise_sigma(clean) < 1.0
    assert stats.sharpness(noisy) > 10 * stats.sharpness(clean)


def test_aliased_edges_are_more_jagged_than_antialiased():
    aliased, smooth = _ellipse(1), _ellipse(8)
    j_aliased, j_smooth = stats.jaggedness_deg(aliased), stats.jaggedness_deg(smooth)
    assert j_aliased > 2 * j_smooth
    # Compared at the common resolution too, as reports do.
    assert stats.compute_all(aliased)["jaggedness_deg"] > stats.compute_all(smooth)["jaggedness_deg"]


def test_jaggedness_is_nan_without_edges():
    assert math.isnan(stats.jaggedness_deg(_solid((120, 120, 120))))


def test_saturated_image_is_more_colourful_than_greyish():
    rng = np.random.default_rng(1)
    # Random vivid colours vs the same scene pulled 85% of the way to its grey.
    vivid = rng.integers(0, 256, (64, 64, 3)).astype(np.float64)
    grey = vivid.mean(axis=2, keepdims=True)
    dull = np.rint(grey + 0.15 * (vivid - grey)).astype(np.uint8)
    vivid = vivid.astype(np.uint8)
    for measure in (stats.colourfulness, stats.saturation_hsv, stats.chroma_lab):
        assert measure(vivid) > 2 * measure(dull), measure.__name__
    assert stats.colourfulness(_solid((128, 128, 128))) == 0.0


def test_low_contrast_image_has_less_range_and_entropy():
    ramp = np.tile(np.linspace(0, 255, 256), (64, 1))
    full = np.repeat(np.rint(ramp)[..., None], 3, axis=2).astype(np.uint8)
    flat = np.repeat(np.rint(110 + 0.15 * ramp)[..., None], 3, axis=2).astype(np.uint8)
    assert stats.dynamic_range(full) > 200
    assert stats.dynamic_range(flat) < 40
    assert stats.luma_entropy(full) == pytest.approx(8.0, abs=0.01)  # every grey level used equally
    assert stats.luma_entropy(flat) < 6.0


def test_clipping_fractions_match_construction():
    img = np.full((100, 100, 3), 128, dtype=np.uint8)
    img[:30] = 255  # 30% blown to white
    img[30:42] = 0  # 12% crushed to black
    img[42:50] = (255, 0, 0)  # saturated red is not a blown highlight
    assert stats.clipped_highlights(img) == pytest.approx(0.30)
    assert stats.clipped_shadows(img) == pytest.approx(0.12)


def test_compute_all_returns_every_metric_and_accepts_pil():
    img = _with_noise(_smooth_gradient(300), 4.0)
    values = stats.compute_all(img, size=128)
    assert list(values) == [m.name for m in stats.METRICS]
    assert values == stats.compute_all(Image.fromarray(img), size=128)
    for metric in stats.METRICS:
        assert metric.direction in ("higher", "lower") and metric.remark and metric.description


def test_compute_all_compares_at_a_common_resolution():
    # The same noisy scene at 1024 and at 512: measured at 512, the large one's noise is averaged
    # down by the resize, so both read about the same as a 512 view.
    big = Image.fromarray(_with_noise(_smooth_gradient(1024), 10.0))
    resized = stats.resize_to(big, 512)
    assert resized.shape == (512, 512, 3)
    assert stats.resize_to(np.zeros((200, 400, 3), np.uint8), 100).shape == (100, 200, 3)
    assert stats.compute_all(big)["noise_sigma"] < 0.7 * stats.noise_sigma(np.asarray(big))


@pytest.mark.parametrize("bad", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8),
                                 np.zeros((32, 32, 3), np.float32), np.zeros((4, 4, 3), np.uint8)])
def test_bad_input_is_rejected_with_a_fix(bad):
    with pytest.raises(InvalidRequest) as err:
        stats.compute_all(bad, size=None)
    assert err.value.field == "image" and err.value.hint


def test_aggregate_groups_and_gives_bootstrap_intervals():
    rng = np.random.default_rng(2)
    rows = []
    for model, centre in (("sd15", 30.0), ("qwen", 45.0)):
        for scenario in ("portrait", "product"):
            for v in rng.normal(centre, 5.0, 40):
                rows.append({"model": model, "scenario": scenario, "colourfulness": v})
    rows.append({"model": "sd15", "scenario": "portrait", "colourfulness": float("nan")})
    out = stats.aggregate(rows, metric="colourfulness", n_resamples=1000)
    assert [(r["model"], r["scenario"]) for r in out] == [
        ("qwen", "portrait"), ("qwen", "product"), ("sd15", "portrait"), ("sd15", "product")]
    for r in out:
        assert r["n"] == 40  # the NaN row is skipped
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        # Width close to the normal-theory 2 * 1.96 * 5 / sqrt(40) = 3.1.
        assert 2.0 < r["ci_high"] - r["ci_low"] < 4.5
    qwen = [r for r in out if r["model"] == "qwen"]
    assert all(r["mean"] == pytest.approx(45.0, abs=3.0) for r in qwen)

    by_model = stats.aggregate(rows, by="model", metric="colourfulness", n_resamples=500)
    assert [r["n"] for r in by_model] == [80, 80]


def test_aggregate_single_value_has_no_interval_and_missing_key_is_named():
    (one,) = stats.aggregate([{"model": "m", "scenario": "s", "lab_b": 3.0}], metric="lab_b")
    assert one["mean"] == 3.0 and math.isnan(one["ci_low"])
    with pytest.raises(InvalidRequest, match="'scenario'"):
        stats.aggregate([{"model": "m", "lab_b": 1.0}])
