"""Restyle (img2img from the beauty pass or a PNG, the controls still applied) with the tiny
models: the engine's images equal diffusers' ControlNet img2img pipelines for the same
seeds, strength 0 decodes the init image, the init image and strength are in every image's
parameters, and bad values are one-line errors."""


import numpy as np
import pytest
import torch

from archviz_controlnet.backend.engine.runner import make_scheduler
from archviz_controlnet.backend.engine.sweep import params_sha256
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.restyle import STRENGTH_STEPS, denoising_steps, parse_strength

from backend_support import b64, beauty_image, depth_image, lines_image


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def plan_for(strength, family="tiny", seeds=(3,), steps=4, controls=None, init=None, **extra):
    from test_backend_engine import make_plan

    controls = controls if controls is not None else [
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9},
        {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.2, "end": 1.0}]
    if strength is not None:
        extra["strength"] = strength
    return make_plan(family=family, controls=controls, seeds=seeds, steps=steps,
                     init_image=b64(beauty_image() if init is None else init), **extra)


def img2img_reference(engine, plan, seed):
    """The plain diffusers ControlNet img2img pipeline (SD 1.5 or SDXL) for one seed."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionXLControlNetImg2ImgPipeline

    base, nets = engine.load(plan.models)
    engine.restore_models([base.value["unet"], *[n.value for n in nets]])
    c = base.value
    net = [n.value for n in nets]
    style = plan.styles[0]
    scheduler = make_scheduler(style.scheduler, c["scheduler_config"])
    if plan.models.arch == "sdxl":
        pipe = StableDiffusionXLControlNetImg2ImgPipeline(
            vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder_2"],
            tokenizer=c["tokenizer"], tokenizer_2=c["tokenizer_2"], unet=c["unet"], controlnet=net,
            scheduler=scheduler, add_watermarker=False)
    else:
        pipe = StableDiffusionControlNetImg2ImgPipeline(
            vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet"],
            controlnet=net, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(style.prompt, negative_prompt=style.negative or None, image=plan.init.image,
               control_image=[ci.image for ci in plan.controls], strength=plan.init.strength,
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.mark.parametrize("family, strength, scheduler", [
    ("tiny", 0.6, "unipc"), ("tiny", 0.8, "euler_a"), ("tiny-sdxl", 0.5, "unipc")])
def test_restyle_matches_diffusers_controlnet_img2img_in_a_batch(engine, family, strength, scheduler):
    plan = plan_for(strength, family=family, seeds=(3, 11), scheduler=scheduler)
    ours = engine.generate(plan, plan.images)  # both seeds in one batch
    assert engine.stats["unet"] == 2 * 2 * denoising_steps(4, strength)  # 2 images x CFG rows x steps run
    for item in plan.images:
        ref = img2img_reference(engine, plan, item.seed)
        assert ours[item.index].shape == ref.shape == (64, 64, 3)
        assert np.abs(ours[item.index] - ref).max() < 1e-4, (family, item.seed)
    assert np.abs(ours[0] - ours[1]).max() > 0.01  # each seed its own noise


def test_strength_zero_decodes_the_init_image_and_more_strength_moves_further(engine):
    from diffusers.utils.torch_utils import randn_tensor  # noqa: F401 (the VAE's own sampling below)

    plan0 = plan_for(0.0)
    zero = engine.generate(plan0, plan0.images)[0]
    assert engine.stats["unet"] == 0  # no denoising step at all
    # what it is: the VAE's round trip of the init image, sampled with the seed's generator
    base, _nets = engine.load(plan0.models)
    vae = base.value["vae"]
    pipe = engine.helper_pipeline("sd15", base.value, _nets[0].value)
    with torch.no_grad():
        x = pipe.image_processor.preprocess(plan0.init.image, height=64, width=64)
        z = vae.encode(x).latent_dist.sample(generator=torch.Generator("cpu").manual_seed(3))
        round_trip = pipe.image_processor.postprocess(vae.decode(z, return_dict=False)[0], output_type="np")[0]
    assert np.abs(zero - round_trip).max() < 1e-5
    distances = []
    for strength in (0.25, 0.5, 1.0):
        plan = plan_for(strength)
        distances.append(float(np.abs(engine.generate(plan, plan.images)[0] - zero).mean()))
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_the_init_image_and_strength_are_in_the_parameters_and_plain_sweeps_keep_theirs(engine):
    from test_backend_engine import make_plan

    plain = make_plan(seeds=(3,))
    assert "init" not in plain.params(plain.images[0])
    a, b = plan_for(0.6), plan_for(0.7)
    other = beauty_image()
    other[0, 0] = 0
    c = plan_for(0.6, init=other)
    params = a.params(a.images[0])
    assert params["init"] == {"image_sha256": a.init.sha256, "strength": 0.6}
    hashes = {p.images[0].params_sha256 for p in (plain, a, b, c)}
    assert len(hashes) == 4  # resume never mixes restyles with each other or with plain images
    assert a.images[0].params_sha256 == params_sha256(params)


def test_bad_restyle_values_are_one_line_errors():
    init = b64(beauty_image())
    controls = [{"type": "depth", "image": b64(depth_image())}]
    base = {"controls": controls, "styles": ["modern"], "seeds": [0], "model": "tiny"}
    with pytest.raises(J.JobError, match=r"^strength: must be between 0 and 1, got 1.5$"):
        J.Job.from_dict({**base, "init_image": init, "strength": 1.5})
    with pytest.raises(J.JobError, match=r"^strength: 0.5 given without an init_image to restyle$"):
        J.Job.from_dict({**base, "strength": 0.5})
    with pytest.raises(J.JobError, match=r"^init_image: not valid base64"):
        J.Job.from_dict({**base, "init_image": "@@@"})
    job = J.Job.from_dict({**base, "init_image": init})
    assert job.strength == STRENGTH_STEPS["balanced"][0]
    assert parse_strength("precise") == 0.25 and parse_strength("0.7") == 0.7
    for bad in ("1.2", "-0.1", "nan", "wild"):
        with pytest.raises(ValueError, match=f"--strength '{bad}'"):
            parse_strength(bad)


def test_flux_restyle_matches_diffusers_flux_controlnet_img2img(engine):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetImg2ImgPipeline, FluxMultiControlNetModel

    controls = [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                {"type": "canny", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    plan = plan_for(0.6, family="tiny-flux", seeds=(3, 11), controls=controls, scheduler=None, cfg=3.5)
    ours = engine.generate(plan, plan.images)
    base, nets = engine.load(plan.models)
    engine.restore_models([base.value["transformer"], *[n.value for n in nets]])
    c, style = base.value, plan.styles[0]
    pipe = FluxControlNetImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(c["scheduler_config"]), vae=c["vae"],
        text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], text_encoder_2=c["text_encoder_2"],
        tokenizer_2=c["tokenizer_2"], transformer=c["transformer"],
        controlnet=FluxMultiControlNetModel([n.value for n in nets]))
    pipe.set_progress_bar_config(disable=True)
    for item in plan.images:
        ref = pipe(style.prompt, image=plan.init.image, control_image=[ci.image for ci in plan.controls],
                   strength=0.6, num_inference_steps=style.steps, guidance_scale=style.cfg, height=64, width=64,
                   controlnet_conditioning_scale=[u.scale for u in style.units],
                   control_guidance_start=[u.start for u in style.units],
                   control_guidance_end=[u.end for u in style.units],
                   control_mode=[r.union_mode for r in plan.models.controlnets], max_sequence_length=32,
                   generator=torch.Generator("cpu").manual_seed(item.seed), output_type="np").images[0]
        assert np.abs(ours[item.index] - ref).max() < 1e-4, item.seed
    assert np.abs(ours[0] - ours[1]).max() > 0.01
