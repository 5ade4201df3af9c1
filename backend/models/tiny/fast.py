"""Tiny offline versions of the fast-mode models (see :class:`.families.base.FastMode`).

* ``tiny/v1/sd15/lcm-lora`` and ``tiny/v1/sdxl/lcm-lora``: a LoRA on the tiny UNet's
  attention projections, made with peft's ``LoraConfig`` on that UNet and written with
  diffusers' LoRA save API (``pytorch_lora_weights.safetensors``, as latent-consistency's
  LCM-LoRAs ship), so fast jobs load it through the real ``load_lora_weights``. Seeded
  random weights, large enough that the LoRA visibly changes the images.
* ``tiny/v1/flux/base-schnell``: the tiny FLUX.1 pipeline as FLUX.1-schnell differs from
  FLUX.1-dev: a transformer without the guidance embedding and the fixed-shift
  flow-matching scheduler (no resolution-dependent shift).

The builders take the tiny-model module (``backend/models/tiny/__init__.py``, which calls them) as ``tiny``,
for its shared pieces (seeds, the CLIP tokenizer); the UNet and FLUX.1 component sizes come
from :mod:`.sd` and :mod:`.flux`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: Attention projections the LoRA adapts (what LCM-LoRA adapts in the real UNets, among others).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_RANK = 4


def build_lcm_lora(out: Path, arch: str, tiny, unet=None, rank: int = LORA_RANK, std: float = 0.3) -> None:
    """The LoRA for ``unet`` (default: the tiny base's UNet; the bench gives its random
    full-size one, copied here so the given model stays as it is)."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if unet is None:
        from .sd import _unet

        unet = _unet(sdxl=arch == "sdxl")  # the tiny base's UNet (same config, same seeded weights)
    else:
        unet = copy.deepcopy(unet)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=LORA_TARGETS))
    torch.manual_seed(tiny._seed(f"lcm-lora-{arch}"))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); a trained one is not
                param.normal_(0.0, std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipeline.save_lora_weights(save_directory=str(out), unet_lora_layers=layers, safe_serialization=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": arch, "version": tiny.TINY_VERSION, "kind": "lcm-lora",
                   "note": "random LoRA weights on the tiny UNet: fast-mode plumbing, not a distilled model"}, fh)


def build_flux_schnell_base(out: Path, tiny) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from . import flux

    tokenizer = tiny._tokenizer(out / ".tok1")
    text_encoder = tiny._text_encoder(tokenizer, projection=False, seed="flux-clip")
    tokenizer_2 = flux._t5_tokenizer(out / ".tok2")
    torch.manual_seed(tiny._seed("flux-schnell-transformer"))
    transformer = FluxTransformer2DModel(**{**flux._flux_dit_kwargs(), "guidance_embeds": False})
    # FLUX.1-schnell's scheduler config: a fixed shift of 1 (no resolution-dependent shift).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=flux._flux_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=flux._t5_encoder(tokenizer_2), tokenizer_2=tokenizer_2,
                        transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    tiny._write_tokenizer_files(out / "tokenizer", "<|endoftext|>")
    for scratch in (".tok1", ".tok2"):
        shutil.rmtree(out / scratch, ignore_errors=True)
    with open(out / "archviz_tiny.json", "w") as fh:
        json.dump({"family": "flux", "variant": "schnell", "version": tiny.TINY_VERSION,
                   "note": "random weights: images are noise that prove the plumbing"}, fh)


def builder(family: str, name: str, tiny):
    """The builder of a tiny fast-mode model, or None when ``family/name`` is not one."""
    from ...engine.families.registry import ENGINES

    if family in ENGINES and ENGINES[family].module == "sd" and name == "lcm-lora":  # the UNet families
        return lambda out: build_lcm_lora(out, family, tiny)
    if family == "flux" and name == "base-schnell":
        return lambda out: build_flux_schnell_base(out, tiny)
    return None
