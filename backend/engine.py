"""The generation engine: multi-ControlNet SD 1.5 / SDXL sweeps, batched across seeds.

It reads like a diffusers pipeline, top to bottom: check -> encode prompts (once per
style) -> prepare controls and latents -> denoising loop -> decode. It reuses the diffusers
pipelines' own helpers (``encode_prompt``, the control image processor, ``randn_tensor``,
the schedulers) and differs from ``StableDiffusion(XL)ControlNetPipeline.__call__`` only
where that pays:

* a batch holds several (style, seed) images; each seed has its own ``torch.Generator``,
  so an image is the same alone or inside a sweep;
* a ControlNet outside its guidance window, or at scale 0, is not run at all (diffusers
  runs it and multiplies by 0: skipping is exact);
* control modes per control (CONVENTIONS.md): ``balanced``; ``prompt`` scales residual i
  of n by 0.825**(n-1-i); ``controlnet`` applies the control to the conditional half of
  classifier-free guidance only;
* progress and cancel are checked every denoising step.

fp16 on CUDA, fp32 on CPU. Models come from :class:`.models.ModelCache` (warm between jobs).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from .models import ModelCache, ModelPlan, default_budget_bytes
from .sweep import PlannedImage, StyleSettings, SweepPlan, UnitSettings

log = logging.getLogger("archviz.backend")

PROMPT_MODE_BASE = 0.825  # "my prompt is more important": residual i of n gets 0.825**(n-1-i)


class Cancelled(Exception):
    """The job was cancelled; raised between two denoising steps."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of the job's kind on top of the base model's scheduler config."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           UniPCMultistepScheduler)

    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       use_karras_sigmas=True)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"scheduler: unknown {name!r}")


@dataclass
class Unit:
    """One control inside the denoising loop."""

    settings: UnitSettings
    model: torch.nn.Module
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], device/dtype of the model
    union_mode: int | None = None

    def active(self, i: int, n: int) -> bool:
        """Same rule as diffusers' ``controlnet_keep``, plus scale 0 -> not run."""
        s = self.settings
        return s.scale > 0 and not (i / n < s.start or (i + 1) / n > s.end)

    def __call__(self, sample, t, embeds, added_cond_kwargs):
        n = sample.shape[0]
        cond = self.image.expand(n, -1, -1, -1) if n > 1 else self.image
        if self.union_mode is None:
            return self.model(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                              conditioning_scale=self.settings.scale, added_cond_kwargs=added_cond_kwargs,
                              guess_mode=False, return_dict=False)
        control_type = torch.zeros(n, self.model.config.num_control_type, device=sample.device, dtype=sample.dtype)
        control_type[:, self.union_mode] = 1
        return self.model(sample, t, encoder_hidden_states=embeds, controlnet_cond=[cond],
                          control_type=control_type, control_type_idx=[self.union_mode],
                          conditioning_scale=[self.settings.scale], added_cond_kwargs=added_cond_kwargs,
                          from_multi=True, guess_mode=False, return_dict=False)


@dataclass
class StyleEmbeds:
    cond: torch.Tensor
    uncond: torch.Tensor | None
    pooled: torch.Tensor | None = None  # SDXL
    uncond_pooled: torch.Tensor | None = None


