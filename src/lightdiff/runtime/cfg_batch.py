"""True CFG in one batched forward for transformer pipelines that make two calls per step (Qwen-Image).

diffusers' Qwen-Image pipelines call the transformer twice per step with true CFG: once under
``cache_context("cond")`` with the prompt, once under ``cache_context("uncond")`` with the negative
prompt, both on the same latents and timestep. Every weight is read (and, under a memory plan, cast from
fp8 or streamed from host RAM) twice per step. This diffusers hook joins the two into one forward of batch
2: the shorter text is right-padded and masked (the transformer builds the joint attention mask from
``encoder_hidden_states_mask``; text RoPE positions of real tokens do not change with padding), the cond
half is returned to the cond call and the uncond half kept for the uncond call that follows.

The uncond call's text is not known when the cond call arrives, so the hook uses the negative prompt it
saw at the previous step, and the uncond call only takes the kept half when it is that same step's call
with those same text tensors (object identity: the pipelines compute them once per run); otherwise it runs
as usual, so the output is always the pipeline's own. Step 0 runs unbatched. A call with inputs the hook
does not know how to batch (a ControlNet's residuals, which differ between the two calls) runs unbatched.
Both calls of a step use the same ``timestep / 1000`` in every Qwen-Image pipeline; the hook relies on
that rather than compare the values, which would synchronise with the GPU every step.

The cost is batch-2 activations during denoising (about 0.4 GiB more at 1024x1024 for Qwen-Image) and a
masked attention kernel where the prompts differ in length. Measured on an H200 (2026-11-27, synthetic
qwen-image-2512, 1024, 20 steps, docs/benchmarks/2026-11-27-h200/speed-qwen-cfg.jsonl) it pays only where
weights stream: fp8-group-offload under 24 GB 10.99 -> 10.06 s; resident it was slower (eager 7.08 -> 8.00 s,
compiled 5.50 -> 6.44 s: at 4,096 image tokens the two forwards already fill the card, and the padded text
needs the masked kernel). So the engine enables it only for plans that stream the denoiser every step.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

HOOK_NAME = "lightdiff_batched_cfg"
# keyword arguments that are the same for both calls of a step (compared by identity) and not batched
SHARED = ("img_shapes", "attention_kwargs", "return_dict", "guidance", "txt_seq_lens")
TEXT = ("encoder_hidden_states", "encoder_hidden_states_mask")


class _Unused:
    """StateManager needs a state class; this hook keeps its state on itself (see reset_state)."""

    def reset(self, *args, **kwargs) -> None:
        pass


class BatchedCFGHook(ModelHook):
    _is_stateful = True  # so that diffusers tells it the cache context ("cond" / "uncond") of each call

    def __init__(self):
        super().__init__()
        self.context = StateManager(_Unused)
        self.batched_steps = 0  # steps whose two calls ran as one forward (tests and benchmarks read these)
        self.single_calls = 0
        self._negative: dict | None = None  # the text and shared kwargs of the last uncond call
        self._kept: dict | None = None  # this step's batched cond call: its kwargs, the negative used, the uncond half

    def reset_state(self, module):
        self._negative, self._kept = None, None
        self.context.reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        forward = self.fn_ref.original_forward
        ctx = self.context._context
        name = ctx.name if ctx is not None else None
        if args or kwargs.get("return_dict", True) or name not in ("cond", "uncond"):
            self._kept = None
            return forward(*args, **kwargs)
        if name == "cond":
            self._kept = None
            if self._negative is not None and _batchable(kwargs, self._negative):
                return self._cond_batched(forward, kwargs)
            self.single_calls += 1
            return forward(**kwargs)
        kept, self._kept = self._kept, None
        if kept is not None and _same_step(kept, kwargs):
            self.batched_steps += 1
            return (kept["uncond"],)
        self._negative = {k: kwargs.get(k) for k in TEXT + SHARED}
        self.single_calls += 1
        return forward(**kwargs)

    def _cond_batched(self, forward, kwargs):
        import torch

        neg = self._negative
        hidden = kwargs["hidden_states"]
        n = hidden.shape[0]
        text, mask = join_text(kwargs["encoder_hidden_states"], kwargs.get("encoder_hidden_states_mask"),
                               neg["encoder_hidden_states"], neg["encoder_hidden_states_mask"])
        joined = dict(kwargs, hidden_states=torch.cat([hidden, hidden]),
                      timestep=torch.cat([kwargs["timestep"], kwargs["timestep"]]),
                      encoder_hidden_states=text, encoder_hidden_states_mask=mask)
        if isinstance(kwargs.get("img_shapes"), list):
            joined["img_shapes"] = kwargs["img_shapes"] * 2
        out = forward(**joined)[0]
        self._kept = {"cond": kwargs, "negative": neg, "uncond": out[n:]}
        return (out[:n],)


def _batchable(cond: dict, negative: dict) -> bool:
    """Only the inputs this hook knows: latents, timestep, text, and shared kwargs identical in both calls."""
    known = {"hidden_states", "timestep", *TEXT, *SHARED}
    if any(k not in known and v is not None for k, v in cond.items()):
        return False  # e.g. controlnet_block_samples: different for the two calls
    if cond.get("guidance") is not None or cond.get("txt_seq_lens") is not None:
        return False
    e, ne = cond["encoder_hidden_states"], negative["encoder_hidden_states"]
    return (e.shape[0] == ne.shape[0] and e.shape[2:] == ne.shape[2:] and e.dtype == ne.dtype
            and all(cond.get(k) is negative.get(k) for k in ("attention_kwargs", "img_shapes")))


def _same_step(kept: dict, uncond: dict) -> bool:
    """The uncond call of the step whose cond call was batched, with the negative text that was used."""
    cond, negative = kept["cond"], kept["negative"]
    known = {"hidden_states", "timestep", *TEXT, *SHARED}
    return (uncond.get("hidden_states") is cond["hidden_states"]
            and not any(k not in known and v is not None for k, v in uncond.items())
            and all(uncond.get(k) is negative[k] for k in TEXT)
            and all(uncond.get(k) is cond.get(k) for k in ("attention_kwargs", "img_shapes", "guidance"))
            and getattr(uncond.get("timestep"), "shape", None) == cond["timestep"].shape)


def join_text(cond, cond_mask, neg, neg_mask):
    """[cond; neg] along the batch, the shorter right-padded with zeros; the mask marks real tokens
    (None when both are full and equally long, so the unmasked attention kernels stay in use)."""
    import torch
    import torch.nn.functional as F

    length = max(cond.shape[1], neg.shape[1])
    if cond.shape[1] == neg.shape[1] and cond_mask is None and neg_mask is None:
        return torch.cat([cond, neg]), None

    def padded(e, m):
        m = torch.ones(e.shape[:2], dtype=torch.bool, device=e.device) if m is None else m.to(torch.bool)
        extra = length - e.shape[1]
        if extra:
            e = F.pad(e, (0, 0, 0, extra))
            m = F.pad(m, (0, extra), value=False)
        return e, m

    (ce, cm), (ne, nm) = padded(cond, cond_mask), padded(neg, neg_mask)
    return torch.cat([ce, ne]), torch.cat([cm, nm])


def enable(transformer) -> BatchedCFGHook:
    """Attach the hook (once) to a transformer; returns it."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = BatchedCFGHook()
        registry.register_hook(hook, HOOK_NAME)
    return hook


def disable(transformer) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)


def enabled(transformer) -> BatchedCFGHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
