"""FLUX.1 (dev, schnell) with several FluxControlNets (single-purpose or union with a
control mode each), as ``FluxControlNetPipeline.__call__`` does it, step by step.

FLUX.1-dev is guidance-distilled: ``cfg`` is the distilled guidance fed to the transformer
(about 3.5), one forward per step and no negative prompt. FLUX.1-schnell has no guidance
embedding and wants about 4 steps. Differences from the diffusers pipeline that pay, exact:

* the control images are VAE-encoded once per job: diffusers encodes them again on every
  call and samples the latent distribution with each image's generator, so the engine
  keeps the distribution's mean and std and draws the same noise from the same generator
  in the same order (controls first, then the initial latents): the same pixels;
* the T5 + CLIP encode once per style (the expensive part of a FLUX call on a sweep);
* a unit outside its window or at scale 0 is not run (diffusers runs it at scale 0).

A region edit (an init image and a mask) is ``FluxControlNetInpaintPipeline``: the init
image's latents noised to the strength, and after every step the latents outside the mask
put back to the init latents noised to the next step (FLUX.1's transformer has no mask
input). That pipeline also VAE-encodes the masked image and samples it with each image's
generator, after the initial noise; nothing reads that sample or draws from the
generator afterwards, so the engine leaves it out: the same pixels, one VAE encode less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising, Family, FastMode, Unit, add_residuals, in_place_ok


@dataclass
class StyleEmbeds:
    prompt: torch.Tensor  # T5 (1, L, D)
    pooled: torch.Tensor  # CLIP pooled (1, P)
    text_ids: torch.Tensor  # (L, 3)


@dataclass
class Control:
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1] (the pipeline's control image)
    mean: torch.Tensor | None = None  # VAE latent distribution of it (1, C, h, w), when the net reads latents
    std: torch.Tensor | None = None


@dataclass
class InitLatents:
    """A restyle's init image through the VAE encoder (once per job)."""

    dist: object  # its latent distribution; each seed samples it with its own generator
    mask: torch.Tensor | None = None  # region edit: (1, C, h, w) binarized mask at latent size


@dataclass
class Redux:
    """The job's reference images through FLUX.1 Redux (core/references.py), once per job."""

    tokens: torch.Tensor  # (n, T, D): each reference's SigLIP tokens projected to T5's width
    scales: torch.Tensor  # (n,): each (prompt, reference) pair's weight in the sum


def redux_embeds(e: StyleEmbeds, refs: Redux) -> StyleEmbeds:
    """A style's embeddings with the references, as ``FluxPriorReduxPipeline`` makes them:
    each reference's tokens after the prompt's T5 tokens, the n (prompt, reference) pairs
    and the n pooled embeddings summed weighted by the references' scales (a sum: the
    references' order does not matter). FLUX.1's text tokens all sit at position 0."""
    n = refs.tokens.shape[0]
    scales = refs.scales.to(e.prompt.dtype)
    prompt = torch.cat([e.prompt.expand(n, -1, -1), refs.tokens.to(e.prompt.dtype)], dim=1) * scales[:, None, None]
    pooled = e.pooled.expand(n, -1) * scales[:, None]
    prompt, pooled = prompt.sum(0, keepdim=True), pooled.sum(0, keepdim=True)
    return StyleEmbeds(prompt, pooled, torch.zeros(prompt.shape[1], 3, device=e.text_ids.device,
                                                   dtype=e.text_ids.dtype))


