"""Region edits: the feathered mask (core/region.py, exact), the engine's inpainting against
diffusers' StableDiffusion(XL)ControlNetInpaintPipeline and FluxControlNetInpaintPipeline for
the same seeds with the tiny models, the source's pixels kept outside the feather band, and
the bad values."""


import numpy as np
import pytest
import torch

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core import region as R

from backend_support import b64, beauty_image, depth_image, lines_image


# ---------------------------------------------------------------- the mask (numpy)

def test_dilate_and_feather_rings_are_exact():
    mask = np.zeros((20, 20), bool)
    mask[8:12, 9:11] = True
    alpha = R.feathered_alpha(mask, dilate_px=2, feather_px=3)
    core = (alpha == 1.0)
    assert core.sum() == (4 + 4) * (2 + 4)  # the 4x2 block grown by 2 on every side
    assert alpha[10, 9] == 1.0 and alpha[10, 7] == 1.0  # 2 px left of the block: inside the dilation
    assert alpha[10, 6] == pytest.approx(0.75) and alpha[10, 5] == pytest.approx(0.5)
    assert alpha[10, 4] == pytest.approx(0.25) and alpha[10, 3] == 0.0  # past the feather: nothing
    assert alpha[5, 6] == pytest.approx(0.75) and alpha[5, 5] == pytest.approx(0.5)  # square rings
    assert R.coverage(alpha) == round(((4 + 10) * (2 + 10)) / 400, 5)
    no_feather = R.feathered_alpha(mask, 0, 0)
    assert np.array_equal(no_feather == 1.0, mask) and set(np.unique(no_feather)) == {0.0, 1.0}


def test_latent_cover_rounds_out_to_whole_cells_and_blend_keeps_the_source():
    mask = np.zeros((16, 24), bool)
    mask[9, 2] = True  # one pixel: its whole 8x8 cell
    cover = R.latent_cover(mask, 8)
    assert cover.sum() == 64 and cover[8:16, 0:8].all()
    with pytest.raises(R.RegionError, match="20x16 mask does not split into 8 px"):
        R.latent_cover(np.zeros((16, 20), bool), 8)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    gen = rng.random((16, 24, 3), dtype=np.float32)
    alpha = R.feathered_alpha(mask, 1, 2)
    out = R.blend(src, gen, alpha)
    outside = alpha == 0
    assert np.array_equal((out[outside] * 255).round().astype(np.uint8), src[outside])
    assert np.allclose(out[alpha == 1], gen[alpha == 1])
    band = (alpha > 0) & (alpha < 1)
    a = alpha[band][:, None]
    assert np.allclose(out[band], src[band] / 255 * (1 - a) + gen[band] * a, atol=1e-6)


# ---------------------------------------------------------------- the engine

pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def floor_alpha():
    mask = np.zeros((64, 64), bool)
    mask[44:, 10:50] = True  # "the floor"
    return R.feathered_alpha(mask, 2, 4)


