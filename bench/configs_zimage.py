"""Z-Image-Turbo's full-size configs, shipped so ``archviz bench --config zimage`` builds the
real architecture with random weights and no download.

Values: the transformer, VAE and scheduler from ``Tongyi-MAI/Z-Image-Turbo`` (its
``transformer/``, ``vae/`` and ``scheduler/`` configs: a 30-layer single-stream DiT of width
3840 with 30 heads, 2 noise and 2 context refiner layers, 3-axis RoPE 32/48/48, the 16-channel
FLUX VAE, flow matching with shift 3), the text encoder is Qwen3-4B (36 layers, width 2560,
32 query / 8 key-value heads of 128, vocabulary 151936), whose second-to-last hidden state
feeds the transformer. The ControlNet is the Fun ControlNet-Union 2.1: control blocks on 15
of the 30 layers and on the 2 noise-refiner layers, a 33-channel control input (control,
inpaint image and mask latents). Its layer places could not be read here (diffusers reads them
from ``hlky/Z-Image-Turbo-Fun-Controlnet-Union-2.1``): every second layer is assumed; the
parameter count (and so the 6.71 GB checkpoint, in bf16) does not depend on the places.

:func:`parameter_counts` builds each on the meta device (no memory) and the tests compare
them with the published sizes (6.15 B transformer, about 4 B encoder, 3.35 B net). The
tokenizer is :mod:`..backend.models.tiny.zimage`'s generated BPE one (its ids are a subset of the
real vocabulary's range), so prompts are shorter than the real tokenizer's.
"""

from __future__ import annotations

ZIMAGE_TRANSFORMER = {
    "_class_name": "ZImageTransformer2DModel",
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1024, 512, 512],
}

ZIMAGE_CONTROLNET_2_1 = {
    "_class_name": "ZImageControlNetModel",
    "control_layers_places": list(range(0, 30, 2)),
    "control_refiner_layers_places": [0, 1],
    "control_in_dim": 33,
    "add_control_noise_refiner": "control_noise_refiner",
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "dim": 3840,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-05,
    "qk_norm": True,
}

ZIMAGE_VAE = {  # the FLUX.1 VAE
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}

QWEN3_4B = {  # transformers Qwen3Config of the text encoder
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "attention_bias": False,
}

ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_models(device, dtype=None, seed: int = 0) -> dict:
    """transformer, controlnet, vae and text_encoder built from the configs on ``device``
    (``"meta"``: shapes only), seeded random weights elsewhere."""
    import torch
    from diffusers import AutoencoderKL, ZImageControlNetModel, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    makers = {
        "transformer": lambda: ZImageTransformer2DModel(**_strip(ZIMAGE_TRANSFORMER)),
        "controlnet": lambda: ZImageControlNetModel(**_strip(ZIMAGE_CONTROLNET_2_1)),
        "vae": lambda: AutoencoderKL(**_strip(ZIMAGE_VAE)),
        "text_encoder": lambda: Qwen3Model(Qwen3Config(**QWEN3_4B)),
    }
    out = {}
    with torch.device(device):
        for k, (name, make) in enumerate(makers.items()):
            torch.manual_seed(seed + k)
            out[name] = make()
    if dtype is not None:
        for module in out.values():
            module.to(dtype=dtype)
    return out


def parameter_counts() -> dict:
    """Parameters of each full-size model, counted on the meta device. The ControlNet's own
    (its blocks and control embedder; the modules it shares with the transformer are the
    transformer's)."""
    models = build_models("meta")
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def build_random(device, dtype, kinds=("depth", "lines"), seed: int = 0) -> tuple[dict, list]:
    """(components, controlnets) as the model cache holds them, for ``--config zimage``: one
    union net for every unit (as the real family runs), its zero projections given small
    seeded weights so it steers (see :func:`.configs.build_random`)."""
    import tempfile
    from pathlib import Path

    import torch

    from ..backend.models.tiny import zimage as tiny_zimage

    models = build_models(device, seed=seed)
    net = models.pop("controlnet")
    with torch.no_grad():
        for block in [*net.control_layers, *net.control_noise_refiner]:
            for name in ("before_proj", "after_proj"):
                linear = getattr(block, name, None)
                if linear is not None:
                    linear.weight.normal_(0.0, 0.02)
                    linear.bias.normal_(0.0, 0.01)
    with tempfile.TemporaryDirectory(prefix="archviz-bench-tok-") as tmp:
        models["tokenizer"] = tiny_zimage._tokenizer(Path(tmp) / "tok")
    models["scheduler_config"] = dict(ZIMAGE_SCHEDULER)
    for module in [*models.values(), net]:
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return models, [net] * len(kinds)
