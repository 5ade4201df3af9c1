"""The real Stable Diffusion 1.5 and SDXL configs, shipped so ``archviz bench --config sd15``
and ``--config sdxl`` build the full-size models with random weights and no download.

Copied from the model repos' config files: ``stable-diffusion-v1-5/stable-diffusion-v1-5``
(``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``, the scheduler is
``backend.models.tiny``'s copy of ``scheduler/scheduler_config.json``) and
``lllyasviel/control_v11f1p_sd15_depth`` / ``control_v11p_sd15_lineart`` (``config.json``; the
two ControlNet 1.1 models share it). Architecture and FLOPs are those of the real models;
only the weights are random. The tokenizer is ``backend.models.tiny``'s generated CLIP tokenizer,
padding to the real 77 tokens; the text encoder has the real 12 layers x 768 width.
"""

from __future__ import annotations

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD15_TEXT_ENCODER = {  # transformers CLIPTextConfig (openai/clip-vit-large-patch14 text tower)
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SD15_CONTROLNET_V11 = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,
    "use_linear_projection": False,
}


# SDXL: ``stabilityai/stable-diffusion-xl-base-1.0`` (``unet/config.json``,
# ``text_encoder/config.json`` = the CLIP ViT-L text tower above, ``text_encoder_2/config.json``
# = OpenCLIP ViT-bigG/14's text tower with its projection), ``madebyollin/sdxl-vae-fp16-fix``
# (``config.json``: the SDXL VAE, no fp32 upcast needed) and ``diffusers/controlnet-depth-sdxl-1.0``
# (``config.json``; the canny model has the same shape).
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

SDXL_VAE_FP16_FIX = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": False}

SDXL_TEXT_ENCODER_2 = {  # transformers CLIPTextConfig (laion/CLIP-ViT-bigG-14 text tower)
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

SDXL_CONTROLNET = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "transformer_layers_per_block": [1, 2, 10],
    "upcast_attention": None,
    "use_linear_projection": True,
}


def build_random(arch: str, device, dtype, kinds=("depth", "lines"), seed: int = 0) -> tuple[dict, list]:
    """(components, controlnets) of SD 1.5 (``arch`` "sd15") or SDXL ("sdxl") built from the
    real configs with seeded random weights directly on ``device``. A fresh ControlNet's zero
    convolutions are zero (it would steer nothing); like ``backend.models.tiny``, they get small
    seeded weights so the ControlNets change the images and a wrong skip or scale shows in
    the pixel difference."""
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..backend.models import tiny
    from ..backend.models.tiny import sd as tiny_sd

    from ..backend.engine.families.registry import ENGINES

    unet_arches = [a for a, e in ENGINES.items() if e.module == "sd"]
    if arch not in unet_arches:
        raise ValueError(f"arch: unknown {arch!r} ({', '.join(unet_arches)})")
    sdxl = arch == "sdxl"

    def strip(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    def seeded(offset, make):
        torch.manual_seed(seed + offset)
        return make()

    with tempfile.TemporaryDirectory(prefix="archviz-bench-tok-") as tmp:
        tokenizer = tiny._tokenizer(Path(tmp) / "1")
        tokenizer_2 = tiny._tokenizer(Path(tmp) / "2", pad_token="!") if sdxl else None
    with torch.device(device):
        comps = {
            "unet": seeded(0, lambda: UNet2DConditionModel(**strip(SDXL_UNET if sdxl else SD15_UNET))),
            "vae": seeded(1, lambda: AutoencoderKL(**strip(SDXL_VAE_FP16_FIX if sdxl else SD15_VAE))),
            "text_encoder": seeded(2, lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))),
            "tokenizer": tokenizer,
        }
        if sdxl:
            comps["text_encoder_2"] = seeded(
                3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2)))
            comps["tokenizer_2"] = tokenizer_2
        nets = []
        for k, _kind in enumerate(kinds):
            net = seeded(4 + k, lambda: ControlNetModel(**strip(SDXL_CONTROLNET if sdxl else SD15_CONTROLNET_V11)))
            with torch.no_grad():
                for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block,
                             net.controlnet_cond_embedding.conv_out]:
                    conv.weight.normal_(0.0, 0.02)
                    conv.bias.normal_(0.0, 0.01)
            nets.append(net)
    pndm, euler = tiny_sd._scheduler_config_source()  # the real repos' scheduler configs
    comps["scheduler_config"] = dict((euler if sdxl else pndm).config)
    for module in [*comps.values(), *nets]:
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return comps, nets
