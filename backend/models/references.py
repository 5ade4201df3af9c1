"""The models that read reference images (core/references.py): which one a job needs, the
hub files their loaders read, and loading them.

* SD 1.5 / SDXL: IP-Adapter, ``h94/IP-Adapter`` (Apache-2.0, not gated). diffusers'
  ``load_ip_adapter`` reads one weights file into the UNet's cross-attention; the CLIP
  image encoder it names is loaded here (``CLIPVisionModelWithProjection``) with the image
  processor diffusers builds for it (``CLIPImageProcessor`` at the encoder's image size).
  SD 1.5: ``models/ip-adapter_sd15.safetensors`` with ``models/image_encoder`` (ViT-H/14);
  SDXL: ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` with the same ViT-H encoder.
* FLUX.1: ``black-forest-labs/FLUX.1-Redux-dev`` (gated, FLUX.1 [dev] non-commercial
  licence): SigLIP image encoder, its image processor and the Redux image embedder
  (``FluxPriorReduxPipeline``'s components).

The tiny families get tiny versions in the same layout (backend/models/tiny/references.py),
loaded by this same code.
"""

from __future__ import annotations

from pathlib import Path

from . import hub, tiny


from ..engine.families.reference_models import REAL, TINY_NAMES, ReferenceModel  # noqa: F401 (re-exported)


def reference_model(arch: str, is_tiny: bool) -> str:
    """The reference (hub id or tiny folder) of an arch's reference model."""
    return str(tiny.tiny_path(arch, TINY_NAMES[arch])) if is_tiny else REAL[arch].repo


def spec(arch: str) -> ReferenceModel:
    return REAL[arch]


def hub_need(arch: str, ref: str):
    """(repo, the files its loaders read, label) for ``fetch``, or None for a local folder."""
    from .registry import is_hub_ref

    if not is_hub_ref(ref):
        return None
    return (ref, hub.Files(list(REAL[arch].files)), "reference model")


def folder_of(arch: str, ref: str, dtype) -> Path:
    """The local folder of a reference model: a tiny one built on first use, a local copy,
    or the hub snapshot with only the files :data:`REAL` lists."""
    from .registry import local_folder

    return local_folder(ref, hub.Files(list(REAL[arch].files)), "reference model", dtype)


def load(arch: str, ref: str, dtype, device) -> dict:
    """The reference model's modules: ``{"folder", "image_encoder", "feature_extractor"}``
    (+ ``"image_embedder"`` for Redux), eval mode on ``device``."""
    from .registry import _load

    m = REAL[arch]
    folder = folder_of(arch, ref, dtype)
    out = {"folder": folder, "kind": m.kind}
    if m.kind == "ip-adapter":
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        encoder = _load(CLIPVisionModelWithProjection, folder, m.encoder, ref, "IP-Adapter image encoder", dtype)
        size = encoder.config.image_size  # what diffusers' load_ip_adapter builds for its encoder
        out.update(image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
                   subfolder=m.subfolder, weight_name=m.weight_name)
    else:
        from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
        from transformers import SiglipImageProcessor, SiglipVisionModel

        out.update(image_encoder=_load(SiglipVisionModel, folder, "image_encoder", ref, "Redux image encoder", dtype),
                   feature_extractor=_load(SiglipImageProcessor, folder, "feature_extractor", ref, "Redux processor"),
                   image_embedder=_load(ReduxImageEncoder, folder, "image_embedder", ref, "Redux embedder", dtype))
    for value in out.values():
        if hasattr(value, "eval"):
            value.eval().requires_grad_(False).to(device)
    return out
