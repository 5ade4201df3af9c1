"""Previews while denoising and the fast mode per family, with the tiny models.

Previews: they come every N steps and change over the steps, the final pixels are the same
with previews on and off, the projection fallback (fitted to the family's own VAE) for the
tiny SD 1.5, SDXL and FLUX.1 models, the TAESD path with a tiny AutoencoderTiny placed in a
test Hugging Face cache under the real id, and previews in a real backend's job status.

Fast mode: the engine equals the diffusers pipeline with the same LoRA (loaded with
diffusers' load_lora_weights) and sampler, or the schnell base, on the same seeds; the
parameters say fast and the resume hash tells fast from exact; the exact images stay exact
after a fast job on the same warm models; refusals are one line naming the family.
"""

import io
import shutil
import time

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.engine import previews as P
from archviz_controlnet.backend.models import tiny
from archviz_controlnet.backend.engine.families import family_for
from archviz_controlnet.core import jobs as J

from backend_support import b64, depth_image, lines_image, running_server


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


FAMILY_KW = {"tiny": {}, "tiny-sdxl": {}, "tiny-flux": {"scheduler": None, "cfg": 3.5},
             "tiny-zimage": {"scheduler": None, "cfg": 1.0}, "tiny-qwen": {"scheduler": None, "cfg": 4.0}}


def plan_for(family, seeds=(0, 1), steps=8, lines="lines", **extra):
    from test_backend_engine import make_plan

    controls = [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                {"type": lines, "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    kw = {**FAMILY_KW[family], **extra}
    return make_plan(family=family, controls=controls, seeds=seeds, steps=steps, **kw)


def collect(engine, plan, every=None):
    got = []
    out = engine.generate(plan, plan.images, preview_every=every,
                          on_preview=lambda item, step, steps, png: got.append((item.index, step, steps, png)))
    return out, got


def decode(png):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


# -- previews ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["tiny-zimage", "tiny-qwen"])
def test_previews_for_the_families_without_hooks_of_their_own(engine, family):
    """Z-Image (4D latents) and Qwen-Image (packed 2x2 tokens) get previews through the
    base hooks' defaults and the projection fitted to their own VAE; pixels unchanged."""
    plan = plan_for(family, seeds=(0,), steps=4)
    plain = engine.generate(plan, plan.images)
    out, got = collect(engine, plan, every=2)
    assert [(i, s, n) for i, s, n, _ in got] == [(0, 2, 4)]
    image = decode(got[0][3])
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
    assert np.array_equal(plain[0], out[0])


def test_previews_come_every_n_steps_change_and_leave_the_pixels(engine):
    plan = plan_for("tiny", steps=12)
    plain = engine.generate(plan, plan.images)
    with_previews, got = collect(engine, plan, every=4)
    assert sorted((i, s, n) for i, s, n, _ in got) == [(0, 4, 12), (0, 8, 12), (1, 4, 12), (1, 8, 12)]
    for index in plain:  # previews read the latents and never change them
        assert np.array_equal(plain[index], with_previews[index])
    first, second = (decode(p) for i, s, _n, p in sorted(got) if i == 0)
    assert first.shape == (64, 64, 3)
    assert np.abs(first.astype(int) - second.astype(int)).max() > 0  # the preview follows the denoising
    assert engine.stats["previews"] == 4
    # none at all when off, the job's own setting otherwise
    _, none = collect(engine, plan, every=0)
    assert none == []
    plan6 = plan_for("tiny", steps=12, preview_every=6)
    _, got6 = collect(engine, plan6)
    assert sorted({s for _i, s, _n, _p in got6}) == [6]


@pytest.mark.parametrize("family, lines", [("tiny", "lines"), ("tiny-sdxl", "canny"), ("tiny-flux", "canny")])
def test_projection_fallback_fits_each_family_vae(engine, family, lines):
    plan = plan_for(family, seeds=(3,), steps=4, lines=lines)
    plain = engine.generate(plan, plan.images)
    out, got = collect(engine, plan, every=2)
    assert np.array_equal(plain[0], out[0])
    assert [(s, n) for _i, s, n, _p in got] == [(2, 4)]
    base, _nets = engine.load(plan.models)
    comps = base.value
    fam = family_for(plan.models.arch)
    pipe = fam.pipeline(comps, _nets[0].value)
    previewer = P.Previewer(engine, fam, plan, pipe, comps, 2)
    assert previewer.method == "projection"  # no TAESD in this test's empty Hugging Face cache
    # The fit explains the VAE's decode better than its mean colour does, on latents it was not fitted on.
    vae = comps["vae"]
    g = torch.Generator("cpu").manual_seed(7)
    z = torch.nn.functional.interpolate(torch.randn(2, vae.config.latent_channels, 4, 4, generator=g), size=(8, 8),
                                        mode="bilinear")
    decoded = fam.preview_decode(engine, pipe, comps, z)
    n, h, w, _ = decoded.shape
    pooled = decoded.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4))
    predicted = previewer.projection(z)
    assert np.square(predicted - pooled).mean() < np.square(pooled - pooled.mean(axis=(0, 1, 2))).mean()
    assert decode(got[0][3]).shape == (64, 64, 3)


