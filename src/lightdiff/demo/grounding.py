"""Grounding loss for the demo trainer (opt-in: ``--grounding-weight``): each object's words in the caption
should draw the UNet's cross-attention to where that object is drawn.

Why: the shipped weights put two related objects on the right axis but pick the side by chance ("left of" and
"right of" give the same image, docs/demo/README.md); the UNet never has to bind an object's words to a place.
TokenCompose (Wang et al., CVPR 2024) supervises exactly that with segmentation masks: for each object, the
share of its tokens' attention that falls inside its mask, pushed towards 1. The renderer knows every mask,
so here it costs no annotation.

Pieces: ``object_masks`` (each object's visible part at latent resolution, as coverage 0-255),
``object_token_map`` (which caption tokens name which object, both copies of an echo caption),
``AttentionKeeper`` (a cross-attention processor that computes what diffusers' default does and keeps the
attention probabilities, mean over heads) and ``grounding_loss``. Training only: the saved UNet has diffusers'
default processors.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

MAX_OBJECTS = 3  # the grammar's most objects in one scene
ARTICLES = ("a", "an", "一个")  # not the object's own words: left out of its token set


def object_masks(scene, size: int, supersample: int = 4) -> np.ndarray:
    """[MAX_OBJECTS, size, size] uint8: the share (0-255) of each latent pixel that object k covers where it is
    visible (later objects are drawn over earlier ones); zeros for objects the scene does not have."""
    from lightdiff.demo.scenes import _draw_shape

    side = size * supersample
    out = np.zeros((MAX_OBJECTS, size, size), np.uint8)
    drawn = []
    for obj in scene.objects:
        canvas = Image.new("L", (side, side), 0)
        _draw_shape(ImageDraw.Draw(canvas), obj, side, fill=255)
        drawn.append(np.asarray(canvas) > 127)
    for k, mask in enumerate(drawn):
        visible = mask & ~np.any(drawn[k + 1:], axis=0) if k + 1 < len(drawn) else mask
        cover = visible.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        out[k] = np.round(cover * 255).astype(np.uint8)
    return out


def object_phrases(scene, lang: str) -> list[str]:
    """Each object's noun phrase as the caption writes it, in caption order (the order of ``scene.objects``)."""
    from lightdiff.demo.scenes import _np_en, _np_zh

    phrase = _np_en if lang == "en" else _np_zh
    return [phrase(o) for o in scene.spec().objects]


def object_token_map(tokenizer, ids, phrases: list[str]) -> np.ndarray:
    """[len(ids)] int8: k where token i is one of object k's words (its article left out), else -1. Each phrase
    is found in caption order, again in every copy of an echo caption."""
    ids = [int(i) for i in ids]
    from lightdiff.demo.vocab import word_pieces

    words = []
    for text in phrases:  # word by word: the tokenizer's own call would echo the phrase too
        pieces = word_pieces(tokenizer, text)
        ids_of = [tokenizer.backend_tokenizer.token_to_id(p) for p in pieces]
        words.append((ids_of, 1 if pieces and pieces[0] in ARTICLES else 0))
    out = np.full(len(ids), -1, np.int8)
    pos = 0
    while True:
        found = 0
        for k, (piece, skip) in enumerate(words):
            at = _find(ids, piece, pos)
            if at < 0:
                break
            out[at + skip:at + len(piece)] = k
            pos, found = at + len(piece), found + 1
        if found < len(words) or not words:
            return out


def _find(ids: list[int], piece: list[int], start: int) -> int:
    n = len(piece)
    for i in range(start, len(ids) - n + 1):
        if ids[i:i + n] == piece:
            return i
    return -1


class AttentionKeeper:
    """A cross-attention processor: the same output as diffusers' default (softmax(QK^T * scale) V, then
    to_out), computed explicitly so the probabilities can be kept: ``kept`` gets each call's [B, pixels, tokens]
    mean over heads. For the UNet's attn2 layers (text cross-attention) only."""

    def __init__(self, kept: list):
        self.kept = kept

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k = attn.to_k(encoder_hidden_states)
        v = attn.to_v(encoder_hidden_states)
        heads = attn.heads
        q, k, v = (x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (q, k, v))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        self.kept.append(probs.mean(dim=1))
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def keep_cross_attention(unet) -> tuple[list, dict]:
    """Install ``AttentionKeeper`` on every attn2 layer; returns (the list it fills, the processors before,
    for ``unet.set_attn_processor`` to put back)."""
    before = dict(unet.attn_processors)
    kept: list = []
    keeper = AttentionKeeper(kept)
    unet.set_attn_processor({name: keeper if ".attn2." in name else proc for name, proc in before.items()})
    return kept, before


def grounding_loss(kept: list, token_obj, masks):
    """TokenCompose's token loss: for each object with words and pixels, (1 - the share of its words' attention
    inside its mask)^2, averaged over objects and layers. ``token_obj`` [B, tokens] (object index or -1),
    ``masks`` [B, MAX_OBJECTS, h, w] coverage in 0-1, pooled to each layer's resolution."""
    import torch
    import torch.nn.functional as F

    onehot = F.one_hot((token_obj.long() + 1).clamp(min=0), MAX_OBJECTS + 1)[..., 1:].float()  # [B, L, K]
    has_words = onehot.sum(dim=1) > 0  # [B, K]
    total = torch.zeros((), device=masks.device)
    for probs in kept:
        side = int(round(probs.shape[1] ** 0.5))
        m = F.adaptive_avg_pool2d(masks.float(), side).flatten(2)  # [B, K, pixels]
        a = (probs.float() @ onehot).transpose(1, 2)  # [B, K, pixels]: attention on object k's words
        inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-6)
        valid = (has_words & (m.sum(-1) > 0)).float()
        total = total + ((1 - inside) ** 2 * valid).sum() / valid.sum().clamp_min(1.0)
    return total / max(1, len(kept))
