"""lightdiff's demo model: a small SD1.5-family text-to-image model for the procedural shape scenes.

Same classes as Stable Diffusion 1.5 (AutoencoderKL, UNet2DConditionModel with cross-attention,
CLIPTextModel, EulerDiscreteScheduler with SD1.5's noise schedule), so every SD1.5 pipeline,
workflow and memory plan runs it unchanged; only the sizes are small. 128x128 native.

- VAE: 3 -> 4 latent channels, downsample factor 4 (128x128 -> 32x32x4), channels 32/64/128, one
  resnet per encoder block, no mid-block attention (the decoder at full resolution dominates the
  CPU time, and flat shapes need no global attention to be reconstructed), GroupNorm with one group
  (32 groups of 1-2 channels act as instance norms and cannot carry a flat colour). After training the
  encoder's ``quant_conv`` and the decoder's ``post_quant_conv`` are rescaled so latents have unit
  standard deviation: ``scaling_factor`` is exactly 1.0 and this config stays the shipped one.
- UNet: channels 64/128/128 at 32/16/8 latent pixels, one resnet per block, self- and
  cross-attention (4 heads of 32) at 16x16 and 8x8 only, cross_attention_dim 128. Epsilon
  prediction on SD1.5's scaled-linear schedule.
- Text encoder: CLIP text transformer, 6 layers of width 128, 79 positions (the caption goes in twice, "echo":
  the second copy has read the whole caption, which CLIP's causal attention would hide), vocabulary of the demo
  tokenizer (``lightdiff.demo.vocab``: one token per word or Chinese phrase of the grammar).
- Canny ControlNet: ``ControlNetModel.from_unet`` with a conditioning embedding that downsamples
  by 4 (channels 16/32/64), matching the latent factor.

Parameters and files (fp16 safetensors; the caps are 15 MB per file, about 30 MB together):

    unet 6.715588 M -> 13.4 MB   vae 2.569479 M -> 5.1 MB   text_encoder 1.210624 M -> 2.4 MB
    controlnet 2.848656 M -> 5.7 MB                                       total about 26.7 MB

CPU speed, a 128x128 image with 20 Euler steps and CFG (batch 1), fp32, torch 2.13 CPU, measured on
lightdiff's 2-core development machine (AMD EPYC, shared): 0.67 s per image with 2 threads (the echo
weights of 2026-11-27, 79 text positions; 0.62-0.65 s with the earlier 32), 1.0 s with 1 thread, when the
machine was quiet; single runs took up to 8 s while other jobs
saturated both cores. The UNet is 2.63 GFLOP per forward and sample (20 CFG steps: about 105 GFLOP,
31 ms per batch-2 UNet pass); the VAE decode is about 30 ms.

This module imports no torch at import time: the spec registry reads the configs from here.
"""

from __future__ import annotations

RESOLUTION = 128  # native image side
LATENT_FACTOR = 4
MAX_TOKENS = 40  # a plain (non-echo) demo tokenizer's model_max_length and text encoder positions
# (the longest caption, three objects in the places form with every optional word, is 35 tokens)
# the shipped model's text encoder reads its caption twice (echo, lightdiff.demo.vocab): the same 38 prompt tokens
# as a plain MAX_TOKENS tokenizer holds, in 79 positions
ECHO_MAX_TOKENS = 2 * (MAX_TOKENS - 2) + 3
VOCAB_SIZE = 83  # len(lightdiff.demo.vocab.vocabulary()); a test checks the two agree

UNET_CONFIG = {
    "sample_size": RESOLUTION // LATENT_FACTOR, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [64, 128, 128], "layers_per_block": 1,
    # diffusers' historical naming: attention_head_dim is the number of heads (4 heads of 32 channels)
    "cross_attention_dim": 128, "attention_head_dim": 4, "norm_num_groups": 32,
    "act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
}

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": RESOLUTION,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    # one GroupNorm group, not 32: with 32 groups of 1-2 channels every norm is an instance norm, which
    # erases each channel's per-image mean, so flat colours cannot pass through the decoder's last norm
    # (colour shifts, droplet specks, a frame: docs/demo/diagnosis.md). Parameter count is unchanged.
    # (the weights shipped since 2026-11-27 have it; the first ones, of 2026-11-26, had 32)
    "block_out_channels": [32, 64, 128], "layers_per_block": 1, "norm_num_groups": 1,
    "act_fn": "silu", "scaling_factor": 1.0, "mid_block_add_attention": False,
}

