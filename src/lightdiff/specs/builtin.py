"""Built-in model entries: SD1.5, Qwen-Image and Qwen-Image-2512, and their tiny twins.

Real configs are copied from the published checkpoints' config.json files, so the real-size
architecture can be built (on the meta device for counting, or with random weights for speed and
memory work) without a download. params_M are checked by a test against the built modules.
"""

from __future__ import annotations

import math

from lightdiff.demo import model as demo_model  # torch-free: the demo model's configs as plain dicts
from lightdiff.specs.model_spec import ComponentSpec, Defaults, ModelSpec

# --- Stable Diffusion 1.5 -------------------------------------------------------------------

SD15_SCHEDULER = {  # scheduler/scheduler_config.json of stable-diffusion-v1-5
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
    "set_alpha_to_one": False, "skip_prk_steps": True,
}

SD15_PIPELINES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "controlnet": "StableDiffusionControlNetPipeline",
}


def _sd15_components(unet: dict, vae: dict, text: dict, params: dict, tokenizer: dict) -> dict:
    return {
        "unet": ComponentSpec("diffusers", "UNet2DConditionModel", unet, params_M=params.get("unet")),
        "vae": ComponentSpec("diffusers", "AutoencoderKL", vae, params_M=params.get("vae")),
        "text_encoder": ComponentSpec("transformers", "CLIPTextModel", text, "CLIPTextConfig",
                                      params_M=params.get("text_encoder")),
        "tokenizer": ComponentSpec("lightdiff", "StandinTokenizer", tokenizer),
        "scheduler": ComponentSpec("diffusers", "EulerDiscreteScheduler", SD15_SCHEDULER),
    }


SD15 = ModelSpec(
    id="sd15",
    family="sd15",
    description="Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L text encoder), 512x512 native",
    pipelines=SD15_PIPELINES,
    hub_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
    twin="tiny-sd15",
    defaults=Defaults(steps=20, guidance=7.0, width=512, height=512, scheduler="euler"),
    components=_sd15_components(
        unet={
            "sample_size": 64, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
            "act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
            "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
        },
        vae={
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
            "act_fn": "silu", "scaling_factor": 0.18215,
        },
        text={
            "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 768, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
            "pad_token_id": 1,
        },
        params={"unet": 859.52, "vae": 83.65, "text_encoder": 123.06},
        tokenizer={"style": "clip", "model_max_length": 77, "vocab_size": 4096},
    ),
)

TINY_SD15 = ModelSpec(
    id="tiny-sd15",
    family="sd15",
    description="Tiny twin of sd15: same classes, tiny configs, random weights (draws noise)",
    pipelines=SD15_PIPELINES,
    source="twin",
    is_twin=True,
    defaults=Defaults(steps=4, guidance=7.0, width=64, height=64, scheduler="euler"),
    components=_sd15_components(
        unet={  # diffusers' own test configuration for StableDiffusionPipeline
            "block_out_channels": [4, 8], "layers_per_block": 1, "sample_size": 32,
            "in_channels": 4, "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "cross_attention_dim": 32, "norm_num_groups": 2,
        },
        vae={
            "block_out_channels": [4, 8], "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 4, "norm_num_groups": 2,
        },
        text={
            "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 8, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
        },
        params={"unet": 0.018464, "vae": 0.011827, "text_encoder": 0.06016},
        tokenizer={"style": "clip", "model_max_length": 77, "vocab_size": 1000},
    ),
)

# --- Qwen-Image -----------------------------------------------------------------------------

QWEN_SCHEDULER = {  # scheduler/scheduler_config.json of Qwen/Qwen-Image
    "base_image_seq_len": 256, "base_shift": math.log(3), "invert_sigmas": False,
    "max_image_seq_len": 8192, "max_shift": math.log(3), "num_train_timesteps": 1000, "shift": 1.0,
    "shift_terminal": 0.02, "stochastic_sampling": False, "time_shift_type": "exponential",
    "use_beta_sigmas": False, "use_dynamic_shifting": True, "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

QWEN_PIPELINES = {
    "txt2img": "QwenImagePipeline",
    "img2img": "QwenImageImg2ImgPipeline",
    "inpaint": "QwenImageInpaintPipeline",
    "controlnet": "QwenImageControlNetPipeline",
}

QWEN_NEGATIVE = " "  # the model card's default: true CFG needs a negative prompt, even an empty one


def _qwen_components(transformer: dict, vae: dict, text: dict, params: dict, tokenizer: dict) -> dict:
    return {
        "transformer": ComponentSpec("diffusers", "QwenImageTransformer2DModel", transformer,
                                     params_M=params.get("transformer")),
        "vae": ComponentSpec("diffusers", "AutoencoderKLQwenImage", vae, params_M=params.get("vae")),
        "text_encoder": ComponentSpec("transformers", "Qwen2_5_VLForConditionalGeneration", text,
                                      "Qwen2_5_VLConfig", params_M=params.get("text_encoder")),
        "tokenizer": ComponentSpec("lightdiff", "StandinTokenizer", tokenizer),
        "scheduler": ComponentSpec("diffusers", "FlowMatchEulerDiscreteScheduler", QWEN_SCHEDULER),
    }


_QWEN_LATENT_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
_QWEN_LATENT_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]

