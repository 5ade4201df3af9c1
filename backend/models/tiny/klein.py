"""The ``tiny-klein`` family: FLUX.2 [klein] shrunk to a few hundred kilobytes, with seeded
random weights and the Qwen-style byte-level BPE tokenizer of :mod:`.zimage` (generated
here, no download). Built on first use by :mod:`.tiny` and loaded back with the real loading
code (:func:`..registry.load_base`)::

    tiny/v1/klein/base    Flux2KleinPipeline folder (is_distilled true, as the 4B model's):
                          transformer (Flux2Transformer2DModel), vae (AutoencoderKLFlux2),
                          text_encoder (Qwen3ForCausalLM), tokenizer (BPE with a chat
                          template), scheduler

Sizes: a 32-wide, 2-head transformer of one double-stream and one single-stream block
(RoPE axes 4 x 4 = the head size 16), a Qwen3 of hidden size 16 with 27 layers (the pipeline
stacks the hidden states of layers 9, 18 and 27: the transformer's text width is 48), and a
four-block VAE of 8 latent channels (32 after the 2x2 patches) with its batch-norm
statistics set to non-trivial values so the pipeline's normalisation is exercised.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

KLEIN_TEXT_DIM = 16
KLEIN_TEXT_LAYERS = 27  # the pipeline reads hidden states 9, 18 and 27
KLEIN_LATENT_CHANNELS = 8


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def _text_encoder(tokenizer):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .zimage import ZIMAGE_MAX_TOKENS

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=KLEIN_TEXT_DIM, intermediate_size=32,
                         num_hidden_layers=KLEIN_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=ZIMAGE_MAX_TOKENS, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(_seed("klein-qwen3"))
    return Qwen3ForCausalLM(config)


def _vae():
    """AutoencoderKLFlux2 at the tiny size: 1/8 latents, 2x2 patches, batch-norm statistics."""
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(_seed("klein-vae"))
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), latent_channels=KLEIN_LATENT_CHANNELS,
                             layers_per_block=1, norm_num_groups=8, sample_size=64, mid_block_add_attention=False)
    with torch.no_grad():  # trained statistics are not 0 and 1
        vae.bn.running_mean.normal_(0.0, 0.2)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def _transformer():
    import torch
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(_seed("klein-transformer"))
    model = Flux2Transformer2DModel(patch_size=1, in_channels=KLEIN_LATENT_CHANNELS * 4, num_layers=1,
                                    num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                    joint_attention_dim=3 * KLEIN_TEXT_DIM, timestep_guidance_channels=32,
                                    axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    # Trained attention is sharper than the initialisation's: without this the reference
    # tokens barely reach the noise's at this size and the tests could not tell them apart.
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim == 2:
                weight.mul_(3.0)
    return model


def build_klein_base(out: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from .zimage import _tokenizer

    tokenizer = _tokenizer(out / ".tok")
    # FLUX.2's scheduler: flow matching with the pipeline's empirical shift (mu) per call.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                time_shift_type="exponential")
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=_vae(), text_encoder=_text_encoder(tokenizer),
                              tokenizer=tokenizer, transformer=_transformer(), is_distilled=True)
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / ".tok", ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "klein", "note": "random weights: images are noise that prove the plumbing"}, fh)


def builder(family: str, name: str):
    """The builder of the tiny FLUX.2 Klein model (``base``)."""
    if name == "base":
        return build_klein_base
    raise ValueError(f"no tiny model {family}/{name}")
