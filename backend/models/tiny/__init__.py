"""The ``tiny`` model families: SD 1.5, SDXL and FLUX.1 architectures shrunk to a few hundred
kilobytes, with seeded random weights and a generated CLIP tokenizer.

They are written with ``save_pretrained`` into ``$ARCHVIZ_HOME/tiny/<version>/`` and loaded
back with ``from_pretrained`` by the model registry exactly like a real model folder, so
tests and the offline demo exercise the real loading path. They are never used in place of
a real model: only the ``tiny`` / ``tiny-sdxl`` families point at them.

Layout (one folder per model, as on the Hugging Face hub)::

    tiny/v1/sd15/base                  pipeline folder: unet vae text_encoder tokenizer scheduler
    tiny/v1/sd15/controlnet-<kind>     ControlNetModel (kind: depth lineart mlsd canny normal seg)
    tiny/v1/sdxl/base                  + text_encoder_2 tokenizer_2
    tiny/v1/sdxl/vae-fp16-fix          separate VAE, like madebyollin/sdxl-vae-fp16-fix
    tiny/v1/sdxl/controlnet-<kind>     ControlNetModel (depth canny)
    tiny/v1/sdxl/controlnet-union      ControlNetUnionModel
    tiny/v1/flux/base                  FLUX.1 pipeline folder: transformer vae text_encoder (CLIP)
                                       tokenizer text_encoder_2 (T5) tokenizer_2 (unigram) scheduler
    tiny/v1/flux/controlnet-<kind>     FluxControlNetModel (depth canny, union with control modes)
    tiny/v1/qwen/...                   Qwen-Image: see qwen.py
    tiny/v1/zimage/...                 Z-Image-Turbo and its union ControlNet (see zimage.py)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import zlib
from pathlib import Path

from ...engine.families.registry import ENGINES

TINY_VERSION = "v1"
_BUILD_LOCK = threading.Lock()

SD15_CONTROL_KINDS = ("depth", "lineart", "mlsd", "canny", "normal", "seg")
SDXL_CONTROL_KINDS = ("depth", "canny")


def archviz_home() -> Path:
    return Path(os.environ.get("ARCHVIZ_HOME") or Path.home() / ".cache" / "archviz").expanduser()


def tiny_root() -> Path:
    return archviz_home() / "tiny" / TINY_VERSION


def tiny_path(family: str, name: str) -> Path:
    """Folder of one tiny model: family ``sd15``/``sdxl``, name ``base``, ``controlnet-depth``..."""
    return tiny_root() / family / name


def is_tiny_path(path: str | os.PathLike) -> bool:
    try:
        Path(path).resolve().relative_to(tiny_root().resolve())
        return True
    except ValueError:
        return False


class NotATinyModel(ValueError):
    """A path inside the tiny store that is not a tiny model's own folder."""


def ensure_tiny(path: str | os.PathLike) -> Path:
    """Build the tiny model that lives at ``path`` unless it is already on disk.

    Only a tiny model's own folder (``tiny/<version>/<family>/<name>`` of a model this
    module builds) is built, or replaced when a build died halfway; any other path in the
    tiny store (a folder inside a model, a family folder, an unknown name) is a
    :class:`NotATinyModel` and nothing there is touched: a job must never make the server
    delete or rewrite files it did not create for that job."""
    path = Path(os.path.realpath(Path(path).expanduser()))
    rel = path.relative_to(Path(os.path.realpath(tiny_root())))
    try:
        if len(rel.parts) != 2:
            raise ValueError("not a model folder")
        family, name = rel.parts
        builder = _builder(family, name)
    except ValueError:
        raise NotATinyModel(f"{path} is not one of the tiny models (they are the folders "
                                 f"{tiny_root()}/FAMILY/NAME the server builds, e.g. sd15/controlnet-depth); "
                                 "nothing in the tiny store was changed") from None
    with _BUILD_LOCK:
        if (path / ".complete").exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
        try:
            builder(tmp)
            (tmp / ".complete").write_text("built by archviz_controlnet.backend.models.tiny\n")
            if path.exists() and not (path / ".complete").exists():
                shutil.rmtree(path, ignore_errors=True)  # a build that died halfway
            try:
                os.replace(tmp, path)
            except OSError:
                if not (path / ".complete").exists():  # another process finished first otherwise
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


#: Tiny families built by a module of their own (its ``builder(family, name)``), loaded by
#: name like the engine's family modules (``families.MODULES``): they use this module's helpers.
#: (backend/engine/families/registry.py: ``tiny_module``, ``tiny_folders``)
TINY_MODULES = {folder: e.tiny_module for e in ENGINES.values() if e.tiny_module
                for folder in (e.arch, *e.tiny_folders)}


def _builder(family: str, name: str):
    if family in TINY_MODULES:
        import importlib

        return importlib.import_module(f".{TINY_MODULES[family]}", __package__).builder(family, name)
    import sys

    from .fast import builder as fast_builder

    fast = fast_builder(family, name, sys.modules[__name__])
    if fast is not None:  # fast mode's tiny LoRA / schnell base
        return fast
    if family == "flux":
        if name == "base":
            return build_flux_base
        kind = name[len("controlnet-"):]
        if name.startswith("controlnet-") and kind in (*FLUX_CONTROL_KINDS, "union"):
            return lambda out: build_flux_controlnet(out, kind)
        raise ValueError(f"no tiny model {family}/{name}")
    if family not in ENGINES or ENGINES[family].module != "sd":  # the UNet families are built here
        raise ValueError(f"no tiny family {family!r}")
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


# ---------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------

# Shared shape of the tiny UNet and its ControlNets (the ControlNet copies the UNet's encoder).
_BLOCKS = (32, 64)
_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")
_TEXT_DIM = 32
_TIME_DIM = 8  # SDXL addition_time_embed_dim


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _tokenizer_vocab(pad_token: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A generated CLIP byte-level BPE vocabulary: every byte symbol, every byte symbol as a
    word end, merges for a few common words, and the special tokens."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = []
    for word in ("the", "an", "in", "on", "light", "wood", "wall", "concrete", "modern", "interior"):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append((a, b))
            parts = [a + b] + parts[2:]
            vocab.setdefault(a + b, len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    if pad_token not in vocab:
        vocab[pad_token] = len(vocab)
    return vocab, merges


def _write_tokenizer_files(folder: Path, pad_token: str) -> None:
    """The tokenizer as the real SD repos ship it: vocab.json + merges.txt (+ two small
    JSON configs) and no tokenizer.json, so loading takes the same path as for them."""
    vocab, merges = _tokenizer_vocab(pad_token)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    with open(folder / "special_tokens_map.json", "w") as fh:
        json.dump(specials, fh)
    with open(folder / "tokenizer_config.json", "w") as fh:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "errors": "replace", **specials}, fh)


def _tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """Write the generated tokenizer files and load them (transformers 4 and 5 alike)."""
    from transformers import CLIPTokenizer

    _write_tokenizer_files(folder, pad_token)
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_encoder(tokenizer, projection: bool, seed: str):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=max(tokenizer.get_vocab().values()) + 1,
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=_TEXT_DIM,
        hidden_act="gelu",
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids(tokenizer.pad_token),
    )
    torch.manual_seed(_seed(seed))
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


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


# ---------------------------------------------------------------------------------------
# FLUX.1 (the ``tiny-flux`` family)
# ---------------------------------------------------------------------------------------
# Sizes after diffusers' own FLUX ControlNet pipeline tests, with a VAE of four blocks like
# the real one (1/8 latents, 16 channels) so a 64 px image is 4x4 packed tokens.

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
