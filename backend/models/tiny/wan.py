"""Tiny Wan 2.1 VACE (the ``tiny-wan`` video family): the real classes shrunk to random
weights, written with ``save_pretrained`` and loaded back with ``from_pretrained`` like the
hub's ``Wan-AI/Wan2.1-VACE-1.3B-diffusers`` folder.

::

    tiny/v1/wan/vace      WanVACEPipeline folder: transformer (WanVACETransformer3DModel, two
                          blocks, both with a VACE block), vae (AutoencoderKLWan, 1/8 in space,
                          1/4 in time, 4 latent channels), text_encoder (UMT5EncoderModel),
                          tokenizer (the generated T5 unigram tokenizer of tiny FLUX.1),
                          scheduler (UniPC with flow sigmas, as the real folder)

A 64 px, 9-frame window is 3 latent frames of 4x4 tokens: the engine, its windows and the
CLI run end to end on a CPU in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import TINY_VERSION, _seed

_Z = 4  # latent channels (the real VAE: 16)
_TEXT_DIM = 32  # UMT5 d_model = the transformer's text_dim (the real: 4096)


def _vae():
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(_seed("wan-vae"))
    return AutoencoderKLWan(base_dim=8, z_dim=_Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True],
                            latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[1.5, 2.0, 1.8, 2.2])


def _transformer():
    import torch
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(_seed("wan-vace-transformer"))
    # VACE input: the inactive and reactive latents (2 x z) and the 8x8 mask folded into 64 channels.
    model = WanVACETransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                      in_channels=_Z, out_channels=_Z, text_dim=_TEXT_DIM, freq_dim=32, ffn_dim=32,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=32, vace_layers=[0, 1], vace_in_channels=2 * _Z + 64)
    with torch.no_grad():  # trained zero projections are not zero: the control must reach the output
        for block in model.vace_blocks:
            block.proj_out.weight.normal_(0.0, 0.2)
    return model


def _text_encoder(tokenizer):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(_seed("wan-umt5"))
    return UMT5EncoderModel(config)


def build_wan_vace(out: Path) -> None:
    from diffusers import UniPCMultistepScheduler, WanVACEPipeline

    from .flux import _t5_tokenizer

    tokenizer = _t5_tokenizer(out / ".tok")
    # Wan2.1 VACE's scheduler config: UniPC over flow sigmas, shift 3 (480p).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    pipe = WanVACEPipeline(tokenizer=tokenizer, text_encoder=_text_encoder(tokenizer), vae=_vae(),
                           scheduler=scheduler, transformer=_transformer())
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / ".tok", ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "wan", "version": TINY_VERSION,
                   "note": "random weights: videos are noise that prove the plumbing"}, fh)


def builder(family: str, name: str):
    """The builder of the tiny Wan VACE model (``tiny._builder`` asks through ``tiny.TINY_MODULES``)."""
    if name == "vace":
        return build_wan_vace
    raise ValueError(f"no tiny model {family}/{name}")
