"""FLUX.2 Klein's restyle and region edits (backend/engine/families/klein.py) against diffusers'
``Flux2KleinInpaintPipeline`` on the tiny model: the init image as the start and as the first
conditioning image, then the references and the control passes; a restyle is that pipeline
with a mask over the whole picture, a region edit with the region rounded out to whole tokens
(and the source blended back outside the feathered band). The families without either still
refuse in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core import region as R
from backend_support import b64, beauty_image, depth_image, lines_image

pytestmark = pytest.mark.usefixtures("home")

CONTROLS = [{"type": "depth", "image": b64(depth_image()), "scale": 1.0},
            {"type": "lines", "image": b64(lines_image()), "scale": 1.0}]


def _board() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.repeat(np.repeat(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), 16, 0), 16, 1)  # 64x64


def _floor_alpha():
    mask = np.zeros((64, 64), bool)
    mask[44:, 10:50] = True  # "the floor"
    return R.feathered_alpha(mask, 2, 4)


def _plan(seeds=(3, 4), steps=4, **kw):
    from test_backend_engine import make_plan

    return make_plan(family="tiny-klein", controls=CONTROLS, steps=steps, seeds=seeds, cfg=None, scheduler=None,
                     init_image=b64(beauty_image()), **kw)


def _inpaint_pipeline(engine, plan, mask, seed, references=()):
    """The plain diffusers call: ``image`` the init, ``mask_image`` the mask, and the references
    then the control images (all 64x64) as ``image_reference``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline

    base, _nets = engine.load(plan.models)
    c, style = base.value, plan.styles[0]
    pipe = Flux2KleinInpaintPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(c["scheduler_config"]), vae=c["vae"],
        text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], transformer=c["transformer"], is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=style.prompt, image=plan.init.image, mask_image=mask,
                image_reference=[*references, *[ci.image for ci in plan.controls]], strength=plan.init.strength,
                num_inference_steps=style.steps, guidance_scale=1.0, height=plan.height, width=plan.width,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


def test_klein_restyle_equals_flux2_klein_inpaint_pipeline_over_the_whole_picture(engine):
    ref = _board()
    plan = _plan(strength=0.6, references=[{"image": b64(ref), "scale": 1.0}])
    assert plan.init.strength == 0.6 and plan.params(plan.images[0])["init"]["strength"] == 0.6
    engine.stats.clear()
    ours = engine.generate(plan, plan.images)
    assert engine.stats["transformer"] == 2 * 3  # 4 steps at strength 0.6: int(4 - 2.4) = 1 skipped
    everything = Image.new("L", (plan.width, plan.height), 255)
    for i, seed in enumerate((3, 4)):
        theirs = _inpaint_pipeline(engine, plan, everything, seed, references=[Image.fromarray(ref)])
        assert np.abs(ours[i] - theirs).max() <= 1e-4, seed
    assert np.abs(ours[0] - ours[1]).max() > 0.01  # two seeds, two images
    # the init image counts: another strength is another image
    other = _plan(seeds=(3,), strength=0.9, references=[{"image": b64(ref), "scale": 1.0}])
    assert other.images[0].params_sha256 != plan.images[0].params_sha256
    assert np.abs(engine.generate(other, other.images)[0] - ours[0]).mean() > 1e-3


def test_klein_region_edit_equals_flux2_klein_inpainting_blended_into_the_source(engine):
    from archviz_controlnet.backend.engine.runner import to_uint8
    from archviz_controlnet.core.png import encode_png

    plan = _plan(seeds=(3, 8), steps=2, mask_image=J.encode_png(encode_png(R.alpha_png(_floor_alpha()))))
    assert plan.init.strength == 1.0  # a region is made anew by default
    ours = engine.generate(plan, plan.images)
    source, alpha = np.asarray(plan.init.image), plan.region.alpha
    cover = Image.fromarray(R.latent_cover(alpha > 0, 16).astype(np.uint8) * 255)  # whole 16 px tokens
    for item in plan.images:
        theirs = R.blend(source, _inpaint_pipeline(engine, plan, cover, item.seed), alpha)
        assert np.abs(ours[item.index] - theirs).max() <= 1e-4, item.seed
        saved = to_uint8(ours[item.index])
        assert np.array_equal(saved[alpha == 0], source[alpha == 0])  # outside: the source, bit for bit
        inside = alpha == 1
        assert np.abs(saved[inside].astype(int) - source[inside]).mean() > 10  # inside: made anew
    assert np.abs(ours[0] - ours[1]).max() > 0.01
    assert plan.params(plan.images[0])["region"] == {"mask_sha256": plan.region.sha256}


def test_klein_edits_count_the_init_image_and_other_families_still_refuse_in_one_line():
    from test_backend_engine import make_plan

    init = b64(beauty_image())
    base = {"model": {"family": "tiny-klein"}, "styles": ["modern"], "seeds": [0],
            "controls": [{"type": "depth", "image": b64(depth_image())}], "init_image": init}
    J.Job.from_dict({**base, "references": [{"image": init}] * 8})  # 8 + 1 control + the init: 10
    with pytest.raises(J.JobError) as err:
        J.Job.from_dict({**base, "references": [{"image": init}] * 9})
    assert "9 references, 1 control images and the init image" in str(err.value) and "\n" not in str(err.value)
    J.Job.from_dict({k: v for k, v in base.items() if k != "init_image"} | {"references": [{"image": init}] * 9})

    with pytest.raises(J.JobError) as err:  # a family without an init image: one line naming who has one
        make_plan(family="tiny-zimage", cfg=None, scheduler=None, init_image=init)
    text = str(err.value)
    assert text.startswith("init_image:") and "FLUX.2 Klein" in text and "tiny-zimage" in text and "\n" not in text
