"""The real Stable Diffusion 1.5 configs, shipped so ``archviz bench --config sd15`` builds the
full-size models with random weights and no download.

Copied from the model repos' config files: ``stable-diffusion-v1-5/stable-diffusion-v1-5``
(``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``, the scheduler is
``backend.tiny``'s copy of ``scheduler/scheduler_config.json``) and
``lllyasviel/control_v11f1p_sd15_depth`` / ``control_v11p_sd15_lineart`` (``config.json``; the
two ControlNet 1.1 models share it). Architecture and FLOPs are those of the real models;
only the weights are random. The tokenizer is ``backend.tiny``'s generated CLIP tokenizer,
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


def build_sd15_random(device, dtype, kinds=("depth", "lines"), seed: int = 0) -> tuple[dict, list]:
    """(components, controlnets) of SD 1.5 built from the real configs with seeded random
    weights directly on ``device``. A fresh ControlNet's zero convolutions are zero (it
    would steer nothing); like ``backend.tiny``, they get small seeded weights so the
    ControlNets change the images and a wrong skip or scale shows in the pixel difference."""
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..backend import tiny

    def strip(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    with tempfile.TemporaryDirectory(prefix="archviz-bench-tok-") as tmp:
        tokenizer = tiny._tokenizer(Path(tmp))
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**strip(SD15_UNET))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**strip(SD15_VAE))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
        nets = []
        for k, _kind in enumerate(kinds):
            torch.manual_seed(seed + 3 + k)
            net = ControlNetModel(**strip(SD15_CONTROLNET_V11))
            with torch.no_grad():
                for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block,
                             net.controlnet_cond_embedding.conv_out]:
                    conv.weight.normal_(0.0, 0.02)
                    conv.bias.normal_(0.0, 0.01)
            nets.append(net)
    pndm, _ = tiny._scheduler_config_source()
    comps = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
             "scheduler_config": dict(pndm.config)}
    for module in [unet, vae, text_encoder, *nets]:
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return comps, nets