_QWEN_REAL = _qwen_components(
    transformer={
        "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
        "guidance_embeds": False, "axes_dims_rope": [16, 56, 56],
    },
    vae={
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
        "temperal_downsample": [False, True, True], "dropout": 0.0,
        "latents_mean": _QWEN_LATENT_MEAN, "latents_std": _QWEN_LATENT_STD,
    },
    text={  # Qwen2.5-VL-7B-Instruct
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
        "text_config": {
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
            "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},
        },
        "vision_config": {
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3,
        },
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    },
    params={"transformer": 20430.40, "vae": 126.89, "text_encoder": 8292.17},
    tokenizer={"style": "qwen", "model_max_length": 1024, "vocab_size": 4096},
)

_QWEN_DEFAULTS = Defaults(steps=50, guidance=4.0, width=1328, height=1328, scheduler="flow-euler",
                          negative_prompt=QWEN_NEGATIVE, max_prompt_tokens=512)

QWEN_IMAGE = ModelSpec(
    id="qwen-image",
    family="qwen-image",
    description="Qwen-Image (20B MMDiT, Qwen2.5-VL-7B text encoder), 1328x1328 native, true CFG",
    pipelines=QWEN_PIPELINES,
    hub_repo="Qwen/Qwen-Image",
    twin="tiny-qwen-image",
    defaults=_QWEN_DEFAULTS,
    components=_QWEN_REAL,
)

QWEN_IMAGE_2512 = QWEN_IMAGE.with_changes(
    id="qwen-image-2512",
    description="Qwen-Image-2512 (December 2025 update of Qwen-Image; same architecture)",
    hub_repo="Qwen/Qwen-Image-2512",
)

TINY_QWEN_IMAGE = ModelSpec(
    id="tiny-qwen-image",
    family="qwen-image",
    description="Tiny twin of qwen-image: same classes, tiny configs, random weights (draws noise)",
    pipelines=QWEN_PIPELINES,
    source="twin",
    is_twin=True,
    defaults=Defaults(steps=4, guidance=4.0, width=64, height=64, scheduler="flow-euler",
                      negative_prompt=QWEN_NEGATIVE, max_prompt_tokens=512),
    components=_qwen_components(
        transformer={  # diffusers' own test configuration for QwenImagePipeline
            "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 2,
            "attention_head_dim": 16, "num_attention_heads": 3, "joint_attention_dim": 16,
            "guidance_embeds": False, "axes_dims_rope": [8, 4, 4],
        },
        vae={
            "base_dim": 24, "z_dim": 4, "dim_mult": [1, 2, 4], "num_res_blocks": 1,
            "temperal_downsample": [False, True], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4,
        },
        text={
            "hidden_size": 16, "vocab_size": 1024, "bos_token_id": 1, "eos_token_id": 3,
            "vision_start_token_id": 1021, "vision_end_token_id": 1022, "vision_token_id": 1023,
            "image_token_id": 1023, "video_token_id": 1023,
            "text_config": {
                "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 1024,
                "bos_token_id": 1, "eos_token_id": 3,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1000000.0,
            },
            "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                              "out_hidden_size": 16},
        },
        params={"transformer": 0.19072, "vae": 4.054447, "text_encoder": 0.064432},
        tokenizer={"style": "qwen", "model_max_length": 1024, "vocab_size": 1000},
    ),
)

# --- lightdiff's own demo model (trained by `lightdiff train-demo`, shipped in lightdiff/data/demo) --

DEMO = ModelSpec(
    id="demo",
    family="sd15",
    description="lightdiff's demo model: a small SD1.5-family model trained on procedural shape scenes "
                "(English and Chinese captions), 128x128, seconds on a CPU",
    pipelines=SD15_PIPELINES,
    source="demo",
    twin="tiny-sd15",
    is_twin=False,
    # guidance 7.5: the best of 3, 5 and 7.5 in the held-out eval of the shipped weights (docs/demo)
    defaults=Defaults(steps=20, guidance=7.5, width=demo_model.RESOLUTION, height=demo_model.RESOLUTION,
                      scheduler="euler", max_prompt_tokens=demo_model.MAX_TOKENS - 2),
    components=_sd15_components(unet=demo_model.UNET_CONFIG, vae=demo_model.VAE_CONFIG,
                                text=demo_model.TEXT_ENCODER_CONFIG, params=demo_model.PARAMS_M,
                                tokenizer=demo_model.TOKENIZER_CONFIG),
)

BUILTIN = [SD15, TINY_SD15, QWEN_IMAGE, QWEN_IMAGE_2512, TINY_QWEN_IMAGE, DEMO]
