"""Qwen-Image with its union ControlNet (InstantX, no control mode: the net reads depth or
edges from the image), as ``QwenImageControlNetPipeline.__call__`` does it, step by step.

Qwen-Image has true classifier-free guidance: ``cfg`` is its ``true_cfg_scale`` (about 4),
the transformer runs on the prompt and on the negative prompt every step, the two are mixed
and the mix is rescaled to the norm of the conditional prediction; the ControlNet runs once
per step (on the prompt) and its residuals go into both passes. An empty negative prompt is
encoded as ``" "`` (the Qwen-Image reference does that); ``cfg`` <= 1 is one pass, no
negative. Differences from the diffusers pipeline that pay, exact:

* the control images are VAE-encoded once per job: diffusers encodes them again on every
  call and samples the latent distribution with each image's generator, so the engine keeps
  the distribution's mean and std and draws the same noise from the same generator in the
  same order (controls first, then the initial latents): the same pixels;
* the Qwen2.5-VL encode (a 7B model) once per style, prompt and negative;
* a unit outside its window or at scale 0 is not run (diffusers runs it at scale 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Denoising, Family, add_residuals, in_place_ok

#: Tokens of the prompt the transformer reads (the pipeline's default max_sequence_length).
MAX_SEQUENCE_LENGTH = 512


@dataclass
class StyleEmbeds:
    prompt: torch.Tensor  # Qwen2.5-VL last hidden states (1, L, D), the template's tokens dropped
    negative: torch.Tensor | None  # the same for the negative prompt (None: no true CFG)


@dataclass
class Control:
    mean: torch.Tensor  # VAE latent distribution of the control image (1, C, 1, h, w)
    std: torch.Tensor


def prompt_overflow(tokenizer, what: str, text: str) -> str:
    """A warning when ``text`` is longer than the transformer reads (the first
    :data:`MAX_SEQUENCE_LENGTH` tokens after the prompt template's system part), else ''."""
    start, drop = _TEMPLATE
    ids = tokenizer(start.format(text), truncation=False).input_ids[drop:]
    if len(ids) <= MAX_SEQUENCE_LENGTH:
        return ""
    kept = tokenizer.decode(ids[:MAX_SEQUENCE_LENGTH], skip_special_tokens=True)
    return (f"the {what} is {len(ids)} tokens with the prompt template's end; the transformer reads "
            f"{MAX_SEQUENCE_LENGTH}, so it was cut after: {kept[-60:]!r}")


#: QwenImageControlNetPipeline's prompt template and the number of its leading tokens dropped
#: from the embeddings (Qwen.pipeline checks that diffusers still uses these).
_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
             "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
             "<|im_end|>\n<|im_start|>assistant\n", 34)


def padded_embeds(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One embedding per image, zero-padded to the longest with a mask, as the Qwen-Image
    pipelines do for a list of prompts (no mask when none is padded)."""
    longest = max(r.shape[1] for r in rows)
    embeds = torch.cat([torch.cat([r, r.new_zeros(1, longest - r.shape[1], r.shape[2])], dim=1) for r in rows])
    if all(r.shape[1] == longest for r in rows):
        return embeds, None
    mask = torch.stack([torch.cat([torch.ones(r.shape[1], dtype=torch.long), torch.zeros(longest - r.shape[1],
                                                                                         dtype=torch.long)])
                        for r in rows]).to(embeds.device)
    return embeds, mask


def latent_stats(vae, device, dtype):
    """The Qwen-Image VAE's per-channel latent mean and inverse std, shaped (1, C, 1, 1, 1)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(device, dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(device, dtype)
    return mean, inv_std


def true_cfg(cond, uncond, scale):
    """The Qwen-Image pipelines' true CFG: the mix rescaled to the conditional prediction's norm."""
    mixed = uncond + scale * (cond - uncond)
    return mixed * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(mixed, dim=-1, keepdim=True))


@torch.no_grad()
def decode_packed(pipe, vae, latents, height: int, width: int) -> list[np.ndarray]:
    """Packed latents -> images: unpack, undo the per-channel latent statistics, the 3D VAE's
    first frame."""
    z = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
    mean, inv_std = latent_stats(vae, z.device, z.dtype)
    image = vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]
    return pipe.image_processor.postprocess(image, output_type="np")


