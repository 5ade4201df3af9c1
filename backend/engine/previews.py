"""Previews while a batch denoises: a small PNG of each image every few steps.

Two ways, the better one that is available:

* a TAESD-class tiny autoencoder (diffusers' ``AutoencoderTiny``: madebyollin/taesd for
  SD 1.5, taesdxl for SDXL, taef1 for FLUX.1; MIT licence, about 10 MB each) when its
  weights are already in the local Hugging Face cache. Previews never download anything;
  ``archviz models download taesd`` (taesdxl, taef1) fetches one on purpose.
* else a linear latent-to-RGB projection per loaded VAE: a least-squares fit of what the
  model's own VAE decodes from a few smooth random latents (pooled to the latent grid),
  computed once per VAE and kept while it is loaded. It works for every family and for
  the tiny models, whose random VAEs have no published factors.

The family turns the denoiser's latents into a (B, C, h, w) grid
(:meth:`.families.base.Family.preview_latents`: packed FLUX-style tokens are unpacked) and
decodes a grid with its VAE (:meth:`.families.base.Family.preview_decode`); both have
defaults in the base class. Previews read the latents and never change them, and use no
random generator but their own: the final pixels are the same with previews on or off.
"""

from __future__ import annotations

import io
import logging
import weakref
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("archviz.backend")

#: Long side of a preview PNG at most (the image's own size when it is smaller).
MAX_SIDE = 256
#: The job's default: a preview every this many denoising steps (0 = off).
DEFAULT_EVERY = 4
#: Latent grid side and count of the fit's sample latents.
FIT_SIDE = 16
FIT_COUNT = 4


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in the local Hugging Face cache, complete enough for
    ``AutoencoderTiny.from_pretrained`` (config and safetensors weights), else None. Never
    downloads: only ``local_files_only`` lookups."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    if (folder / "config.json").is_file() and any(folder.glob("diffusion_pytorch_model*.safetensors")):
        return folder
    return None


class Projection:
    """RGB = latents . weights + bias per latent pixel (a least-squares fit)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray):
        self.weights = weights.astype(np.float32)  # (C, 3)
        self.bias = bias.astype(np.float32)  # (3,)

    def __call__(self, grid: torch.Tensor) -> np.ndarray:
        """(B, C, h, w) latents -> (B, h, w, 3) float in [0, 1]."""
        z = grid.detach().to("cpu", torch.float32).numpy()
        rgb = np.einsum("bchw,cr->bhwr", z, self.weights) + self.bias
        return np.clip(rgb, 0.0, 1.0)


def fit_projection(decode, channels: int, device, dtype) -> Projection:
    """Fit the projection to ``decode`` ((B, C, h, w) latents -> (B, H, W, 3) in [0, 1]):
    smooth random latents (a coarse grid upsampled, plus fine noise) from a generator of
    its own, each decoded image averaged over the pixels of each latent cell."""
    g = torch.Generator("cpu").manual_seed(20240)
    coarse = torch.randn(FIT_COUNT, channels, 4, 4, generator=g)
    z = torch.nn.functional.interpolate(coarse, size=(FIT_SIDE, FIT_SIDE), mode="bilinear", align_corners=False)
    z = z + 0.5 * torch.randn(FIT_COUNT, channels, FIT_SIDE, FIT_SIDE, generator=g)
    images = np.asarray(decode(z.to(device=device, dtype=dtype)), dtype=np.float64)
    n, height, width, _ = images.shape
    fy, fx = height // FIT_SIDE, width // FIT_SIDE
    pooled = images[:, :fy * FIT_SIDE, :fx * FIT_SIDE].reshape(n, FIT_SIDE, fy, FIT_SIDE, fx, 3).mean(axis=(2, 4))
    x = z.permute(0, 2, 3, 1).reshape(-1, channels).double().numpy()
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(x, pooled.reshape(-1, 3), rcond=None)
    return Projection(solution[:-1], solution[-1])


def to_png(array: np.ndarray, long_side: int) -> bytes:
    """[0, 1] HxWx3 -> PNG bytes, resized so the long side is ``long_side``."""
    from PIL import Image

    image = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    w, h = image.size
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != image.size:
        image = image.resize(size, Image.BILINEAR if scale < 1 else Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class PreviewCache:
    """What previews need per engine, kept between jobs: the tiny autoencoders loaded from
    the cache, and each loaded VAE's projection (dropped with the VAE)."""

    def __init__(self):
        self.tiny: dict[str, object] = {}  # folder -> AutoencoderTiny
        self.problem = ""  # why the last lookup's tiny autoencoder did not load ("" when none)
        self.projections: dict[int, tuple] = {}  # id(vae) -> (weakref to the vae, Projection)

    def tiny_vae(self, repo_id: str | None, device, dtype):
        self.problem = ""
        folder = cached_snapshot(repo_id) if repo_id else None
        if folder is None:
            return None
        key = str(folder)
        if key not in self.tiny:
            from diffusers import AutoencoderTiny

            try:
                model = AutoencoderTiny.from_pretrained(key, torch_dtype=dtype, use_safetensors=True)
            except Exception as exc:  # noqa: BLE001 - any broken cache entry: the projection, said
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.problem = (f"previews: {repo_id} in the Hugging Face cache does not load ({first}); "
                                f"previews use the latent projection")[:300]
                log.warning("%s", self.problem)
                return None
            self.tiny[key] = model.eval().requires_grad_(False).to(device)
        return self.tiny[key]

    def projection(self, vae, make) -> Projection:
        ref, projection = self.projections.get(id(vae), (None, None))
        if ref is None or ref() is not vae:
            projection = make()
            self.projections = {k: v for k, v in self.projections.items() if v[0]() is not None}
            self.projections[id(vae)] = (weakref.ref(vae), projection)
        return projection


class Previewer:
    """One job's previews: which way (``method``: ``taesd`` or ``projection``), and the
    PNG of each image of a batch from its current latents."""

    def __init__(self, engine, family, plan, pipe, comps: dict, every: int):
        self.engine, self.family, self.plan, self.pipe, self.comps = engine, family, plan, pipe, comps
        self.every = every
        self.long_side = min(MAX_SIDE, max(plan.width, plan.height))
        vae = comps["vae"]
        self.tiny = engine.previews.tiny_vae(family.taesd_id, engine.device, vae.dtype)
        self.method = "taesd" if self.tiny is not None else "projection"
        self.problem = engine.previews.problem  # a TAESD in the cache that does not load: said, not hidden
        self.projection = None
        if self.tiny is None:
            channels = int(getattr(vae.config, "latent_channels", None) or vae.config.z_dim)  # z_dim: Qwen-Image
            self.projection = engine.previews.projection(vae, lambda: fit_projection(
                lambda z: family.preview_decode(engine, pipe, comps, z), channels, engine.device, vae.dtype))

    def due(self, done: int, total: int) -> bool:
        """After ``done`` of ``total`` steps (the last one gives the image itself)."""
        return self.every > 0 and done < total and done % self.every == 0

    @torch.no_grad()
    def pngs(self, state) -> list[bytes]:
        grid = self.family.preview_latents(self.plan, self.pipe, state, state.latents)
        if self.tiny is not None:
            cfg = self.tiny.config
            z = grid.to(self.tiny.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
            images = (self.tiny.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
            arrays = images.permute(0, 2, 3, 1).float().cpu().numpy()
        else:
            arrays = self.projection(grid)
        return [to_png(a, self.long_side) for a in arrays]
