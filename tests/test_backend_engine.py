"""The engine in-process with the tiny models: same pixels as diffusers, batching that does
not change images, windows/scale 0 that skip ControlNets, control modes, warm cache."""

import os

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.models import registry as M
from archviz_controlnet.backend.models import tiny
from archviz_controlnet.backend.engine.runner import make_scheduler
from archviz_controlnet.backend.engine.sweep import build_plan
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.presets import load_presets

from backend_support import TEST_HOME, b64, depth_image, lines_image


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


PRESETS = None


def make_plan(family="tiny", controls=None, styles=("modern",), seeds=(0,), steps=3, cfg=7.0, scheduler="unipc",
              union=False, **extra):
    global PRESETS
    PRESETS = PRESETS or load_presets(include_user=False)
    controls = controls if controls is not None else [
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9},
        {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.2, "end": 1.0},
    ]
    job = J.Job.from_dict({"model": {"family": family, "union": union}, "controls": controls,
                           "styles": list(styles), "seeds": list(seeds), "steps": steps, "cfg": cfg,
                           "scheduler": scheduler, **extra})
    return build_plan(job, PRESETS, "float32")


def diffusers_reference(engine, plan, style_index, seed):
    """The plain diffusers multi-ControlNet pipeline call for one (style, seed)."""
    base, nets = engine.load(plan.models)
    style = plan.styles[style_index]
    pipe = engine.helper_pipeline(plan.models.arch, base.value, [n.value for n in nets])
    pipe.scheduler = make_scheduler(style.scheduler, base.value["scheduler_config"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(style.prompt, negative_prompt=style.negative or None, image=[c.image for c in plan.controls],
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


def one(engine, plan, index=0):
    return engine.generate(plan, [plan.images[index]])[plan.images[index].index]


@pytest.mark.parametrize("windows, scales", [
    ([(0.0, 1.0), (0.0, 1.0)], [0.9, 0.6]),
    ([(0.0, 0.5), (0.2, 1.0)], [1.0, 0.8]),  # the seeds' temporal scheduling
    ([(0.0, 1.0), (0.5, 1.0)], [0.9, 0.0]),  # scale 0
])
def test_windows_and_scale_zero_match_diffusers(engine, windows, scales):
    controls = [
        {"type": "depth", "image": b64(depth_image()), "scale": scales[0], "start": windows[0][0], "end": windows[0][1]},
        {"type": "lines", "image": b64(lines_image()), "scale": scales[1], "start": windows[1][0], "end": windows[1][1]},
    ]
    plan = make_plan(controls=controls, steps=4, seeds=(7,))
    ours = one(engine, plan)
    ref = diffusers_reference(engine, plan, 0, 7)
    assert ours.shape == ref.shape == (64, 64, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_windows_and_scales_change_the_image(engine):
    """The tiny ControlNets really steer: so the comparisons above could fail."""
    full = one(engine, make_plan(steps=4))
    early = one(engine, make_plan(steps=4, controls=[
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9, "end": 0.5},
        {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]))
    no_lines = one(engine, make_plan(steps=4, controls=[
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9},
        {"type": "lines", "image": b64(lines_image()), "scale": 0.0, "start": 0.2}]))
    depth_only = one(engine, make_plan(steps=4, controls=[{"type": "depth", "image": b64(depth_image()), "scale": 0.9}]))
    assert np.abs(full - early).max() > 0.02
    assert np.abs(full - no_lines).max() > 0.02
    # scale 0 is exactly "not there"
    assert np.abs(no_lines - depth_only).max() < 1e-6


def test_controlnets_outside_their_window_are_not_run(engine):
    plan = make_plan(steps=4, controls=[
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9, "start": 0.0, "end": 0.5},
        {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.5, "end": 1.0}])
    _, nets = engine.load(plan.models)
    calls = {0: 0, 1: 0}
    hooks = [n.value.register_forward_pre_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, n in enumerate(nets)]
    try:
        one(engine, plan)
    finally:
        for h in hooks:
            h.remove()
    # 4 steps: depth active in steps 0-1 (i/n >= 0 and (i+1)/n <= 0.5), lines in steps 2-3.
    assert calls == {0: 2, 1: 2}


@pytest.mark.parametrize("scheduler", ["unipc", "euler_a", "dpmpp_2m_karras", "ddim"])
def test_image_alone_equals_image_in_sweep(engine, scheduler):
    plan = make_plan(styles=("modern", "industrial"), seeds=(0, 1, 2), steps=3, scheduler=scheduler)
    sweep = engine.generate(plan, plan.images)
    assert len(engine.batches(plan, plan.images)) == 1  # same sampling -> styles share one batch
    for index in (0, 4):
        alone = one(engine, plan, index)
        assert np.abs(alone - sweep[index]).max() <= 1e-3
    # ... and different seeds / styles really differ
    assert np.abs(sweep[0] - sweep[1]).max() > 0.05
    assert np.abs(sweep[0] - sweep[3]).max() > 1e-3


def test_batch_limit_chunks_but_keeps_pixels(engine):
    plan = make_plan(seeds=(0, 1, 2, 3, 4), steps=2, max_batch=2)
    batches = engine.batches(plan, plan.images)
    assert [len(b) for b in batches] == [2, 2, 1]
    chunked = engine.generate(plan, plan.images)
    whole = engine.generate(make_plan(seeds=(0, 1, 2, 3, 4), steps=2), make_plan(seeds=(0, 1, 2, 3, 4), steps=2).images)
    for k in chunked:
        assert np.abs(chunked[k] - whole[k]).max() <= 1e-3


def test_control_modes(engine):
    """prompt: residual j of n scaled by 0.825**(n-1-j); controlnet: conditional half only."""
    captured = {}

    def capture(mode, cfg=7.0):
        plan = make_plan(steps=1, cfg=cfg, controls=[
            {"type": "depth", "image": b64(depth_image()), "scale": 0.9, "mode": mode}])
        base, _ = engine.load(plan.models)
        unet = base.value["unet"]

        def hook(_m, _args, kwargs):
            captured[mode, cfg] = ([r.clone() for r in kwargs["down_block_additional_residuals"]],
                                   kwargs["mid_block_additional_residual"].clone())

        h = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return one(engine, plan)
        finally:
            h.remove()

    balanced = capture("balanced")
    prompt = capture("prompt")
    controlnet = capture("controlnet")
    (bd, bm), (pd, pm), (cd, cm) = captured["balanced", 7.0], captured["prompt", 7.0], captured["controlnet", 7.0]
    n = len(bd) + 1
    for j, (b, p) in enumerate(zip(bd, pd)):
        torch.testing.assert_close(p, b * 0.825 ** (n - 1 - j), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pm, bm)
    half = bd[0].shape[0] // 2
    for b, c in zip(bd, cd):
        assert torch.count_nonzero(c[:half]) == 0  # unconditional half untouched
        torch.testing.assert_close(c[half:], b[half:], rtol=1e-4, atol=1e-5)  # batch of 1 vs 2
    assert np.abs(balanced - prompt).max() > 1e-3 and np.abs(balanced - controlnet).max() > 1e-3
    # without CFG there is no unconditional half: "controlnet" is "balanced"
    assert np.abs(capture("balanced", 1.0) - capture("controlnet", 1.0)).max() < 1e-6


def test_sdxl_matches_diffusers_and_batches(engine):
    plan = make_plan(family="tiny-sdxl", seeds=(3, 4), steps=3, controls=[
        {"type": "depth", "image": b64(depth_image()), "scale": 0.5, "start": 0.0, "end": 0.7},
        {"type": "canny", "image": b64(lines_image()), "scale": 0.4, "start": 0.3}])
    assert plan.models.vae.endswith("vae-fp16-fix")
    sweep = engine.generate(plan, plan.images)
    ref = diffusers_reference(engine, plan, 0, 4)
    assert np.abs(sweep[1] - ref).max() < 1e-4
    assert np.abs(one(engine, plan, 1) - sweep[1]).max() <= 1e-3


def test_sdxl_union_matches_diffusers_union_pipeline(engine):
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    plan = make_plan(family="tiny-sdxl", union=True, steps=3, seeds=(5,), controls=[
        {"type": "normal", "image": b64(depth_image()), "scale": 0.6}])
    ref_mode = plan.models.controlnets[0]
    assert ref_mode.union_mode == 4 and ref_mode.ref.endswith("controlnet-union")
    ours = one(engine, plan)
    base, nets = engine.load(plan.models)
    c = base.value
    style = plan.styles[0]
    pipe = StableDiffusionXLControlNetUnionPipeline(
        vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder_2"], tokenizer=c["tokenizer"],
        tokenizer_2=c["tokenizer_2"], unet=c["unet"], controlnet=nets[0].value,
        scheduler=make_scheduler("unipc", c["scheduler_config"]), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(style.prompt, negative_prompt=style.negative, control_image=[plan.controls[0].image], control_mode=[4],
               num_inference_steps=3, guidance_scale=style.cfg, height=64, width=64,
               controlnet_conditioning_scale=0.6, generator=torch.Generator("cpu").manual_seed(5),
               output_type="np").images[0]
    assert np.abs(ours - ref).max() < 1e-4


def test_family_without_a_controlnet_for_a_type_is_a_field_error():
    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-sdxl", controls=[{"type": "seg", "image": b64(depth_image())}])
    assert err.value.field == "controls[0].type" and "union" in str(err.value)


def test_presets_feed_the_plan_and_job_values_win():
    plan = make_plan(styles=("japandi", {"name": "mine", "prompt": "a hut"}), steps=None, cfg=None, scheduler=None,
                     controls=[{"type": "lines", "image": b64(lines_image())},
                               {"type": "depth", "image": b64(depth_image()), "scale": 0.3}])
    japandi, mine = plan.styles
    assert (japandi.steps, japandi.cfg, japandi.scheduler) == (30, 6.5, "dpmpp_2m_karras")
    assert (japandi.units[0].scale, japandi.units[0].end) == (0.6, 0.9)  # preset's [controls.lines]
    assert japandi.units[1].scale == 0.3  # the job's explicit scale wins
    assert (mine.steps, mine.cfg, mine.scheduler, mine.units[0].scale) == (30, 7.0, "unipc", 1.0)
    sdxl = make_plan(family="tiny-sdxl", styles=("japandi",), cfg=None,
                     controls=[{"type": "depth", "image": b64(depth_image())}])
    assert sdxl.styles[0].units[0].scale == 0.51 and sdxl.styles[0].cfg == 6.5
    # everything that determines pixels is in the hash
    a = make_plan(seeds=(0,)).images[0].params_sha256
    assert a == make_plan(seeds=(0,)).images[0].params_sha256
    assert a != make_plan(seeds=(0,), cfg=6.0).images[0].params_sha256
    assert a != make_plan(seeds=(1,)).images[0].params_sha256


def test_tiny_models_are_saved_like_real_ones():
    base = tiny.ensure_tiny(tiny.tiny_path("sd15", "base"))
    for part in ("unet", "vae", "text_encoder"):
        assert list((base / part).glob("*.safetensors")), part
    assert (base / "model_index.json").is_file()
    assert {p.name for p in (base / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}
    assert not list(base.rglob("*.bin"))
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer")
    ids = tok("modern interior").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "modern</w>", "interior</w>", "<|endoftext|>"]


def test_missing_real_model_is_a_clear_error_never_tiny(engine):
    plan = make_plan(family="sd15", steps=1)
    assert plan.models.base == M.SD15_BASE
    assert plan.models.controlnets[0].ref == "lllyasviel/control_v11f1p_sd15_depth"
    with pytest.raises(M.ModelNotFoundError) as err:
        engine.generate(plan, plan.images)
    msg = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "'tiny'" in msg and "HF_HUB_OFFLINE" in msg
    assert not any(e["id"] == M.SD15_BASE for e in engine.cache.describe())
    with pytest.raises(M.ModelNotFoundError) as err:
        M.load_controlnet(M.ControlNetRef(str(TEST_HOME / "nowhere" / "controlnet")), torch.float32, "cpu")
    assert "nowhere" in str(err.value)


def test_lru_cache_evicts_oldest_unpinned_under_budget():
    cache = M.ModelCache(torch.device("cpu"), torch.float32, budget_bytes=9 * 2**20)
    plan = make_plan(controls=[{"type": "depth", "image": b64(depth_image())},
                               {"type": "lines", "image": b64(lines_image())}])
    base = cache.base(plan.models)  # ~5.8 MB
    with cache.pinned([base]):
        cn_depth = cache.controlnet(plan.models.controlnets[0])  # ~2.6 MB: fits
        assert cache.evictions == 0
        cn_lines = cache.controlnet(plan.models.controlnets[1])  # over budget: depth (LRU, unpinned) goes
    ids = [e["id"] for e in cache.describe()]
    assert cache.evictions == 1 and cn_depth.ref not in ids and cn_lines.ref in ids and base.ref in ids
    assert cache.used_bytes() <= 9 * 2**20
    again = cache.controlnet(plan.models.controlnets[1])
    assert again is cn_lines and cache.loads == 3  # warm: no reload
    assert cache.unload()["unloaded"] and cache.describe() == []


def test_warm_job_is_faster_than_cold(engine):
    import time

    engine.unload()
    plan = make_plan(steps=2, seeds=(0, 1))
    t0 = time.perf_counter()
    engine.generate(plan, plan.images)
    cold = time.perf_counter() - t0
    loads = engine.cache.loads
    t0 = time.perf_counter()
    engine.generate(plan, plan.images)
    warm = time.perf_counter() - t0
    assert engine.cache.loads == loads  # nothing loaded again
    print(f"cold {cold:.3f}s warm {warm:.3f}s")



REAL_IDS_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from diffusers.utils import logging as dlog; dlog.set_verbosity_error(); dlog.disable_progress_bar()
from backend_support import b64, depth_image
from archviz_controlnet.backend.models import registry as M
from archviz_controlnet.backend.engine.runner import Engine
from archviz_controlnet.backend.engine.sweep import build_plan
from archviz_controlnet.core import jobs as J
torch.set_num_threads(1)
def plan(family):
    job = J.Job.from_dict({"model": family, "controls": [{"type": "depth", "image": b64(depth_image())}],
                           "styles": [{"name": "a", "prompt": "a room"}], "seeds": [3], "steps": 2})
    return build_plan(job, {})
real, tiny = plan("sd15"), plan("tiny")
assert real.models.base == M.SD15_BASE and real.models.controlnets[0].ref == M.SD15_CONTROLNETS["depth"]
engine = Engine("cpu")
a = engine.generate(real, real.images)[0]
b = engine.generate(tiny, tiny.images)[0]
print("maxdiff", float(np.abs(a - b).max()), [e["id"] for e in engine.cache.describe()])
"""


def test_real_ids_load_from_the_hugging_face_cache_offline(tmp_path):
    """The real-model path: DESIGN.md ids resolved from a Hugging Face cache snapshot with
    HF_HUB_OFFLINE=1. The snapshots hold tiny weights (in this test's private cache only)."""
    import shutil
    import subprocess
    import sys

    hub = tmp_path / "hf" / "hub"
    REV = "4f1c3c1e0d2b5a6978a1b2c3d4e5f60718293a4b"  # a commit hash, as the hub writes them

    def snapshot(repo_id, src):
        folder = hub / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(src, folder / "snapshots" / REV, ignore=shutil.ignore_patterns(".complete"))
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(REV)

    snapshot(M.SD15_BASE, tiny.ensure_tiny(tiny.tiny_path("sd15", "base")))
    snapshot(M.SD15_CONTROLNETS["depth"], tiny.ensure_tiny(tiny.tiny_path("sd15", "controlnet-depth")))
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", ARCHVIZ_HOME=str(TEST_HOME),
               OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", REAL_IDS_SCRIPT, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("maxdiff"))
    assert float(line.split()[1]) < 1e-6  # same weights, reached through the hub ids
    assert M.SD15_BASE in line and M.SD15_CONTROLNETS["depth"] in line
