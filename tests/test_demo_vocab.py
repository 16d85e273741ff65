"""The demo tokenizer: the whole grammar in vocabulary, CLIP-style ids, and the diffusers call path."""

import pytest

from lightdiff.demo.model import MAX_TOKENS
from lightdiff.demo.scenes import Background, ObjectSpec, SceneDataset, SceneSpec, caption
from lightdiff.demo.vocab import build_tokenizer, count_unknown, unknown_words, vocabulary
from lightdiff.errors import InvalidRequest

EN = "a large red circle left of a small blue square on a yellow background"
ZH = "黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_special_tokens_come_first(tok):
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.model_max_length == MAX_TOKENS == 40
    assert tok.pad_token == "[PAD]" and tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>"


def test_chinese_is_split_into_the_grammars_phrases(tok):
    assert tok.tokenize("黄色背景上，一个大的红色圆形") == ["黄色", "背景上", "，", "一个", "大的", "红色", "圆形"]
    assert tok.tokenize("从上到下由蓝色渐变为白色的背景上") == ["从上到下", "由", "蓝色", "渐变为", "白色", "的", "背景上"]
    assert tok.tokenize("A Large RED circle, and") == ["a", "large", "red", "circle", ",", "and"]
    assert tok("in the center").input_ids == tok("in the centre").input_ids


def test_every_dataset_caption_is_in_vocabulary_and_fits(tok):
    captions = []
    for split in ("train", "heldout"):
        ds = SceneDataset(seed=4, length=200, lang_mix=0.5, split=split)
        captions += [ds.scene_and_caption(i)[1] for i in range(200)]
    assert count_unknown(tok, captions) == 0
    ids = tok(captions).input_ids
    assert all(tok.unk_token_id not in row for row in ids)
    assert max(len(row) for row in ids) <= MAX_TOKENS


