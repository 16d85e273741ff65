"""Single-file checkpoints: the one ``.safetensors`` file AUTOMATIC1111 and ComfyUI users keep.

Loading goes through diffusers' own ``from_single_file``. It needs a folder of component configs
(model_index.json, unet/vae/text_encoder/scheduler configs, tokenizer), which it would otherwise
fetch from the hub; ``write_config_dir`` writes that folder from a pipeline or a spec, no weights.

Exporting (diffusers pipeline -> original LDM/CompVis key layout) is hand-written: diffusers ships
only the forward direction (loaders/single_file_utils.py: convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint) and the old inverse script is not part
of the package. The mapping below is the exact inverse of those functions, for any block count.
We use it to make test checkpoints from tiny twins and to let users save a pipeline for A1111/ComfyUI.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from lightdiff.errors import LightdiffError, UnsafeWeightsFormat, WeightsNotFound

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# a key every SD1.x single file has; diffusers uses it too (CHECKPOINT_KEY_NAMES["inpainting"])
LDM_MARKER_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

# diffusers ResnetBlock2D parameter -> LDM ResBlock parameter
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
# diffusers VAE Attention parameter -> LDM AttnBlock parameter (LDM uses 1x1 convs)
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_UNET_RE = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_VAE_RE = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_VAE_MID_RE = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _split_param(rest: str) -> tuple[str, str]:
    """'conv1.weight' -> ('conv1', 'weight'); 'to_out.0.bias' -> ('to_out.0', 'bias')."""
    module, _, param = rest.rpartition(".")
    return module, param


def _unet_resnet(rest: str) -> str:
    module, param = _split_param(rest)
    return f"{_UNET_RESNET[module]}.{param}"


def unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: set[int]) -> str:
    """One diffusers UNet2DConditionModel key -> its key under ``model.diffusion_model.``.

    Inverse of diffusers' convert_ldm_unet_checkpoint: input_blocks count conv_in as 0, then
    ``layers_per_block`` (resnet, attention) pairs and one downsampler per down block; output_blocks
    hold ``layers_per_block + 1`` (resnet, attention) per up block, the upsampler after them.
    """
    for diffusers_name, ldm_name in _UNET_TOP.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name):]
    if m := _MID_RE.match(key):
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":  # resnets 0 and 1 sit either side of the attention
            return f"middle_block.{2 * idx}.{_unet_resnet(rest)}"
        return f"middle_block.1.{rest}"
    m = _UNET_RE.match(key)
    if not m:
        raise LightdiffError(
            f"UNet parameter {key!r} has no place in the LDM layout.",
            "Only SD1.x-style UNet2DConditionModel weights can be exported to a single file.",
        )
    side, block, kind, idx, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    if side == "down":
        first = 1 + block * (layers_per_block + 1)
        if kind == "resnets":
            return f"input_blocks.{first + idx}.0.{_unet_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{first + idx}.1.{rest}"
        # downsamplers.0.conv.* -> the op after this block's layers
        return f"input_blocks.{first + layers_per_block}.0.op.{rest.removeprefix('conv.')}"
    first = block * (layers_per_block + 1)
    if kind == "resnets":
        return f"output_blocks.{first + idx}.0.{_unet_resnet(rest)}"
    if kind == "attentions":
        return f"output_blocks.{first + idx}.1.{rest}"
    # the upsampler follows the last resnet (and its attention, where the block has one)
    slot = 2 if block in up_has_attention else 1
    return f"output_blocks.{first + layers_per_block}.{slot}.{rest}"


def vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    """One diffusers AutoencoderKL key -> its key under ``first_stage_model.``.

    Inverse of diffusers' convert_ldm_vae_checkpoint. The LDM decoder numbers its up blocks from
    the lowest resolution's opposite end: diffusers up_blocks.i is LDM up.(n-1-i).
    """
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    if m := _VAE_MID_RE.match(key):
        part, kind, idx, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if kind == "resnets":
            return f"{part}.mid.block_{idx + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        module, param = _split_param(rest)
        return f"{part}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
    if m := _VAE_RE.match(key):
        part, side, block, kind, idx, rest = m.groups()
        block, idx = int(block), int(idx)
        if side == "up":
            block = num_up_blocks - 1 - block
        if kind == "resnets":
            return f"{part}.{side}.{block}.block.{idx}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{part}.{side}.{block}.{side}sample.{rest}"
    part, _, rest = key.partition(".")
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest.removeprefix('conv_norm_out.')}"
    if rest.startswith(("conv_in.", "conv_out.")):  # same names in both layouts
        return key
    raise LightdiffError(
        f"VAE parameter {key!r} has no place in the LDM layout.",
        "Only SD1.x-style AutoencoderKL weights can be exported to a single file.",
    )


def clip_key_to_ldm(key: str) -> str:
    """CLIPTextModel key -> ``cond_stage_model.transformer.text_model.*`` (transformers >= 5.6
    dropped the ``text_model.`` wrapper from CLIPTextModel; LDM files always have it)."""
    return CLIP_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)


def ldm_state_dict(pipe, dtype=None) -> dict[str, Any]:
    """UNet, VAE and CLIP text encoder of an SD1.x pipeline as one LDM-layout state dict (CPU).

    A pipeline built on the meta device gives the keys and shapes only (no memory).
    """
    unet_cfg = pipe.unet.config
    lpb = unet_cfg.layers_per_block
    if not isinstance(lpb, int):
        raise LightdiffError(
            f"layers_per_block={lpb!r} varies per block; the LDM layout needs one number.",
            "Export only SD1.x-style UNets (one layers_per_block for all blocks).",
        )
    up_has_attention = {i for i, t in enumerate(unet_cfg.up_block_types) if "CrossAttn" in t}
    num_up = len(pipe.vae.config.up_block_types)

    def tensor(t, reshape_to_conv: bool = False):
        t = t.detach() if t.is_meta else t.detach().to("cpu")  # meta: keys and shapes only
        if reshape_to_conv and t.ndim == 2:  # diffusers Linear [C, C] -> LDM 1x1 conv [C, C, 1, 1]
            t = t[:, :, None, None]
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous()

    out: dict[str, Any] = {}
    for key, t in pipe.unet.state_dict().items():
        out[UNET_PREFIX + unet_key_to_ldm(key, lpb, up_has_attention)] = tensor(t)
    for key, t in pipe.vae.state_dict().items():
        is_attn_weight = ".mid_block.attentions." in key and key.endswith(".weight") and "group_norm" not in key
        out[VAE_PREFIX + vae_key_to_ldm(key, num_up)] = tensor(t, reshape_to_conv=is_attn_weight)
    for key, t in pipe.text_encoder.state_dict().items():
        out[clip_key_to_ldm(key)] = tensor(t)
    # tensors that share storage (tied weights) cannot be written by safetensors; give each its own
    seen: set[int] = set()
    for key, t in out.items():
        if t.is_meta:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            out[key] = t.clone()
        seen.add(ptr)
    return out


def export_single_file(pipe, path: str | os.PathLike, dtype=None) -> Path:
    """Write ``pipe``'s UNet, VAE and CLIP text encoder as one LDM-layout safetensors file.

    Atomic: written to a temporary file in the same folder, then renamed, so a reader never sees
    half a checkpoint. ``dtype`` (e.g. torch.float16) casts floating tensors, as pruned fp16 files are.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnsafeWeightsFormat(
            f"Single-file export writes safetensors only, not {path.name!r}.",
            f"Use a path ending in .safetensors, e.g. {path.with_suffix('.safetensors')}.",
        )
    state = ldm_state_dict(pipe, dtype)
    if any(t.is_meta for t in state.values()):
        raise LightdiffError(
            "The pipeline has weights on the meta device (shapes, no values), so there is nothing to export.",
            "Export a pipeline with materialised weights (a tiny twin, synthetic or loaded weights).",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- loading -----------------------------------------------------------------------------------


def write_config_dir(source, folder: str | os.PathLike) -> Path:
    """Write the config folder diffusers' from_single_file wants, without weights.

    ``source`` is a diffusers pipeline or a lightdiff ModelSpec (built on the meta device, so the
    real-size SD1.5 costs no memory). Each library writes its own config files: model_index.json
    (pipeline), config.json (diffusers models), scheduler_config.json, the transformers model
    config and the tokenizer files.
    """
    from lightdiff.specs import ModelSpec

    pipe = meta_pipeline(source) if isinstance(source, ModelSpec) else source
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json
    for name, comp in pipe.components.items():
        if comp is None:
            continue
        sub = folder / name
        if hasattr(comp, "save_config"):  # diffusers models and schedulers
            comp.save_config(sub)
        elif hasattr(comp, "config") and hasattr(comp.config, "save_pretrained"):  # transformers models
            comp.config.save_pretrained(sub)
        else:  # tokenizers, image processors: small, no weights
            comp.save_pretrained(sub)
    return folder


def meta_pipeline(spec):
    """The spec's pipeline with every weight on the meta device: configs and shapes, no memory."""
    from lightdiff.runtime.build import assemble, build_non_module, build_on_meta

    comps = build_on_meta(spec)
    for name, comp in spec.components.items():
        if not comp.has_weights:
            comps[name] = build_non_module(comp)
    return assemble(spec, comps)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise WeightsNotFound(
            f"Single-file checkpoint {str(path)!r} does not exist.",
            "Check the path; it must point to a .safetensors file.",
        )
    if path.suffix != ".safetensors":
        raise UnsafeWeightsFormat(
            f"{path.name!r} is not a .safetensors file; .ckpt/.pt files are pickles that can run code on load.",
            "Convert it to .safetensors first (for example with a trusted tool), or download the .safetensors version.",
        )


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names in a safetensors file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def load_single_file(path: str | os.PathLike, config_dir: str | os.PathLike, torch_dtype=None,
                     pipeline_class: str = "StableDiffusionPipeline"):
    """An SD1.x pipeline from an LDM-layout single file, configs from ``config_dir`` (no hub)."""
    import diffusers

    path, config_dir = Path(path), Path(config_dir)
    _check_file(path)
    if not (config_dir / "model_index.json").is_file():
        raise WeightsNotFound(
            f"Config folder {str(config_dir)!r} has no model_index.json.",
            "Create it with lightdiff.runtime.single_file.write_config_dir(spec_or_pipeline, folder).",
        )
    keys = checkpoint_keys(path)
    if LDM_MARKER_KEY not in keys:
        sample = ", ".join(keys[:3])
        raise LightdiffError(
            f"{path.name!r} is not an SD1.x single-file checkpoint: it has no {LDM_MARKER_KEY!r} "
            f"(first keys: {sample}).",
            "Use a full A1111/ComfyUI SD1.5 checkpoint; a UNet-only or diffusers-layout file needs the "
            "diffusers folder loader instead.",
        )
    cls = getattr(diffusers, pipeline_class)
    return cls.from_single_file(
        str(path), config=str(config_dir), torch_dtype=torch_dtype, local_files_only=True,
        safety_checker=None, requires_safety_checker=False,
    )


def load_transformer_file(path: str | os.PathLike, config_dir: str | os.PathLike, torch_dtype=None,
                          model_class: str = "QwenImageTransformer2DModel"):
    """A transformer-only file (ComfyUI style) through the model class's from_single_file.

    diffusers 0.42.1 maps QwenImageTransformer2DModel single files with an identity function, so keys
    under ComfyUI's ``model.diffusion_model.`` prefix load nothing and leave the weights on the
    meta device. We strip that prefix first and hand diffusers the dict.
    """
    import diffusers
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path)
    if not (Path(config_dir) / "config.json").is_file():
        raise WeightsNotFound(
            f"Config folder {str(config_dir)!r} has no config.json for {model_class}.",
            f"Write it with {model_class}.from_config(spec config).save_config(folder) or copy it from the model repo.",
        )
    state = load_file(str(path))
    state = {k.removeprefix(UNET_PREFIX): v for k, v in state.items()}
    cls = getattr(diffusers, model_class)
    return cls.from_single_file(state, config=str(config_dir), torch_dtype=torch_dtype, local_files_only=True)


