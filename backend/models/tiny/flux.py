"""Tiny FLUX.1 models (the ``tiny-flux`` family). Sizes after diffusers' own FLUX ControlNet
pipeline tests, with a VAE of four blocks like the real one (1/8 latents, 16 channels) so a
64 px image is 4x4 packed tokens.

::

    tiny/v1/flux/base                  FLUX.1 pipeline folder: transformer vae text_encoder (CLIP)
                                       tokenizer text_encoder_2 (T5) tokenizer_2 (unigram) scheduler
    tiny/v1/flux/controlnet-<kind>     FluxControlNetModel (depth canny, union with control modes)

Its T5 tokenizer and encoder, VAE and transformer sizes are shared with FLUX.1 Kontext
(:mod:`.edit`) and FLUX.1-schnell (:mod:`.fast`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import TINY_VERSION, _TEXT_DIM, _seed, _text_encoder, _tokenizer, _write_tokenizer_files

FLUX_CONTROL_KINDS = ("depth", "canny")
_FLUX_TEXT_DIM = 32  # T5 d_model = joint_attention_dim; CLIP hidden = pooled_projection_dim
_FLUX_T5_LENGTH = 32  # the tiny T5 tokenizer's model_max_length (the real one: 512)


def _flux_dit_kwargs() -> dict:
    return dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=_FLUX_TEXT_DIM, pooled_projection_dim=_TEXT_DIM,
                axes_dims_rope=[4, 4, 8], guidance_embeds=True)


def _flux_vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_seed("flux-vae"))
    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=16, layers_per_block=1, norm_num_groups=8, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                         scaling_factor=0.3611)


def _t5_pieces() -> list[tuple[str, float]]:
    """A generated sentencepiece-style unigram vocabulary: the special tokens, every printable
    ASCII character with and without the word-start mark, and a few common words."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    chars = [chr(c) for c in range(33, 127)]
    pieces += [(f"\u2581{c}", -8.0) for c in chars] + [(c, -9.0) for c in chars] + [("\u2581", -7.0)]
    words = ("the", "a", "an", "in", "on", "with", "light", "wood", "wall", "concrete", "modern", "interior",
             "exterior", "glass", "stone", "photo", "room", "house", "warm", "white")
    pieces += [(f"\u2581{w}", -4.0 - 0.1 * i) for i, w in enumerate(words)]
    return pieces


def _t5_tokenizer(folder: Path):
    """A T5 tokenizer (tokenizers' Unigram model, metaspace pre-tokenizer, ``</s>`` appended)
    saved with save_pretrained and loaded back with from_pretrained."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    tok = Tokenizer(Unigram(_t5_pieces(), unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=_FLUX_T5_LENGTH)
    shutil.rmtree(folder, ignore_errors=True)
    fast.save_pretrained(str(folder))
    return T5TokenizerFast.from_pretrained(str(folder))


def _t5_encoder(tokenizer):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=_FLUX_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(_seed("flux-t5"))
    return T5EncoderModel(config)


def build_flux_base(out: Path) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _tokenizer(out / ".tok1")
    text_encoder = _text_encoder(tokenizer, projection=False, seed="flux-clip")
    tokenizer_2 = _t5_tokenizer(out / ".tok2")
    torch.manual_seed(_seed("flux-transformer"))
    transformer = FluxTransformer2DModel(**_flux_dit_kwargs())
    # FLUX.1-dev's scheduler config: resolution-dependent shift of the flow-matching sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=_flux_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=_t5_encoder(tokenizer_2), tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    _write_tokenizer_files(out / "tokenizer", "<|endoftext|>")
    for scratch in (".tok1", ".tok2"):
        shutil.rmtree(out / scratch, ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "flux", "version": TINY_VERSION,
                   "note": "random weights: images are noise that prove the plumbing"}, fh)


def build_flux_controlnet(out: Path, kind: str) -> None:
    """FluxControlNetModel: a single-purpose net (depth, canny) or a union net with control
    modes (``union``, like InstantX's / Shakker-Labs' FLUX.1-dev ControlNet-Union)."""
    import torch
    from diffusers import FluxControlNetModel

    torch.manual_seed(_seed(f"flux-controlnet-{kind}"))
    model = FluxControlNetModel(num_mode=7 if kind == "union" else None, **_flux_dit_kwargs())
    # Trained zero projections are no longer zero (see build_controlnet).
    with torch.no_grad():
        for linear in [*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder]:
            linear.weight.normal_(0.0, 0.2)
            linear.bias.normal_(0.0, 0.05)
    model.save_pretrained(out, safe_serialization=True)


def builder(family: str, name: str):
    """The builder of one tiny FLUX.1 model (``tiny._builder`` asks through ``tiny.TINY_MODULES``)."""
    if name == "base":
        return build_flux_base
    kind = name[len("controlnet-"):]
    if name.startswith("controlnet-") and kind in (*FLUX_CONTROL_KINDS, "union"):
        return lambda out: build_flux_controlnet(out, kind)
    raise ValueError(f"no tiny model {family}/{name}")
