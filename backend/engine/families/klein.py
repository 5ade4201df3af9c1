"""FLUX.2 [klein] (4B, 9B) as ``Flux2KleinPipeline.__call__`` does it, step by step, with its
reference images.

Klein is step- and guidance-distilled (``is_distilled`` in its model_index.json): 4 steps,
one transformer pass per step, no negative prompt, no guidance embedding. The prompt goes
through Qwen3 in the chat template; the hidden states of layers 9, 18 and 27 are stacked
into one text token of three times the encoder's width.

Reference images. Klein has no ControlNet and no adapter: the pipeline's ``image`` list is
VAE-encoded (the distribution's mode), cut into 2x2 patches, normalised by the VAE's
batch-norm statistics and packed; those tokens are appended after the noise's tokens in
every step, each image at its own time coordinate (10, 20, 30, ... in list order: **the order
matters**), and the transformer's output for them is dropped. The engine's list is the job's
references (scale > 0, in the job's order), then the control images of the units (in
control order): the depth and line passes are structural references, the way Black Forest
Labs describes structural guidance for FLUX.2 (a depth map or an edge image given as a
reference, said in the prompt). There is no strength per image: a unit's image is in the
list when its scale is above 0, and its tokens take part in the steps inside the unit's
window (``start``/``end``, diffusers' ``controlnet_keep`` rule); outside it they are left
out of that step. A unit at scale 0 takes no slot (the same pixels as no unit).

With every unit over the whole window, the engine equals the pipeline given
``image=[references..., controls...]``. Differences that pay, exact:

* the reference and control images are VAE-encoded once per job (the pipeline encodes them
  on every call);
* the Qwen3 encode once per style.

Restyle and region edits are ``Flux2KleinInpaintPipeline``: the init image's latents (the
VAE's mode, normalised as a reference's) noised to the strength (FLUX's img2img rule,
``int(n - n * strength)`` steps skipped), and **the init image is the first conditioning
image as well** (time 10; the references and the controls follow it), as that pipeline
reads it. A region edit also puts the latents outside its mask back to the init latents
noised to the next step after every step; the mask is the region rounded out to whole
16 px tokens (core/region.latent_cover), so each token is in or out. A restyle is that
pipeline with a mask over the whole picture (where the blend puts nothing back). The engine
equals it given ``image=init, mask_image=cover, image_reference=[references..., controls...]``
(all of one size) to 1e-4 on the tiny model (tests/test_klein_edits.py). The init image is
VAE-encoded once per job (the pipeline: on every call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising, Family


@dataclass
class StyleEmbeds:
    prompt: torch.Tensor  # (1, L, 3 * D): Qwen3's layers 9, 18, 27 stacked per token
    text_ids: torch.Tensor  # (1, L, 4)


@dataclass
class Condition:
    """One conditioning image (a reference or a control), encoded once per job."""

    tokens: torch.Tensor  # (1, h * w, C): its packed, normalised latent tokens, row-major
    grid: torch.Tensor  # (1, C, h, w): an empty tensor of its patch grid's shape (for the position ids)


@dataclass
class InitLatents:
    """A restyle's or a region edit's init image, encoded once per job."""

    image: Condition  # its normalised tokens: where the latents start, and the first conditioning image
    mask: torch.Tensor | None = None  # region edit: (1, h * w, 1) packed, 1 = made anew; None: all of it


@dataclass
class References:
    """The job's reference images, encoded once per job."""

    images: list  # [Condition] in the job's order


