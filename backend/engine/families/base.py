"""What the sweep core asks of a model family (see :mod:`..engine`).

The core owns everything every family shares: batching (several (style, seed) images per
forward), one ``torch.Generator`` per seed, the text embeddings once per style, the window
and scale-0 skipping of control units, progress and cancel every step, halving a batch on
out-of-memory, decode chunking and the statistics. A family owns what its diffusers
pipeline does, in the pipeline's order:

1. :meth:`Family.pipeline` - the diffusers pipeline over the warm components (its helpers,
   and the plain reference in tests and the benchmark);
2. :meth:`Family.encode_prompt` - one style's text embeddings;
3. :meth:`Family.prepare_controls` - each control image made ready for its net, once per job;
4. :meth:`Family.prepare_latents` - sampler, timesteps and initial noise of one batch;
5. :meth:`Family.step` - one denoising step with the residuals of the units that run;
6. :meth:`Family.decode_latents` - latents to [0, 1] images.

Optional, with defaults here (a new family gets previews and no fast mode without a line):

* :attr:`Family.taesd_id` - the TAESD-class tiny autoencoder for previews (None: the
  projection fitted to the family's VAE, :mod:`..previews`);
* :meth:`Family.preview_latents` / :meth:`Family.preview_decode` - the denoiser's latents
  as a (B, C, h, w) grid (packed 2x2 tokens unpacked) and a grid through the VAE;
* :attr:`Family.fast` - the family's fast mode (:class:`FastMode`), None where it has none.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Unit:
    """One control unit inside the denoising loop: its settings, its net, and the control
    image as :meth:`Family.prepare_controls` made it ready (once per job)."""

    settings: Any  # ..sweep.UnitSettings
    model: Any  # the net
    control: Any  # the family's prepared control
    union_mode: int | None = None
    fn: Any = None  # the model, its quantized copy or its compiled form

    def active(self, i: int, n: int) -> bool:
        """Same rule as diffusers' ``controlnet_keep``, plus scale 0 -> not run."""
        s = self.settings
        return s.scale > 0 and not (i / n < s.start or (i + 1) / n > s.end)

    @property
    def run(self):
        return self.model if self.fn is None else self.fn


def add_residuals(total, new, in_place: bool):
    """The per-block sum of the units' residuals: ``new`` added to ``total`` (a list, or a
    dict by block name). ``in_place``: into ``total``'s tensors, which must be the fresh
    outputs of this step's first unit (no new tensors per block and step: on the CPU a new
    buffer per residual showed as the biggest op outside the forwards); off under CUDA graphs,
    whose outputs live in the graph's memory pool."""
    if total is None:
        return new
    if new is None:
        return total
    if isinstance(total, dict):
        if in_place:
            for k, q in new.items():
                if k in total:
                    total[k].add_(q)
                else:
                    total[k] = q
            return total
        return {k: total[k] + new[k] if k in total and k in new else total.get(k, new.get(k))
                for k in {**total, **new}}
    if in_place:
        for p, q in zip(total, new):
            p.add_(q)
        return total
    return [p + q for p, q in zip(total, new)]


def in_place_ok(engine) -> bool:
    """Whether a family's step may add residuals in place (not under CUDA graph replay)."""
    return not (engine.options.compile and engine.options.cuda_graphs)


@dataclass
class Denoising:
    """One batch between :meth:`Family.prepare_latents` and :meth:`Family.decode_latents`."""

    latents: Any
    timesteps: Any
    scheduler: Any
    values: dict = field(default_factory=dict)  # what the family's step needs besides


@dataclass(frozen=True)
class FastMode:
    """A family's labelled fast mode (it changes the pixels): few steps with a LoRA
    distilled for it and its sampler (SD 1.5 / SDXL: LCM-LoRA), or another base model made
    for few steps (FLUX.1-schnell). Declared per family with :attr:`Family.fast`."""

    label: str  # what reports and the metadata call it, e.g. "LCM-LoRA"
    steps: int  # default steps (a job's own steps win)
    cfg: float | None  # default guidance (a job's own cfg wins; None: the style's as in exact mode)
    scheduler: str  # the sampler it needs (SD: "lcm"); a job may not choose another
    lora: str | None = None  # Hugging Face id of the LoRA loaded into the denoiser
    tiny_lora: str | None = None  # tiny model name (backend/models/tiny/fast.py) for the tiny family
    base: str | None = None  # Hugging Face id of the base that replaces the family's default
    tiny_base: str | None = None  # tiny model name of that base

    def record(self) -> dict:
        """What goes into every image's parameters (and so into the resume hash)."""
        return {k: v for k, v in (("mode", self.label), ("lora", self.lora), ("base", self.base),
                                  ("scheduler", self.scheduler)) if v}


