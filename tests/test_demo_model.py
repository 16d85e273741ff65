"""The demo model's architecture: stated sizes, file caps, the spec entry and its loader branch.

CPU speed is documented, not timed here (the test machine is shared): 128x128, 20 Euler steps,
CFG, batch 1, fp32, torch 2.13 CPU measured 0.62-0.65 s per image with 2 threads and 1.0 s with 1
thread on lightdiff's 2-core development machine when quiet; with other jobs saturating both cores
single runs took up to 8 s (lightdiff.demo.model.CPU_SECONDS_MEASURED). What is tested instead is
the work behind that number: the UNet's FLOPs per image.
"""

import numpy as np
import pytest
import torch

from lightdiff import specs
from lightdiff.demo import model as demo
from lightdiff.errors import WeightsNotFound
from lightdiff.runtime import build, loader


def test_demo_spec_builds_on_meta_with_stated_counts():
    spec = specs.get("demo")
    built = build.build_on_meta(spec)
    assert set(built) == {"unet", "vae", "text_encoder"}
    for name, module in built.items():
        assert build.count_params_M(module) == pytest.approx(spec.params_M(name), rel=5e-4), name


def test_demo_is_an_sd15_model_at_128_pixels():
    spec = specs.get("demo")
    assert spec.family == "sd15" and spec.twin == "tiny-sd15" and not spec.is_twin
    assert spec.source == "demo"
    assert (spec.defaults.width, spec.defaults.height) == (128, 128)
    unet, vae = spec.components["unet"].config, spec.components["vae"].config
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    assert factor == demo.LATENT_FACTOR and unet["sample_size"] * factor == 128
    assert unet["cross_attention_dim"] == spec.components["text_encoder"].config["hidden_size"]


def test_vocabulary_and_positions_match_the_tokenizer():
    from lightdiff.demo.vocab import build_tokenizer

    tok = build_tokenizer(demo.ECHO_MAX_TOKENS, echo=True)  # the spec's (and the shipped weights') tokenizer
    text = demo.TEXT_ENCODER_CONFIG
    assert text["vocab_size"] == len(tok)
    assert text["max_position_embeddings"] == tok.model_max_length
    assert (text["pad_token_id"], text["bos_token_id"], text["eos_token_id"]) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)


def test_spec_tokenizer_component_is_the_demo_tokenizer():
    tok = build.build_non_module(specs.get("demo").components["tokenizer"])
    caption = "黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边"
    ids = tok(caption).input_ids
    assert tok.unk_token_id not in ids and tok.model_max_length == demo.TEXT_ENCODER_CONFIG["max_position_embeddings"]
    words = ids[1:ids.index(tok.eos_token_id)]
    assert ids == [tok.bos_token_id, *words, tok.eos_token_id, *words, tok.eos_token_id]  # echo: written twice
    assert tok.decode(words) == caption


def test_weight_files_fit_the_size_caps():
    torch.manual_seed(0)
    components = demo.build_components()
    controlnet = demo.build_controlnet(components["unet"])
    assert demo.count_params(controlnet) / 1e6 == pytest.approx(demo.CONTROLNET_PARAMS_M, rel=5e-4)
    modules = {n: components[n] for n in ("unet", "vae", "text_encoder")} | {"controlnet": controlnet}
    sizes = {n: demo.file_bytes_estimate(m) for n, m in modules.items()}
    assert all(size < demo.FILE_CAP_BYTES for size in sizes.values()), sizes
    assert sum(sizes.values()) < demo.TOTAL_CAP_BYTES, sizes


def test_unet_work_per_image_stays_within_the_cpu_budget():
    """20 CFG steps (40 UNet passes at 32x32 latents) must stay near 105 GFLOP: that is what runs in
    about 0.7 s on 2 CPU cores; a config change that doubles it would break the 2-second bar."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = specs.get("demo")
    with torch.device("meta"):
        unet = build.build_on_meta(spec, ["unet"])["unet"]
        latents, context = torch.empty(2, 4, 32, 32), torch.empty(2, demo.MAX_TOKENS, 128)
        with FlopCounterMode(display=False) as counter:
            unet(latents, torch.tensor([500, 500]), context)
    per_image_gflop = 20 * counter.get_total_flops() / 1e9
    assert 50 < per_image_gflop < 120


def test_canny_finds_boundaries_between_colours_of_equal_grey():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (30, 90, 230)  # blue
    image[16:48, 16:48] = (220, 30, 35)  # red: the same grey level as the blue
    edges = demo.canny_edges(image)
    assert edges.dtype == np.uint8 and edges.shape == (64, 64)
    assert edges[16:48, 14:18].any() and not edges[:8, :8].any()


def test_demo_weights_source_and_missing_weights_are_explained(tmp_path, monkeypatch):
    spec = specs.get("demo")
    monkeypatch.setattr(loader, "demo_weights_dir", lambda: tmp_path / "demo")
    assert loader.resolve_source(spec, "auto") == loader.WeightSource("demo", str(tmp_path / "demo"))
    assert loader.resolve_source(specs.get("sd15"), "demo").kind == "demo"
    with pytest.raises(WeightsNotFound) as e:
        loader.load("demo", device="cpu")
    assert "demo weights are not in this install" in e.value.message
    assert "lightdiff train-demo" in e.value.hint


def test_packaged_demo_folder_lives_in_the_package():
    folder = loader.demo_weights_dir()
    assert folder.parts[-3:] == ("lightdiff", "data", "demo")
