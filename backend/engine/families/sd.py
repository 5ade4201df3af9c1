"""Stable Diffusion 1.5 and SDXL with several ControlNets (and SDXL's ControlNet-Union),
as ``StableDiffusion(XL)ControlNetPipeline.__call__`` does it, step by step.

Differences from the diffusers pipeline that pay, all exact:

* each control image's conditioning embedding (the ControlNet's conv stack over the
  full-resolution image) is computed once per job instead of once per step and image;
* control modes per unit (CONVENTIONS.md): ``balanced``; ``prompt`` scales residual i of n
  by 0.825**(n-1-i); ``controlnet`` applies the control to the conditional half of
  classifier-free guidance only;
* the residuals come at scale 1 and are scaled here, so a compiled ControlNet never sees a
  scale (and never recompiles for one).
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising, Family, FastMode, Unit, add_residuals, in_place_ok

PROMPT_MODE_BASE = 0.825  # "my prompt is more important": residual i of n gets 0.825**(n-1-i)


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of the job's kind on top of the base model's scheduler config."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           LCMScheduler, UniPCMultistepScheduler)

    if name == "lcm":  # fast mode's LCM-LoRA (never a job's own choice)
        return LCMScheduler.from_config(config)
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


def accept_precomputed_cond(model: torch.nn.Module) -> bool:
    """Let ``model.controlnet_cond_embedding`` take an already embedded control image.

    The ControlNet's conditioning embedding (a conv stack over the full-resolution control
    image) depends on the image alone, so the engine computes it once per job and passes
    the result in: the embedding's forward returns an input that already has its output
    channel count unchanged, and embeds anything else as before (the plain diffusers
    pipeline is unaffected). Only the instance's ``forward`` changes; weights and
    state_dict stay as they are. Returns False where this does not apply (ControlNet-Union,
    BGR-ordered ControlNets)."""
    emb = getattr(model, "controlnet_cond_embedding", None)
    if emb is None or type(model).__name__ != "ControlNetModel":
        return False
    if getattr(model.config, "controlnet_conditioning_channel_order", "rgb") != "rgb":
        return False
    if getattr(emb, "_archviz_precomputed", False):
        return True
    plain = type(emb).forward
    channels = emb.conv_out.out_channels

    def forward(self, conditioning):
        if conditioning.shape[1] == channels:
            return conditioning  # embedded once by the engine
        return plain(self, conditioning)

    emb.forward = types.MethodType(forward, emb)
    emb._archviz_precomputed = True
    return True


@dataclass
class StyleEmbeds:
    cond: torch.Tensor
    uncond: torch.Tensor | None
    pooled: torch.Tensor | None = None  # SDXL
    uncond_pooled: torch.Tensor | None = None


@dataclass
class InitLatents:
    """A restyle's init image through the VAE encoder (once per job)."""

    dist: object  # its latent distribution; each seed samples it with its own generator
    masked: object = None  # region edit: the masked image's latent distribution
    mask: torch.Tensor | None = None  # region edit: (1, 1, h, w) binarized mask at latent size


@dataclass
class References:
    """The job's reference images for IP-Adapter (core/references.py), once per job."""

    embeds: torch.Tensor  # (1, n, D): each reference's CLIP image embedding
    mask: torch.Tensor  # (1, n, H, W) ones: each reference attended on its own and added at its scale


@dataclass
class Control:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], device/dtype of the net
    cond: torch.Tensor | None = None  # precomputed conditioning embedding (1, C, h, w), else None


def controlnet_residuals(unit: Unit, sample, t, embeds, added_cond_kwargs, guess_mode: bool = False):
    """Residuals at conditioning scale 1 for a ControlNetModel, at the unit's scale for a
    ControlNet-Union."""
    n = sample.shape[0]
    image = unit.control.image
    if unit.union_mode is None:
        cond = unit.control.cond if unit.control.cond is not None else image
        cond = cond.expand(n, -1, -1, -1) if n > 1 else cond
        return unit.run(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond, conditioning_scale=1.0,
                        added_cond_kwargs=added_cond_kwargs, guess_mode=guess_mode, return_dict=False)
    cond = image.expand(n, -1, -1, -1) if n > 1 else image
    control_type = torch.zeros(n, unit.model.config.num_control_type, device=sample.device, dtype=sample.dtype)
    control_type[:, unit.union_mode] = 1
    return unit.run(sample, t, encoder_hidden_states=embeds, controlnet_cond=[cond],
                    control_type=control_type, control_type_idx=[unit.union_mode],
                    conditioning_scale=[unit.settings.scale], added_cond_kwargs=added_cond_kwargs,
                    from_multi=True, guess_mode=guess_mode, return_dict=False)


