"""The ``tiny-qwen`` family: Qwen-Image shrunk to a few hundred kilobytes, with seeded random
weights and a generated Qwen byte-level BPE tokenizer (see :mod:`.tiny` for the idea).

Layout (under ``$ARCHVIZ_HOME/tiny/<version>/``)::

    qwen/base               QwenImagePipeline folder: transformer vae (AutoencoderKLQwenImage)
                            text_encoder (Qwen2.5-VL) tokenizer (Qwen2 BPE) scheduler
    qwen/controlnet-union   QwenImageControlNetModel (a union net like InstantX's: no modes)

Sizes after diffusers' own Qwen-Image ControlNet pipeline tests (a 2-layer MMDiT of 3 heads
of 16, a 2-layer Qwen2.5-VL text model of width 16), with a VAE of three downsamples like the
real one (1/8 latents) so a 64 px image is 4x4 packed tokens and sides are multiples of 16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import TINY_VERSION, _bytes_to_unicode, _seed

_TEXT_DIM = 16  # Qwen2.5-VL hidden size = the transformer's joint_attention_dim
_Z_DIM = 4  # VAE latent channels (the real one: 16); the transformer reads 2x2 patches of them
#: The special tokens Qwen-Image's prompt template and the Qwen2.5-VL config name.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>")
_WORDS = ("the", "and", "with", "light", "wood", "wall", "concrete", "modern", "interior", "image", "describe",
          "system", "user", "assistant", "color", "shape", "objects", "background")


def _tokenizer_files(folder: Path) -> None:
    """A generated Qwen2 byte-level BPE tokenizer as the real repo ships it (vocab.json +
    merges.txt + tokenizer_config.json with the special tokens as added tokens)."""
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = []
    space = _bytes_to_unicode()[ord(" ")]
    for word in _WORDS:
        for parts in (list(word), [space] + list(word)):  # the word alone and after a space
            while len(parts) > 1:
                a, b = parts[0], parts[1]
                merges.append((a, b))
                parts = [a + b] + parts[2:]
                vocab.setdefault(a + b, len(vocab))
    merges = list(dict.fromkeys(merges))
    added = {}
    for token in SPECIAL_TOKENS:
        added[str(len(vocab) + len(added))] = {"content": token, "lstrip": False, "normalized": False,
                                               "rstrip": False, "single_word": False, "special": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(folder / "tokenizer_config.json", "w") as fh:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "errors": "replace",
                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None,
                   "added_tokens_decoder": added, "clean_up_tokenization_spaces": False,
                   "split_special_tokens": False}, fh)


def tokenizer(folder: Path):
    """Write the generated tokenizer files and load them with ``from_pretrained``."""
    from transformers import Qwen2Tokenizer

    _tokenizer_files(folder)
    return Qwen2Tokenizer.from_pretrained(str(folder))


def _text_encoder(tok):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": _TEXT_DIM, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1_000_000.0, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=_TEXT_DIM, vocab_size=len(tok), image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(_seed("qwen-text-encoder"))
    return Qwen2_5_VLForConditionalGeneration(config)


def dit_kwargs() -> dict:
    """The tiny transformer's (and its ControlNet's) shape."""
    return dict(patch_size=2, in_channels=4 * _Z_DIM, out_channels=_Z_DIM, num_layers=2, attention_head_dim=16,
                num_attention_heads=3, joint_attention_dim=_TEXT_DIM, axes_dims_rope=(8, 4, 4))


def _vae():
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(_seed("qwen-vae"))
    # Per-channel latent statistics that are not 0/1, so their use is exercised.
    return AutoencoderKLQwenImage(base_dim=8, z_dim=_Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                  temperal_downsample=[False, True, True],
                                  latents_mean=[0.1 * i - 0.15 for i in range(_Z_DIM)],
                                  latents_std=[1.0 + 0.25 * i for i in range(_Z_DIM)])


def build_qwen_base(out: Path) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    tok = tokenizer(out / ".tok")
    text_encoder = _text_encoder(tok)
    torch.manual_seed(_seed("qwen-transformer"))
    transformer = QwenImageTransformer2DModel(guidance_embeds=False, **dit_kwargs())
    # Qwen-Image's scheduler config: exponential time shift by image size (base 0.5, max 0.9
    # between 256 and 8192 tokens).
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
        shift=1.0, shift_terminal=0.02, stochastic_sampling=False, time_shift_type="exponential",
        use_dynamic_shifting=True)
    pipe = QwenImagePipeline(scheduler=scheduler, vae=_vae(), text_encoder=text_encoder, tokenizer=tok,
                             transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    _tokenizer_files(out / "tokenizer")  # the generated files as they are (not a re-save)
    shutil.rmtree(out / ".tok", ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "qwen", "version": TINY_VERSION,
                   "note": "random weights: images are noise that prove the plumbing"}, fh)


def build_qwen_controlnet(out: Path) -> None:
    """QwenImageControlNetModel, a union net like InstantX's (the control type is read from
    the image: no mode)."""
    import torch
    from diffusers import QwenImageControlNetModel

    torch.manual_seed(_seed("qwen-controlnet-union"))
    model = QwenImageControlNetModel(**dit_kwargs())
    # Trained zero projections are no longer zero (see sd.build_controlnet).
    with torch.no_grad():
        for linear in [*model.controlnet_blocks, model.controlnet_x_embedder]:
            linear.weight.normal_(0.0, 0.2)
            linear.bias.normal_(0.0, 0.05)
    model.save_pretrained(out, safe_serialization=True)


def builder(family: str, name: str):
    if name == "base":
        return build_qwen_base
    if name == "controlnet-union":
        return build_qwen_controlnet
    raise ValueError(f"no tiny model {family}/{name}")
