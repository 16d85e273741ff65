"""Qwen-Image's transformer blocks precompiled: one artifact on disk serves all 60 blocks and every text length, so
a later process runs them compiled without Dynamo's tracing; on CUDA the whole stack of blocks replays as one graph.

Regional compilation (``fastpath.compile_blocks``) traces the block again in every process: a warm start of
qwen-image-2512 under 24 GB took 12.15 s from weights placed to the first image, 5.4 s of it compiling, 3.7 s of that
tracing (three traces: the prompt and the negative prompt differ in text length, and the first block's text input is
a view) (H100, 2026-11-27). Here the block is AOT-compiled once (runtime/precompiled.py) with its weights as inputs,
so the same compiled code serves every block, and with the text length marked dynamic, so both sides of true CFG and
any later prompt use it. Inputs that are views are copied first, so every call sees plain tensors, as at the trace.

CUDA graphs: torch.compile's reduce-overhead records one graph per block call, 120 per denoising step with true CFG,
and recording them took ~4 s of the warm start (graph trees check every recorded output's liveness at each new
recording). Here the first block's call runs all 60 blocks as one captured graph (``precompiled.GraphedCall``), one
per input size, sharing one memory pool; the blocks after it pass that result through. Only calls the stack can
stand for take this path: a denoiser call with ControlNet residuals (added between blocks) runs block by block.

Anything this path cannot do falls back without losing the request: a failed compile, load or capture compiles the
blocks regionally (``compile_blocks``); a call with arguments the artifact was not traced for, or sizes outside its
guards, runs that block's plain forward. ``notes`` says which happened.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

from lightdiff.runtime.device import is_oom

BLOCK_FN = "qwen-image-block"
BLOCK_CLASSES = ("QwenImageTransformerBlock",)
TEXT_DIM = 1  # encoder_hidden_states: (batch, text tokens, dim)
MAX_GRAPHS = 8  # stack graphs kept (sizes x text lengths), least recently used dropped first


def block_call(block, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb):
    """What the artifact computes: one block's forward, the block (its weights) an input like the tensors."""
    return block.forward(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                         encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb,
                         image_rotary_emb=image_rotary_emb)


def supported(den) -> bool:
    blocks = getattr(den, "transformer_blocks", None)
    return bool(blocks) and all(type(b).__name__ in BLOCK_CLASSES for b in blocks)


def _plain(t):
    """A view copied into its own tensor: the compiled code was traced on plain tensors."""
    import torch

    return t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t