def config_dir_for(spec) -> Path:
    """The configs and tokenizer a single-file checkpoint of ``spec``'s family needs.

    A1111/ComfyUI files hold weights only. For a tiny twin the configs come from the spec (its
    tokenizer is the stand-in). For a real model the real tokenizer is needed: a folder the user
    placed at ~/.lightdiff/configs/<id>/, else the hub repository's configs from the HF cache."""
    import os as _os

    from lightdiff import settings
    from lightdiff.errors import WeightsNotFound

    folder = settings.home() / "configs" / spec.id
    if spec.is_twin:
        if not (folder / "model_index.json").is_file():
            write_config_dir(spec, folder)
        return folder
    if (folder / "tokenizer").is_dir() and (folder / "model_index.json").is_file():
        return folder
    repo = spec.hub_repo or "stable-diffusion-v1-5/stable-diffusion-v1-5"
    try:
        from huggingface_hub import snapshot_download

        offline = _os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.txt"], local_files_only=offline))
    except Exception:  # not cached and no network: say exactly what is missing
        raise WeightsNotFound(
            f"A single-file checkpoint holds weights only; its configs and CLIP tokenizer "
            f"(tokenizer/vocab.json, merges.txt) come from {repo}, which is not in the local cache.",
            f"Once, with network: `huggingface-cli download {repo} --include '*.json' '*.txt'`; or copy a "
            f"diffusers folder's model_index.json and config/tokenizer folders (no weights) to {folder}.",
            details={"repo": repo, "config_dir": str(folder)},
        ) from None
