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


@dataclass
class Denoising:
    """One batch between :meth:`Family.prepare_latents` and :meth:`Family.decode_latents`."""

    latents: Any
    timesteps: Any
    scheduler: Any
    values: dict = field(default_factory=dict)  # what the family's step needs besides


class Family:
    arch: str = ""
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