class Qwen(Family):
    arch = "qwen"
    denoiser = "transformer"
    text_encoders = ("text_encoder",)
    # bf16 activations of one 1328x1328 image through the 20B transformer (twice, true CFG) and
    # the union net, roughly; batch sizing by free memory scales it with area.
    bytes_per_image_512 = 0.8 * 2**30

    def pipeline(self, comps: dict, nets):
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageControlNetPipeline, QwenImageMultiControlNetModel

        nets = nets if isinstance(nets, (list, tuple)) else [nets]
        unique = list({id(n): n for n in nets}.values())  # diffusers' multi net runs one union net
        pipe = QwenImageControlNetPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"]),
            vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
            transformer=comps["transformer"], controlnet=QwenImageMultiControlNetModel(unique))
        if (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx) != _TEMPLATE:
            raise RuntimeError("this diffusers' QwenImageControlNetPipeline has another prompt template; "
                               "update backend/engine/families/qwen.py")
        return pipe

    # 1. Prompt: Qwen2.5-VL's last hidden states of the templated prompt, and of the negative
    #    prompt when true CFG is on; once per style. The encoder runs where it is.
    @torch.no_grad()
    def encode_prompt(self, engine, pipe, comps, style) -> StyleEmbeds:
        where = comps["text_encoder"].device
        dtype = comps["transformer"].dtype

        def encode(text):
            embeds, _mask = pipe.encode_prompt(text, device=where, num_images_per_prompt=1,
                                               max_sequence_length=MAX_SEQUENCE_LENGTH)
            return embeds.to(engine.device, dtype)

        negative = encode(style.negative or " ") if style.cfg > 1 else None
        return StyleEmbeds(encode(style.prompt), negative)

    # 2. Controls: the pipeline's image processing, then the VAE's latent distribution of it
    #    (once per job; the noise of the sample is drawn per image in prepare_latents).
    @torch.no_grad()
    def prepare_controls(self, engine, plan, pipe, nets) -> list[Control]:
        from ...models.preprocess import run_preprocessor

        vae = pipe.vae
        out = []
        for control in plan.controls:
            image = control.image
            if control.preprocess != "none":
                image = run_preprocessor(control.preprocess, image, plan.width, plan.height)
            t = pipe.prepare_image(image=image, width=plan.width, height=plan.height, batch_size=1,
                                   num_images_per_prompt=1, device=engine.device, dtype=vae.dtype)
            dist = vae.encode(t.unsqueeze(2)).latent_dist
            out.append(Control(dist.mean, dist.std))
        return out

    # 3. Latents: per image, each control's latent sample, then the initial noise, from the
    #    image's own generator in diffusers' order; packed 2x2 patches; the flow-matching
    #    sigmas shifted by the image's token count.
    def prepare_latents(self, engine, plan, pipe, comps, style, batch, embeds, generators, units,
                        init=None) -> Denoising:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_controlnet import calculate_shift, retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        if init is not None:
            raise RuntimeError("restyle (an init image) is not supported for the qwen family")
        if engine.options.guess_mode:  # never silently ignored: it would be recorded as if it ran
            raise RuntimeError("guess_mode: the qwen family has no guess mode (its ControlNet runs on the prompt "
                               "only and feeds both CFG passes already); turn the option off")
        transformer, vae = comps["transformer"], comps["vae"]
        b = len(batch)
        prompt_embeds, prompt_mask = padded_embeds([e.prompt for e in embeds])
        negative = negative_mask = None
        if embeds[0].negative is not None:
            negative, negative_mask = padded_embeds([e.negative for e in embeds])
        channels = transformer.config.in_channels // 4

        controls = []
        for control in (unit.control for unit in units):
            mean, std = control.mean.expand(b, -1, -1, -1, -1), control.std.expand(b, -1, -1, -1, -1)
            noise = randn_tensor(mean.shape, generator=generators, device=mean.device, dtype=mean.dtype)
            lat_mean, inv_std = latent_stats(vae, mean.device, mean.dtype)
            z = ((mean + std * noise) - lat_mean) * inv_std
            z = z.permute(0, 2, 1, 3, 4)
            controls.append(pipe._pack_latents(z, b, channels, z.shape[3], z.shape[4]).to(prompt_embeds.dtype))

        latents = pipe.prepare_latents(b, channels, plan.height, plan.width, prompt_embeds.dtype, engine.device,
                                       generators)
        f = pipe.vae_scale_factor
        img_shapes = [(1, plan.height // f // 2, plan.width // f // 2)] * b
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler_config"])
        n = style.steps
        cfg = scheduler.config
        mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, n, engine.device, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        scheduler.set_begin_index(0)
        return Denoising(latents, timesteps, scheduler, dict(
            prompt_embeds=prompt_embeds, prompt_mask=prompt_mask, negative=negative, negative_mask=negative_mask,
            img_shapes=img_shapes, controls=controls, cfg=style.cfg, transformer=engine._runtime(transformer),
            height=plan.height, width=plan.width))

    # 4. One step: each running unit's block residuals (at its scale), summed in unit order;
    #    the transformer on the prompt and, with true CFG, on the negative prompt with the same
    #    residuals; the norm-preserving mix; the flow-matching Euler step.
    @torch.no_grad()
    def step(self, engine, state: Denoising, i, t, units) -> None:
        v = state.values
        latents = state.latents
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
        blocks = None
        for ci, unit, active in units:
            samples = unit.run(hidden_states=latents, controlnet_cond=v["controls"][ci],
                               conditioning_scale=unit.settings.scale if active else 0.0, timestep=timestep,
                               encoder_hidden_states=v["prompt_embeds"],
                               encoder_hidden_states_mask=v["prompt_mask"], img_shapes=v["img_shapes"],
                               return_dict=False)
            engine.stats[f"controlnet{ci}"] += latents.shape[0]
            blocks = add_residuals(blocks, samples, in_place_ok(engine))

        def transformer(embeds, mask):
            engine.stats["transformer"] += latents.shape[0]
            return v["transformer"](hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds,
                                    encoder_hidden_states_mask=mask, img_shapes=v["img_shapes"],
                                    controlnet_block_samples=blocks, attention_kwargs={}, return_dict=False)[0]

        noise = transformer(v["prompt_embeds"], v["prompt_mask"])
        if v["negative"] is not None:
            uncond = transformer(v["negative"], v["negative_mask"])
            noise = true_cfg(noise, uncond, v["cfg"])
        state.latents = state.scheduler.step(noise, t, latents, return_dict=False)[0]

    # 5. Decode: unpack, undo the per-channel latent statistics, VAE (first frame).
    def decode_latents(self, engine, pipe, comps, state, latents) -> list[np.ndarray]:
        return decode_packed(pipe, comps["vae"], latents, state.values["height"], state.values["width"])


FAMILIES = {"qwen": Qwen()}
