"""Z-Image-Turbo with the Z-Image Fun ControlNet-Union, as ``ZImageControlNetPipeline.__call__``
does it, step by step.

Z-Image-Turbo is a 6B single-stream DiT distilled to about 8 steps without classifier-free
guidance: the engine's ``cfg`` 1 is the pipeline's ``guidance_scale`` 0 (one forward per
step, no negative prompt). The prompt goes through the Qwen3 encoder (second-to-last
hidden state, padding dropped), so each image carries a text sequence of its own length.

The union ControlNet has no control mode: it reads the kind of control (canny, HED, depth,
pose, MLSD, ...) from the image. It shares the transformer's embedders and refiners
(diffusers' ``ZImageControlNetModel.from_transformer``), runs its own control blocks and
returns one residual per transformer layer it feeds.

Several units. diffusers' pipeline takes ONE net and ONE control image at one scale, with no
guidance window. The engine runs several units the way every diffusers multi-ControlNet does
(``MultiControlNetModel``, ``FluxMultiControlNetModel``, ``QwenImageMultiControlNetModel``):
each unit's residuals at its own scale, summed per layer in unit order, and a unit only
inside its window (diffusers' ``controlnet_keep`` rule; outside it the unit is not run).
With one unit over the whole window that is exactly the pipeline; with several units or a
window it is exactly the pipeline whose ``controlnet`` is such a multi-net
(:class:`PipelineMultiNet` below, the reference of the tests and of the benchmark's
baselines; the engine's step does not use it). Differences that pay, exact:

* the control images are VAE-encoded once per job (the pipeline takes the latent
  distribution's mode, no noise drawn, on every call);
* the Qwen3 encode once per style;
* a unit outside its window or at scale 0 is not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising, Family, add_residuals, in_place_ok


@dataclass
class StyleEmbeds:
    prompt: torch.Tensor  # (L, D): Qwen3's second-to-last hidden state of the prompt's tokens


@dataclass
class Control:
    latents: torch.Tensor  # (1, control_in_dim, 1, h, w): scaled VAE latents, zero-padded to the net's input


class ZImage(Family):
    arch = "zimage"
    denoiser = "transformer"
    text_encoders = ("text_encoder",)
    # bf16 activations per 512x512 of image area through the 30-layer transformer and a
    # 15-block ControlNet, roughly (1.6 GB for a 1024x1024 image); batch sizing scales it.
    bytes_per_image_512 = 0.4 * 2**30
    #: tokens per prompt before the padding is dropped (the pipeline's default)
    max_sequence_length = 512

    def pipeline(self, comps: dict, nets):
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImageControlNetPipeline

        net = nets[0] if isinstance(nets, (list, tuple)) else nets
        return ZImageControlNetPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]),
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
            transformer=comps["transformer"], controlnet=net)

    # 1. Prompt: the chat template, Qwen3, the hidden states of the real tokens (no negative).
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> StyleEmbeds:
        where = comps["text_encoder"].device
        embeds, _ = pipe.encode_prompt(style.prompt, device=where, do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length)
        return StyleEmbeds(embeds[0].to(engine.device, comps["transformer"].dtype))

    # 2. Controls: each net given the transformer's shared modules; each control image
    #    processed at the job's size, VAE-encoded (the distribution's mode), shifted and
    #    scaled, a frame axis added, zero channels appended up to the net's input (2.x nets
    #    take 33 channels: control, inpaint image, mask). Once per job.
    @torch.no_grad()
    def prepare_controls(self, engine, plan, pipe, nets) -> list[Control]:
        from diffusers import ZImageControlNetModel

        from ...models.preprocess import run_preprocessor

        transformer, vae = pipe.transformer, pipe.vae
        out = []
        for control, net in zip(plan.controls, nets):
            ZImageControlNetModel.from_transformer(net, transformer)
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            t = pipe.prepare_image(image=image, width=plan.width, height=plan.height, batch_size=1,
                                   num_images_per_prompt=1, device=engine.device, dtype=vae.dtype)
            z = vae.encode(t).latent_dist.mode()
            z = ((z - vae.config.shift_factor) * vae.config.scaling_factor).unsqueeze(2)
            extra = net.config.control_in_dim - transformer.in_channels
            if extra:
                z = torch.cat([z, z.new_zeros(z.shape[0], extra, *z.shape[2:])], dim=1)
            out.append(Control(z))
        return out

    # 3. Latents: float32 noise from each image's own generator; the flow-matching sigmas
    #    (1 -> 1/n) shifted as the scheduler's config says.
    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.z_image.pipeline_z_image_controlnet import (calculate_shift,
                                                                             get_default_z_image_sigmas,
                                                                             retrieve_timesteps)

        transformer = comps["transformer"]
        b = len(batch)
        latents = pipe.prepare_latents(b, transformer.in_channels, plan.height, plan.width, torch.float32,
                                       engine.device, generators)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        cfg = scheduler.config
        mu = calculate_shift((latents.shape[2] // 2) * (latents.shape[3] // 2), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, style.steps, engine.device,
                                          sigmas=get_default_z_image_sigmas(style.steps), mu=mu)
        controls = [unit.control.latents.repeat(b, 1, 1, 1, 1) for unit in units]
        return Denoising(latents, timesteps, scheduler, dict(
            prompt_embeds=[e.prompt for e in embeds], controls=controls,
            transformer=engine._runtime(transformer), dtype=transformer.dtype))

    # 4. One step: the latents as a list of (C, 1, h, w) frames; each running unit's
    #    residuals at its scale, summed per layer in unit order; the transformer; its output
    #    negated (Z-Image predicts the other direction) into the flow-matching Euler step.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        b = latents.shape[0]
        timestep = (1000 - t.expand(b)) / 1000
        frames = list(latents.to(v["dtype"]).unsqueeze(2).unbind(dim=0))
        samples = None
        for ci, unit, active in units:
            residuals = unit.run(frames, timestep, v["prompt_embeds"], v["controls"][ci],
                                 conditioning_scale=unit.settings.scale if active else 0.0)
            engine.stats[f"controlnet{ci}"] += b
            samples = add_residuals(samples, residuals, in_place_ok(engine))
        out = v["transformer"](frames, timestep, v["prompt_embeds"], controlnet_block_samples=samples)[0]
        engine.stats["transformer"] += b
        noise = -torch.stack([o.float() for o in out], dim=0).squeeze(2)
        state.latents = state.scheduler.step(noise.to(torch.float32), t, latents, return_dict=False)[0]

    # 5. Decode: undo scaling and shift, VAE.
    @torch.no_grad()
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        vae = comps["vae"]
        z = (latents.to(vae.dtype) / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(z, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")


def pipeline_control_latents(pipe, image, width: int, height: int, net) -> torch.Tensor:
    """A control image as ``ZImageControlNetPipeline.__call__`` prepares it, line by line
    (processed, VAE mode, shift and scale, frame axis, zero channels up to the net's input)."""
    t = pipe.prepare_image(image=image, width=width, height=height, batch_size=1, num_images_per_prompt=1,
                           device=pipe.vae.device, dtype=pipe.vae.dtype)
    z = pipe.vae.encode(t).latent_dist.mode()
    z = ((z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor).unsqueeze(2)
    pad = net.config.control_in_dim - pipe.transformer.in_channels
    return torch.cat([z, torch.zeros(z.shape[0], pad, *z.shape[2:]).to(z)], dim=1) if pad else z


class PipelineMultiNet(torch.nn.Module):
    """The reference for several units (tests, the benchmark's baselines): diffusers'
    multi-ControlNet rule around diffusers' own ZImageControlNetModel, given to
    ZImageControlNetPipeline as its ``controlnet``. Each unit's net with its own control
    latents (:func:`pipeline_control_latents`) at its scale, kept only inside its window
    (``controlnet_keep``: start <= i/n and (i+1)/n <= end), residuals summed per layer in unit
    order. One instance per pipeline call (it counts the steps)."""

    def __init__(self, nets, latents, settings, steps: int, transformer):
        from diffusers import ZImageControlNetModel

        super().__init__()
        for net in nets:  # the transformer's embedders and refiners, shared (as the pipeline does)
            ZImageControlNetModel.from_transformer(net, transformer)
        self.nets = torch.nn.ModuleList(nets)
        self.config = nets[0].config  # the pipeline reads control_in_dim
        self.latents, self.settings, self.steps, self.calls = list(latents), list(settings), steps, 0

    @property
    def device(self):  # what a diffusers pipeline asks of its components
        return self.nets[0].device

    @property
    def dtype(self):
        return self.nets[0].dtype

    def forward(self, x, t, cap_feats, control_context, conditioning_scale=1.0):
        # The pipeline encodes the first unit's image itself (for a batch at once: equal up to
        # the batched convolutions' rounding): it must be what we were given.
        if not torch.allclose(control_context, self.latents[0].repeat(len(x), 1, 1, 1, 1), rtol=0, atol=1e-4):
            raise ValueError("the pipeline's control latents differ from the first unit's")
        i, n = self.calls, self.steps
        self.calls += 1
        out = None
        for net, latent, s in zip(self.nets, self.latents, self.settings):
            keep = 0.0 if (i / n < s.start or (i + 1) / n > s.end) else 1.0
            r = net(x, t, cap_feats, latent.repeat(len(x), 1, 1, 1, 1),
                    conditioning_scale=s.scale * keep * conditioning_scale)
            out = r if out is None else {k: out[k] + r[k] for k in out}
        return out


FAMILIES = {"zimage": ZImage()}
