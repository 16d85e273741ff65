"""FLOPs per image, counted on the real architecture with torch.utils.flop_counter.FlopCounterMode.

The components are built on the meta device (shapes only, no memory, no weights) and run once, as
the diffusers pipeline calls them:
- the denoiser, once per step: SD1.5 runs cond and uncond as ONE UNet forward at batch 2B (CFG
  batching); Qwen-Image runs TWO transformer forwards at batch B (true CFG: prompt, then negative);
- the text encoder once per call (prompt, and the negative prompt when guidance is on), at batch 1
  (the pipelines repeat the embeddings for each image of the batch);
- the VAE decoder once per call at batch B.
FLOPs per image = (steps x denoiser per step + text encoder + VAE decode) / B.

Counts are cached as JSON in ``home()/flops.json`` per (model, architecture hash, size, batch,
guidance on/off, prompt): ``cached_flops_per_image`` reads that table without torch, so the
benchmark's parent process and the report can use it. ``python -m lightdiff.bench.flops JSON`` fills
the table for a list of cases (the runner starts it beside the GPU cases).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

from lightdiff import settings, specs
from lightdiff.bench.cases import DEFAULT_PROMPT
from lightdiff.bench.weights import arch_hash

_lock = threading.Lock()


def table_path() -> Path:
    return settings.home() / "flops.json"


def _spec(spec):
    return specs.get(spec) if isinstance(spec, str) else spec


def negative_default(spec) -> str:
    return spec.defaults.negative_prompt or ""


def key(spec, width: int, height: int, batch: int, cfg: bool, prompt: str, negative: str | None) -> str:
    spec = _spec(spec)
    negative = negative_default(spec) if negative is None else negative
    text = hashlib.sha1(f"{prompt}\0{negative}".encode()).hexdigest()[:10]
    return f"{spec.id}|{arch_hash(spec)}|{width}x{height}|b{batch}|cfg{int(bool(cfg))}|{text}"


def _read_table() -> dict:
    try:
        return json.loads(table_path().read_text())
    except (OSError, ValueError):
        return {}


def _store(entry_key: str, entry: dict) -> None:
    """Merge one entry into the table (atomic replace; last writer wins per key)."""
    with _lock:
        table = _read_table()
        table[entry_key] = entry
        path = table_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)


def per_image(entry: dict, steps: int) -> float:
    return (steps * entry["denoiser_per_step"] + entry["text_encoder"] + entry["vae_decode"]) / entry["batch"]


def cached_flops_per_image(spec, width: int, height: int, steps: int, batch: int = 1, *, cfg: bool = True,
                           prompt: str = DEFAULT_PROMPT, negative: str | None = None) -> float | None:
    """From the table only (no torch); None when this case was never counted."""
    entry = _read_table().get(key(spec, width, height, batch, cfg, prompt, negative))
    return per_image(entry, steps) if entry else None


def flops_per_image(spec, width: int, height: int, steps: int, batch: int = 1, *, cfg: bool = True,
                    prompt: str = DEFAULT_PROMPT, negative: str | None = None) -> float:
    """FLOPs to make one image: from the table, or counted on the meta device (and stored)."""
    spec = _spec(spec)
    k = key(spec, width, height, batch, cfg, prompt, negative)
    entry = _read_table().get(k)
    if entry is None:
        entry = count_call(spec, width, height, batch, cfg=cfg, prompt=prompt, negative=negative)
        _store(k, entry)
    return per_image(entry, steps)


# --- counting (torch) ---------------------------------------------------------------------------

def _count(fn) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


_meta_cache: dict = {}


def _meta_components(spec) -> dict:
    """Weight-bearing components on the meta device, built once per process."""
    from lightdiff.runtime.build import build_on_meta

    k = (spec.id, arch_hash(spec))
    if k not in _meta_cache:
        _meta_cache[k] = build_on_meta(spec)
    return _meta_cache[k]


def qwen_text_lengths(spec, prompt: str, negative: str) -> dict:
    """Token counts as QwenImagePipeline makes them: the prompt inside its chat template goes through the
    text encoder; the template's first tokens are dropped before the transformer sees the text."""
    import diffusers

    from lightdiff.runtime.build import build_non_module

    shell = diffusers.QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                        transformer=None)
    template, drop = shell.prompt_template_encode, shell.prompt_template_encode_start_idx
    tok = build_non_module(spec.components["tokenizer"])
    enc = [len(tok(template.format(t))["input_ids"]) for t in (prompt, negative)]
    return {"encoder": enc, "denoiser": [max(1, n - drop) for n in enc], "dropped": drop}