#: Fast mode: the LCM-LoRA of each base (latent-consistency, openrail++), 4 steps with the
#: LCM sampler, cfg 1 (no classifier-free guidance: one UNet row per image); the ControlNets
#: are applied as in the exact path. The tiny families get a tiny LCM-LoRA (backend/models/tiny/fast.py).
LCM_LORA = {"sd15": "latent-consistency/lcm-lora-sdv1-5", "sdxl": "latent-consistency/lcm-lora-sdxl"}
TAESD = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
#: The adapter name of a fast-mode LoRA inside the warm UNet.
FAST_ADAPTER = "archviz_fast"


class StableDiffusion(Family):
    denoiser = "unet"

    def __init__(self, arch: str):
        self.arch = arch
        self.sdxl = arch == "sdxl"
        self.taesd_id = TAESD[arch]
        self.fast = FastMode(label="LCM-LoRA", steps=4, cfg=1.0, scheduler="lcm", lora=LCM_LORA[arch],
                             tiny_lora="lcm-lora")
        # Activations of one image (CFG doubles it) at fp16 with SDPA, measured roughly:
        # ~0.5 GB for SD 1.5 at 512x512, ~1.5 GB for SDXL at 1024x1024; scale with area.
        self.bytes_per_image_512 = (0.4 if self.sdxl else 0.5) * 2**30

    def pipeline(self, comps: dict, controlnet):
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

        if self.sdxl:
            return StableDiffusionXLControlNetPipeline(
                vae=comps["vae"], text_encoder=comps["text_encoder"], text_encoder_2=comps["text_encoder_2"],
                tokenizer=comps["tokenizer"], tokenizer_2=comps["tokenizer_2"], unet=comps["unet"],
                controlnet=controlnet, scheduler=make_scheduler("unipc", comps["scheduler_config"]),
                add_watermarker=False)
        return StableDiffusionControlNetPipeline(
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
            controlnet=controlnet, scheduler=make_scheduler("unipc", comps["scheduler_config"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    # 0. Fast mode: the LCM-LoRA as an adapter of the warm UNet (loaded once, with diffusers'
    #    load_lora_weights), on for fast jobs and off for exact ones (peft then runs the
    #    base layers alone: the exact pixels).
    def use_lora(self, engine, plan, pipe, comps) -> None:
        loaded = comps.setdefault("loras", {})  # LoRA reference -> adapter name
        ref = plan.models.lora
        if ref is None:
            if loaded:
                pipe.disable_lora()
            return
        if ref not in loaded:
            from ...models.registry import local_lora

            folder = local_lora(ref, engine.dtype)
            name = f"{FAST_ADAPTER}{len(loaded)}"
            pipe.load_lora_weights(str(folder), weight_name="pytorch_lora_weights.safetensors", adapter_name=name)
            loaded[ref] = name
        pipe.enable_lora()
        pipe.set_adapters([loaded[ref]])

    # 0b. Reference images: IP-Adapter's attention layers in the warm UNet (diffusers'
    #     load_ip_adapter, once), taken out again for a job without references
    #     (unload_ip_adapter puts the plain attention back: the plain pixels).
    def use_references(self, engine, plan, pipe, comps, model) -> None:
        want = plan.models.references if model is not None else None
        if comps.get("ip_adapter") is not None and comps["ip_adapter"] != want:
            pipe.unload_ip_adapter()
            comps.pop("ip_adapter")
        if want is not None and comps.get("ip_adapter") != want:
            pipe.load_ip_adapter(str(model["folder"]), subfolder=model["subfolder"], weight_name=model["weight_name"],
                                 image_encoder_folder=None)  # the encoder is the reference model's own
            comps["ip_adapter"] = want

    # 0c. The references through the CLIP image encoder (the pipeline's encode_image), once
    #     per job; each reference's scale on the adapter (one per image, order-free sum).
    @torch.no_grad()
    def prepare_references(self, engine, plan, pipe, comps, model) -> References:
        pipe.image_encoder, pipe.feature_extractor = model["image_encoder"], model["feature_extractor"]
        embeds, _zeros = pipe.encode_image([r.image for r in plan.references], engine.device, 1)
        pipe.set_ip_adapter_scale([[r.scale for r in plan.references]])
        n = len(plan.references)
        mask = torch.ones(1, n, plan.height, plan.width, device=engine.device, dtype=comps["unet"].dtype)
        return References(embeds[None].to(comps["unet"].dtype), mask)

    # 1. Prompt: CLIP (SDXL: two CLIPs and the pooled embedding), with the negative for CFG.
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> StyleEmbeds:
        do_cfg = style.cfg > 1.0
        if self.sdxl:
            cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                style.prompt, device=engine.device, num_images_per_prompt=1, do_classifier_free_guidance=do_cfg,
                negative_prompt=style.negative or None)
            return StyleEmbeds(cond, uncond, pooled, uncond_pooled)
        cond, uncond = pipe.encode_prompt(style.prompt, engine.device, 1, do_cfg, style.negative or None)
        return StyleEmbeds(cond, uncond)

    # 2. Controls: the processed image per net, and a plain ControlNet's conditioning
    #    embedding of it, once per job.
    @torch.no_grad()
    def prepare_controls(self, engine, plan, pipe, nets) -> list[Control]:
        from ...models.preprocess import run_preprocessor

        out = []
        for control, net, ref in zip(plan.controls, nets, plan.models.controlnets):
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            t = pipe.control_image_processor.preprocess(image, height=plan.height, width=plan.width)
            t = t.to(device=engine.device, dtype=net.dtype)
            cond = None
            if engine.options.cond_once and ref.union_mode is None and accept_precomputed_cond(net):
                cond = net.controlnet_cond_embedding(t)
                if engine.options.channels_last:
                    cond = cond.contiguous(memory_format=torch.channels_last)
            out.append(Control(t, cond))
        return out

    # 2b. Restyle: the init image as StableDiffusion(XL)ControlNetImg2ImgPipeline prepares
    #     it (image processor at the job's size, then the VAE encoder), once per job.
    #     A region edit (StableDiffusionControlNetInpaintPipeline with a 4-channel UNet):
    #     also the binarized mask at latent size and the masked image's distribution.
    @torch.no_grad()
    def prepare_init(self, engine, plan, pipe, comps):
        vae = comps["vae"]
        image = pipe.image_processor.preprocess(plan.init.image, height=plan.height, width=plan.width)
        image = image.to(dtype=torch.float32)

        def encode(x):  # SDXL: an fp16 VAE that asks for it encodes in fp32, as its pipelines do
            if self.sdxl and vae.config.force_upcast and vae.dtype != torch.float32:
                with _upcast(vae):
                    return vae.encode(x.to(engine.device)).latent_dist
            return vae.encode(x.to(device=engine.device, dtype=engine.dtype)).latent_dist

        init = InitLatents(encode(image))
        if plan.region is not None:
            from diffusers.image_processor import VaeImageProcessor
            from PIL import Image

            from ....core.region import latent_cover

            factor = pipe.vae_scale_factor
            cover = latent_cover(plan.region.alpha > 0, factor)
            processor = VaeImageProcessor(vae_scale_factor=factor, do_normalize=False, do_binarize=True,
                                          do_convert_grayscale=True)
            mask = processor.preprocess(Image.fromarray(cover.astype(np.uint8) * 255), height=plan.height,
                                        width=plan.width)
            init.masked = encode(image * (mask < 0.5))
            init.mask = torch.nn.functional.interpolate(mask, size=(plan.height // factor, plan.width // factor))
            init.mask = init.mask.to(device=engine.device, dtype=engine.dtype)
        return init

    def _init_latents(self, comps, dist, generators, dtype):
        """Each seed's own sample of the init image's latent distribution (its generator
        first draws this, then its noise: the img2img pipelines' order), scaled."""
        vae = comps["vae"]
        z = torch.cat([dist.dist.sample(generator=g) for g in generators]).to(dtype)
        # SDXL img2img normalises by the VAE's latents mean/std when it has them; its
        # inpainting pipeline (and SD 1.5's) scales only
        plain = not self.sdxl or dist.mask is not None
        mean = None if plain else getattr(vae.config, "latents_mean", None)
        std = None if plain else getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, 4, 1, 1).to(z.device, dtype)
            d = torch.tensor(std).view(1, 4, 1, 1).to(z.device, dtype)
            return (z - m) * vae.config.scaling_factor / d
        return vae.config.scaling_factor * z

    # 3. Latents: the job's sampler, one generator per seed, CFG rows of the embeddings.
    #    Restyle (``init``): the timesteps start at the strength, the latents are each seed's
    #    init latents noised to the first of them (diffusers' img2img get_timesteps / prepare_latents).
    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None, refs: References | None = None) -> Denoising:
        from diffusers.utils.torch_utils import randn_tensor

        unet = comps["unet"]
        b = len(batch)
        do_cfg = style.cfg > 1.0
        prompt_embeds = torch.cat([x.cond for x in embeds])
        if do_cfg:
            prompt_embeds = torch.cat([torch.cat([x.uncond for x in embeds]), prompt_embeds])
        added = None
        if self.sdxl:
            text_embeds = torch.cat([x.pooled for x in embeds])
            if do_cfg:
                text_embeds = torch.cat([torch.cat([x.uncond_pooled for x in embeds]), text_embeds])
            time_ids = pipe._get_add_time_ids(
                (plan.height, plan.width), (0, 0), (plan.height, plan.width), dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=int(comps["text_encoder_2"].config.projection_dim))
            added = {"text_embeds": text_embeds,
                     "time_ids": time_ids.to(engine.device).repeat(prompt_embeds.shape[0], 1)}

        scheduler = make_scheduler(style.scheduler, comps["scheduler_config"])
        scheduler.set_timesteps(style.steps, device=engine.device)
        shape = (b, unet.config.in_channels, plan.height // pipe.vae_scale_factor,
                 plan.width // pipe.vae_scale_factor)
        timesteps = scheduler.timesteps
        region = None
        if init is None:
            latents = randn_tensor(shape, generator=generators, device=engine.device, dtype=prompt_embeds.dtype)
            latents = latents * scheduler.init_noise_sigma
        else:
            from ....core.restyle import denoising_steps

            init_latents = self._init_latents(comps, init, generators, prompt_embeds.dtype)
            t_start = style.steps - denoising_steps(style.steps, plan.init.strength)
            timesteps = scheduler.timesteps[t_start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
            noise = randn_tensor(init_latents.shape, generator=generators, device=engine.device,
                                 dtype=prompt_embeds.dtype)
            if init.mask is not None and plan.init.strength == 1.0:  # inpainting at full strength: pure noise
                latents = noise * scheduler.init_noise_sigma
            elif len(timesteps):
                latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(b))
            else:  # strength 0: no step runs and the init latents are decoded as they are
                latents = init_latents
            if init.mask is not None:
                for g in generators:  # each seed's generator draws the masked image's latent, as diffusers' does
                    init.masked.sample(generator=g)
                region = dict(image_latents=init_latents, noise=noise, mask=init.mask)
        step_params = inspect.signature(scheduler.step).parameters
        extra = {}
        if "eta" in step_params:
            extra["eta"] = 0.0
        if "generator" in step_params:
            extra["generator"] = generators
        opts = engine.options
        unet_added, xattn = added, None
        if refs is not None:  # IP-Adapter: the references' embeddings (zeros for the unconditional half)
            pos = refs.embeds.expand(b, -1, -1).to(prompt_embeds.dtype)
            unet_added = dict(added or {}, image_embeds=[torch.cat([torch.zeros_like(pos), pos]) if do_cfg else pos])
            xattn = {"ip_adapter_masks": [refs.mask]}
        return Denoising(latents, timesteps, scheduler, dict(
            b=b, do_cfg=do_cfg, cfg=style.cfg, prompt_embeds=prompt_embeds, added=added, extra=extra,
            unet_added=unet_added, xattn=xattn, unet=engine._runtime(unet), region=region,
            memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format))

    # 4. One step: the units' residuals (control modes, CFG halves), the UNet, CFG, the sampler.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v, opts, scheduler = state.values, engine.options, state.scheduler
        b, do_cfg, prompt_embeds, added, fmt = v["b"], v["do_cfg"], v["prompt_embeds"], v["added"], v["memory_format"]
        latents = state.latents
        x = torch.cat([latents] * 2) if do_cfg else latents
        x = scheduler.scale_model_input(x, t).contiguous(memory_format=fmt)
        down, mid = None, None
        in_place = in_place_ok(engine)
        for ci, unit, active in units:
            cond_only = (unit.settings.mode == "controlnet" or opts.guess_mode) and do_cfg
            if cond_only:
                cx = scheduler.scale_model_input(latents, t).contiguous(memory_format=fmt)
                c_embeds = prompt_embeds[b:]
                c_added = {k: val[b:] for k, val in added.items()} if added else None
            else:
                cx, c_embeds, c_added = x, prompt_embeds, added
            d, m = controlnet_residuals(unit, cx, t, c_embeds, c_added, guess_mode=opts.guess_mode)
            engine.stats[f"controlnet{ci}"] += cx.shape[0]
            scale = unit.settings.scale if active else 0.0  # diffusers multiplies by 0
            if unit.union_mode is None and scale != 1.0:  # a union net applied the scale itself
                if in_place:  # the net's own fresh outputs: no new buffers
                    d, m = [r.mul_(scale) for r in d], m.mul_(scale)
                else:
                    d, m = [r * scale for r in d], m * scale
            if unit.settings.mode == "prompt":
                k = len(d) + 1  # residuals incl. the mid block (13 for SD 1.5)
                d = [r * PROMPT_MODE_BASE ** (k - 1 - j) for j, r in enumerate(d)]
            if cond_only:
                d = [torch.cat([torch.zeros_like(r), r]) for r in d]
                m = torch.cat([torch.zeros_like(m), m])
            if down is None:
                down, mid = list(d), m
            else:
                down = add_residuals(down, d, in_place)
                mid = mid.add_(m) if in_place else mid + m
        noise = v["unet"](x, t, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, added_cond_kwargs=v["unet_added"],
                          cross_attention_kwargs=v["xattn"], return_dict=False)[0]
        engine.stats["unet"] += x.shape[0]
        if do_cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + v["cfg"] * (text - uncond)
        state.latents = scheduler.step(noise, t, latents, **v["extra"], return_dict=False)[0]
        region = v.get("region")
        if region is not None:  # outside the mask: the init latents noised to the next step
            proper = region["image_latents"]
            if i < len(state.timesteps) - 1:
                proper = scheduler.add_noise(proper, region["noise"], torch.tensor([state.timesteps[i + 1]]))
            state.latents = (1 - region["mask"]) * proper + region["mask"] * state.latents

    # 5. Decode: like the diffusers pipelines, only SDXL upcasts an fp16 VAE that asks for
    #    it (the SD 1.5 pipeline decodes in the model's dtype).
    def decoding(self, comps):
        vae = comps["vae"]
        upcast = self.sdxl and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        return _upcast(vae) if upcast else super().decoding(comps)

    @torch.no_grad()
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        vae = comps["vae"]
        z = latents.to(vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
            d = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
            z = z * d / vae.config.scaling_factor + m
        else:
            z = z / vae.config.scaling_factor
        image = vae.decode(z, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")


class _upcast:
    def __init__(self, vae):
        self.vae = vae

    def __enter__(self):
        self.vae.to(torch.float32)

    def __exit__(self, *exc):
        self.vae.to(torch.float16)


FAMILIES = {"sd15": StableDiffusion("sd15"), "sdxl": StableDiffusion("sdxl")}