class Flux(Family):
    arch = "flux"
    denoiser = "transformer"
    text_encoders = ("text_encoder", "text_encoder_2")
    # bf16/fp16 activations of one 1024x1024 image through the transformer and two nets,
    # roughly; batch sizing by free memory scales it with area.
    bytes_per_image_512 = 0.6 * 2**30
    taesd_id = "madebyollin/taef1"
    # Fast mode: FLUX.1-schnell (Apache-2.0, timestep-distilled) as the base, 4 steps, no
    # guidance embedding in its transformer (cfg only reaches ControlNets that embed it).
    fast = FastMode(label="FLUX.1-schnell", steps=4, cfg=None, scheduler="flow_euler",
                    base="black-forest-labs/FLUX.1-schnell", tiny_base="base-schnell")

    def pipeline(self, comps: dict, nets):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline, FluxMultiControlNetModel

        nets = nets if isinstance(nets, (list, tuple)) else [nets]
        return FluxControlNetPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]),
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
            text_encoder_2=comps["text_encoder_2"], tokenizer_2=comps["tokenizer_2"],
            transformer=comps["transformer"], controlnet=FluxMultiControlNetModel(list(nets)))

    @staticmethod
    def max_sequence_length(comps: dict) -> int:
        """T5 tokens per prompt: 512 for the real tokenizer, the tiny one's own length."""
        return int(min(512, getattr(comps["tokenizer_2"], "model_max_length", 512) or 512))

    # 1. Prompt: T5 sequence + CLIP pooled embedding; no negative (no true CFG).
    #    The encoders run where they are (a memory profile may keep them on the CPU).
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> StyleEmbeds:
        where = comps["text_encoder_2"].device
        prompt, pooled, text_ids = pipe.encode_prompt(style.prompt, prompt_2=None, device=where,
                                                      num_images_per_prompt=1,
                                                      max_sequence_length=self.max_sequence_length(comps))
        dtype = comps["transformer"].dtype
        return StyleEmbeds(prompt.to(engine.device, dtype), pooled.to(engine.device, dtype),
                           text_ids.to(engine.device))

    # 1b. Reference images: FLUX.1 Redux's SigLIP encoder and image embedder
    #     (FluxPriorReduxPipeline's encode_image and image_embedder), once per job; the sum with
    #     each style's embeddings is made per batch (redux_embeds).
    @torch.no_grad()
    def prepare_references(self, engine, plan, pipe, comps, model) -> Redux:
        from diffusers import FluxPriorReduxPipeline

        prior = FluxPriorReduxPipeline(image_encoder=model["image_encoder"],
                                       feature_extractor=model["feature_extractor"],
                                       image_embedder=model["image_embedder"])
        hidden = prior.encode_image([r.image for r in plan.references], engine.device, 1)
        tokens = prior.image_embedder(hidden).image_embeds
        dtype = comps["transformer"].dtype
        return Redux(tokens.to(engine.device, dtype),
                     torch.tensor([r.scale for r in plan.references], device=engine.device, dtype=dtype))

    # 2. Controls: the pipeline's image processing, then the VAE's latent distribution of it
    #    (once per job; the noise of the sample is drawn per image in prepare_latents).
    @torch.no_grad()
    def prepare_controls(self, engine, plan, pipe, nets) -> list[Control]:
        from ...models.preprocess import run_preprocessor

        vae = pipe.vae
        out = []
        for control, net in zip(plan.controls, nets):
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            t = pipe.prepare_image(image=image, width=plan.width, height=plan.height, batch_size=1,
                                   num_images_per_prompt=1, device=engine.device, dtype=vae.dtype)
            if net.input_hint_block is not None:  # nets with their own hint encoder read the image
                out.append(Control(t))
                continue
            dist = vae.encode(t).latent_dist
            out.append(Control(t, dist.mean, dist.std))
        return out

    # 3. Latents: per image, each control's latent sample, then the initial noise, from the
    #    image's own generator in diffusers' order; packed 2x2 patches; flow-matching sigmas.
    # 2b. Restyle: the init image as FluxControlNetImg2ImgPipeline prepares it (image
    #     processor at the job's size, the VAE encoder), once per job. A region edit
    #     (FluxControlNetInpaintPipeline): also its binarized mask at latent size, the
    #     region rounded out to whole latent cells (core/region.latent_cover).
    @torch.no_grad()
    def prepare_init(self, engine, plan, pipe, comps):
        vae = comps["vae"]
        image = pipe.image_processor.preprocess(plan.init.image, height=plan.height, width=plan.width)
        init = InitLatents(vae.encode(image.to(dtype=torch.float32).to(device=engine.device, dtype=vae.dtype))
                           .latent_dist)
        if plan.region is not None:
            from diffusers.image_processor import VaeImageProcessor
            from PIL import Image

            from ....core.region import latent_cover

            factor = pipe.vae_scale_factor
            cover = latent_cover(plan.region.alpha > 0, factor)
            processor = VaeImageProcessor(vae_scale_factor=factor * 2, vae_latent_channels=vae.config.latent_channels,
                                          do_normalize=False, do_binarize=True, do_convert_grayscale=True)
            mask = processor.preprocess(Image.fromarray(cover.astype(np.uint8) * 255), height=plan.height,
                                        width=plan.width)
            h2, w2 = 2 * (plan.height // (factor * 2)), 2 * (plan.width // (factor * 2))
            mask = torch.nn.functional.interpolate(mask, size=(h2, w2))
            channels = comps["transformer"].config.in_channels // 4
            init.mask = mask.repeat(1, channels, 1, 1).to(device=engine.device, dtype=comps["transformer"].dtype)
        return init

    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None, refs: Redux | None = None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux_controlnet import calculate_shift, retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        transformer, vae = comps["transformer"], comps["vae"]
        b = len(batch)
        if refs is not None:
            embeds = [redux_embeds(e, refs) for e in embeds]
        prompt_embeds = torch.cat([e.prompt for e in embeds])
        pooled = torch.cat([e.pooled for e in embeds])
        text_ids = embeds[0].text_ids
        channels = transformer.config.in_channels // 4

        controls = []
        for control in (unit.control for unit in units):
            if control.mean is None:
                controls.append(control.image.expand(b, -1, -1, -1))
                continue
            mean, std = control.mean.expand(b, -1, -1, -1), control.std.expand(b, -1, -1, -1)
            noise = randn_tensor(mean.shape, generator=generators, device=mean.device, dtype=mean.dtype)
            z = mean + std * noise
            z = (z - vae.config.shift_factor) * vae.config.scaling_factor
            controls.append(pipe._pack_latents(z, b, channels, z.shape[2], z.shape[3]))

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        n = style.steps
        sigmas = np.linspace(1.0, 1 / n, n)
        cfg = scheduler.config
        h2, w2 = 2 * (plan.height // (pipe.vae_scale_factor * 2)), 2 * (plan.width // (pipe.vae_scale_factor * 2))
        mu = calculate_shift((h2 // 2) * (w2 // 2), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        region = None
        if init is None:
            latents, image_ids = pipe.prepare_latents(b, channels, plan.height, plan.width, prompt_embeds.dtype,
                                                      engine.device, generators)
            timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=sigmas, mu=mu)
        else:
            # Restyle: FLUX's img2img rule (t_start = int(n - n * strength), so it runs
            # n - t_start steps), each seed's init latent sample, then its noise, blended by
            # the first sigma that runs (flow matching's scale_noise).
            timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=sigmas, mu=mu)
            t_start = int(max(n - n * plan.init.strength, 0))
            timesteps = scheduler.timesteps[t_start * scheduler.order:]
            scheduler.set_begin_index(t_start * scheduler.order)
            z = torch.cat([init.dist.sample(generator=g) for g in generators]).to(prompt_embeds.dtype)
            z = (z - vae.config.shift_factor) * vae.config.scaling_factor
            noise = randn_tensor((b, channels, h2, w2), generator=generators, device=engine.device,
                                 dtype=prompt_embeds.dtype)
            if init.mask is not None:  # region edit: what goes back outside the mask after each step
                region = dict(image_latents=pipe._pack_latents(z, b, channels, h2, w2),
                              noise=pipe._pack_latents(noise, b, channels, h2, w2),
                              mask=pipe._pack_latents(init.mask.expand(b, -1, -1, -1), b, channels, h2, w2))
            if len(timesteps):
                z = scheduler.scale_noise(z, timesteps[:1].repeat(b), noise)
            latents = pipe._pack_latents(z, b, channels, h2, w2)
            image_ids = pipe._prepare_latent_image_ids(b, h2 // 2, w2 // 2, engine.device, prompt_embeds.dtype)
        guidance = torch.tensor([style.cfg], device=engine.device).expand(b)
        return Denoising(latents, timesteps, scheduler, dict(
            prompt_embeds=prompt_embeds, pooled=pooled, text_ids=text_ids, image_ids=image_ids, controls=controls,
            guidance=guidance, transformer=engine._runtime(transformer),
            guidance_embeds=bool(transformer.config.guidance_embeds), height=plan.height, width=plan.width,
            region=region))

    # 4. One step: each running unit's block residuals (at its scale; union nets with their
    #    mode), summed in unit order, into the transformer; the flow-matching Euler step.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
        common = dict(timestep=timestep, pooled_projections=v["pooled"], encoder_hidden_states=v["prompt_embeds"],
                      txt_ids=v["text_ids"], img_ids=v["image_ids"], return_dict=False)
        blocks = singles = None
        repeat = False
        for ci, unit, active in units:
            net = unit.model
            mode = None
            if unit.union_mode is not None:
                mode = torch.full((latents.shape[0], 1), unit.union_mode, device=latents.device, dtype=torch.long)
            guidance = v["guidance"] if net.config.guidance_embeds else None
            d, s = unit.run(hidden_states=latents, controlnet_cond=v["controls"][ci], controlnet_mode=mode,
                            conditioning_scale=unit.settings.scale if active else 0.0, guidance=guidance, **common)
            engine.stats[f"controlnet{ci}"] += latents.shape[0]
            repeat = net.input_hint_block is not None
            if blocks is None and singles is None:
                blocks, singles = d, s
            else:
                in_place = in_place_ok(engine)
                if d is not None and blocks is not None:
                    blocks = add_residuals(blocks, d, in_place)
                if s is not None and singles is not None:
                    singles = add_residuals(singles, s, in_place)
        noise = v["transformer"](hidden_states=latents, guidance=v["guidance"] if v["guidance_embeds"] else None,
                                 controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                                 controlnet_blocks_repeat=repeat, **common)[0]
        engine.stats["transformer"] += latents.shape[0]
        state.latents = state.scheduler.step(noise, t, latents, return_dict=False)[0]
        region = v["region"]
        if region is not None:  # outside the mask: the init latents noised to the next step
            proper = region["image_latents"]
            if i < len(state.timesteps) - 1:
                proper = state.scheduler.scale_noise(proper, torch.tensor([state.timesteps[i + 1]]), region["noise"])
            state.latents = (1 - region["mask"]) * proper + region["mask"] * state.latents

    # 5. Decode: unpack, undo scaling and shift, VAE.
    @torch.no_grad()
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        vae = comps["vae"]
        z = pipe._unpack_latents(latents, state.values["height"], state.values["width"], pipe.vae_scale_factor)
        z = (z / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")


FAMILIES = {"flux": Flux()}
