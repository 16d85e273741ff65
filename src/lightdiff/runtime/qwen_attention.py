"""Qwen-Image's joint attention in a form Inductor compiles whole: rotary embeddings in real arithmetic, and
optionally each stream's query, key and value projections as one matmul.

diffusers' ``QwenDoubleStreamAttnProcessor2_0`` rotates queries and keys as complex numbers
(``apply_rotary_emb_qwen(use_real=False)``: ``view_as_complex``, a complex multiply, ``view_as_real``). Inductor
generates no code for complex operators, so inside the compiled blocks each rotation runs as separate eager
kernels between fused ones: four per block call, 960 complex multiplies in two steps of qwen-image-2512 at 1024
(20.5 us each, 19.7 ms; H100, 2026-11-28, docs/benchmarks/2026-11-28-h100/profile-qwen-fp8-compiled.txt), plus the
copies into and out of float32 around them. ``rotate_real`` computes the same products on the real and imaginary parts
(the same float32 arithmetic, then the same cast), which Inductor fuses with the norm before and the
concatenation after. Written here because diffusers' processor hard-codes the complex form for this model.

``fuse_projections``: each stream's three projections (to_q/to_k/to_v, add_q_proj/add_k_proj/add_v_proj)
concatenated into one layer along the output rows, the three removed (no second copy of the weights). One
matmul instead of three, and in fp8 one activation quantization. Row-wise fp8 scales are per output row, so the
fused layer holds exactly the values and scales of the three.

Measured (qwen-image-2512 1024, fp8 fast accumulation, compiled blocks as CUDA graphs, one process each; H100,
2026-11-28, docs/benchmarks/2026-11-28b-h100): 4.362 -> 4.303 -> 4.288 s per image with the rotation, then the
fused projections; on two more H100s 4.315 -> 4.253 -> 4.191 s and 4.328 -> 4.267 -> 4.219 s.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

STREAMS = (("to_qkv", ("to_q", "to_k", "to_v")), ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")))
DIFFUSERS_PROCESSOR = "QwenDoubleStreamAttnProcessor2_0"


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb_qwen(x, freqs, use_real=False)``: under torch.compile as ``rotate_real``, which
    Inductor fuses; eager (a step-cached request runs the blocks uncompiled) as diffusers' three complex kernels,
    fewer than the real form's nine. The same values either way."""
    if torch.compiler.is_compiling():
        return rotate_real(x, freqs)
    return apply_rotary_emb_qwen(x, freqs, use_real=False)


