"""Instruction edits (``--edit "TEXT"``) with tiny FLUX.1 Kontext and Qwen-Image-Edit: the
engine's images equal diffusers' FluxKontextPipeline / QwenImageEditPipeline for the same
seeds, an image is the same alone or inside a sweep of several edit texts, the edit text
and the picture's hash are in every image's parameters, and bad input is one line naming
the value. The CLI and Blender runs from a real .blend's beauty pass are at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.engine.families import family_for
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.edit import compose, edit_problem, edit_styles

from backend_support import REPO, b64, beauty_image

EDIT = "make it a snowy winter evening"


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def picture(w=64, h=48):
    """A stand-in beauty pass (not square: the sizes follow it)."""
    return beauty_image(w, h)


def edit_job(family, edits=(EDIT,), styles=(), seeds=(0,), steps=2, init=None, **extra) -> dict:
    return {"model": {"family": family}, "controls": [], "styles": edit_styles(list(edits), list(styles)),
            "seeds": list(seeds), "steps": steps, "init_image": b64(picture() if init is None else init), **extra}


def plan_of(job: dict):
    from archviz_controlnet.backend.engine.sweep import build_plan
    from archviz_controlnet.core.presets import load_presets

    return build_plan(J.Job.from_dict(job), load_presets(include_user=False), "float32")


def reference(engine, plan, style_index, seed):
    """The plain diffusers pipeline call for one (edit text, seed)."""
    from archviz_controlnet.backend.engine.families.flux import Flux

    base, _nets = engine.load(plan.models)
    comps = base.value
    engine.restore_models([comps["transformer"]])
    style = plan.styles[style_index]
    pipe = family_for(plan.models.arch).pipeline(comps)
    pipe.set_progress_bar_config(disable=True)
    common = dict(image=plan.init.image, prompt=style.prompt, height=plan.height, width=plan.width,
                  num_inference_steps=style.steps, generator=torch.Generator("cpu").manual_seed(seed),
                  output_type="np")
    if plan.models.arch == "kontext":
        out = pipe(**common, guidance_scale=style.cfg, max_area=plan.width * plan.height, _auto_resize=False,
                   max_sequence_length=Flux.max_sequence_length(comps))
    else:
        out = pipe(**common, negative_prompt=style.negative, true_cfg_scale=style.cfg)
    return out.images[0]


@pytest.mark.parametrize("family", ["tiny-kontext", "tiny-qwen-edit", "tiny-qwen-edit-plus"])
def test_engine_equals_the_diffusers_pipeline_alone_and_in_a_sweep(engine, family):
    # tiny-qwen-edit-plus: the same components run as QwenImageEditPlusPipeline (-2509, -2511)
    # Two edit texts of different lengths x two seeds in one job (one batch); each image
    # equals the pipeline's for its seed, and equals the same image made alone.
    edits = (EDIT, "turn the walls into dark green tiles with brass trim")
    plan = plan_of(edit_job(family, edits=edits, seeds=(3, 8), steps=2))
    assert plan.width == 64 and plan.height == 48  # the picture's size
    engine.stats.clear()
    images = engine.generate(plan, plan.images)
    assert engine.stats["prompt_encodes"] == 2  # once per edit text
    # Qwen-Image-Edit's pipeline encodes the picture at 1024x1024 on every call (seconds on
    # a CPU): there the reference runs for one image per edit text (the shorter text is the
    # one zero-padded in the batch, so that image also shows the batch equals it alone), all
    # four for Kontext.
    checked = {"tiny-kontext": plan.images, "tiny-qwen-edit": [plan.images[0], plan.images[3]],
               "tiny-qwen-edit-plus": [plan.images[0]]}[family]
    pipe_class = type(family_for(plan.models.arch).pipeline(engine.load(plan.models)[0].value)).__name__
    assert pipe_class == {"tiny-kontext": "FluxKontextPipeline", "tiny-qwen-edit": "QwenImageEditPipeline",
                          "tiny-qwen-edit-plus": "QwenImageEditPlusPipeline"}[family]
    for item in checked:
        ref = reference(engine, plan, item.style, item.seed)
        diff = float(np.abs(images[item.index] - ref).max())
        assert diff <= 1e-4, (family, item.style, item.seed, diff)
    assert float(np.abs(images[0] - images[1]).max()) > 1e-3  # the seeds differ
    assert float(np.abs(images[0] - images[2]).max()) > 1e-4  # the edit texts differ
    if family == "tiny-kontext":  # the engine alone: the same image
        alone = plan_of(edit_job(family, edits=edits[1:], seeds=(8,), steps=2))
        single = engine.generate(alone, alone.images)[0]
        assert float(np.abs(single - images[3]).max()) <= 1e-4


def test_the_picture_is_encoded_once_per_job(engine, monkeypatch):
    from archviz_controlnet.backend.engine.families.edit import Kontext

    calls = []
    original = Kontext.prepare_init
    monkeypatch.setattr(Kontext, "prepare_init", lambda self, *a: calls.append(1) or original(self, *a))
    plan = plan_of(edit_job("tiny-kontext", edits=(EDIT, "add a fireplace"), seeds=(0, 1, 2), steps=1, max_batch=2))
    engine.generate(plan, plan.images)
    assert len(calls) == 1 and engine.stats["prompt_encodes"] == 2 and engine.stats["transformer"] == 6


def test_the_edit_text_and_the_picture_are_in_the_parameters():
    plan = plan_of(edit_job("tiny-kontext", edits=(EDIT, "add a fireplace"), styles=("modern",)))
    params = [plan.params(item) for item in plan.images]
    assert [p["edit"]["text"] for p in params] == [EDIT, "add a fireplace"]
    assert {p["edit"]["image_sha256"] for p in params} == {plan.init.sha256}
    assert "init" not in params[0] and params[0]["controls"] == []
    assert params[0]["prompt"].startswith(EDIT + ". Make it look like this: ")
    assert [s.name for s in plan.styles] == ["modern-edit1", "modern-edit2"]
    other = plan_of(edit_job("tiny-kontext", edits=(EDIT, "add a fireplace"), styles=("modern",),
                             init=picture()[::-1].copy()))
    assert other.images[0].params_sha256 != plan.images[0].params_sha256  # another picture: made anew
    assert plan_of(edit_job("tiny-kontext")).styles[0].prompt == EDIT  # an edit text alone is the prompt
    qwen = plan_of(edit_job("tiny-qwen-edit"))
    assert (qwen.styles[0].negative, qwen.styles[0].cfg, qwen.styles[0].steps) == (" ", 4.0, 2)
    assert compose("make it snowy.", "a warm loft") == "make it snowy. Make it look like this: a warm loft"


def test_real_edit_models_and_their_defaults():
    # planned offline (nothing loads): the real ids, the model cards' steps and guidance
    cases = {"kontext": ("black-forest-labs/FLUX.1-Kontext-dev", 28, 2.5),
             "qwen-edit": ("Qwen/Qwen-Image-Edit", 50, 4.0),
             "qwen-edit-2509": ("Qwen/Qwen-Image-Edit-2509", 40, 4.0),
             "qwen-edit-2511": ("Qwen/Qwen-Image-Edit-2511", 40, 4.0)}
    for family, (repo, steps, cfg) in cases.items():
        plan = plan_of(edit_job(family, steps=None))
        assert (plan.models.base, plan.styles[0].steps, plan.styles[0].cfg) == (repo, steps, cfg), family
        assert plan.models.controlnets == ()
    from archviz_controlnet.backend.models.registry import CATALOG

    assert CATALOG["kontext"][0][0] == cases["kontext"][0] and CATALOG["qwen-edit-2511"][0][0] == cases["qwen-edit-2511"][0]
    assert "processor" in CATALOG["qwen-edit"][0][1]


@pytest.mark.parametrize("change, field, words", [
    ({"styles": [{"name": "e", "edit": "   "}]}, "styles[0].edit", "empty"),
    ({"model": {"family": "tiny"}}, "model.family", "'tiny' makes images from text"),
    ({"model": {"family": "tiny-flux"}}, "model.family", "kontext or qwen-edit"),
    ({"init_image": None}, "init_image", "needs the picture"),
    ({"controls": [{"type": "depth", "image": b64(picture(64, 48))}]}, "controls", "no ControlNet"),
    ({"strength": 0.5}, "strength", "no strength"),
    ({"styles": [{"name": "a", "edit": "x"}, {"name": "b", "prompt": "a loft"}]}, "styles[1].edit", "required"),
    ({"styles": ["modern"]}, "styles", "give each style an edit text"),
    ({"init_image": b64(picture(60, 48))}, "init_image", "multiple of"),
])
def test_bad_edit_jobs_name_the_value(change, field, words):
    job = {**edit_job("tiny-kontext"), **change}
    if job.get("init_image") is None:
        job.pop("init_image")
    with pytest.raises(J.JobError) as err:
        plan_of(job)
    assert err.value.field == field and words in str(err.value) and "\n" not in str(err.value)


def test_bad_sizes_for_the_edit_models_name_the_value():
    with pytest.raises(J.JobError, match=r"^width: 72 px: tiny-kontext needs a multiple of 16$"):
        plan_of(edit_job("tiny-kontext", init=picture(72, 48)))


@pytest.mark.parametrize("args, words", [
    (dict(edit=["  "]), "--edit '  ': the edit text is empty"),
    (dict(edit=["ok", ""], model="tiny-kontext"), "--edit #2 '': the edit text is empty"),
    (dict(model="tiny"), "--model 'tiny' makes images from text"),
    (dict(model="sd15"), "use --model kontext or qwen-edit"),
    (dict(controls_given=True, controls="depth"), "--controls 'depth' cannot be used with --edit"),
    (dict(strength="0.5"), "--strength 0.5 cannot be used with --edit"),
    (dict(region="floor"), "--region/--region-objects cannot be used with --edit"),
    (dict(edit=None, model="tiny-qwen-edit"), "--model tiny-qwen-edit edits a picture by instruction"),
])
def test_bad_cli_edit_options_are_one_line(args, words):
    values = dict(edit=[EDIT], model="tiny-kontext", controls_given=False, controls="", init=None, strength=None,
                  region=None, region_objects=None, upscale=None)
    values.update(args)
    problem = edit_problem(SimpleNamespace(**values))
    assert problem is not None and words in problem and "\n" not in problem


def test_edit_defaults_to_the_beauty_pass():
    args = SimpleNamespace(edit=[EDIT], model="tiny-kontext", controls_given=False, controls="", init=None,
                           strength=None, region=None, region_objects=None, upscale=None)
    assert edit_problem(args) is None and args.init == "beauty"


# ---------------------------------------------------------------- archviz sweep --edit, Blender

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


@pytest.fixture(scope="module")
def interior(tmp_path_factory):
    pytest.importorskip("bpy")
    path = tmp_path_factory.mktemp("scene") / "interior.blend"
    subprocess.run([sys.executable, str(REPO / "examples" / "build_interior.py"), "--out", str(path)],
                   check=True, capture_output=True, timeout=300)
    return str(path)


def sweep(scene, out, *extra, model="tiny-kontext"):
    from backend_support import TEST_HOME

    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    return subprocess.run([ARCHVIZ, "sweep", scene, "--seeds", "0", "--model", model, "--long-side", "64",
                           "--steps", "2", "--supersample", "1", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def test_cli_edit_sweep_from_the_beauty_pass_records_and_resumes(interior, tmp_path):
    from backend_support import read_png

    out = tmp_path / "out"
    args = ["--edit", EDIT, "--edit", "add a fireplace", "--styles", "modern", "--seeds", "0,1"]
    first = sweep(interior, out, *args)
    assert first.returncode == 0, first.stderr
    assert "4 new image(s), 0 already on disk" in first.stdout and "4/4 images" in first.stderr
    cam = os.listdir(out / "passes")[0]
    beauty, _ = read_png(str(out / "passes" / cam / "beauty.png"))
    images = sorted(p for p in os.listdir(out) if p.endswith(".png") and "_s" in p and "contact" not in p)
    assert len(images) == 4 and any("modern-edit1_s1" in p for p in images)
    texts = set()
    for name in images:
        pixels, meta = read_png(str(out / name))
        params = json.loads(meta["archviz"])["params"]
        assert pixels.shape == beauty.shape and params["controls"] == []
        assert params["edit"]["text"] == meta["edit"] and meta["init_sha256"] == params["edit"]["image_sha256"]
        assert "strength" not in meta and f"Edit: {meta['edit']}" in meta["parameters"]
        texts.add(meta["edit"])
    assert texts == {EDIT, "add a fireplace"}
    # resume: the same texts are kept; a third text is made (its two seeds) next to them
    again = sweep(interior, out, *args, "--edit", "add a fireplace and a red rug")
    assert again.returncode == 0 and "2 new image(s), 4 already on disk" in again.stdout


def test_cli_qwen_edit_of_the_beauty_pass_end_to_end(interior, tmp_path):
    from backend_support import read_png

    out = tmp_path / "out"
    proc = sweep(interior, out, "--edit", EDIT, model="tiny-qwen-edit")
    assert proc.returncode == 0, proc.stderr
    assert "1 new image(s)" in proc.stdout
    image = out / next(p for p in os.listdir(out) if p.endswith("edit1_s0.png"))
    pixels, meta = read_png(str(image))
    assert meta["edit"] == EDIT and json.loads(meta["model"])["family"] == "tiny-qwen-edit"
    assert meta["cfg"] == "4" and meta["negative_prompt"] == " "
    assert pixels.shape[:2] == read_png(str(out / "passes" / os.listdir(out / "passes")[0] / "beauty.png"))[0].shape[:2]


@pytest.mark.parametrize("extra, model, message", [
    (["--edit", EDIT], "tiny", "archviz sweep: --edit needs an instruction-edit model: --model 'tiny'"),
    (["--edit", " "], "tiny-kontext", "archviz sweep: --edit ' ': the edit text is empty"),
    (["--styles", "modern"], "tiny-kontext", "archviz sweep: --model tiny-kontext edits a picture by instruction"),
    (["--edit", EDIT, "--controls", "depth"], "tiny-kontext", "archviz sweep: --controls 'depth' cannot be used"),
    (["--edit", EDIT, "--init", "nowhere.png"], "tiny-kontext", "archviz sweep: --init 'nowhere.png': no such file"),
    ([], "tiny", "archviz sweep: styles: --styles is required"),
])
def test_bad_cli_edit_input_is_one_line(interior, tmp_path, extra, model, message):
    proc = sweep(interior, tmp_path / "bad", *extra, model=model)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_edit_field_in_blender_edits_the_beauty_pass(interior, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.blender import backend, tasks

    from backend_support import TEST_HOME, read_png

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny-kontext")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=interior)
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.supersample = 64, 2, 1
        settings.output_dir = str(tmp_path / "out")
        settings.edit_text = EDIT
        assert bpy.ops.archviz.generate() == {"FINISHED"}
        made = [i for i in bpy.data.images if "archviz_style" in i]
        assert len(made) == 1 and made[0]["edit"] == EDIT and made[0]["archviz_style"].endswith("-edit")
        _pixels, meta = read_png(made[0]["archviz_path"])
        assert meta["params_sha256"] == made[0]["params_sha256"]
        assert json.loads(meta["archviz"])["params"]["edit"]["text"] == EDIT
        assert os.path.isfile(tmp_path / "out" / "passes" / made[0]["archviz_camera"] / "beauty.png")
        settings.region_mode = "CLASSES"
        with pytest.raises(RuntimeError, match="edit: an instruction edit changes the whole picture"):
            bpy.ops.archviz.generate()
    finally:
        tasks.Task.current = None
        backend.stop_started_backends()
        archviz_controlnet.unregister()
