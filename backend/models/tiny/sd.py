"""Tiny SD 1.5 and SDXL models (the ``tiny`` and ``tiny-sdxl`` families): a UNet of two
blocks, a four-block VAE (1/8 latents like the real one), the generated CLIP tokenizer and
text encoder of :mod:`.` (SDXL: two), the real repos' scheduler config, and ControlNets
(one per kind, and SDXL's ControlNet-Union).

::

    tiny/v1/sd15/base                  pipeline folder: unet vae text_encoder tokenizer scheduler
    tiny/v1/sd15/controlnet-<kind>     ControlNetModel (kind: depth lineart mlsd canny normal seg)
    tiny/v1/sdxl/base                  + text_encoder_2 tokenizer_2
    tiny/v1/sdxl/vae-fp16-fix          separate VAE, like madebyollin/sdxl-vae-fp16-fix
    tiny/v1/sdxl/controlnet-<kind>     ControlNetModel (depth canny)
    tiny/v1/sdxl/controlnet-union      ControlNetUnionModel
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import TINY_VERSION, _TEXT_DIM, _seed, _text_encoder, _tokenizer, _write_tokenizer_files

SD15_CONTROL_KINDS = ("depth", "lineart", "mlsd", "canny", "normal", "seg")
SDXL_CONTROL_KINDS = ("depth", "canny")

# Shared shape of the tiny UNet and its ControlNets (the ControlNet copies the UNet's encoder).
_BLOCKS = (32, 64)
_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")
_TIME_DIM = 8  # SDXL addition_time_embed_dim


def _unet_kwargs(sdxl: bool) -> dict:
    kwargs = dict(
        block_out_channels=_BLOCKS,
        layers_per_block=2,
        down_block_types=_DOWN,
        in_channels=4,
        norm_num_groups=8,
        cross_attention_dim=_TEXT_DIM * (2 if sdxl else 1),
        attention_head_dim=(2, 4) if sdxl else 8,
    )
    if sdxl:
        kwargs.update(
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_DIM,
            projection_class_embeddings_input_dim=_TIME_DIM * 6 + _TEXT_DIM,
        )
    return kwargs


def _unet(sdxl: bool):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_seed(f"unet-{sdxl}"))
    return UNet2DConditionModel(sample_size=8, out_channels=4, up_block_types=_UP, **_unet_kwargs(sdxl))


def _vae(sdxl: bool, seed: int = 0, force_upcast: bool = True):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_seed(f"vae-{sdxl}-{seed}"))
    # Four blocks like the real VAE: the latent is 1/8 of the image, as for SD 1.5 / SDXL.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025 if sdxl else 0.18215,
        force_upcast=force_upcast,
    )


def _scheduler_config_source():
    # The real SD 1.5 / SDXL repos ship this scheduler config; jobs pick their own sampler
    # with from_config on top of it.
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  steps_offset=1)
    return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common), EulerDiscreteScheduler(**common)


def build_base(out: Path, sdxl: bool) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pndm, euler = _scheduler_config_source()
    tokenizer = _tokenizer(out / ".tok1")
    text_encoder = _text_encoder(tokenizer, projection=False, seed=f"te1-{sdxl}")
    if sdxl:
        tokenizer_2 = _tokenizer(out / ".tok2", pad_token="!")
        text_encoder_2 = _text_encoder(tokenizer_2, projection=True, seed="te2")
        pipe = StableDiffusionXLPipeline(
            vae=_vae(sdxl=True), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=_unet(sdxl=True), scheduler=euler,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=_vae(sdxl=False), text_encoder=text_encoder, tokenizer=tokenizer, unet=_unet(sdxl=False),
            scheduler=pndm, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.save_pretrained(out, safe_serialization=True)
    _write_tokenizer_files(out / "tokenizer", "<|endoftext|>")
    if sdxl:
        _write_tokenizer_files(out / "tokenizer_2", "!")
    for scratch in (".tok1", ".tok2"):
        shutil.rmtree(out / scratch, ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "sdxl" if sdxl else "sd15", "version": TINY_VERSION,
                   "note": "random weights: images are noise that prove the plumbing"}, fh)


def build_controlnet(out: Path, sdxl: bool, kind: str) -> None:
    import torch
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(_seed(f"controlnet-{sdxl}-{kind}"))
    common = dict(conditioning_embedding_out_channels=(8, 16, 16, 32), **_unet_kwargs(sdxl))
    if kind == "union":
        model = ControlNetUnionModel(num_control_type=6, num_trans_channel=_BLOCKS[0], num_trans_head=2,
                                     num_proj_channel=_BLOCKS[0], **common)
    else:
        model = ControlNetModel(**common)
    # A trained ControlNet's zero convolutions are no longer zero. Fresh ones are, which
    # would make every control a no-op; give them small seeded weights so the tiny
    # ControlNets really steer the tiny UNet (and tests of scales and windows can fail).
    with torch.no_grad():
        zero_convs = [*model.controlnet_down_blocks, model.controlnet_mid_block,
                      model.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.weight.normal_(0.0, 0.2)
            conv.bias.normal_(0.0, 0.05)
    model.save_pretrained(out, safe_serialization=True)


def builder(family: str, name: str):
    """The builder of one tiny SD 1.5 / SDXL model (``tiny._builder`` asks through ``tiny.TINY_MODULES``)."""
    sdxl = family == "sdxl"
    if name == "base":
        return lambda out: build_base(out, sdxl=sdxl)
    if name == "vae-fp16-fix" and sdxl:
        return lambda out: _vae(sdxl=True, seed=11, force_upcast=False).save_pretrained(out)
    if name == "controlnet-union" and sdxl:
        return lambda out: build_controlnet(out, sdxl=True, kind="union")
    kinds = SDXL_CONTROL_KINDS if sdxl else SD15_CONTROL_KINDS
    if name.startswith("controlnet-") and name[len("controlnet-"):] in kinds:
        return lambda out: build_controlnet(out, sdxl=sdxl, kind=name[len("controlnet-"):])
    raise ValueError(f"no tiny model {family}/{name}")
