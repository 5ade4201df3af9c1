"""The Z-Image family with the tiny-zimage models: the engine against diffusers'
ZImageControlNetPipeline (one unit as the pipeline takes it; several units and windows
against the same pipeline whose controlnet is a multi-net of diffusers' own nets), units
outside their window not run, an image the same alone or in a sweep, the union net loaded
from one checkpoint file, preset sections, job errors, the full-size configs on the meta
device. The CLI sweep and the Blender operator: tests/test_family_front_ends.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.presets import load_presets

from backend_support import TEST_HOME, b64, bench_both_baselines, depth_image, lines_image, MEMORY_PROFILE_CHOICES


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def units(*specs):
    images = {"depth": depth_image(), "canny": lines_image(), "lines": lines_image(), "mlsd": lines_image()}
    return [{"type": t, "image": b64(images[t]), "scale": s, "start": a, "end": b} for t, s, a, b in specs]


def plan_of(controls=None, styles=("modern",), seeds=(0,), steps=4, **extra):
    from test_backend_engine import make_plan

    controls = controls if controls is not None else units(("depth", 0.8, 0.0, 1.0))
    return make_plan(family="tiny-zimage", controls=controls, styles=styles, seeds=seeds, steps=steps,
                     scheduler=None, cfg=extra.pop("cfg", None), **extra)


def reference(engine, plan, style_index, seed, multi=None):
    """ZImageControlNetPipeline for one (style, seed): the plan's one unit as the pipeline
    takes it (one net, one image, one scale), or with ``multi`` every unit through the
    multi-net (diffusers' multi-ControlNet rule around its own nets; it checks that the
    pipeline's own control latents of the first image are the ones it was given)."""
    base, nets = engine.load(plan.models)
    style = plan.styles[style_index]
    net = nets[0].value
    pipe = engine.helper_pipeline("zimage", base.value, [net])
    pipe.set_progress_bar_config(disable=True)
    scale = style.units[0].scale
    if multi:
        from archviz_controlnet.backend.engine.families.zimage import PipelineMultiNet, pipeline_control_latents

        latents = [pipeline_control_latents(pipe, c.image, plan.width, plan.height, n.value)
                   for c, n in zip(plan.controls, nets)]
        pipe.controlnet = PipelineMultiNet([n.value for n in nets], latents, style.units, style.steps,
                                          pipe.transformer)
        scale = 1.0
    else:
        assert len(style.units) == 1 and (style.units[0].start, style.units[0].end) == (0.0, 1.0)
    return pipe(style.prompt, control_image=plan.controls[0].image, controlnet_conditioning_scale=scale,
                num_inference_steps=style.steps, guidance_scale=0.0, height=plan.height, width=plan.width,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


def test_zimage_matches_the_diffusers_pipeline_with_one_unit(engine):
    plan = plan_of(units(("depth", 0.8, 0.0, 1.0)), seeds=(3, 4))
    sweep = engine.generate(plan, plan.images)
    assert engine.stats["prompt_encodes"] == 1 and engine.stats["transformer"] == 8
    for item in plan.images:
        ref = reference(engine, plan, item.style, item.seed)
        assert sweep[item.index].shape == ref.shape == (64, 64, 3)
        assert np.abs(sweep[item.index] - ref).max() < 1e-4
    assert np.abs(sweep[0] - sweep[1]).max() > 0.05  # seeds differ


@pytest.mark.parametrize("specs", [
    (("depth", 0.8, 0.0, 1.0), ("lines", 0.6, 0.0, 1.0)),
    (("depth", 0.8, 0.0, 0.5), ("lines", 0.6, 0.25, 1.0)),  # windows
    (("depth", 0.7, 0.25, 1.0),),  # one unit with a window
    (("depth", 0.8, 0.0, 1.0), ("lines", 0.0, 0.0, 1.0)),  # scale 0
])
def test_zimage_units_and_windows_match_the_pipeline_with_a_multi_net(engine, specs):
    plan = plan_of(units(*specs), seeds=(5,))
    ours = engine.generate(plan, plan.images)[0]
    assert np.abs(ours - reference(engine, plan, 0, 5, multi=True)).max() < 1e-4


def test_the_control_steers_and_a_unit_at_scale_0_is_absent(engine):
    both = engine.generate(p := plan_of(units(("depth", 0.8, 0, 1), ("lines", 0.7, 0, 1))), p.images)[0]
    zero = engine.generate(p := plan_of(units(("depth", 0.8, 0, 1), ("lines", 0.0, 0, 1))), p.images)[0]
    alone = engine.generate(p := plan_of(units(("depth", 0.8, 0, 1))), p.images)[0]
    assert np.abs(both - alone).max() > 0.02
    assert np.abs(zero - alone).max() < 1e-6  # not run at all: exactly the one-unit image (no noise drawn for it)


def test_units_outside_their_window_are_not_run(engine):
    plan = plan_of(units(("depth", 0.8, 0.0, 0.5), ("lines", 0.6, 0.5, 1.0), ("depth", 0.0, 0.0, 1.0)),
                   seeds=(1, 2))
    base, nets = engine.load(plan.models)
    assert len({id(n.value) for n in nets}) == 1  # one union net for every unit
    calls, encodes = [], []
    hooks = [nets[0].value.register_forward_pre_hook(lambda *a: calls.append(1)),
             base.value["vae"].encoder.register_forward_pre_hook(lambda *a: encodes.append(1))]
    try:
        engine.generate(plan, plan.images)
    finally:
        for h in hooks:
            h.remove()
    # 4 steps, one batch of 2: depth in steps 0-1, lines in 2-3, the scale-0 unit never.
    assert len(calls) == 4
    assert len(encodes) == 3  # each control image VAE-encoded once per job, not per image or step
    assert engine.stats["controlnet0"] == 4 and engine.stats["controlnet1"] == 4
    assert "controlnet2" not in engine.stats and engine.stats["transformer"] == 8


def test_an_image_is_the_same_alone_or_in_a_sweep(engine):
    plan = plan_of(units(("depth", 0.8, 0, 0.8), ("lines", 0.6, 0, 1)), styles=("modern", "industrial"),
                   seeds=(0, 1, 2), steps=3)
    sweep = engine.generate(plan, plan.images)
    assert len(engine.batches(plan, plan.images)) == 1 and engine.stats["prompt_encodes"] == 2
    for index in (0, 4):
        alone = engine.generate(plan, [plan.images[index]])[index]
        assert np.abs(alone - sweep[index]).max() <= 1e-3
    assert np.abs(sweep[0] - sweep[3]).max() > 1e-3  # styles differ


def test_the_union_net_loads_from_one_checkpoint_file(engine):
    """The tiny union net is stored as the real one ships (one .safetensors, no diffusers
    folder); a path to the file itself loads the same weights."""
    from archviz_controlnet.backend.models import registry as M
    from archviz_controlnet.backend.models import tiny
    from archviz_controlnet.backend.models.tiny.zimage import CONTROLNET_FILE

    folder = tiny.ensure_tiny(tiny.tiny_path("zimage", "controlnet-union"))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [CONTROLNET_FILE, "config.json"]
    by_folder = M.load_controlnet(M.ControlNetRef(str(folder), arch="zimage"), torch.float32, "cpu")
    by_file = M.load_controlnet(M.ControlNetRef(str(folder / CONTROLNET_FILE), arch="zimage"), torch.float32, "cpu")
    a, b = by_folder.state_dict(), by_file.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert by_folder.config.add_control_noise_refiner == "control_noise_refiner"  # shaped like version 2.1


def test_the_real_union_net_downloads_and_loads_from_one_file(tmp_path):
    """`archviz models download zimage-union` against a hub on loopback holding the tiny net
    under the real ids, laid out like the real repositories (the checkpoint among other
    checkpoints and assets; the config in diffusers' config repo): only the one file and the
    config are fetched, then the net loads offline through from_single_file."""
    import json
    import shutil

    from fake_hub import FakeHub

    from archviz_controlnet.backend.models import registry as M
    from archviz_controlnet.backend.models import tiny
    from archviz_controlnet.backend.models.tiny.zimage import CONTROLNET_FILE

    src = tiny.ensure_tiny(tiny.tiny_path("zimage", "controlnet-union"))
    file, config_repo = M.ZIMAGE_UNION_FILES[M.ZIMAGE_UNION]
    net_repo, cfg_repo = tmp_path / "repos" / M.ZIMAGE_UNION, tmp_path / "repos" / config_repo
    net_repo.mkdir(parents=True)
    cfg_repo.mkdir(parents=True)
    shutil.copy(src / CONTROLNET_FILE, net_repo / file)
    shutil.copy(src / CONTROLNET_FILE, net_repo / "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2602-8steps.safetensors")
    (net_repo / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    shutil.copy(src / "config.json", cfg_repo / "config.json")
    home = tmp_path / "hf"
    with FakeHub({M.ZIMAGE_UNION: net_repo, config_repo: cfg_repo}) as hub:
        env = hub.env(home, ARCHVIZ_HOME=str(TEST_HOME))
        got = subprocess.run([ARCHVIZ, "models", "download", "zimage-union"], env=env, capture_output=True, text=True,
                             timeout=300)
        assert got.returncode == 0, got.stderr[-2000:]
        assert set(hub.fetched()) == {f"{M.ZIMAGE_UNION}/{file}", f"{config_repo}/config.json"}
    code = ("import json, torch; from archviz_controlnet.backend.models import registry as M; "
            "net = M.load_controlnet(M.ControlNetRef(M.ZIMAGE_UNION, arch='zimage'), torch.float32, 'cpu'); "
            "print(json.dumps({'params': sum(p.numel() for p in net.parameters()), "
            "'places': list(net.config.control_layers_places)}))")
    offline = subprocess.run([sys.executable, "-c", code], env=dict(env, HF_HUB_OFFLINE="1"), capture_output=True,
                             text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-2000:]
    loaded = json.loads(offline.stdout.strip().splitlines()[-1])
    ref = M.load_controlnet(M.ControlNetRef(str(src), arch="zimage"), torch.float32, "cpu")
    assert loaded == {"params": sum(p.numel() for p in ref.parameters()),
                      "places": list(ref.config.control_layers_places)}


def test_real_ids_and_what_a_download_fetches():
    from archviz_controlnet.backend.models import registry as M

    job = J.Job.from_dict({"model": {"family": "zimage"}, "controls": units(("depth", 0.8, 0, 1), ("mlsd", 0.6, 0, 1)),
                           "styles": ["modern"], "seeds": [0]})
    plan = M.resolve_models(job.model, ["depth", "mlsd"], [None, None])
    assert plan.base == "Tongyi-MAI/Z-Image-Turbo" and plan.arch == "zimage"
    assert [r.ref for r in plan.controlnets] == ["alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1"] * 2
    assert all(r.union_mode is None for r in plan.controlnets)  # the net reads the type from the image
    needs = M.hub_needs(plan)
    assert needs[0] == ("Tongyi-MAI/Z-Image-Turbo", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
                        "base model")
    assert needs[1:] == [("alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1",
                          ("Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors",), "ControlNet"),
                         ("hlky/Z-Image-Turbo-Fun-Controlnet-Union-2.1", ("config.json",), "ControlNet config")]
    assert [e[0] for e in M.CATALOG["zimage"]] == [n[0] for n in needs]


def test_hub_selects_a_single_checkpoint_file():
    from archviz_controlnet.backend.models.hub import Files, HubError, select_files

    listing = ["README.md", "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors",
               "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2602-8steps.safetensors", "asset/pose.jpg"]
    assert select_files(listing, Files(["Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"]), fp16=True) == [
        "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"]
    with pytest.raises(HubError, match="has no 'config.json'"):
        select_files(listing, Files(["config.json"]), fp16=True)


def test_every_builtin_preset_has_a_zimage_section_used_by_the_plan():
    presets = load_presets(include_user=False)
    for name, preset in presets.items():
        z = preset.zimage
        assert z.get("prompt") and z.get("cfg") == 1.0 and 6 <= z.get("steps") <= 10, name
        assert "depth" in z["controls"] and "lines" in z["controls"], name
        assert 0.4 <= z["controls"]["depth"].scale <= 0.8, name
    plan = plan_of([{"type": "depth", "image": b64(depth_image())}, {"type": "canny", "image": b64(lines_image())}],
                   steps=None)
    style, modern = plan.styles[0], presets["modern"].zimage
    assert (style.prompt, style.cfg, style.steps) == (modern["prompt"], 1.0, modern["steps"])
    assert style.negative == "" and style.scheduler == "flow_euler"
    assert style.units[0].scale == modern["controls"]["depth"].scale
    assert style.units[1].scale == modern["controls"]["lines"].scale  # canny falls back to lines
    assert style.units[1].end == modern["controls"]["lines"].end
    assert plan.params(plan.images[0])["model"]["family"] == "tiny-zimage"


def test_a_zimage_section_is_validated(tmp_path):
    from archviz_controlnet.core.presets import PresetError, load_preset_file

    path = tmp_path / "bad.toml"
    path.write_text('prompt = "x"\n[zimage]\nnegative = "blurry"\n')
    with pytest.raises(PresetError, match=r"zimage\.negative: unknown key \(known: cfg, steps, controls, prompt\)"):
        load_preset_file(path)


@pytest.mark.parametrize("extra, field, words", [
    ({"scheduler": "unipc"}, "scheduler", "flow-matching"),
    ({"controls": [{"type": "depth", "image": b64(depth_image(72, 64))}]}, "width", "Z-Image-Turbo needs a multiple of 16"),
    ({"cfg": 3.5}, "cfg", "no classifier-free guidance"),
    ({"styles": [{"preset": "modern", "negative": "blurry"}]}, "styles[0].negative", "no negative prompt"),
    ({"controls": [{"type": "normal", "image": b64(depth_image())}]}, "controls[0].type", "not trained on 'normal'"),
    ({"init_image": b64(depth_image())}, "init_image", "tiny-zimage does not take one yet"),
])
def test_zimage_job_errors_name_the_field(extra, field, words):
    from test_backend_engine import make_plan

    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-zimage", **({"scheduler": None, "cfg": None} | extra))
    assert err.value.field == field and words in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("free_gb, name", MEMORY_PROFILE_CHOICES["zimage"])
def test_memory_profile_is_chosen_from_free_vram(free_gb, name):
    from archviz_controlnet.backend.engine import memory as M

    profile = M.choose_profile("zimage", "cuda", int(free_gb * 2**30))
    assert profile.name == name and profile.changes_images == (name != "full")
    assert M.choose_profile("zimage", "cpu", None) is M.NONE
    assert M.choose_profile("zimage", "cuda", 80 * 2**30, "12gb").stream == "controlnets"


@pytest.mark.parametrize("profile", ["16gb", "12gb"])
def test_a_memory_profile_is_recorded_and_runs(engine, profile):
    """A profile forced on the CPU: int8 weight-only transformer and net (the net's quantized
    copy holds its own copy of the transformer's refiners it shares), the Qwen3 encoder on the
    CPU, the net streamed block by block in 12gb; recorded in every image's parameters."""
    pytest.importorskip("torchao")
    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.backend.engine.sweep import build_plan

    small = Engine("cpu", memory_profile=profile)
    small.cache = engine.cache  # the same warm tiny models
    plan = plan_of(units(("depth", 0.8, 0, 1), ("lines", 0.6, 0.25, 1)), seeds=(0,), steps=2)
    changes = small.image_changes_for("zimage")
    assert changes == {"memory_profile": profile, "quantize": "int8-weight"}
    labelled = build_plan(plan.job, load_presets(include_user=False), "float32", changes)
    assert labelled.images[0].params_sha256 != plan.images[0].params_sha256
    if profile == "12gb":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            with pytest.raises(RuntimeError, match="needs the accelerate package"):
                small.generate(plan, plan.images)
            return
    out = small.generate(plan, plan.images)[0]
    exact = engine.generate(plan, plan.images)[0]
    assert np.isfinite(out).all() and 0 < np.abs(out - exact).max() < 0.5
    assert small.options.quantize == "none"  # the profile's quantize lasts one job


def test_unit_types_line_styles_and_size_multiple_per_family():
    from archviz_controlnet.core import passes as P

    assert J.control_types_for("zimage") == J.control_types_for("tiny-zimage") == ("depth", "lines", "canny",
                                                                                   "mlsd", "lineart")
    assert J.FAMILY_ARCH[J.FAMILY_ALIASES["z-image-turbo"]] == "zimage"
    assert P.line_style_for("lines", "zimage") == "canny" and P.line_style_for("mlsd", "tiny-zimage") == "mlsd"
    assert P.line_style_for("lineart", "zimage") == "softedge"  # HED-like soft lines
    assert P.size_multiple("zimage") == P.size_multiple("tiny-zimage") == 16 and P.size_multiple("sd15") == 8


def test_full_size_configs_match_the_published_sizes_on_the_meta_device():
    """bench/configs_zimage.py: Z-Image-Turbo's transformer (6.15 B), the union net 2.1's own
    blocks, the Qwen3-4B encoder and the FLUX VAE, built on the meta device (no memory)."""
    from archviz_controlnet.bench import configs_zimage as C

    counts = C.parameter_counts()
    assert 6.0e9 < counts["transformer"] < 6.3e9
    assert 3.9e9 < counts["text_encoder"] < 4.1e9  # Qwen3-4B without its LM head
    assert 70e6 < counts["vae"] < 90e6
    # 2.1: 15 control blocks + 2 control refiner blocks of the transformer's width; the
    # checkpoint is 6.71 GB in bf16, so about 3.35 B parameters
    assert 3.2e9 < counts["controlnet"] < 3.5e9
    # the bench's full-size plan: Z-Image-Turbo's sampling, one union net for both units
    from archviz_controlnet.bench import runner

    plan = runner.make_plan(runner.Spec(config="zimage", size=1024, steps=8), "full")
    assert plan.models.arch == "zimage" and len({r.ref for r in plan.models.controlnets}) == 1
    assert plan.styles[0].cfg == 1.0 and plan.styles[0].scheduler == "flow_euler" and plan.width == 1024


def test_bench_tiny_zimage_both_baselines(tmp_path, capsys):
    """ZImageControlNetPipeline per (style, seed) and batched (several units through the
    multi-net) against the engine: same images, fewer ControlNet forwards with windows."""
    text, report, sides = bench_both_baselines(tmp_path, capsys, "tiny-zimage", 4, "none")
    for case in ("full", "early-depth"):
        assert sides["ours", case]["forwards"]["transformer"] == 4 * 4  # no CFG: one row per image and step
    # lines from 20 %: steps 1-3 of 4; depth to 50 % in early-depth: steps 0-1
    assert sides["ours", "full"]["forwards"]["controlnet1"] == 3 * 4
    assert sides["ours", "early-depth"]["forwards"]["controlnet0"] == 2 * 4
    assert "archviz bench: config tiny-zimage" in text and "ratio vs batched" in text


ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