TEXT_ENCODER_CONFIG = {
    "vocab_size": VOCAB_SIZE, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 6,
    "num_attention_heads": 4, "max_position_embeddings": ECHO_MAX_TOKENS, "hidden_act": "quick_gelu",
    "projection_dim": 128, "layer_norm_eps": 1e-5,
    # the demo tokenizer's ids: [PAD] 0, <|startoftext|> 1, <|endoftext|> 2
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}

TOKENIZER_CONFIG = {"style": "demo", "model_max_length": ECHO_MAX_TOKENS, "echo": True}

CONTROLNET_CONDITIONING_CHANNELS = (16, 32, 64)  # two stride-2 convs: 128 px -> 32 latent pixels

PARAMS_M = {"unet": 6.715588, "vae": 2.569479, "text_encoder": 1.210624}
CONTROLNET_PARAMS_M = 2.848656

FILE_CAP_BYTES = 15_000_000  # per weights file
TOTAL_CAP_BYTES = 30_000_000  # all weights files together, ControlNet included (the brief's "about")
SHIP_DTYPE_BYTES = 2  # fp16

# seconds per 128x128 image, 20 Euler steps with CFG, 2 CPU threads, whole pipeline (text encoder,
# 40 UNet passes, VAE decode), measured as described above; the bar is 2 s
CPU_SECONDS_MEASURED = 0.67


def spec():
    """The registered ``demo`` ModelSpec (its component configs are the ones above)."""
    from lightdiff import specs

    return specs.get("demo")


def build_components(seed: int = 0, echo: bool = True) -> dict:
    """Every pipeline component, fp32 on the CPU, randomly initialised (deterministic by seed). ``echo`` (the
    spec's, and the shipped model's): the tokenizer writes each caption twice into ``ECHO_MAX_TOKENS``
    positions; without it a plain tokenizer and text encoder of ``MAX_TOKENS``."""
    from lightdiff.runtime import build

    # build_twin is the spec's plain "construct every component from its config" path
    components = build.build_twin(spec(), seed=seed)
    if not echo:
        import torch
        from transformers import CLIPTextConfig, CLIPTextModel

        from lightdiff.demo.vocab import build_tokenizer

        torch.manual_seed(seed)
        config = CLIPTextConfig(**{**TEXT_ENCODER_CONFIG, "max_position_embeddings": MAX_TOKENS})
        components["text_encoder"] = CLIPTextModel(config)
        components["tokenizer"] = build_tokenizer(MAX_TOKENS)
    return components


def build_controlnet(unet):
    """A canny ControlNet that starts as a copy of the UNet's encoder (diffusers' from_unet)."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS)


def assemble_pipeline(components: dict):
    """A StableDiffusionPipeline (no safety checker) from built or trained components."""
    from diffusers import StableDiffusionPipeline

    names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    return StableDiffusionPipeline(**{n: components[n] for n in names}, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def file_bytes_estimate(module, dtype_bytes: int = SHIP_DTYPE_BYTES) -> int:
    """Bytes of a safetensors file of this module's weights (tensor data; the header adds a few KB)."""
    return count_params(module) * dtype_bytes


CANNY_THRESHOLDS = (100, 200)


def canny_edges(rgb):
    """The ControlNet's conditioning: OpenCV Canny on the RGB image (uint8 HxW, 255 on edges).

    Canny runs on all three channels (OpenCV takes the strongest gradient), not on grey: the demo
    palette has colours of equal luminance (red, blue and purple are all about 85 grey), whose
    boundaries a grey-level Canny would miss.
    """
    import cv2
    import numpy as np

    return cv2.Canny(np.ascontiguousarray(rgb, dtype=np.uint8), *CANNY_THRESHOLDS)
