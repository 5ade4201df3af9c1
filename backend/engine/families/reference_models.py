"""The real models that read reference images, per architecture (core/references.py,
backend/models/registry.py load_reference_model loads them): their hub ids, the files their loaders read, and
the tiny folder that stands in for them. Kept here, with the other per-family facts.
Stdlib only (read without torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceModel:
    repo: str  # Hugging Face id (the tiny folder's name for the tiny families)
    files: tuple[str, ...]  # the repo files the loaders read (hub downloads take only these)
    kind: str  # ip-adapter | redux
    subfolder: str = ""  # IP-Adapter: the folder of the weights file
    weight_name: str = ""  # IP-Adapter: the weights file
    encoder: str = ""  # the image encoder's folder in the repo


_IP_ENCODER = ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
IP_ADAPTER_REPO = "h94/IP-Adapter"
REDUX_REPO = "black-forest-labs/FLUX.1-Redux-dev"

#: arch -> the real model
REAL = {
    "sd15": ReferenceModel(IP_ADAPTER_REPO, ("models/ip-adapter_sd15.safetensors", *_IP_ENCODER), "ip-adapter",
                           "models", "ip-adapter_sd15.safetensors", "models/image_encoder"),
    "sdxl": ReferenceModel(IP_ADAPTER_REPO, ("sdxl_models/ip-adapter_sdxl_vit-h.safetensors", *_IP_ENCODER),
                           "ip-adapter", "sdxl_models", "ip-adapter_sdxl_vit-h.safetensors", "models/image_encoder"),
    "flux": ReferenceModel(REDUX_REPO, ("image_encoder/config.json", "image_encoder/model.safetensors",
                                        "feature_extractor/preprocessor_config.json", "image_embedder/config.json",
                                        "image_embedder/diffusion_pytorch_model.safetensors"), "redux"),
}
#: the tiny model folder of each arch's reference model (tiny/v1/<arch>/<name>)
TINY_NAMES = {"sd15": "ip-adapter", "sdxl": "ip-adapter", "flux": "redux"}