class PrecompiledBlocks:
    """Installed on a Qwen-Image transformer's blocks (as their compiled call, where ``Module.compile`` puts it, so
    ``fastpath.uncompiled_blocks`` sets them aside for step caches as it does torch.compile's)."""

    def __init__(self, den, cuda_graphs: bool = False):
        """``cuda_graphs`` (CUDA only): the stack of blocks replays as one graph per input size."""
        self.den = den
        self.cuda_graphs = cuda_graphs
        self.notes: dict[str, str] = {}  # what happened: "loaded", "compiled", a fallback and why
        self._fns: dict[tuple, object] = {}
        self._graphs: OrderedDict[tuple, object] = OrderedDict()
        self._pool = None
        self._blocks = list(den.transformer_blocks)
        self._stack_ok = False  # this denoiser call may run the blocks as one graph (set before each call)
        self._pass_through = 0  # blocks left in this call that pass the stack graph's output on
        self._stack_out = None
        for block in self._blocks:
            block._compiled_call_impl = functools.partial(self._call, block)
        self._hook = den.register_forward_pre_hook(self._before_denoiser, with_kwargs=True)
        den._lightdiff_precompiled = self

    def reset(self) -> None:
        """Forget the loaded functions and the recorded graphs with their pool; the next call loads them again."""
        self._fns.clear()
        self._graphs.clear()
        self._pool = None

    def _before_denoiser(self, module, args, kwargs):
        # diffusers' Qwen-Image pipelines pass everything by keyword; ControlNet residuals are added between blocks
        self._stack_ok = len(args) <= 1 and kwargs.get("controlnet_block_samples") is None
        self._pass_through, self._stack_out = 0, None

    def _extra(self, block) -> dict:
        """What the trace depended on beyond its tensors, for the artifact's key: the model's config, the block's
        modules as configured (fp8 or not, padding rows), its attention processor and backend."""
        import os

        from lightdiff.runtime.fastpath import model_config

        processor = block.attn.processor
        return {"config": model_config(self.den),
                "modules": sorted({f"{type(m).__name__}({m.extra_repr()})" for m in block.modules()}),
                "processor": [type(processor).__name__, str(getattr(processor, "_attention_backend", None)),
                              os.environ.get("DIFFUSERS_ATTN_BACKEND", "")]}

    def _fn(self, args: tuple):
        """The compiled block for these arguments' fixed sizes (loaded, or compiled and saved), or None after a
        failure, which hands the blocks to regional compilation."""
        from lightdiff.runtime import precompiled

        _, hidden, text, mask, temb, rope = args
        fixed = (tuple(hidden.shape), str(hidden.dtype), tuple(temb.shape), str(text.dtype), text.shape[0],
                 text.shape[2], mask is None, tuple(rope[0].shape), hidden.device.type)
        fn = self._fns.get(fixed)
        if fn is not None:
            return fn
        dynamic = [((2,), TEXT_DIM), ((5, 1), 0)] + ([] if mask is None else [((3,), TEXT_DIM)])
        key = precompiled.artifact_key(BLOCK_FN, (hidden, temb, rope[0]),
                                       {**self._extra(args[0]), "text": [str(text.dtype), text.shape[0],
                                                                        text.shape[2], mask is None]})
        try:
            fn, how = precompiled.load_or_compile(block_call, args, key, dynamic=dynamic)
        except precompiled.PrecompileFailed as e:
            self._fall_back(f"not precompiled: {e}")
            return None
        self.notes[BLOCK_FN] = how
        self._fns[fixed] = fn
        return fn

    def _fall_back(self, why: str) -> None:
        from lightdiff.runtime.fastpath import compile_blocks

        self.notes[BLOCK_FN] = why[:400]
        self._hook.remove()
        self.reset()
        compile_blocks(self.den, cuda_graphs=self.cuda_graphs)  # replaces this object's calls on every block

    def _stack_graph(self, fn, args: tuple):
        """The whole stack of blocks captured as one CUDA graph for these input sizes (recorded on first use)."""
        import torch

        from lightdiff.runtime.precompiled import GraphedCall

        _, hidden, text, mask, temb, (img_freqs, txt_freqs) = args
        sizes = tuple(None if t is None else (tuple(t.shape), str(t.dtype))
                      for t in (hidden, text, mask, temb, img_freqs, txt_freqs))
        graph = self._graphs.get(sizes)
        if graph is not None:
            self._graphs.move_to_end(sizes)
            return graph
        blocks = self._blocks

        def stack(hidden, text, mask, temb, img_freqs, txt_freqs):
            for block in blocks:
                text, hidden = fn(block, hidden, text, mask, temb, (img_freqs, txt_freqs))
            return text, hidden

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # the stack graphs never run at once: one pool for all
        graph = GraphedCall(stack, (hidden, text, mask, temb, img_freqs, txt_freqs), pool=self._pool)
        self._graphs[sizes] = graph
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        self.notes["cuda graph"] = "the block stack, one graph per input size"
        return graph

    def _call(self, block, hidden_states=None, encoder_hidden_states=None, encoder_hidden_states_mask=None,
              temb=None, image_rotary_emb=None, joint_attention_kwargs=None, modulate_index=None):
        import torch

        if self._pass_through:  # a block after the first in a call the stack graph ran: its result passes on
            self._pass_through -= 1
            text, hidden = self._stack_out
            if hidden_states is not hidden or encoder_hidden_states is not text:
                raise RuntimeError("lightdiff: the transformer changed its hidden states between blocks in a call "
                                   "the block-stack graph ran whole; run it with fast='off' and report this")
            return text, hidden
        kwargs = dict(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                      encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb,
                      image_rotary_emb=image_rotary_emb, joint_attention_kwargs=joint_attention_kwargs,
                      modulate_index=modulate_index)
        if (joint_attention_kwargs or modulate_index is not None or image_rotary_emb is None
                or torch.is_grad_enabled()):
            return block._call_impl(**kwargs)  # not what the artifact was traced for
        args = (block, _plain(hidden_states), _plain(encoder_hidden_states), _plain(encoder_hidden_states_mask),
                _plain(temb), tuple(_plain(r) for r in image_rotary_emb))
        fn = self._fn(args)
        if fn is None:  # precompiling failed: _fall_back compiled every block regionally, this one included
            return block._compiled_call_impl(**kwargs)
        try:
            if self.cuda_graphs and self._stack_ok and block is self._blocks[0]:
                graph = self._stack_graph(fn, args)
                text, hidden = graph(*args[1:5], *args[5])
                self._stack_out, self._pass_through = (text, hidden), len(self._blocks) - 1
                return text, hidden
            return fn(*args)
        except RuntimeError as e:
            if "GuardManager check failed" in str(e):  # sizes outside the traced guards: the plain block serves
                self.notes[f"{BLOCK_FN} guard miss"] = " ".join(str(e).split())[:400]
                return block._call_impl(**kwargs)
            if is_oom(e) or not self.cuda_graphs:
                raise
            self._fall_back(f"block-stack CUDA graph failed: {type(e).__name__}: {e}")  # a capture torch refused
            return block._compiled_call_impl(**kwargs)