class Family:
    arch: str = ""
    #: TAESD-class tiny autoencoder for previews when its weights are in the local HF cache
    taesd_id: str | None = None
    #: the fast mode (few steps, labelled: changes the pixels); None: the family has none
    fast: FastMode | None = None
    #: the denoiser's component name in the base components ("unet", "transformer")
    denoiser: str = "unet"
    #: the text encoders' component names (a memory profile may keep them on the CPU)
    text_encoders: tuple = ("text_encoder",)
    #: activations of one image at 512x512 on CUDA (batch sizing by free memory)
    bytes_per_image_512: float = 0.5 * 2**30

    # -- setup -------------------------------------------------------------------------
    def modules(self, comps: dict, nets: list) -> list:
        """The modules the engine's speed options apply to (denoiser and nets)."""
        return [comps[self.denoiser], *nets]

    def pipeline(self, comps: dict, nets):
        raise NotImplementedError

    def vae_scale(self, pipe) -> int:
        return int(pipe.vae_scale_factor)

    def use_lora(self, engine, plan, pipe, comps: dict) -> None:
        """Fast mode's LoRA (``plan.models.lora``) on the denoiser for this job, off for
        the others. A family whose fast mode needs none loads none."""
        if plan.models.lora is not None:
            raise RuntimeError(f"fast mode: the {self.arch} family loads no LoRA ({plan.models.lora})")

    # -- the pipeline, in order --------------------------------------------------------
    def encode_prompt(self, engine, pipe, comps: dict, style):
        raise NotImplementedError

    def prepare_controls(self, engine, plan, pipe, nets: list) -> list:
        raise NotImplementedError

    def prepare_init(self, engine, plan, pipe, comps: dict):
        """Restyle: ``plan.init``'s image made ready once per job (SD: the VAE's latent
        distribution of it); given to :meth:`prepare_latents` as ``init``."""
        raise RuntimeError(f"restyle (an init image) is not supported for the {self.arch} family")

    def prepare_latents(self, engine, plan, pipe, comps: dict, style, batch: list, embeds: list,
                        generators: list, units: list[Unit]) -> Denoising:
        """``embeds``: one style's embeddings per image; ``generators``: one per image
        (its seed); ``units``: the job's units in control order. A restyle passes
        ``init=`` (what :meth:`prepare_init` made) as well."""
        raise NotImplementedError

    def step(self, engine, state: Denoising, i: int, t, units: list) -> None:
        """One denoising step; ``units`` are the (index, unit, active) to run this step."""
        raise NotImplementedError

    def decoding(self, comps: dict):
        """A context around all decode calls of a batch (an fp16 VAE's upcast)."""
        return contextlib.nullcontext()

    def decode_latents(self, engine, pipe, comps: dict, state: Denoising, latents) -> list[np.ndarray]:
        raise NotImplementedError

    # -- reference images (optional; core/references.py) -----------------------------
    def use_references(self, engine, plan, pipe, comps: dict, model: dict | None) -> None:
        """Put the job's reference model into the denoiser (IP-Adapter's attention layers),
        or take one a former job put there out (``model`` None: this job has no references).
        Most mechanisms leave the denoiser as it is."""

    def prepare_references(self, engine, plan, pipe, comps: dict, model: dict):
        """``plan.references`` encoded once per job with the reference ``model``
        (:meth:`..models.registry.ModelCache.reference_model`); given to
        :meth:`prepare_latents` as ``refs``."""
        raise RuntimeError(f"reference images are not supported for the {self.arch} family")

    # -- previews (optional; see ..previews) -------------------------------------------
    def preview_latents(self, plan, pipe, state: Denoising, latents):
        """The denoiser's latents as a (B, C, h, w) grid in the denoiser's latent space:
        4D as they are, video-style 5D (B, C, 1, h, w) without the frame axis, and packed
        (B, h/2 * w/2, C * 4) tokens (FLUX.1 and alike) unpacked from their 2x2 patches."""
        if latents.ndim == 4:
            return latents
        if latents.ndim == 5:
            return latents[:, :, 0]
        scale = self.vae_scale(pipe)
        h, w = 2 * (plan.height // (scale * 2)), 2 * (plan.width // (scale * 2))
        b, _tokens, packed = latents.shape
        c = packed // 4
        grid = latents.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return grid.reshape(b, c, h, w)

    def preview_decode(self, engine, pipe, comps: dict, grid) -> np.ndarray:
        """A (B, C, h, w) grid in the denoiser's latent space through the family's VAE, as
        the pipelines undo the latent scaling (per-channel mean/std when the VAE has them,
        else scale and shift), -> (B, H, W, 3) float in [0, 1]. The preview projection is
        fitted to this."""
        import torch

        vae = comps["vae"]
        cfg = vae.config
        with torch.no_grad(), self.decoding(comps):  # an fp16 VAE that upcasts: the dtype inside
            z = grid.to(device=engine.device, dtype=vae.dtype)
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            if mean is not None and std is not None:
                m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
                d = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
                z = z * d / getattr(cfg, "scaling_factor", 1.0) + m  # Qwen-Image's VAE has no scaling factor
            else:
                z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
            video = getattr(cfg, "temperal_downsample", None) is not None  # a video VAE (B, C, T, h, w)
            image = vae.decode(z.unsqueeze(2) if video else z, return_dict=False)[0]
        if video:
            image = image[:, :, 0]
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
