"""Instruction edits: FLUX.1 Kontext (dev) and Qwen-Image-Edit, as ``FluxKontextPipeline``
and ``QwenImageEditPipeline`` do them, step by step.

An edit starts from a picture (the beauty pass or a PNG: the job's ``init_image``) and an
instruction ("make it a snowy winter evening"). Both models read the picture as a second
token sequence next to the noise: its VAE latents (the distribution's mode, so no random
draw) are concatenated to the latents every step and the prediction for them is dropped.
Qwen-Image-Edit also shows the picture to its text encoder (Qwen2.5-VL with its vision
tower), so its prompt embeddings depend on the picture.

What the engine does once instead of on every call, exact:

* the picture's latents once per job (the pipelines encode it again on every call);
* the text (and, for Qwen, picture-aware) embeddings once per edit text (style).

No control units: diffusers has no ControlNet for either model (the picture itself holds
the geometry), so a job with controls is refused before it gets here (core/jobs.py).

Sizes: the output is the job's size (the init image's, multiples of 16). Kontext reads the
picture at that size too (``_auto_resize=False``, ``max_area`` = the job's area); Qwen-Image-Edit
always reads it at about 1024x1024 of its aspect ratio, as its pipeline does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising
from .flux import Flux
from .qwen import decode_packed, padded_embeds, true_cfg

log = logging.getLogger("archviz.backend")


# ---------------------------------------------------------------------------------------
# FLUX.1 Kontext
# ---------------------------------------------------------------------------------------


@dataclass
class KontextInit:
    latents: torch.Tensor  # (1, L, 64): the picture's packed latents
    ids: torch.Tensor  # (L, 3): their positions, first axis 1 (the latents' own are 0)


class Edit(Flux):
    """An instruction-edit family: the transformer only, no control units (a job with
    controls is refused before it gets here)."""

    def modules(self, comps, nets):
        return [comps["transformer"]]

    def prepare_controls(self, engine, plan, pipe, nets) -> list:
        return []


class Kontext(Edit):
    """FLUX.1 Kontext dev: FLUX.1's transformer, encoders and sampler; the picture's tokens
    next to the noise. Guidance-distilled (``cfg`` is the distilled guidance, 2.5 by default);
    no negative prompt."""

    arch = "kontext"
    bytes_per_image_512 = 1.0 * 2**30  # twice FLUX.1's tokens (the picture's as well)

    def pipeline(self, comps: dict, nets=None):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

        return FluxKontextPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]),
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
            text_encoder_2=comps["text_encoder_2"], tokenizer_2=comps["tokenizer_2"],
            transformer=comps["transformer"])

    # The picture as FluxKontextPipeline prepares it (its own size rounded to 16, resized and
    # normalised by the image processor), through the VAE encoder (mode), once per job.
    @torch.no_grad()
    def prepare_init(self, engine, plan, pipe, comps) -> KontextInit:
        vae = comps["vae"]
        image = plan.init.image
        multiple = pipe.vae_scale_factor * 2
        height, width = pipe.image_processor.get_default_height_width(image)
        height, width = height // multiple * multiple, width // multiple * multiple
        image = pipe.image_processor.resize(image, height, width)
        image = pipe.image_processor.preprocess(image, height, width)
        dtype = comps["transformer"].dtype
        image = image.to(device=engine.device, dtype=dtype)
        z = vae.encode(image).latent_dist.mode()
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        channels = comps["transformer"].config.in_channels // 4
        packed = pipe._pack_latents(z, 1, channels, z.shape[2], z.shape[3])
        ids = pipe._prepare_latent_image_ids(1, z.shape[2] // 2, z.shape[3] // 2, engine.device, dtype)
        ids[..., 0] = 1
        return KontextInit(packed, ids)

    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift, retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        transformer = comps["transformer"]
        b = len(batch)
        prompt_embeds = torch.cat([e.prompt for e in embeds])
        pooled = torch.cat([e.pooled for e in embeds])
        channels = transformer.config.in_channels // 4
        h2 = 2 * (plan.height // (pipe.vae_scale_factor * 2))
        w2 = 2 * (plan.width // (pipe.vae_scale_factor * 2))
        noise = randn_tensor((b, channels, h2, w2), generator=generators, device=engine.device,
                             dtype=prompt_embeds.dtype)
        latents = pipe._pack_latents(noise, b, channels, h2, w2)
        latent_ids = pipe._prepare_latent_image_ids(b, h2 // 2, w2 // 2, engine.device, prompt_embeds.dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        n = style.steps
        cfg = scheduler.config
        mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        scheduler.set_begin_index(0)
        guidance = (torch.full([1], style.cfg, device=engine.device, dtype=torch.float32).expand(b)
                    if transformer.config.guidance_embeds else None)
        return Denoising(latents, timesteps, scheduler, dict(
            prompt_embeds=prompt_embeds, pooled=pooled, text_ids=embeds[0].text_ids,
            image_latents=init.latents.expand(b, -1, -1), ids=torch.cat([latent_ids, init.ids]), guidance=guidance,
            transformer=engine._runtime(transformer), height=plan.height, width=plan.width))

    # One step: the noise and the picture's tokens through the transformer; the prediction
    # for the noise's tokens only; flow-matching Euler.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        noise = v["transformer"](hidden_states=torch.cat([latents, v["image_latents"]], dim=1),
                                 timestep=timestep / 1000, guidance=v["guidance"], pooled_projections=v["pooled"],
                                 encoder_hidden_states=v["prompt_embeds"], txt_ids=v["text_ids"], img_ids=v["ids"],
                                 joint_attention_kwargs={}, return_dict=False)[0]
        engine.stats["transformer"] += latents.shape[0]
        state.latents = state.scheduler.step(noise[:, :latents.size(1)], t, latents, return_dict=False)[0]


# ---------------------------------------------------------------------------------------
# Qwen-Image-Edit
# ---------------------------------------------------------------------------------------

#: Qwen-Image-Edit reads the picture at about this many pixels, whatever the output size.
QWEN_EDIT_AREA = 1024 * 1024


@dataclass
class QwenInit:
    prompt_image: object  # PIL image (Plus: a list of one) that the text encoder sees
    latents: torch.Tensor  # (1, L, 64): the picture's packed, normalised latents
    height: int  # the VAE's picture size
    width: int


@dataclass
class QwenEmbeds:
    prompt: torch.Tensor  # (1, L, D)
    negative: torch.Tensor | None  # (1, L', D): with true CFG (cfg > 1) only


class QwenEdit(Edit):
    """Qwen-Image-Edit: the Qwen-Image MMDiT, Qwen2.5-VL (text and picture) as the text
    encoder, the Wan-style VAE. True classifier-free guidance (``cfg`` = ``true_cfg_scale``,
    4 by default) against a negative prompt (the style's, else " " as the model card does).

    Qwen-Image-Edit-2509 / -2511 (their folders name ``QwenImageEditPlusPipeline``) are the
    same components run as that pipeline: the text encoder sees the picture at about
    384x384 ("Picture 1: ..." in its template), the VAE at about 1024x1024."""

    arch = "qwen-edit"
    text_encoders = ("text_encoder",)
    bytes_per_image_512 = 1.5 * 2**30

    def pipeline(self, comps: dict, nets=None):
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageEditPlusPipeline

        cls = QwenImageEditPlusPipeline if comps.get("edit_plus") else QwenImageEditPipeline
        return cls(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]), vae=comps["vae"],
            text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], processor=comps["processor"],
            transformer=comps["transformer"])

    # The picture at the condition size (about 1 MP of its aspect ratio, multiples of 32),
    # its VAE latents (mode, normalised per channel), once per job; the resized picture is
    # what the text encoder sees with each edit text.
    @torch.no_grad()
    def prepare_init(self, engine, plan, pipe, comps) -> QwenInit:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        vae = comps["vae"]
        image = plan.init.image
        width, height = calculate_dimensions(QWEN_EDIT_AREA, image.size[0] / image.size[1])[:2]
        if comps.get("edit_plus"):  # the text encoder's picture and the VAE's, each from the original
            from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE

            cw, ch = calculate_dimensions(CONDITION_IMAGE_SIZE, image.size[0] / image.size[1])[:2]
            prompt_image = [pipe.image_processor.resize(image, ch, cw)]
            tensor = pipe.image_processor.preprocess(image, height, width).unsqueeze(2)
        else:
            prompt_image = pipe.image_processor.resize(image, height, width)
            tensor = pipe.image_processor.preprocess(prompt_image, height, width).unsqueeze(2)
        dtype = comps["transformer"].dtype
        z = vae.encode(tensor.to(device=engine.device, dtype=dtype)).latent_dist.mode()
        channels = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
        z = (z - mean) / std
        packed = pipe._pack_latents(z, 1, channels, z.shape[3], z.shape[4])
        return QwenInit(prompt_image, packed, height, width)

    # The edit text with the picture through Qwen2.5-VL (the pipeline's template), and the
    # negative prompt likewise when true CFG runs; once per style.
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> QwenEmbeds:
        where = comps["text_encoder"].device
        image = engine._init.prompt_image
        dtype = comps["transformer"].dtype

        def encode(text):
            embeds, mask = pipe.encode_prompt(prompt=text, image=image, device=where, num_images_per_prompt=1)
            if mask is not None:  # one prompt: no padding inside it
                embeds = embeds[:, :int(mask.sum())]
            return embeds.to(engine.device, dtype)

        negative = encode(style.negative or " ") if style.cfg > 1 else None
        return QwenEmbeds(encode(style.prompt), negative)

    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift, retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        transformer = comps["transformer"]
        b = len(batch)
        prompt, prompt_mask = padded_embeds([e.prompt for e in embeds])
        negative = negative_mask = None
        if style.cfg > 1:
            negative, negative_mask = padded_embeds([e.negative for e in embeds])
        channels = transformer.config.in_channels // 4
        f = pipe.vae_scale_factor
        h2, w2 = 2 * (plan.height // (f * 2)), 2 * (plan.width // (f * 2))
        noise = randn_tensor((b, 1, channels, h2, w2), generator=generators, device=engine.device, dtype=prompt.dtype)
        latents = pipe._pack_latents(noise, b, channels, h2, w2)
        img_shapes = [[(1, plan.height // f // 2, plan.width // f // 2),
                       (1, init.height // f // 2, init.width // f // 2)]] * b
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        n = style.steps
        cfg = scheduler.config
        mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        scheduler.set_begin_index(0)
        return Denoising(latents, timesteps, scheduler, dict(
            prompt=prompt, prompt_mask=prompt_mask, negative=negative, negative_mask=negative_mask,
            image_latents=init.latents.expand(b, -1, -1), img_shapes=img_shapes, cfg=style.cfg,
            transformer=engine._runtime(transformer), height=plan.height, width=plan.width))

    # One step: the conditional prediction, and with true CFG the negative one, combined and
    # rescaled to the conditional prediction's norm (the pipeline's rule); Euler.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        hidden = torch.cat([latents, v["image_latents"]], dim=1)
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000

        def predict(embeds, mask):
            out = v["transformer"](hidden_states=hidden, timestep=timestep, guidance=None,
                                   encoder_hidden_states_mask=mask, encoder_hidden_states=embeds,
                                   img_shapes=v["img_shapes"], attention_kwargs={}, return_dict=False)[0]
            engine.stats["transformer"] += latents.shape[0]
            return out[:, :latents.size(1)]

        noise = predict(v["prompt"], v["prompt_mask"])
        if v["negative"] is not None:
            noise = true_cfg(noise, predict(v["negative"], v["negative_mask"]), v["cfg"])
        state.latents = state.scheduler.step(noise, t, latents, return_dict=False)[0]

    # Decode: as Qwen-Image (unpack, the per-channel statistics, the 3D VAE's first frame).
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        return decode_packed(pipe, comps["vae"], latents, state.values["height"], state.values["width"])


FAMILIES = {"kontext": Kontext(), "qwen-edit": QwenEdit()}