def test_the_longest_caption_the_grammar_makes_fits_without_truncation(tok):
    # every optional word present: three large objects with surfaces, a gradient, a two-word relation
    objects = (ObjectSpec("hexagon", "orange", "large", "outlined"),
               ObjectSpec("triangle", "purple", "large", "striped"),
               ObjectSpec("diamond", "white", "large", "dotted"))
    spec = SceneSpec(objects, Background("horizontal", ("yellow", "black")), relation="right of")
    for lang, form in [(lang, form) for lang in ("en", "zh") for form in ("relation", "places")]:
        text = caption(spec, lang, form)
        ids = tok(text, truncation=True, max_length=MAX_TOKENS).input_ids
        assert len(tok(text).input_ids) <= MAX_TOKENS
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_called_like_stable_diffusion_calls_clips_tokenizer(tok):
    batch = tok([EN, ZH], padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt")
    ids, mask = batch.input_ids, batch.attention_mask
    assert tuple(ids.shape) == (2, MAX_TOKENS)
    en_words = len(EN.split())
    zh_words = 13  # 黄色 背景上 ， 一个 大的 红色 圆形 在 一个 小的 蓝色 正方形 左边
    for row, m, n in zip(ids.tolist(), mask.tolist(), (en_words, zh_words)):
        assert row[0] == tok.bos_token_id and row[n + 1] == tok.eos_token_id
        assert row[n + 2:] == [tok.pad_token_id] * (MAX_TOKENS - n - 2)
        assert sum(m) == n + 2
    assert tok.batch_decode(ids, skip_special_tokens=True) == [EN, ZH]


def test_truncation_keeps_the_end_token_and_diffusers_can_report_the_cut(tok):
    long = ", and ".join([EN] * 4)
    truncated = tok([long], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    untruncated = tok([long], padding="longest", return_tensors="pt").input_ids
    assert truncated.shape[-1] == MAX_TOKENS and truncated[0, -1].item() == tok.eos_token_id
    assert untruncated.shape[-1] > MAX_TOKENS
    removed = tok.batch_decode(untruncated[:, MAX_TOKENS - 1:-1])  # what StableDiffusionPipeline logs
    assert removed[0] and long.endswith(removed[0])


def test_unknown_words_map_to_unk_and_are_counted(tok):
    text = "a cat on a mat 一只猫"
    assert unknown_words(tok, text) == ["cat", "mat", "一只猫"]
    assert count_unknown(tok, [text, EN]) == 3
    ids = tok(text).input_ids
    assert ids.count(tok.unk_token_id) == 3


def test_save_pretrained_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok.save_pretrained(tmp_path)
    for loaded in (PreTrainedTokenizerFast.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.model_max_length == MAX_TOKENS and loaded.pad_token == "[PAD]"
        assert loaded([EN, ZH, "a cat"]).input_ids == tok([EN, ZH, "a cat"]).input_ids
        assert loaded.decode(loaded(ZH).input_ids, skip_special_tokens=True) == ZH
    assert len(vocabulary()) == len(tok)


def test_model_max_length_is_configurable_and_checked():
    assert build_tokenizer(16)(EN, padding="max_length", truncation=True).input_ids.__len__() == 16
    with pytest.raises(InvalidRequest) as err:
        build_tokenizer(2)
    assert err.value.field == "model_max_length"


def test_a_stable_diffusion_pipeline_encodes_prompts_with_it(tok):
    """The real call path: StableDiffusionPipeline.encode_prompt with a tiny CLIP text encoder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), max_position_embeddings=tok.model_max_length, hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    embeds, negative = pipe.encode_prompt([EN, ZH], device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=True, negative_prompt=["", ""])
    assert tuple(embeds.shape) == (2, MAX_TOKENS, 32) and tuple(negative.shape) == (2, MAX_TOKENS, 32)
    assert not torch.allclose(embeds[0], embeds[1])
    image = pipe(EN, num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_echo_tokenizer_writes_the_caption_twice_and_survives_a_save(tmp_path):
    from transformers import AutoTokenizer

    from lightdiff.demo.model import ECHO_MAX_TOKENS
    from lightdiff.demo.vocab import echo_prompt_limit, echoes

    echo, plain = build_tokenizer(ECHO_MAX_TOKENS, echo=True), build_tokenizer()
    words = plain(EN, add_special_tokens=False).input_ids
    ids = echo(EN, padding="max_length", max_length=ECHO_MAX_TOKENS).input_ids
    n = len(words)
    assert ids[:2 * n + 3] == [echo.bos_token_id, *words, echo.eos_token_id, *words, echo.eos_token_id]
    assert ids[2 * n + 3:] == [echo.pad_token_id] * (ECHO_MAX_TOKENS - 2 * n - 3)
    assert echoes(echo) and not echoes(plain)
    echo.save_pretrained(tmp_path)
    assert echoes(AutoTokenizer.from_pretrained(tmp_path))
    # the demo's longest caption (35 tokens) fits twice; the limit is what the plain tokenizer holds
    assert echo_prompt_limit(ECHO_MAX_TOKENS) == MAX_TOKENS - 2 >= 35
    with pytest.raises(InvalidRequest):
        build_tokenizer(4, echo=True)


def test_in_the_echo_copy_the_first_object_knows_the_relation():
    """Why echo exists: CLIP's text transformer is causal, so the first object's tokens cannot see "left of"
    after them; the same tokens in the second copy can."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from lightdiff.demo import model as demo

    tok = build_tokenizer(demo.ECHO_MAX_TOKENS, echo=True)
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(**{**demo.TEXT_ENCODER_CONFIG,
                                              "max_position_embeddings": demo.ECHO_MAX_TOKENS})).eval()
    captions = ["a red circle left of a blue square", "a red circle right of a blue square"]
    ids = tok(captions, padding="max_length", max_length=demo.ECHO_MAX_TOKENS, return_tensors="pt").input_ids
    with torch.no_grad():
        states = encoder(ids).last_hidden_state
    n = len(build_tokenizer()(captions[0], add_special_tokens=False).input_ids)
    assert ids[0, n + 1].item() == tok.eos_token_id and ids[0, 2 * n + 2].item() == tok.eos_token_id
    first_copy, second_copy = slice(1, 4), slice(n + 2, n + 5)  # "a red circle" in each copy
    assert torch.equal(states[0, first_copy], states[1, first_copy])
    assert (states[0, second_copy] - states[1, second_copy]).abs().max() > 1e-3


def test_a_prompt_too_long_for_an_echo_model_is_refused_not_cut():
    """A plain CLIP tokenizer cuts a long prompt and the workflow warns; an echo tokenizer cannot cut (the copies
    would differ), so the workflow refuses with the limit and the fix."""
    from types import SimpleNamespace

    from lightdiff.demo.model import ECHO_MAX_TOKENS
    from lightdiff.workflows.base import prompt_length_warning
    from lightdiff.workflows.txt2img import prompt_token_limit

    long_prompt = " ".join([EN] * 5)
    sd15 = SimpleNamespace(family="sd15")
    plain = SimpleNamespace(tokenizer=build_tokenizer())
    assert prompt_token_limit(plain, sd15) == MAX_TOKENS - 2
    assert "were ignored" in prompt_length_warning(plain, long_prompt, prompt_token_limit(plain, sd15))
    echo = SimpleNamespace(tokenizer=build_tokenizer(ECHO_MAX_TOKENS, echo=True))
    limit = prompt_token_limit(echo, sd15)
    assert limit == MAX_TOKENS - 2 and prompt_length_warning(echo, EN, limit) is None
    exactly = " ".join(["red"] * limit)  # one copy at the limit passes, one word more is refused
    assert prompt_length_warning(echo, exactly, limit) is None
    with pytest.raises(InvalidRequest):
        prompt_length_warning(echo, exactly + " red", limit)
    with pytest.raises(InvalidRequest) as err:
        prompt_length_warning(echo, long_prompt, limit)
    assert err.value.field == "prompt" and f"at most {limit}" in str(err.value) and "Shorten" in err.value.hint


def test_a_long_negative_prompt_is_named_too():
    """Both prompts go through the text encoder: the negative one is checked the same way and named."""
    from types import SimpleNamespace

    from lightdiff.demo.model import ECHO_MAX_TOKENS
    from lightdiff.workflows.base import prompt_length_warnings

    long_prompt = " ".join([EN] * 5)
    plain = SimpleNamespace(tokenizer=build_tokenizer())
    said = prompt_length_warnings(plain, SimpleNamespace(prompt=EN, negative_prompt=long_prompt), MAX_TOKENS - 2)
    assert len(said) == 1 and said[0].startswith("The negative prompt is")
    assert prompt_length_warnings(plain, SimpleNamespace(prompt=EN, negative_prompt=None), MAX_TOKENS - 2) == []
    echo = SimpleNamespace(tokenizer=build_tokenizer(ECHO_MAX_TOKENS, echo=True))
    with pytest.raises(InvalidRequest) as err:
        prompt_length_warnings(echo, SimpleNamespace(prompt=EN, negative_prompt=long_prompt), MAX_TOKENS - 2)
    assert err.value.field == "negative_prompt" and "negative prompt" in str(err.value)