def test_flux_packed_latents_are_unpacked_for_previews(engine):
    plan = plan_for("tiny-flux", seeds=(0,), steps=2, lines="canny")
    base, nets = engine.load(plan.models)
    fam = family_for("flux")
    pipe = fam.pipeline(base.value, nets[0].value)
    grid = torch.randn(1, 16, 8, 8)
    packed = pipe._pack_latents(grid, 1, 16, 8, 8)
    assert torch.equal(fam.preview_latents(plan, pipe, None, packed), grid)


def write_tiny_taesd(hub_cache, repo_id, channels):
    """A tiny AutoencoderTiny saved as a Hugging Face cache snapshot of ``repo_id``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(5)
    model = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                            latent_channels=channels)
    rev = "0123456789abcdef0123456789abcdef01234567"
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(folder / "snapshots" / rev, safe_serialization=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(rev)
    return model


def test_taesd_from_the_local_cache_under_its_real_id(engine, tmp_path, monkeypatch):
    from huggingface_hub import constants

    plan = plan_for("tiny", seeds=(0,), steps=4)
    _, projected = collect(engine, plan, every=2)
    hub_cache = tmp_path / "hub"
    assert P.cached_snapshot("madebyollin/taesd") is None  # the test home's cache has none
    reference = write_tiny_taesd(hub_cache, "madebyollin/taesd", 4)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    folder = P.cached_snapshot("madebyollin/taesd")
    assert folder is not None and folder.is_relative_to(hub_cache)
    plain = engine.generate(plan, plan.images)
    captured = {}
    real_pngs = P.Previewer.pngs

    def spy(self, state):  # keep the latents the preview was made from
        captured["latents"] = state.latents.clone()
        captured["method"] = self.method
        return real_pngs(self, state)

    monkeypatch.setattr(P.Previewer, "pngs", spy)
    out, got = collect(engine, plan, every=2)
    assert captured["method"] == "taesd"
    assert np.array_equal(plain[0], out[0])
    with torch.no_grad():  # the preview is the tiny autoencoder's decode of the latents
        expected = (reference.decode(captured["latents"], return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(decode(got[0][3]).astype(float) - expected).max() <= 1
    assert not np.array_equal(decode(got[0][3]), decode(projected[0][3]))
    # weights that do not load: the projection, and a warning that says so
    (folder / "config.json").write_text('{"_class_name": "AutoencoderTiny", "latent_channels": "four"}')
    engine.previews.tiny.clear()
    monkeypatch.undo()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    out, got = collect(engine, plan, every=2)
    assert np.array_equal(plain[0], out[0]) and got
    assert engine._last_preview_method == "projection"
    assert engine.preview_warning.startswith("previews: madebyollin/taesd in the Hugging Face cache does not load")
    # a broken snapshot (no weights) is not used
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert P.cached_snapshot("madebyollin/taesd") is None


def test_previews_in_the_status_of_a_real_backend_job(tmp_path):
    job = {"model": {"family": "tiny"}, "styles": [{"name": "a", "prompt": "a room"}], "seeds": [0, 1],
           "controls": [{"type": "depth", "image": b64(depth_image())}], "steps": 40, "preview_every": 2,
           "output_dir": str(tmp_path / "out")}
    with running_server(["--output-root", str(tmp_path)]) as server:
        job_id = server.submit(job)
        seen, pngs = set(), {}
        while True:
            status = server.get(f"/v1/jobs/{job_id}").json()
            for entry in status["previews"]:
                seen.add((entry["index"], entry["step"]))
                if entry["index"] not in pngs:
                    r = server.get(entry["url"])
                    if r.status_code == 200:  # 404 once the image got done in between
                        pngs[entry["index"]] = (r.headers["X-Archviz-Step"], r.content)
            if status["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.02)
        assert status["state"] == "done", status["error"]
        assert status["previews"] == [] and status["previews_made"] == 2 * 19  # steps 2, 4 .. 38 of 40
        assert seen and pngs  # seen while the job ran
        step, png = next(iter(pngs.values()))
        assert decode(png).shape == (64, 64, 3) and "/40" in step
        assert server.get(f"/v1/jobs/{job_id}/previews/0").status_code == 404  # done: the image itself
        assert server.get(f"/v1/jobs/{job_id}/previews/9").status_code == 404


# -- fast mode ---------------------------------------------------------------------------

def fast_plan(family, seeds=(0, 1), lines="lines", **extra):
    from test_backend_engine import make_plan

    controls = [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                {"type": lines, "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    kw = {"steps": None, "cfg": None, "scheduler": None, **extra}
    return make_plan(family=family, controls=controls, seeds=seeds, fast=True, **kw)


@pytest.mark.parametrize("family, lines", [("tiny", "lines"), ("tiny-sdxl", "canny")])
def test_fast_sd_equals_the_diffusers_pipeline_with_the_lcm_lora(engine, family, lines):
    from diffusers import ControlNetModel, LCMScheduler

    from archviz_controlnet.backend.models.registry import load_base

    plan = fast_plan(family, lines=lines)
    style = plan.styles[0]
    assert (style.steps, style.cfg, style.scheduler) == (4, 1.0, "lcm")
    assert plan.models.lora == str(tiny.tiny_path(plan.models.arch, "lcm-lora"))
    sweep = engine.generate(plan, plan.images)
    # the reference: its own copies of the models, the LoRA through diffusers' load_lora_weights
    comps = load_base(plan.models.base, plan.models.vae, plan.models.arch, torch.float32, "cpu")
    nets = [ControlNetModel.from_pretrained(r.ref) for r in plan.models.controlnets]
    fam = family_for(plan.models.arch)
    pipe = fam.pipeline(comps, nets)
    pipe.load_lora_weights(plan.models.lora)
    pipe.scheduler = LCMScheduler.from_config(comps["scheduler_config"])
    pipe.set_progress_bar_config(disable=True)
    for item in plan.images:
        ref = pipe(style.prompt, image=[c.image for c in plan.controls], num_inference_steps=style.steps,
                   guidance_scale=style.cfg, height=plan.height, width=plan.width,
                   controlnet_conditioning_scale=[u.scale for u in style.units],
                   control_guidance_start=[u.start for u in style.units],
                   control_guidance_end=[u.end for u in style.units],
                   generator=torch.Generator("cpu").manual_seed(item.seed), output_type="np").images[0]
        assert np.abs(sweep[item.index] - ref).max() < 1e-4
    # the LoRA matters: without it (same sampler, steps, cfg) the images differ
    pipe.disable_lora()
    bare = pipe(style.prompt, image=[c.image for c in plan.controls], num_inference_steps=style.steps,
                guidance_scale=style.cfg, height=plan.height, width=plan.width,
                controlnet_conditioning_scale=[u.scale for u in style.units],
                control_guidance_start=[u.start for u in style.units], control_guidance_end=[u.end for u in style.units],
                generator=torch.Generator("cpu").manual_seed(plan.images[0].seed), output_type="np").images[0]
    assert np.abs(sweep[plan.images[0].index] - bare).max() > 0.01


def test_fast_flux_is_schnell_and_equals_the_diffusers_pipeline(engine):
    from test_flux import reference

    plan = fast_plan("tiny-flux", lines="canny")
    assert plan.models.base == str(tiny.tiny_path("flux", "base-schnell"))
    assert plan.styles[0].steps == 4
    sweep = engine.generate(plan, plan.images)
    base, _nets = engine.load(plan.models)
    assert base.value["transformer"].config.guidance_embeds is False
    for item in plan.images:
        assert np.abs(sweep[item.index] - reference(engine, plan, item.style, item.seed)).max() < 1e-4


def test_exact_images_stay_exact_after_a_fast_job_on_the_same_models(engine):
    exact = plan_for("tiny", seeds=(2,), steps=4)
    before = engine.generate(exact, exact.images)[0]
    fast = fast_plan("tiny", seeds=(2,))
    fast_image = engine.generate(fast, fast.images)[0]
    after = engine.generate(exact, exact.images)[0]
    assert np.array_equal(before, after)
    assert np.abs(fast_image - before).max() > 0.01


def test_params_say_fast_and_resume_tells_fast_from_exact():
    exact = plan_for("tiny", seeds=(0,), steps=4, cfg=1.0)
    fast = fast_plan("tiny", seeds=(0,), steps=4, cfg=1.0)
    assert "fast" not in exact.params(exact.images[0])  # the exact hashes stay as they were
    params = fast.params(fast.images[0])
    assert params["fast"] == {"mode": "LCM-LoRA", "lora": "latent-consistency/lcm-lora-sdv1-5", "scheduler": "lcm"}
    assert params["model"]["lora"].endswith("lcm-lora")
    assert fast.images[0].params_sha256 != exact.images[0].params_sha256
    flux = fast_plan("tiny-flux", seeds=(0,), lines="canny")
    assert flux.params(flux.images[0])["fast"]["base"] == "black-forest-labs/FLUX.1-schnell"
    assert flux.images[0].params_sha256 != plan_for("tiny-flux", seeds=(0,), steps=4,
                                                    lines="canny").images[0].params_sha256


def test_fast_is_refused_in_one_line_where_it_does_not_apply(monkeypatch):
    fam = family_for("flux")
    monkeypatch.setattr(fam, "fast", None)  # a family that declares no fast mode
    with pytest.raises(J.JobError) as err:
        fast_plan("tiny-flux", lines="canny")
    assert err.value.field == "fast" and "tiny-flux family has no fast mode" in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    with pytest.raises(J.JobError) as err:
        fast_plan("tiny", scheduler="ddim")
    assert err.value.field == "scheduler" and "lcm" in str(err.value)
    png = b64(depth_image())
    with pytest.raises(J.JobError) as err:
        fast_plan("tiny", init_image=png)
    assert err.value.field == "fast" and "restyle" in str(err.value)
    with pytest.raises(J.JobError) as err:
        fast_plan("tiny-flux", lines="canny", model={"family": "tiny-flux", "base": "/x"})
    assert err.value.field in ("model.base", "model")


# -- the bench rows --------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["tiny", "tiny-flux"])
def test_bench_rows_previews_and_fast(tmp_path, config):
    import json

    from archviz_controlnet import cli

    threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    try:
        rc = cli.main(["bench", "--config", config, "--device", "cpu", "--styles", "modern", "--seeds", "0-1",
                       "--steps", "8", "--threads", "1", "--cases", "full", "--no-baseline",
                       "--rows", "previews-every-4,fast*", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    previews, fast = rows["previews-every-4"], rows["fast*"]
    assert "error" not in previews and "error" not in fast, (previews.get("error"), fast.get("error"))
    assert previews["max_diff"] == 0 and previews["changes_images"] == []  # previews never change the images
    assert previews["previews"] == 2 and previews["preview_method"] == "projection"  # step 4 of 8, two images
    assert fast["changes_images"] == ["fast"] and fast["steps"] == 4 and fast["max_diff"] > 0  # labelled, and it does
    assert fast["vs_default"] > 0 and 0 <= previews["preview_share"] < 1


def test_a_lora_repository_is_its_one_weights_file():
    """What the hub code fetches and accepts for the fast-mode LoRAs (archviz models
    download sd15-lcm-lora): the one pytorch_lora_weights.safetensors, nothing else."""
    from archviz_controlnet.backend.models import hub
    from archviz_controlnet.backend.models.registry import CATALOG, local_lora

    listing = ["README.md", ".gitattributes", "image.png", "pytorch_lora_weights.safetensors"]
    assert hub.select_files(listing, None, fp16=True) == ["pytorch_lora_weights.safetensors"]
    folder = tiny.ensure_tiny(tiny.tiny_path("sd15", "lcm-lora"))
    assert hub.check_loadable(folder, None, fp16=False) == ""
    assert local_lora(str(folder), torch.float32) == folder
    assert CATALOG["sd15-lcm-lora"][0][0] == family_for("sd15").fast.lora
    assert CATALOG["sdxl-lcm-lora"][0][0] == family_for("sdxl").fast.lora
    assert {CATALOG[n][0][0] for n in ("taesd", "taesdxl", "taef1")} == {
        family_for(a).taesd_id for a in ("sd15", "sdxl", "flux")}
    with pytest.raises(hub.HubError):  # a model repository still needs its config
        hub.select_files(["diffusion_pytorch_model.safetensors"], None, fp16=False)


def test_a_failing_preview_stops_previews_not_the_job(engine, monkeypatch):
    plan = plan_for("tiny", seeds=(0,), steps=8)
    plain = engine.generate(plan, plan.images)
    fam = family_for("sd15")

    def broken(*_args, **_kwargs):
        raise RuntimeError("no room for the preview\nsecond line")

    monkeypatch.setattr(P.Previewer, "pngs", broken)
    out, got = collect(engine, plan, every=2)
    assert got == [] and np.array_equal(plain[0], out[0])
    assert engine.preview_warning == "previews stopped for this job: RuntimeError: no room for the preview"
    monkeypatch.undo()
    monkeypatch.setattr(fam, "preview_decode", broken)  # the projection's fit fails: no previewer at all
    engine.previews.projections.clear()
    out, got = collect(engine, plan, every=2)
    assert got == [] and np.array_equal(plain[0], out[0]) and "no room" in engine.preview_warning
    monkeypatch.undo()
    _, got = collect(engine, plan, every=2)
    assert len(got) == 3 and engine.preview_warning == ""