def denoiser_forward(spec, width: int, height: int, batch: int, text_tokens: int = 77) -> float:
    """FLOPs of ONE denoiser forward at this batch (no CFG doubling here)."""
    import torch

    spec = _spec(spec)
    meta = {"device": "meta"}
    comps = _meta_components(spec)
    if spec.family == "sd15":
        unet = comps["unet"]
        cfg = unet.config
        lat = torch.empty(batch, cfg.in_channels, height // 8, width // 8, **meta)
        ctx = torch.empty(batch, text_tokens, cfg.cross_attention_dim, **meta)
        return _count(lambda: unet(lat, torch.tensor([500.0], **meta), encoder_hidden_states=ctx))
    tr = comps["transformer"]
    cfg = tr.config
    h, w = height // 16, width // 16
    x = torch.empty(batch, h * w, cfg.in_channels, **meta)
    ctx = torch.empty(batch, text_tokens, cfg.joint_attention_dim, **meta)
    mask = torch.ones(batch, text_tokens, dtype=torch.int64, **meta)
    return _count(lambda: tr(hidden_states=x, timestep=torch.full((batch,), 0.5, **meta), encoder_hidden_states=ctx,
                             encoder_hidden_states_mask=mask, img_shapes=[[(1, h, w)]] * batch, return_dict=False))


def text_encoder_forward(spec, tokens: int) -> float:
    import torch

    te = _meta_components(spec)["text_encoder"]
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    if spec.family == "sd15":
        return _count(lambda: te(ids))
    # attention_mask=None: all tokens are real (batch 1), and transformers' mask helper calls .item(),
    # which the meta device cannot answer
    return _count(lambda: te(input_ids=ids, attention_mask=None, output_hidden_states=True))


def vae_decode(spec, width: int, height: int, batch: int) -> float:
    import torch

    vae = _meta_components(spec)["vae"]
    z_dim = getattr(vae.config, "z_dim", None)
    if z_dim is not None:  # Qwen-Image's video VAE: (batch, channels, frames, h, w)
        lat = torch.empty(batch, z_dim, 1, height // 8, width // 8, device="meta")
    else:
        lat = torch.empty(batch, vae.config.latent_channels, height // 8, width // 8, device="meta")
    return _count(lambda: vae.decode(lat))


def count_call(spec, width: int, height: int, batch: int, *, cfg: bool = True, prompt: str = DEFAULT_PROMPT,
               negative: str | None = None) -> dict:
    """FLOPs of one pipeline call, by part (see the module docstring for how each part is run)."""
    spec = _spec(spec)
    negative = negative_default(spec) if negative is None else negative
    if spec.family == "sd15":
        tokens = spec.defaults.max_prompt_tokens  # CLIP pads every prompt to 77 tokens
        per_step = denoiser_forward(spec, width, height, 2 * batch if cfg else batch, tokens)
        text = text_encoder_forward(spec, tokens) * (2 if cfg else 1)
        lengths = {"encoder": [tokens, tokens], "denoiser": [tokens, tokens]}
    else:
        lengths = qwen_text_lengths(spec, prompt, negative)
        per_step = denoiser_forward(spec, width, height, batch, lengths["denoiser"][0])
        text = text_encoder_forward(spec, lengths["encoder"][0])
        if cfg:
            per_step += denoiser_forward(spec, width, height, batch, lengths["denoiser"][1])
            text += text_encoder_forward(spec, lengths["encoder"][1])
    return {"model": spec.id, "arch": arch_hash(spec), "width": width, "height": height, "batch": batch,
            "cfg": bool(cfg), "text_tokens": lengths, "denoiser_per_step": per_step, "text_encoder": text,
            "vae_decode": vae_decode(spec, width, height, batch),
            "counted_with": "torch.utils.flop_counter.FlopCounterMode on the meta device"}


def main(argv: list[str] | None = None) -> int:
    """python -m lightdiff.bench.flops '[{"model":..., "width":..., "height":..., "batch":..., "cfg":...,
    "prompt":...}, ...]': count and store each case not yet in the table."""
    import torch

    torch.set_num_threads(1)  # counting on meta is bookkeeping; leave the cores to the measured cases
    cases = json.loads((argv or sys.argv[1:])[0])
    for c in cases:
        spec = specs.get(c["model"])
        k = key(spec, c["width"], c["height"], c["batch"], c.get("cfg", True), c.get("prompt", DEFAULT_PROMPT),
                c.get("negative"))
        if k in _read_table():
            continue
        entry = count_call(spec, c["width"], c["height"], c["batch"], cfg=c.get("cfg", True),
                           prompt=c.get("prompt", DEFAULT_PROMPT), negative=c.get("negative"))
        _store(k, entry)
        print(f"counted {k}: {per_image(entry, 20) / 1e12:.2f} TFLOP per image at 20 steps", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
