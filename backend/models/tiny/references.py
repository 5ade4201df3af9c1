"""Tiny reference models (core/references.py) in their real repositories' layout, so the
loader of backend/models/registry.py (load_reference_model) reads them like the real ones:

::

    tiny/v1/sd15/ip-adapter    models/ip-adapter_sd15.safetensors + models/image_encoder (CLIP vision)
    tiny/v1/sdxl/ip-adapter    sdxl_models/ip-adapter_sdxl_vit-h.safetensors + models/image_encoder
    tiny/v1/flux/redux         image_encoder (SigLIP vision), feature_extractor, image_embedder (Redux)

The IP-Adapter weights are what h94's files hold: ``image_proj.*`` (the projection of the
image embedding to 4 cross-attention tokens) and ``ip_adapter.<n>.to_k_ip/to_v_ip`` for
each cross-attention of the tiny UNet, numbered as diffusers' loader reads them (1, 3, 5...
in the UNet's processor order). Seeded random weights, written with safetensors.
"""

from __future__ import annotations

from pathlib import Path

from . import _seed

_IMAGE_DIM = 32  # the tiny CLIP vision projection / SigLIP hidden size
_IP_TOKENS = 4  # image tokens per reference (h94's base adapters: 4)


def _clip_vision(seed: str):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(_seed(seed))
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=_IMAGE_DIM, hidden_act="gelu"))


def build_ip_adapter(out: Path, arch: str) -> None:
    import torch
    from safetensors.torch import save_file

    from ..references import REAL
    from .sd import _unet

    spec = REAL[arch]
    unet = _unet(sdxl=arch == "sdxl")  # the tiny base's UNet architecture (its processor order and sizes)
    cross = int(unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(_seed(f"ip-adapter-{arch}"))
    weights = {
        "image_proj.proj.weight": torch.randn(cross * _IP_TOKENS, _IMAGE_DIM, generator=g) * 0.3,
        "image_proj.proj.bias": torch.randn(cross * _IP_TOKENS, generator=g) * 0.1,
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        hidden = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
        for which in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key}.{which}.weight"] = torch.randn(hidden, cross, generator=g) * 0.3
        key += 2
    target = out / spec.subfolder / spec.weight_name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(target))
    _clip_vision(f"ip-encoder-{arch}").save_pretrained(out / spec.encoder, safe_serialization=True)


def build_redux(out: Path) -> None:
    import torch
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from .flux import _FLUX_TEXT_DIM

    torch.manual_seed(_seed("redux-encoder"))
    SiglipVisionModel(SiglipVisionConfig(hidden_size=_IMAGE_DIM, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(
        out / "image_encoder", safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out / "feature_extractor")
    torch.manual_seed(_seed("redux-embedder"))
    ReduxImageEncoder(redux_dim=_IMAGE_DIM, txt_in_features=_FLUX_TEXT_DIM).save_pretrained(
        out / "image_embedder", safe_serialization=True)


def builder(family: str, name: str):
    """The builder of a tiny reference model, or None when ``family/name`` is not one."""
    from ...engine.families.reference_models import REAL, TINY_NAMES

    if TINY_NAMES.get(family) != name:
        return None
    if REAL[family].kind == "ip-adapter":
        return lambda out: build_ip_adapter(out, family)
    return build_redux
