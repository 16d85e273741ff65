"""The grounding loss of the demo trainer: object masks, which words name which object, the attention it reads."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lightdiff.demo import grounding
from lightdiff.demo import model as demo
from lightdiff.demo import train
from lightdiff.demo.scenes import Background, Scene, SceneObject, caption
from lightdiff.demo.vocab import build_tokenizer

RED_CIRCLE = SceneObject("circle", "red", "large", cx=0.25, cy=0.5, radius=0.15)
BLUE_SQUARE = SceneObject("square", "blue", "small", cx=0.75, cy=0.5, radius=0.1)
PAIR = Scene((RED_CIRCLE, BLUE_SQUARE), Background("plain", ("yellow",)), relation="left of")


def test_object_masks_cover_each_object_where_it_is_drawn():
    masks = grounding.object_masks(PAIR, 16).astype(float) / 255
    assert masks.shape == (grounding.MAX_OBJECTS, 16, 16) and masks[2].sum() == 0  # no third object
    for k, obj in enumerate(PAIR.objects):
        ys, xs = np.mgrid[0:16, 0:16] + 0.5
        cx, cy = (masks[k] * xs).sum() / masks[k].sum() / 16, (masks[k] * ys).sum() / masks[k].sum() / 16
        assert abs(cx - obj.cx) < 0.03 and abs(cy - obj.cy) < 0.03
    assert masks[0].sum() > masks[1].sum()  # the large circle covers more than the small square


def test_a_later_object_hides_the_one_below_it():
    below = SceneObject("square", "green", "large", cx=0.5, cy=0.5, radius=0.3)
    above = SceneObject("circle", "white", "small", cx=0.5, cy=0.5, radius=0.1)
    masks = grounding.object_masks(Scene((below, above), Background("plain", ("black",))), 32)
    assert masks[1, 16, 16] == 255 and masks[0, 16, 16] == 0 and masks[0, 16, 3] == 0 and masks[0, 16, 11] == 255


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("echo", [False, True])
def test_token_map_marks_each_objects_own_words_in_every_copy(lang, echo):
    tokenizer = build_tokenizer(demo.ECHO_MAX_TOKENS if echo else demo.MAX_TOKENS, echo=echo)
    text = caption(PAIR, lang)
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    owner = grounding.object_token_map(tokenizer, ids, grounding.object_phrases(PAIR, lang))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    named = {k: [t for t, o in zip(tokens, owner) if o == k] for k in (0, 1, 2)}
    copies = 2 if echo else 1
    red, circle, blue, square = (("red", "circle", "blue", "square") if lang == "en" else ("红色", "圆形", "蓝色", "正方形"))
    assert named[0].count(red) == copies and named[0].count(circle) == copies and blue not in named[0]
    assert named[1].count(blue) == copies and named[1].count(square) == copies and red not in named[1]
    assert named[2] == [] and all(t not in ("yellow", "黄色", "a", "一个") for k in (0, 1) for t in named[k])


def test_attention_keeper_gives_the_default_output_and_keeps_each_cross_attention_map():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(demo.UNET_CONFIG).eval()
    z, t, context = torch.randn(2, 4, 32, 32), torch.tensor([10, 500]), torch.randn(2, 7, 128)
    with torch.no_grad():
        want = unet(z, t, context).sample
        kept, before = grounding.keep_cross_attention(unet)
        got = unet(z, t, context).sample
    assert torch.allclose(want, got, atol=1e-4)
    layers = [name for name in before if ".attn2." in name]
    assert len(kept) == len(layers) > 0
    assert {p.shape[1] for p in kept} == {16 * 16, 8 * 8}  # cross-attention at 16x16 and 8x8 (demo.model)
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in kept)
    unet.set_attn_processor(before)
    assert not any(isinstance(p, grounding.AttentionKeeper) for p in unet.attn_processors.values())


def test_grounding_loss_is_zero_inside_the_mask_one_outside_and_ignores_unnamed_objects():
    masks = torch.zeros(1, grounding.MAX_OBJECTS, 4, 4)
    masks[0, 0, :, :2] = 1  # object 0 on the left half
    masks[0, 1, :, 2:] = 1  # object 1 on the right half, named by no token
    token_obj = torch.tensor([[-1, 0, 0, -1]])
    probs = torch.zeros(1, 16, 4)
    left = masks[0, 0].flatten() > 0
    probs[0, left, 1] = 1.0  # object 0's words attended only from its own pixels
    probs[0, ~left, 3] = 1.0
    assert grounding.grounding_loss([probs], token_obj, masks).item() == pytest.approx(0.0)
    probs[0, :, 1] = (~left).float()  # ...and only from elsewhere
    assert grounding.grounding_loss([probs], token_obj, masks).item() == pytest.approx(1.0)
    assert grounding.grounding_loss([probs], torch.full_like(token_obj, -1), masks).item() == 0.0


def test_a_grounded_continued_run_trains_the_unet_and_logs_the_grounding_loss(tmp_path):
    first = tmp_path / "first"
    train.run(train.TrainConfig.smoke_preset(str(first)), argv=["--smoke"])
    out = tmp_path / "grounded"
    cfg = train.TrainConfig.smoke_preset(str(out), init=str(first), split=(0.0, 1.0, 0.0), grounding_weight=0.5)
    summary = train.run(cfg, argv=["--smoke", "--grounding-weight", "0.5"])
    assert not summary["errors"] and summary["phases"]["unet"]["steps"] == 3
    rows = [json.loads(line) for line in (out / "losses.jsonl").open()]
    ground = [r["loss"] for r in rows if r["phase"] == "grounding"]
    assert len(ground) == 3 and all(0.0 < g < 1.0 and math.isfinite(g) for g in ground)
    assert json.loads((out / "summary.json").read_text())["config"]["grounding_weight"] == 0.5
    # no ControlNet share: the continued folder's ControlNet is saved as it was, not stepped once
    assert summary["phases"]["controlnet"]["steps"] == 0
    before = load_file(first / "controlnet/diffusion_pytorch_model.safetensors")
    after = load_file(out / "controlnet/diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_samples_below_the_grounding_timestep_are_not_grounded(tmp_path):
    first = tmp_path / "first"
    train.run(train.TrainConfig.smoke_preset(str(first)), argv=["--smoke"])
    out = tmp_path / "late"
    cfg = train.TrainConfig.smoke_preset(str(out), init=str(first), split=(0.0, 1.0, 0.0), grounding_weight=0.5,
                                         grounding_min_t=999, unet_batch=2, seed=3)
    train.run(cfg, argv=["--smoke"])
    rows = [json.loads(line) for line in (out / "losses.jsonl").open()]
    assert [r["loss"] for r in rows if r["phase"] == "grounding"] == [0.0, 0.0, 0.0]  # no sample drew t = 999


@pytest.mark.parametrize("flag,value", [("--grounding-weight", "-1"), ("--grounding-min-t", "1000")])
def test_grounding_settings_out_of_range_are_refused(tmp_path, capsys, flag, value):
    from lightdiff.cli import main

    assert main(["train-demo", "--out", str(tmp_path / "out"), "--smoke", flag, value]) == 2
    assert f"{flag} {value}" in capsys.readouterr().err and not (tmp_path / "out").exists()