class Engine:
    """Owns the device, the warm model cache and the denoising loop. One worker thread
    calls :meth:`generate`; :meth:`unload` may be called from any thread."""

    def __init__(self, device: str = "auto", budget_bytes: int | None = None, max_batch: int | None = None):
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.cache = ModelCache(self.device, self.dtype, budget_bytes or default_budget_bytes(self.device))
        env_batch = os.environ.get("ARCHVIZ_MAX_BATCH")
        self.max_batch = max_batch or (int(env_batch) if env_batch else None)
        self._helpers: dict[int, object] = {}
        self._lock = threading.Lock()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # -- models ------------------------------------------------------------------------
    def load(self, models: ModelPlan):
        """Base components and the ControlNets of a plan (cache entries, to pin)."""
        base = self.cache.base(models)
        nets = [self.cache.controlnet(ref) for ref in models.controlnets]
        return base, nets

    def unload(self) -> dict:
        with self._lock:
            self._helpers.clear()
        return self.cache.unload()

    def helper_pipeline(self, arch: str, comps: dict, controlnet):
        """A diffusers pipeline object over the warm components, used for its helpers
        (prompt encoding, control image processing, SDXL time ids) and, in tests, as the
        plain diffusers reference."""
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

        if arch == "sdxl":
            return StableDiffusionXLControlNetPipeline(
                vae=comps["vae"], text_encoder=comps["text_encoder"], text_encoder_2=comps["text_encoder_2"],
                tokenizer=comps["tokenizer"], tokenizer_2=comps["tokenizer_2"], unet=comps["unet"],
                controlnet=controlnet, scheduler=make_scheduler("unipc", comps["scheduler_config"]),
                add_watermarker=False)
        return StableDiffusionControlNetPipeline(
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
            controlnet=controlnet, scheduler=make_scheduler("unipc", comps["scheduler_config"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    # -- sizing ------------------------------------------------------------------------
    def batch_limit(self, plan: SweepPlan) -> int:
        """Images per UNet batch: the job's cap, else ARCHVIZ_MAX_BATCH, else by memory."""
        if plan.job.max_batch:
            return plan.job.max_batch
        if self.max_batch:
            return self.max_batch
        if self.device.type != "cuda":
            return 8
        free, _ = torch.cuda.mem_get_info(self.device)
        # Activations of one image (CFG doubles it) at fp16 with SDPA, measured roughly:
        # ~0.5 GB for SD 1.5 at 512x512, ~1.5 GB for SDXL at 1024x1024; scale with area.
        per_image = (0.5 if plan.models.arch == "sd15" else 0.4) * 2**30 * (plan.width * plan.height) / 512**2
        return int(max(1, min(16, (free * 0.7) // per_image)))

    # -- the sweep ---------------------------------------------------------------------
    def generate(self, plan: SweepPlan, images: list[PlannedImage], *,
                 on_step: Callable[[int], None] | None = None,
                 on_image: Callable[[PlannedImage, np.ndarray], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> dict[int, np.ndarray]:
        """Make ``images`` (a subset of ``plan.images``). Calls ``on_image`` as each batch is
        decoded with a float32 HxWx3 array in [0, 1]; returns {index: array}."""
        cancelled = cancelled or (lambda: False)
        base_entry, net_entries = self.load(plan.models)
        results: dict[int, np.ndarray] = {}
        with self.cache.pinned([base_entry, *net_entries]):
            comps = base_entry.value
            helper = self.helper_pipeline(plan.models.arch, comps, net_entries[0].value)
            controls = self._control_tensors(plan, helper, [e.value for e in net_entries])
            embeds: dict[int, StyleEmbeds] = {}
            for batch in self.batches(plan, images):
                style = plan.styles[batch[0].style]
                for item in batch:
                    if item.style not in embeds:  # text embeddings once per style
                        embeds[item.style] = self._encode(helper, plan.models.arch, plan.styles[item.style])
                units = [Unit(u, net_entries[ci].value, controls[ci], plan.models.controlnets[ci].union_mode)
                         for ci, u in enumerate(style.units)]
                out = self._run_batch_with_retry(plan, helper, comps, style, units, batch, embeds,
                                                 on_step, cancelled)
                for item, array in zip(batch, out):
                    results[item.index] = array
                    if on_image:
                        on_image(item, array)
        return results

    def batches(self, plan: SweepPlan, images: Iterable[PlannedImage]) -> list[list[PlannedImage]]:
        """Group images whose styles sample the same way, in sweep order, chunked by memory."""
        limit = self.batch_limit(plan)
        groups: dict[tuple, list[PlannedImage]] = {}
        for item in images:
            groups.setdefault(plan.styles[item.style].sampling_key(), []).append(item)
        out = []
        for group in groups.values():
            out.extend(group[i:i + limit] for i in range(0, len(group), limit))
        return out

    def _run_batch_with_retry(self, plan, helper, comps, style, units, batch, embeds, on_step, cancelled):
        try:
            return self.denoise(plan, helper, comps, style, units, batch, embeds, on_step, cancelled)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory with %d images per batch; retrying as %d + %d", len(batch), half,
                        len(batch) - half)
            self.max_batch = half
            return (self._run_batch_with_retry(plan, helper, comps, style, units, batch[:half], embeds, on_step,
                                               cancelled)
                    + self._run_batch_with_retry(plan, helper, comps, style, units, batch[half:], embeds, on_step,
                                                 cancelled))

    # -- pieces --------------------------------------------------------------------------
    def _control_tensors(self, plan: SweepPlan, helper, nets) -> list[torch.Tensor]:
        from .preprocess import run_preprocessor

        tensors = []
        for control, net in zip(plan.controls, nets):
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            t = helper.control_image_processor.preprocess(image, height=plan.height, width=plan.width)
            tensors.append(t.to(device=self.device, dtype=net.dtype))
        return tensors

    @torch.no_grad()
    def _encode(self, helper, arch: str, style: StyleSettings) -> StyleEmbeds:
        do_cfg = style.cfg > 1.0
        if arch == "sdxl":
            cond, uncond, pooled, uncond_pooled = helper.encode_prompt(
                style.prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=do_cfg,
                negative_prompt=style.negative or None)
            return StyleEmbeds(cond, uncond, pooled, uncond_pooled)
        cond, uncond = helper.encode_prompt(style.prompt, self.device, 1, do_cfg, style.negative or None)
        return StyleEmbeds(cond, uncond)

    @torch.no_grad()
    def denoise(self, plan: SweepPlan, helper, comps: dict, style: StyleSettings, units: list[Unit],
                batch: list[PlannedImage], embeds: dict[int, StyleEmbeds],
                on_step: Callable[[int], None] | None, cancelled: Callable[[], bool]) -> list[np.ndarray]:
        from diffusers.utils.torch_utils import randn_tensor

        unet, vae = comps["unet"], comps["vae"]
        sdxl = plan.models.arch == "sdxl"
        b = len(batch)
        do_cfg = style.cfg > 1.0

        # 1. Prompts: per-image rows of the per-style embeddings.
        e = [embeds[item.style] for item in batch]
        prompt_embeds = torch.cat([x.cond for x in e])
        if do_cfg:
            prompt_embeds = torch.cat([torch.cat([x.uncond for x in e]), prompt_embeds])
        added = None
        if sdxl:
            text_embeds = torch.cat([x.pooled for x in e])
            if do_cfg:
                text_embeds = torch.cat([torch.cat([x.uncond_pooled for x in e]), text_embeds])
            time_ids = helper._get_add_time_ids(
                (plan.height, plan.width), (0, 0), (plan.height, plan.width), dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=int(comps["text_encoder_2"].config.projection_dim))
            added = {"text_embeds": text_embeds,
                     "time_ids": time_ids.to(self.device).repeat(prompt_embeds.shape[0], 1)}

        # 2. Sampler and initial noise: one generator per seed.
        scheduler = make_scheduler(style.scheduler, comps["scheduler_config"])
        scheduler.set_timesteps(style.steps, device=self.device)
        timesteps = scheduler.timesteps
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        shape = (b, unet.config.in_channels, plan.height // helper.vae_scale_factor,
                 plan.width // helper.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=prompt_embeds.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_params = inspect.signature(scheduler.step).parameters
        extra = {}
        if "eta" in step_params:
            extra["eta"] = 0.0
        if "generator" in step_params:
            extra["generator"] = generators

        # 3. Denoising loop.
        n = len(timesteps)
        for i, t in enumerate(timesteps):
            if cancelled():
                raise Cancelled()
            x = torch.cat([latents] * 2) if do_cfg else latents
            x = scheduler.scale_model_input(x, t)
            down, mid = None, None
            for unit in units:
                if not unit.active(i, n):
                    continue  # outside its window or at scale 0: not run at all
                cond_only = unit.settings.mode == "controlnet" and do_cfg
                if cond_only:
                    cx = scheduler.scale_model_input(latents, t)
                    c_embeds = prompt_embeds[b:]
                    c_added = {k: v[b:] for k, v in added.items()} if added else None
                else:
                    cx, c_embeds, c_added = x, prompt_embeds, added
                d, m = unit(cx, t, c_embeds, c_added)
                if unit.settings.mode == "prompt":
                    k = len(d) + 1  # residuals incl. the mid block (13 for SD 1.5)
                    d = [r * PROMPT_MODE_BASE ** (k - 1 - j) for j, r in enumerate(d)]
                if cond_only:
                    d = [torch.cat([torch.zeros_like(r), r]) for r in d]
                    m = torch.cat([torch.zeros_like(m), m])
                if down is None:
                    down, mid = list(d), m
                else:
                    down = [p + q for p, q in zip(down, d)]
                    mid = mid + m
            noise = unet(x, t, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
            if do_cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + style.cfg * (text - uncond)
            latents = scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
            if on_step:
                on_step(1)

        # 4. Decode (in chunks to bound VAE memory on the GPU).
        return self._decode(vae, helper, latents)

    def _decode(self, vae, helper, latents: torch.Tensor) -> list[np.ndarray]:
        chunk = 4 if self.device.type == "cuda" else len(latents)
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            out = []
            for s in range(0, len(latents), chunk):
                z = latents[s:s + chunk].to(vae.dtype)
                if mean is not None and std is not None:
                    m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
                    d = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
                    z = z * d / vae.config.scaling_factor + m
                else:
                    z = z / vae.config.scaling_factor
                image = vae.decode(z, return_dict=False)[0]
                out.extend(helper.image_processor.postprocess(image, output_type="np"))
            return [np.asarray(a, dtype=np.float32) for a in out]
        finally:
            if upcast:
                vae.to(torch.float16)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 exactly as diffusers' numpy_to_pil rounds."""
    return (array * 255).round().astype(np.uint8)

