"""Learned metrics as plugins: CLIP score from a local folder (a tiny random CLIP twin here)."""

import math

import numpy as np
import pytest
from PIL import Image

from lightdiff.errors import InvalidRequest
from lightdiff.evals import learned


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP saved as save_pretrained writes a real one: model, tokenizer, image processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from lightdiff.runtime.tokenizer import standin_tokenizer

    try:
        from transformers import CLIPImageProcessor
    except ImportError:  # without torchvision some versions only offer the PIL variant
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor

    folder = tmp_path_factory.mktemp("tiny-clip")
    # bos/eos ids match the stand-in tokenizer: CLIP pools the text at the first eos token.
    text = dict(vocab_size=4096, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    standin_tokenizer("clip", 77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_clip_score_is_finite_and_depends_on_the_prompt(clip_folder):
    scorer = learned.ClipScorer(clip_folder)
    prompts = ["a red circle", "a white ceramic coffee cup on a table", "snowy mountain lake at dusk"]
    scores = scorer.score([image()] * 3, prompts)
    assert all(math.isfinite(s) and 0 <= s <= 100 for s in scores)
    assert len(set(round(s, 4) for s in scores)) > 1
    # The same pair scores the same: batching does not change a score.
    assert scorer.score([image()], [prompts[1]])[0] == pytest.approx(scores[1], abs=1e-3)
    # PickScore is the same computation on its own CLIP weights, scaled by logit_scale.
    pick = learned.ClipScorer(clip_folder, kind="pickscore").score([image()], [prompts[1]])[0]
    cos = scores[1] / 100
    assert pick == pytest.approx(cos * float(scorer.model.logit_scale.detach().exp()), rel=1e-3)


def test_missing_weights_are_reported_as_skipped(tmp_path):
    found, status = learned.scorers()
    assert found == []
    assert status == {name: learned.SKIPPED_NO_WEIGHTS for name in learned.LEARNED}
    with pytest.raises(InvalidRequest, match="is not a folder"):
        learned.scorers(clip=str(tmp_path / "nowhere"))


def test_scoring_an_eval_folder_feeds_the_report(clip_folder, tmp_path):
    from test_evals_rating import make_evalrun

    from lightdiff.evals.report import build_eval_document

    make_evalrun(tmp_path, n_prompts=2, seeds=(0,))
    found, status = learned.scorers(clip=str(clip_folder))
    rows = learned.score_run(tmp_path, found, status)
    assert len(rows) == 4 and all(math.isfinite(r["clip_score"]) for r in rows)
    values, saved = learned.load_learned(tmp_path)
    assert saved["clip_score"] == "ok" and saved["imagereward"] == learned.SKIPPED_NO_WEIGHTS
    doc = build_eval_document(tmp_path, n_boot=50, n_resamples=100)
    section = next(s for s in doc.sections if s.title == "Learned metrics")
    status_rows = dict(section.blocks[0].rows)
    assert status_rows["clip_score"] == "ok" and status_rows["pickscore"] == learned.SKIPPED_NO_WEIGHTS
    means = section.blocks[1]
    assert {r[2] for r in means.rows} == {"clip_score"} and len(means.rows) == 2 * 2  # models x scenarios