def rotate_real(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb_qwen(x, freqs, use_real=False)`` without complex tensors: ``x`` (batch, tokens,
    heads, head_dim) taken as head_dim/2 (real, imaginary) pairs, each multiplied by ``freqs`` (tokens, head_dim/2,
    complex), in float32, cast back to x's dtype."""
    parts = torch.view_as_real(freqs).unsqueeze(1)  # (tokens, 1, head_dim/2, 2): a view, no complex arithmetic
    cos, sin = parts[..., 0], parts[..., 1]
    re, im = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(3).type_as(x)


def _project(attn, states: torch.Tensor, fused: str, names: tuple[str, str, str]):
    layer = getattr(attn, fused, None)
    if layer is not None:
        return layer(states).chunk(3, dim=-1)
    return tuple(getattr(attn, n)(states) for n in names)


class QwenJointAttnProcessor:
    """Computes what diffusers' ``QwenDoubleStreamAttnProcessor2_0`` does (text and image streams attended jointly,
    text first), with ``rotate`` for the rotary embeddings and fused projections where ``fuse_projections`` made
    them. Set on each block's attention by ``install``."""

    _attention_backend = None  # set by diffusers' set_attention_backend, as on its own processors
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 encoder_hidden_states_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            raise ValueError("QwenJointAttnProcessor needs encoder_hidden_states (the text stream)")
        if attention_mask is not None:
            raise ValueError("QwenJointAttnProcessor builds the joint mask from encoder_hidden_states_mask; "
                             "pass that instead of attention_mask")
        if encoder_hidden_states_mask is not None:  # text tokens as masked, every image token kept
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        head_dim = attn.inner_dim // attn.heads
        img = [t.unflatten(-1, (-1, head_dim)) for t in _project(attn, hidden_states, *STREAMS[0])]
        txt = [t.unflatten(-1, (-1, head_dim)) for t in _project(attn, encoder_hidden_states, *STREAMS[1])]
        for stream, (norm_q, norm_k) in ((img, (attn.norm_q, attn.norm_k)),
                                         (txt, (attn.norm_added_q, attn.norm_added_k))):
            if norm_q is not None:
                stream[0] = norm_q(stream[0])
            if norm_k is not None:
                stream[1] = norm_k(stream[1])
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img[:2] = [rotate(t, img_freqs) for t in img[:2]]
            txt[:2] = [rotate(t, txt_freqs) for t in txt[:2]]
        query, key, value = (torch.cat([t, i], dim=1) for t, i in zip(txt, img))  # text first, as diffusers orders
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        seq_txt = encoder_hidden_states.shape[1]
        img_out = attn.to_out[0](out[:, seq_txt:].contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)  # dropout
        return img_out, attn.to_add_out(out[:, :seq_txt].contiguous())


def _attentions(den):
    return [block.attn for block in getattr(den, "transformer_blocks", [])
            if type(getattr(block.attn, "processor", None)).__name__ in (DIFFUSERS_PROCESSOR,
                                                                          QwenJointAttnProcessor.__name__)]


def install(den) -> int:
    """Set ``QwenJointAttnProcessor`` on every Qwen-Image block of ``den`` still on diffusers' processor, keeping
    its attention backend; returns how many blocks use it. Compiled code traced the old processor: compile after."""
    count = 0
    for attn in _attentions(den):
        old = attn.processor
        if not isinstance(old, QwenJointAttnProcessor):
            new = QwenJointAttnProcessor()
            new._attention_backend, new._parallel_config = old._attention_backend, old._parallel_config
            attn.set_processor(new)
        count += 1
    return count


def concat_rows(layers):
    """One layer computing ``layers`` side by side (outputs concatenated): a Linear, or an Fp8Linear holding the same
    fp8 values and per-row scales."""
    from lightdiff.runtime.fp8 import Fp8Linear

    first = layers[0]
    if any(type(layer) is not type(first) or layer.in_features != first.in_features for layer in layers):
        raise ValueError(f"cannot fuse layers of different kinds or inputs: {[repr(layer) for layer in layers]}")
    has_bias = first.bias is not None
    if any((layer.bias is not None) != has_bias for layer in layers):
        raise ValueError("cannot fuse layers where only some have a bias")
    bias = torch.cat([layer.bias.detach() for layer in layers]) if has_bias else None
    if isinstance(first, Fp8Linear):
        if any(layer.scaling != first.scaling for layer in layers):
            raise ValueError(f"cannot fuse fp8 layers of different scalings: {[layer.scaling for layer in layers]}")
        # row scales are (1, out): side by side; block scales are (out / 128, in / 128): stacked
        scale_dim = 0 if first.scaling == "blockwise" else 1
        return Fp8Linear.from_parts(torch.cat([layer.weight_fp8 for layer in layers]),
                                    torch.cat([layer.weight_scale for layer in layers], dim=scale_dim), bias,
                                    min_rows=max(layer.min_rows for layer in layers), fast_accum=first.fast_accum,
                                    scaling=first.scaling)
    if type(first) is not torch.nn.Linear:
        raise ValueError(f"cannot fuse {type(first).__name__} layers (Linear and Fp8Linear only)")
    weight = torch.cat([layer.weight.detach() for layer in layers])
    fused = torch.nn.Linear(first.in_features, weight.shape[0], bias=has_bias, device=weight.device,
                            dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(bias)
    return fused


def fuse_projections(den) -> int:
    """For every block on ``QwenJointAttnProcessor`` (``install`` first), each stream's q/k/v projections as one
    layer (``concat_rows``), the three removed; returns how many streams were fused. Block by block, so at most one
    block's projections exist twice at a time."""
    from lightdiff.runtime import fp8

    fused, rows_for = 0, {}
    for attn in _attentions(den):
        if not isinstance(attn.processor, QwenJointAttnProcessor):
            raise ValueError("fuse_projections needs QwenJointAttnProcessor on the blocks (diffusers' processor "
                             "calls to_q, to_k and to_v): call qwen_attention.install first")
        for name, parts in STREAMS:
            if getattr(attn, name, None) is not None:
                continue
            layer = concat_rows([getattr(attn, p) for p in parts])
            if isinstance(layer, fp8.Fp8Linear) and layer.weight_fp8.is_cuda:
                # cuBLAS's fp8 support is by shape: ask the card for the fused shape, as quantize_denoiser did
                shape = (layer.in_features, layer.out_features, layer.fast_accum, layer.scaling)
                if shape not in rows_for:
                    rows_for[shape] = fp8.fewest_rows(*shape[:2], layer.weight_fp8.device, fast_accum=shape[2],
                                                      scaling=shape[3])
                if rows_for[shape] is None:
                    continue  # the card refuses this shape: the three layers stay
                layer.min_rows = max(layer.min_rows, rows_for[shape])
            for p in parts:
                delattr(attn, p)
            setattr(attn, name, layer)
            fused += 1
    return fused
