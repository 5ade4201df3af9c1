"""The real Qwen-Image configs, shipped so ``archviz bench --config qwen`` builds the full-size
models with random weights and no download.

Written after the model repos' config files: ``Qwen/Qwen-Image`` (``transformer/config.json``,
``vae/config.json``, ``text_encoder/config.json`` = Qwen2.5-VL-7B-Instruct,
``scheduler/scheduler_config.json``) and ``InstantX/Qwen-Image-ControlNet-Union``
(``config.json``: 5 double blocks of the transformer's width). Architecture and FLOPs are
those of the real models; only the weights are random. The tokenizer is
``backend.models.tiny.qwen``'s generated Qwen BPE tokenizer (its ids are a subset of the real
vocabulary's range, so the real-size embedding table reads them).

Published sizes (bf16 files on the hub): transformer 40.9 GB (20.4 B parameters), text
encoder 16.6 GB (8.3 B: the "7B" Qwen2.5-VL with its vision tower), VAE 254 MB (127 M),
union ControlNet 3.54 GB (1.77 B).
"""

from __future__ import annotations

QWEN_TRANSFORMER = {
    "_class_name": "QwenImageTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": False,
    "in_channels": 64,
    "joint_attention_dim": 3584,
    "num_attention_heads": 24,
    "num_layers": 60,
    "out_channels": 16,
    "patch_size": 2,
}

QWEN_CONTROLNET_UNION = {  # InstantX/Qwen-Image-ControlNet-Union
    "_class_name": "QwenImageControlNetModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "extra_condition_channels": 0,
    "in_channels": 64,
    "joint_attention_dim": 3584,
    "num_attention_heads": 24,
    "num_layers": 5,
    "out_channels": 16,
    "patch_size": 2,
}

QWEN_VAE = {
    "_class_name": "AutoencoderKLQwenImage",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                     -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                    1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}

QWEN_TEXT_ENCODER = {  # transformers Qwen2_5_VLConfig (Qwen2.5-VL-7B-Instruct)
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "hidden_size": 3584,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "text_config": {
        "hidden_act": "silu",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 128000,
        "max_window_layers": 28,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
        "hidden_size": 1280,
        "in_chans": 3,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
    },
}

QWEN_SCHEDULER = {  # FlowMatchEulerDiscreteScheduler: exponential time shift by image size
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


def strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def text_encoder_config():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**{k: v for k, v in QWEN_TEXT_ENCODER.items() if k != "architectures"})


def build_random(device, dtype, seed: int = 0) -> tuple[dict, list]:
    """(components, [union controlnet]) of Qwen-Image built from the real configs with seeded
    random weights directly on ``device``. The net's zero projections get small seeded
    weights (see bench/configs.py), so it changes the images."""
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageControlNetModel, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..backend.models.tiny import qwen as tiny_qwen

    def seeded(offset, make):
        torch.manual_seed(seed + offset)
        return make()

    with tempfile.TemporaryDirectory(prefix="archviz-bench-tok-") as tmp:
        tokenizer = tiny_qwen.tokenizer(Path(tmp) / "tokenizer")
    with torch.device(device):
        comps = {
            "transformer": seeded(0, lambda: QwenImageTransformer2DModel(**strip(QWEN_TRANSFORMER))),
            "vae": seeded(1, lambda: AutoencoderKLQwenImage(**strip(QWEN_VAE))),
            "text_encoder": seeded(2, lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config())),
            "tokenizer": tokenizer,
        }
        net = seeded(3, lambda: QwenImageControlNetModel(**strip(QWEN_CONTROLNET_UNION)))
        if torch.device(device).type != "meta":
            with torch.no_grad():
                for linear in [*net.controlnet_blocks, net.controlnet_x_embedder]:
                    linear.weight.normal_(0.0, 0.02)
                    linear.bias.normal_(0.0, 0.01)
    comps["scheduler_config"] = dict(QWEN_SCHEDULER)
    for module in [*comps.values(), net]:
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return comps, [net]
