"""A deterministic stand-in tokenizer for twins and synthetic weights.

Real checkpoints bring their own tokenizer. Without one (tiny twins, synthetic real-size weights,
no hub), the pipelines still need something with the transformers tokenizer interface. This is a
byte-level BPE trained in a few milliseconds on a fixed English corpus, so token counts are close
to a real BPE's (the Qwen prompt template becomes ~40 tokens, not ~130 bytes): that keeps the
text sequence length, and so the FLOPs of synthetic runs, realistic. Same input, same ids, always.
"""

from __future__ import annotations

from functools import lru_cache

_CORPUS = """\
Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:
<|im_start|>system <|im_end|> <|im_start|>user <|im_start|>assistant
a photo of a cat sitting on a mat, a portrait of a woman with long hair in natural light, clear skin detail
a cartoon character, cyberpunk girl with a mechanical arm and a neon background
a product render of a white ceramic coffee cup, minimalist, soft light photography
a landscape illustration of a snowy mountain lake at dusk with an oil painting texture
abstract art of flowing metal, purple and gold interwoven, futuristic
high quality, detailed, sharp focus, masterpiece, best quality, low quality, blurry, ugly, bad anatomy
red green blue yellow orange purple white black circle square triangle star left right above below centre
"""

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=8)
def _trained(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    return tok.to_str()


def standin_tokenizer(style: str, model_max_length: int, vocab_size: int = 4096):
    """A transformers fast tokenizer. style "clip" wraps text in BOS/EOS and pads with EOS (as CLIP);
    style "qwen" adds nothing and pads with <|endoftext|> (as Qwen2)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained(vocab_size))
    if style == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
            pad_token="<|endoftext|>", model_max_length=model_max_length,
        )
    if style == "qwen":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            model_max_length=model_max_length,
        )
    raise ValueError(f"unknown stand-in tokenizer style {style!r}")
