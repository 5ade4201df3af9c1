"""The real FLUX.1-dev configs, shipped so ``archviz bench --config flux`` builds the
full-size models with random weights and no download (the weights are gated anyway).

From the model repos' config files: ``black-forest-labs/FLUX.1-dev`` (``transformer/config.json``,
``vae/config.json``, ``text_encoder/config.json`` = the CLIP ViT-L text tower of
``bench/configs.py``, ``text_encoder_2/config.json`` = the T5 v1.1 XXL encoder,
``scheduler/scheduler_config.json``) and ``Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0``
(``config.json``: six double-stream blocks, no single-stream blocks, no control-mode
embedding; one net serves every unit, each with its own control image). Architecture and
FLOPs are the real models'; only the weights are random. The tokenizers are
``backend.models.tiny``'s generated CLIP and T5 tokenizers; the T5 one pads to the real 512 tokens.

Published sizes (checked on the meta device by tests/test_bench.py): transformer 11.9 B
parameters, T5-XXL encoder 4.76 B, CLIP-L text tower 123 M, VAE 83.8 M; the Union-Pro 2.0
net is about 4 GB in bf16 (about 2 B parameters).
"""

from __future__ import annotations

FLUX_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

#: FLUX.2 [klein] 4B's transformer (``black-forest-labs/FLUX.2-klein-4B``, ``transformer/config.json``):
#: 5 double-stream and 20 single-stream blocks of 24 x 128 heads, 128 latent channels (the
#: FLUX.2 VAE's 32, 2x2 patches), the text token three of Qwen3-4B's 2560-wide layers stacked.
#: Only the small config cuts it (bench/configs_small.py); no full-size Klein bench is built.
KLEIN_TRANSFORMER = {
    "_class_name": "Flux2Transformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [32, 32, 32, 32],
    "eps": 1e-06,
    "guidance_embeds": False,
    "in_channels": 128,
    "joint_attention_dim": 7680,
    "mlp_ratio": 3.0,
    "num_attention_heads": 24,
    "num_layers": 5,
    "num_single_layers": 20,
    "out_channels": None,
    "patch_size": 1,
    "rope_theta": 2000,
    "timestep_guidance_channels": 256,
}

FLUX_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

FLUX_T5_ENCODER = {  # transformers T5Config (google/t5-v1_1-xxl, the encoder only)
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
FLUX_T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length

FLUX_CONTROLNET_UNION_PRO_2 = {
    "_class_name": "FluxControlNetModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 6,
    "num_mode": None,
    "num_single_layers": 0,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_random_flux(device, dtype, seed: int = 0) -> tuple[dict, list]:
    """(components, [union net]) of FLUX.1-dev and the Union-Pro 2.0 ControlNet from the
    real configs with seeded random weights, built directly on ``device`` (``meta``: shapes
    only, no memory). A fresh FluxControlNetModel's zero-initialised output projections
    get small seeded weights, like ``backend.models.tiny``'s, so the net changes the images."""
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from ..backend.models import tiny
    from ..backend.models.tiny import flux as tiny_flux
    from .configs import SD15_TEXT_ENCODER

    def seeded(offset, make):
        torch.manual_seed(seed + offset)
        return make()

    with tempfile.TemporaryDirectory(prefix="archviz-bench-tok-") as tmp:
        tokenizer = tiny._tokenizer(Path(tmp) / "clip")
        tokenizer_2 = tiny_flux._t5_tokenizer(Path(tmp) / "t5")
    tokenizer_2.model_max_length = FLUX_T5_MAX_LENGTH
    with torch.device(device):
        comps = {
            "transformer": seeded(0, lambda: FluxTransformer2DModel(**strip(FLUX_TRANSFORMER))),
            "vae": seeded(1, lambda: AutoencoderKL(**strip(FLUX_VAE))),
            "text_encoder": seeded(2, lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))),
            "text_encoder_2": seeded(3, lambda: T5EncoderModel(T5Config(**FLUX_T5_ENCODER))),
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
        }
        net = seeded(4, lambda: FluxControlNetModel(**strip(FLUX_CONTROLNET_UNION_PRO_2)))
        with torch.no_grad():
            for layer in [*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder]:
                layer.weight.normal_(0.0, 0.02)
                layer.bias.normal_(0.0, 0.01)
    comps["scheduler_config"] = dict(FlowMatchEulerDiscreteScheduler(**strip(FLUX_SCHEDULER)).config)
    for module in [*comps.values(), net]:
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return comps, [net]


def count_flux_flops(engine, plan) -> dict:
    """FLOPs of one image through one forward at the plan's size with the real 512 T5
    tokens: the transformer (with the net's residuals) and the ControlNet. Keys as
    ``runner.count_flops`` returns them (``unet``: the denoiser). The VAE encode of each
    control image (once per job here, once per call in diffusers) is not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    base, nets = engine.load(plan.models)
    transformer, net = base.value["transformer"], nets[0].value
    dev, dtype = engine.device, transformer.dtype
    h2, w2 = plan.height // 16, plan.width // 16  # packed 2x2 latent patches of the 8x VAE
    tokens = FLUX_T5_MAX_LENGTH
    x = torch.randn(1, h2 * w2, transformer.config.in_channels, device=dev, dtype=dtype)
    common = dict(timestep=torch.tensor([0.5], device=dev, dtype=dtype),
                  pooled_projections=torch.randn(1, transformer.config.pooled_projection_dim, device=dev, dtype=dtype),
                  encoder_hidden_states=torch.randn(1, tokens, transformer.config.joint_attention_dim, device=dev,
                                                    dtype=dtype),
                  txt_ids=torch.zeros(tokens, 3, device=dev, dtype=dtype),
                  img_ids=torch.zeros(h2 * w2, 3, device=dev, dtype=dtype),
                  guidance=torch.tensor([3.5], device=dev, dtype=dtype), return_dict=False)
    cond = torch.randn_like(x)

    def flops(fn):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = fn()
        return counter.get_total_flops(), out

    f_cn, (blocks, singles) = flops(lambda: net(hidden_states=x, controlnet_cond=cond, conditioning_scale=1.0,
                                                **common))
    f_tr, _ = flops(lambda: transformer(hidden_states=x, controlnet_block_samples=blocks,
                                        controlnet_single_block_samples=singles, **common))
    return {"unet": f_tr, "controlnet": f_cn, "cond_embedding": 0}