def condition_image(pipe, image):
    """One reference image as the pipeline prepares it (its step 4): checked, shrunk to 1024x1024
    of area when larger, cut to a multiple of 16 px, resized and cropped, in [-1, 1]."""
    processor = pipe.image_processor
    processor.check_image_input(image)
    width, height = image.size
    if width * height > 1024 * 1024:
        image = processor._resize_to_target_area(image, 1024 * 1024)
        width, height = image.size
    multiple = pipe.vae_scale_factor * 2
    width, height = (width // multiple) * multiple, (height // multiple) * multiple
    return processor.preprocess(image, height=height, width=width, resize_mode="crop")


@torch.no_grad()
def encode_condition(pipe, image, device) -> Condition:
    """A reference image's packed latent tokens: the VAE's mode, 2x2 patches, the batch-norm
    normalisation (``_encode_vae_image``), packed (``_pack_latents``)."""
    vae = pipe.vae
    t = condition_image(pipe, image).to(device=device, dtype=vae.dtype)
    z = pipe._encode_vae_image(image=t, generator=None)
    return Condition(pipe._pack_latents(z), torch.empty(z.shape, device="meta"))


class Klein(Family):
    arch = "klein"
    denoiser = "transformer"
    text_encoders = ("text_encoder",)
    # bf16 activations per 512x512 of image area through the 4B transformer, with a few
    # reference images beside the noise (each adds its tokens), roughly.
    bytes_per_image_512 = 0.5 * 2**30
    max_sequence_length = 512  # the pipeline pads every prompt to 512 tokens
    text_encoder_out_layers = (9, 18, 27)

    def pipeline(self, comps: dict, nets):
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        return Flux2KleinPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]),
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
            transformer=comps["transformer"], is_distilled=True)

    # 1. Prompt: the chat template, Qwen3, layers 9/18/27 stacked; no negative (distilled).
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> StyleEmbeds:
        where = comps["text_encoder"].device
        prompt, text_ids = pipe.encode_prompt(style.prompt, device=where, num_images_per_prompt=1,
                                              max_sequence_length=self.max_sequence_length,
                                              text_encoder_out_layers=self.text_encoder_out_layers)
        return StyleEmbeds(prompt.to(engine.device, comps["transformer"].dtype), text_ids.to(engine.device))

    # 1b. The job's reference images (scale > 0, in order), encoded once per job. Klein needs no
    #     reference model (``model`` is None).
    @torch.no_grad()
    def prepare_references(self, engine, plan, pipe, comps, model) -> References:
        return References([encode_condition(pipe, r.image, engine.device) for r in plan.references])

    # 2. Controls: each control image (its detector first for a photo) as one more reference
    #    image, encoded once per job.
    @torch.no_grad()
    def prepare_controls(self, engine, plan, pipe, nets) -> list[Condition]:
        from ...models.preprocess import run_preprocessor

        out = []
        for control in plan.controls:
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            out.append(encode_condition(pipe, image.convert("RGB"), engine.device))
        return out

    # 2b. Restyle and region edits: the init image at the job's size through the VAE (its mode,
    #     2x2 patches, the batch-norm normalisation; ``Flux2KleinInpaintPipeline``'s
    #     prepare_latents), once per job; a region's mask as that pipeline's mask processor and
    #     prepare_mask_latents make it from the region rounded out to whole tokens.
    @torch.no_grad()
    def prepare_init(self, engine, plan, pipe, comps) -> InitLatents:
        vae = comps["vae"]
        image = pipe.image_processor.preprocess(plan.init.image, height=plan.height, width=plan.width)
        z = pipe._encode_vae_image(image=image.to(device=engine.device, dtype=vae.dtype), generator=None)
        init = InitLatents(Condition(pipe._pack_latents(z), torch.empty(z.shape, device="meta")))
        if plan.region is not None:
            from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
            from PIL import Image

            from ....core.region import latent_cover

            token = pipe.vae_scale_factor * 2
            cover = latent_cover(plan.region.alpha > 0, token)
            processor = Flux2ImageProcessor(vae_scale_factor=token, vae_latent_channels=vae.config.latent_channels,
                                            do_normalize=False, do_binarize=True, do_convert_rgb=False,
                                            do_convert_grayscale=True)
            mask = processor.preprocess(Image.fromarray(cover.astype(np.uint8) * 255), height=plan.height,
                                        width=plan.width)
            mask = torch.nn.functional.interpolate(mask, size=(plan.height // token, plan.width // token),
                                                   mode="bilinear")
            init.mask = pipe._pack_latents(mask.to(device=engine.device, dtype=comps["transformer"].dtype))
        return init

    # 3. Latents: the noise from each image's own generator (packed 2x2 patches with their
    #    position ids), the reference tokens with theirs (time 10, 20, ... in list order), the
    #    flow-matching sigmas with FLUX.2's empirical shift.
    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init: InitLatents | None = None, refs: References | None = None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

        transformer = comps["transformer"]
        b = len(batch)
        prompt = torch.cat([e.prompt for e in embeds])
        text_ids = torch.cat([e.text_ids for e in embeds])
        latents, latent_ids = pipe.prepare_latents(b, transformer.config.in_channels // 4, plan.height, plan.width,
                                                   prompt.dtype, engine.device, generators)
        # the conditioning images in list order: the init image (restyle, region edit), the
        # references, then the units that act at all (scale > 0); their position ids as the
        # pipeline makes them for that list
        images = [(None, init.image)] if init is not None else []
        images += [(None, c) for c in (refs.images if refs is not None else [])]
        images += [(ci, unit.control) for ci, unit in enumerate(units) if unit.settings.scale > 0]
        slots = []  # (unit index or None for a reference, tokens (b, N, C), ids (b, N, 4))
        if images:
            all_ids = pipe._prepare_image_ids([c.grid for _ci, c in images])[0]
            for (ci, c), ids in zip(images, all_ids.split([c.tokens.shape[1] for _ci, c in images])):
                slots.append((ci, c.tokens.to(engine.device).expand(b, -1, -1),
                              ids.to(engine.device).unsqueeze(0).expand(b, -1, -1)))
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        n = style.steps
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / n, n)
        mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=n)
        timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=sigmas, mu=mu)
        region = None
        if init is None:
            scheduler.set_begin_index(0)
        else:
            # Restyle: the img2img rule (t_start = int(n - n * strength): n - t_start steps run);
            # the latents drawn above are each seed's noise, blended with the init latents by
            # the first sigma that runs (flow matching's scale_noise; elementwise, so on the
            # packed tokens as on the grid).
            t_start = int(max(n - min(n * plan.init.strength, n), 0))
            timesteps = scheduler.timesteps[t_start * scheduler.order:]
            scheduler.set_begin_index(t_start * scheduler.order)
            noise = latents
            image = init.image.tokens.to(engine.device, latents.dtype).expand(b, -1, -1)
            latents = scheduler.scale_noise(image, timesteps[:1].repeat(b), noise) if len(timesteps) else image
            if init.mask is not None:  # region edit: what goes back outside the mask after each step
                region = dict(image=image, noise=noise, mask=init.mask.expand(b, -1, -1))
        return Denoising(latents, timesteps, scheduler, dict(
            prompt_embeds=prompt, text_ids=text_ids, latent_ids=latent_ids, slots=slots,
            transformer=engine._runtime(transformer), dtype=transformer.dtype, height=plan.height,
            width=plan.width, region=region))

    # 4. One step: the noise's tokens and the conditioning tokens that take part this step
    #    (the references always, a unit's inside its window), one transformer pass, the
    #    conditioning tokens' output dropped, the flow-matching Euler step.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        active = {ci for ci, _unit, on in units if on}
        tokens, ids = [latents], [v["latent_ids"]]
        for ci, z, zid in v["slots"]:
            if ci is None or ci in active:
                tokens.append(z)
                ids.append(zid)
                if ci is not None:
                    engine.stats[f"reference-control{ci}"] += latents.shape[0]
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        noise = v["transformer"](hidden_states=torch.cat(tokens, dim=1).to(v["dtype"]), timestep=timestep / 1000,
                                 guidance=None, encoder_hidden_states=v["prompt_embeds"], txt_ids=v["text_ids"],
                                 img_ids=torch.cat(ids, dim=1), return_dict=False)[0]
        engine.stats["transformer"] += latents.shape[0]
        noise = noise[:, : latents.shape[1]]
        state.latents = state.scheduler.step(noise, t, latents, return_dict=False)[0]
        region = v["region"]
        if region is not None:  # outside the mask: the init latents noised to the next step
            proper = region["image"]
            if i < len(state.timesteps) - 1:
                proper = state.scheduler.scale_noise(proper, torch.tensor([state.timesteps[i + 1]]), region["noise"])
            state.latents = (1 - region["mask"]) * proper + region["mask"] * state.latents

    # 5. Decode: the tokens scattered back by their ids, the batch-norm undone, the 2x2
    #    patches undone, the VAE.
    def _vae_latents(self, pipe, comps, state, latents):
        vae = comps["vae"]
        h2 = 2 * (int(state.values["height"]) // (pipe.vae_scale_factor * 2))
        w2 = 2 * (int(state.values["width"]) // (pipe.vae_scale_factor * 2))
        ids = state.values["latent_ids"][: latents.shape[0]]
        z = pipe._unpack_latents_with_ids(latents, ids, h2 // 2, w2 // 2)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z.device, z.dtype)
        return pipe._unpatchify_latents(z * std + mean)

    @torch.no_grad()
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        vae = comps["vae"]
        z = self._vae_latents(pipe, comps, state, latents)
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")

    # previews: the VAE's own latents (the batch-norm and the patches undone), through its decoder
    def preview_latents(self, plan, pipe, state: Denoising, latents):
        return self._vae_latents(pipe, {"vae": pipe.vae}, state, latents)

    def preview_decode(self, engine, pipe, comps: dict, grid) -> np.ndarray:
        vae = comps["vae"]
        with torch.no_grad():
            image = vae.decode(grid.to(device=engine.device, dtype=vae.dtype), return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


FAMILIES = {"klein": Klein()}