def region_plan(strength=None, seeds=(3,), scheduler="unipc", family="tiny"):
    from archviz_controlnet.core.png import encode_png
    from test_backend_engine import make_plan

    controls = [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    extra = {} if strength is None else {"strength": strength}
    return make_plan(family=family, controls=controls, seeds=seeds, steps=4, scheduler=scheduler,
                     init_image=b64(beauty_image()), mask_image=J.encode_png(encode_png(R.alpha_png(floor_alpha()))),
                     **extra)


def inpaint_reference(engine, plan, seed):
    from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionXLControlNetInpaintPipeline
    from PIL import Image

    from archviz_controlnet.backend.engine.runner import make_scheduler

    base, nets = engine.load(plan.models)
    engine.restore_models([base.value["unet"], *[n.value for n in nets]])
    c, style = base.value, plan.styles[0]
    scheduler = make_scheduler(style.scheduler, c["scheduler_config"])
    if plan.models.arch == "sdxl":
        pipe = StableDiffusionXLControlNetInpaintPipeline(
            vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder_2"],
            tokenizer=c["tokenizer"], tokenizer_2=c["tokenizer_2"], unet=c["unet"],
            controlnet=[n.value for n in nets], scheduler=scheduler, add_watermarker=False)
    else:
        pipe = StableDiffusionControlNetInpaintPipeline(
            vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet"],
            controlnet=[n.value for n in nets], scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    cover = R.latent_cover(plan.region.alpha > 0, 8)
    out = pipe(style.prompt, negative_prompt=style.negative or None, image=plan.init.image,
               mask_image=Image.fromarray(cover.astype(np.uint8) * 255),
               control_image=[ci.image for ci in plan.controls], strength=plan.init.strength,
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=64, width=64,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.mark.parametrize("family, strength, scheduler", [
    ("tiny", None, "unipc"), ("tiny", 0.7, "euler_a"), ("tiny-sdxl", None, "unipc"), ("tiny-sdxl", 0.6, "unipc")])
def test_region_edit_is_diffusers_inpainting_blended_into_the_source(engine, family, strength, scheduler):
    from archviz_controlnet.backend.engine.runner import to_uint8

    plan = region_plan(strength, seeds=(3, 8), scheduler=scheduler, family=family)
    assert plan.init.strength == (1.0 if strength is None else strength)  # a region is made anew by default
    ours = engine.generate(plan, plan.images)
    source = np.asarray(plan.init.image)
    alpha = plan.region.alpha
    for item in plan.images:
        ref = R.blend(source, inpaint_reference(engine, plan, item.seed), alpha)
        assert np.abs(ours[item.index] - ref).max() < 1e-4
        saved = to_uint8(ours[item.index])
        # outside the feathered mask: the source's pixels, exactly
        assert np.array_equal(saved[alpha == 0], source[alpha == 0])
        # inside: changed
        inside = alpha == 1
        assert np.abs(saved[inside].astype(int) - source[inside]).mean() > 10


def test_region_parameters_metadata_and_errors(engine):
    from archviz_controlnet.backend.server.outputs import image_metadata
    from archviz_controlnet.core.png import encode_png

    plan = region_plan()
    params = plan.params(plan.images[0])
    assert params["region"] == {"mask_sha256": plan.region.sha256}
    meta = image_metadata(plan, plan.images[0])
    assert meta["region_coverage"] == f"{R.coverage(floor_alpha()):g}" and float(meta["region_coverage"]) > 0.2
    init = b64(beauty_image())
    base = {"controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["modern"], "seeds": [0],
            "model": "tiny"}
    mask = J.encode_png(encode_png(R.alpha_png(floor_alpha())))
    with pytest.raises(J.JobError, match=r"^mask_image: a region edit needs the init_image it edits$"):
        J.Job.from_dict({**base, "mask_image": mask})
    small = J.encode_png(encode_png(np.zeros((32, 32), np.uint8)))
    with pytest.raises(J.JobError, match=r"^mask_image: is 32x32; a region edit needs the job's size 64x64$"):
        J.Job.from_dict({**base, "init_image": init, "mask_image": small})
    from archviz_controlnet.backend.engine.sweep import build_plan
    from archviz_controlnet.core.presets import load_presets

    empty = J.Job.from_dict({**base, "init_image": init,
                             "mask_image": J.encode_png(encode_png(np.zeros((64, 64), np.uint8)))})
    with pytest.raises(J.JobError, match=r"^mask_image: the mask is empty"):
        build_plan(empty, load_presets(include_user=False))
    flux = J.Job.from_dict({**base, "model": "tiny-flux", "init_image": init, "mask_image": mask})
    assert build_plan(flux, load_presets(include_user=False)).region.sha256 == plan.region.sha256


# ---------------------------------------------------------------- FLUX.1

def flux_inpaint_reference(engine, plan, seed):
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxControlNetInpaintPipeline,
                           FluxMultiControlNetModel)
    from PIL import Image

    base, nets = engine.load(plan.models)
    engine.restore_models([base.value["transformer"], *[n.value for n in nets]])
    c, style = base.value, plan.styles[0]
    pipe = FluxControlNetInpaintPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(c["scheduler_config"]), vae=c["vae"],
        text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], text_encoder_2=c["text_encoder_2"],
        tokenizer_2=c["tokenizer_2"], transformer=c["transformer"],
        controlnet=FluxMultiControlNetModel([n.value for n in nets]))
    pipe.set_progress_bar_config(disable=True)
    cover = R.latent_cover(plan.region.alpha > 0, pipe.vae_scale_factor)
    out = pipe(style.prompt, image=plan.init.image, mask_image=Image.fromarray(cover.astype(np.uint8) * 255),
               control_image=[ci.image for ci in plan.controls], strength=plan.init.strength,
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=64, width=64,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               control_mode=[r.union_mode for r in plan.models.controlnets], max_sequence_length=32,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.mark.parametrize("strength", [None, 0.7])
def test_flux_region_edit_is_diffusers_flux_controlnet_inpainting_blended_into_the_source(engine, strength):
    from archviz_controlnet.backend.engine.runner import to_uint8
    from archviz_controlnet.backend.server.outputs import image_metadata
    from archviz_controlnet.core.png import encode_png
    from test_backend_engine import make_plan

    controls = [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                {"type": "canny", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    extra = {} if strength is None else {"strength": strength}
    plan = make_plan(family="tiny-flux", controls=controls, seeds=(3, 8), steps=4, cfg=3.5, scheduler=None,
                     init_image=b64(beauty_image()),
                     mask_image=J.encode_png(encode_png(R.alpha_png(floor_alpha()))), **extra)
    assert plan.init.strength == (1.0 if strength is None else strength)
    ours = engine.generate(plan, plan.images)
    source = np.asarray(plan.init.image)
    alpha = plan.region.alpha
    for item in plan.images:
        ref = R.blend(source, flux_inpaint_reference(engine, plan, item.seed), alpha)
        assert np.abs(ours[item.index] - ref).max() < 1e-4, item.seed
        saved = to_uint8(ours[item.index])
        assert np.array_equal(saved[alpha == 0], source[alpha == 0])  # outside: the source, bit for bit
        inside = alpha == 1
        assert np.abs(saved[inside].astype(int) - source[inside]).mean() > 10  # inside: made anew
    assert np.abs(ours[0] - ours[1]).max() > 0.01  # two seeds, two images
    meta = image_metadata(plan, plan.images[0])
    assert meta["region_coverage"] == f"{R.coverage(floor_alpha()):g}" and meta["mask_sha256"] == plan.region.sha256
    assert plan.params(plan.images[0])["region"] == {"mask_sha256": plan.region.sha256}
