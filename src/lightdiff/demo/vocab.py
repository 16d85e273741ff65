"""The demo text encoder's tokenizer: one token per word (English) or phrase (Chinese) of the grammar.

Vocabulary (ids in this order): ``[PAD]`` 0, ``<|startoftext|>`` 1, ``<|endoftext|>`` 2, ``[UNK]`` 3,
then ``scenes.ENGLISH_WORDS`` and ``scenes.CHINESE_PHRASES`` sorted. Anything else is ``[UNK]``.

Pre-tokenization: Chinese has no spaces, so a ``Split`` on a regex alternation of the known Chinese
phrases (longest first, so at each place the longest phrase wins) isolates them; ``Whitespace`` then
splits English words and punctuation. Text is lower-cased first and "center" read as "centre".

CLIP-style behaviour: ``<|startoftext|> ids <|endoftext|>``, padded with ``[PAD]`` to
``model_max_length`` (``lightdiff.demo.model.MAX_TOKENS``, 40) and truncated so the end token survives. The
decoder puts a space before English words and none around Chinese phrases, so ``decode(encode(caption))`` gives
the caption back.

Echo (``echo=True``): ``<|startoftext|> ids <|endoftext|> ids <|endoftext|>``, the caption twice. CLIP's text
transformer is causal, so in "a red circle left of a blue square" the first object's tokens never see the
relation; in the second copy every token has read the whole caption once, which a bidirectional encoder would
give (the "echo embeddings" trick for causal language models). An echo tokenizer cannot truncate: tokenizers
truncates before its post-processor doubles the ids, so prompts longer than ``echo_prompt_limit`` are refused
by the workflows (``lightdiff.workflows.base``) instead of cut.

Built with ``tokenizers`` (WordLevel model) and wrapped in ``transformers.PreTrainedTokenizerFast``, so
diffusers pipelines call it as they call CLIP's tokenizer, and ``save_pretrained`` /
``PreTrainedTokenizerFast.from_pretrained(folder)`` round-trip it. Both are imported lazily.
"""

from __future__ import annotations

import re

from lightdiff.demo.model import MAX_TOKENS
from lightdiff.demo.scenes import CHINESE_PHRASES, ENGLISH_WORDS

PAD, BOS, EOS, UNK = "[PAD]", "<|startoftext|>", "<|endoftext|>", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
DEFAULT_MAX_LENGTH = MAX_TOKENS


def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens, then the grammar's English words and Chinese phrases."""
    tokens = list(SPECIAL_TOKENS) + sorted(set(ENGLISH_WORDS) | set(CHINESE_PHRASES))
    return {token: i for i, token in enumerate(tokens)}


def echo_prompt_limit(model_max_length: int) -> int:
    """Prompt tokens an echo tokenizer of ``model_max_length`` holds: two copies plus three special tokens."""
    return (model_max_length - 3) // 2


def echoes(tokenizer) -> bool:
    """Whether ``tokenizer`` (any ``PreTrainedTokenizerFast``) writes the caption twice (``echo=True``)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.post_processor is None:
        return False
    # the post-processor alone: serialising the whole tokenizer (a real CLIP vocabulary) on every request is not free
    processor = json.loads(backend.post_processor.__getstate__())
    return sum("Sequence" in piece for piece in processor.get("single", [])) > 1


def build_tokenizer(model_max_length: int = DEFAULT_MAX_LENGTH, echo: bool = False):
    """A ``transformers.PreTrainedTokenizerFast`` for demo captions in English and Chinese; with ``echo`` every
    caption is written twice (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from lightdiff.errors import InvalidRequest

    if model_max_length < (5 if echo else 3):
        raise InvalidRequest("model_max_length", f"model_max_length {model_max_length} leaves no room for words.",
                             f"Use at least {5 if echo else 3} (start, one word, end{', the word again, end' if echo else ''}); "
                             f"the demo default is {MAX_TOKENS}.")
    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # American "center" reads as the grammar's "centre", so both spellings share one trained token
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("center", "centre")])
    phrases = "|".join(re.escape(p) for p in sorted(CHINESE_PHRASES, key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(phrases), behavior="isolated"),
        pre_tokenizers.Whitespace(),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS} $A {EOS}" if echo else f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    # a space before each English word or special token, none around Chinese phrases or punctuation
    tok.decoder = decoders.Sequence([
        decoders.Replace(Regex(r"^(?=[a-z0-9<\[])"), " "), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=model_max_length, padding_side="right", truncation_side="right",
        clean_up_tokenization_spaces=False,
    )


def word_pieces(tokenizer, text: str) -> list[str]:
    """``text`` cut into the tokenizer's words (normalised, pre-tokenized), without its special tokens or echo."""
    backend = tokenizer.backend_tokenizer
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


def unknown_words(tokenizer, text: str) -> list[str]:
    """The pieces of ``text`` that the tokenizer maps to ``[UNK]`` (words outside the grammar)."""
    backend = tokenizer.backend_tokenizer
    return [piece for piece in word_pieces(tokenizer, text) if backend.token_to_id(piece) is None]


def count_unknown(tokenizer, texts: str | list[str]) -> int:
    """How many words of ``texts`` fall outside the vocabulary."""
    return sum(len(unknown_words(tokenizer, t)) for t in ([texts] if isinstance(texts, str) else texts))
