"""The ``tiny-zimage`` family: Z-Image-Turbo and its Fun ControlNet-Union shrunk to a few
hundred kilobytes, with seeded random weights and a Qwen-style byte-level BPE tokenizer
generated here (no download). Built on first use by :mod:`.tiny` and loaded back with the
real loading code (:func:`.models.load_base`, :func:`.models.load_controlnet`)::

    tiny/v1/zimage/base                ZImagePipeline folder: transformer vae text_encoder (Qwen3)
                                       tokenizer (BPE with a chat template) scheduler
    tiny/v1/zimage/controlnet-union    the union net as the real one ships: ONE .safetensors
                                       checkpoint (VideoX-Fun's key names) plus its config.json,
                                       loaded with ZImageControlNetModel.from_single_file

Sizes: a 32-wide, 2-head transformer of two main layers and one refiner layer (RoPE axes
8 + 4 + 4 = the head size), a Qwen3 encoder of hidden size 16 (= the transformer's
``cap_feat_dim``), a four-block 16-channel VAE shaped like tiny-flux's (Z-Image uses the FLUX VAE),
and a ControlNet shaped like version 2.1 (a control block on every main layer, control
refiner blocks, ``control_in_dim`` 33 so the pipeline's zero padding of the control latents
runs).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

ZIMAGE_DIM = 32
ZIMAGE_TEXT_DIM = 16
#: the tokenizer's length limit; the pipeline pads every prompt to 512 tokens, as with the real model
ZIMAGE_MAX_TOKENS = 512
#: the single checkpoint file's name inside the tiny ControlNet folder
CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Union-tiny.safetensors"

# A chat template of the Qwen3 form (a user turn, then the assistant's turn opened), written
# here; the pipeline renders every prompt through it before tokenizing.
_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _corpus() -> list[str]:
    """What the BPE merges are learnt from: the built-in presets' prompts and a few words."""
    texts = ["a photo of a modern interior with warm light, wood, concrete, glass and white walls",
             "an architectural photograph of a house exterior at golden hour, stone and plants"]
    presets = Path(__file__).resolve().parents[3] / "presets"  # the repository's style presets
    for path in sorted(presets.glob("*.toml")):
        texts += [line.split("=", 1)[1].strip().strip('"') for line in path.read_text().splitlines()
                  if line.strip().startswith("prompt")]
    return texts


def _tokenizer(folder: Path):
    """A byte-level BPE tokenizer like Qwen's (every byte is a token, merges learnt from a
    small corpus), saved with save_pretrained and loaded back with AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import AutoTokenizer, Qwen2Tokenizer

    tok = Tokenizer(BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=600, special_tokens=list(_SPECIAL),
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = Qwen2Tokenizer(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                          bos_token=None, model_max_length=ZIMAGE_MAX_TOKENS)
    fast.chat_template = _CHAT_TEMPLATE
    shutil.rmtree(folder, ignore_errors=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def _text_encoder(tokenizer):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=ZIMAGE_TEXT_DIM, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=ZIMAGE_MAX_TOKENS, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(_seed("zimage-qwen3"))
    return Qwen3Model(config)


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def _vae():
    """The FLUX VAE's shape at the tiny size (four blocks: 1/8 latents, 16 channels, its
    shift and scale), as Z-Image uses the FLUX VAE."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_seed("zimage-vae"))
    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=16, layers_per_block=1, norm_num_groups=8, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                         scaling_factor=0.3611)


def _transformer_kwargs() -> dict:
    return dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=ZIMAGE_DIM, n_layers=2,
                n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                cap_feat_dim=ZIMAGE_TEXT_DIM, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
                axes_lens=[1024, 64, 64])


def controlnet_kwargs() -> dict:
    """Version 2.1's shape at the tiny size: control blocks on the main layers and on the
    noise refiner (``control_noise_refiner``), inpaint-capable input of 33 channels."""
    return dict(control_layers_places=[0, 1], control_refiner_layers_places=[0], control_in_dim=33,
                add_control_noise_refiner="control_noise_refiner", all_patch_size=(2,), all_f_patch_size=(1,),
                dim=ZIMAGE_DIM, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True)


def build_zimage_base(out: Path) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tokenizer = _tokenizer(out / ".tok")
    torch.manual_seed(_seed("zimage-transformer"))
    transformer = ZImageTransformer2DModel(**_transformer_kwargs())
    # Z-Image-Turbo's scheduler: flow matching with a fixed shift of 3.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=_vae(), text_encoder=_text_encoder(tokenizer),
                          tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / ".tok", ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "zimage", "note": "random weights: images are noise that prove the plumbing"}, fh)


def build_zimage_controlnet(out: Path) -> None:
    """ZImageControlNetModel written the way the real union net ships: one checkpoint file
    (the net's own weights, none of the transformer's it shares) and, beside it, the
    diffusers config that ``from_single_file(config=...)`` reads."""
    import torch
    from diffusers import ZImageControlNetModel
    from safetensors.torch import save_file

    torch.manual_seed(_seed("zimage-controlnet-union"))
    model = ZImageControlNetModel(**controlnet_kwargs())
    # Trained zero projections are no longer zero (see sd.build_controlnet).
    with torch.no_grad():
        for block in [*model.control_layers, *model.control_noise_refiner]:
            for name in ("before_proj", "after_proj"):
                linear = getattr(block, name, None)
                if linear is not None:
                    linear.weight.normal_(0.0, 0.3)
                    linear.bias.normal_(0.0, 0.05)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / CONTROLNET_FILE))
    model.save_config(str(out))


def builder(family: str, name: str):
    """The builder of one tiny Z-Image model (``base``, ``controlnet-union``)."""
    if name == "base":
        return build_zimage_base
    if name == "controlnet-union":
        return build_zimage_controlnet
    raise ValueError(f"no tiny model {family}/{name}")
