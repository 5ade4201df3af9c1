"""The Qwen-Image family with the tiny-qwen models: the engine against diffusers'
QwenImageControlNetPipeline (true CFG, windows, several units on the one union net), units
outside their window not run, an image the same alone or in a sweep, preset sections, job
errors, the bench's two baselines and the full-size configs' parameter counts on the meta
device. The CLI sweep and the Blender operator: tests/test_family_front_ends.py."""


import numpy as np
import pytest
import torch

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.presets import load_presets

from backend_support import b64, bench_both_baselines, depth_image, lines_image, MEMORY_PROFILE_CHOICES


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def units(*specs):
    images = {"depth": depth_image(), "canny": lines_image(), "lines": lines_image()}
    return [{"type": t, "image": b64(images[t]), "scale": s, "start": a, "end": b} for t, s, a, b in specs]


TWO = (("depth", 0.9, 0.0, 1.0), ("canny", 0.6, 0.2, 1.0))


def plan_of(controls=None, styles=("modern",), seeds=(0,), steps=3, **extra):
    from test_backend_engine import make_plan

    return make_plan(family="tiny-qwen", controls=controls if controls is not None else units(*TWO), styles=styles,
                     seeds=seeds, steps=steps, scheduler=None, cfg=extra.pop("cfg", 4.0), **extra)


def reference(engine, plan, style_index, seed):
    """QwenImageControlNetPipeline (a QwenImageMultiControlNetModel of the union net) for one
    (style, seed), true CFG with the style's negative prompt (" " when empty)."""
    base, nets = engine.load(plan.models)
    pipe = engine.helper_pipeline("qwen", base.value, [n.value for n in nets])
    pipe.set_progress_bar_config(disable=True)
    style = plan.styles[style_index]
    return pipe(style.prompt, negative_prompt=style.negative or " ", true_cfg_scale=style.cfg,
                control_image=[c.image for c in plan.controls], num_inference_steps=style.steps,
                height=plan.height, width=plan.width, controlnet_conditioning_scale=[u.scale for u in style.units],
                control_guidance_start=[u.start for u in style.units],
                control_guidance_end=[u.end for u in style.units],
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


@pytest.mark.parametrize("specs", [
    TWO,
    (("depth", 0.9, 0.0, 0.5), ("canny", 0.6, 0.5, 1.0)),  # windows
    (("depth", 0.8, 0.0, 1.0), ("lines", 0.0, 0.0, 1.0)),  # scale 0
    (("depth", 0.7, 0.3, 1.0),),
])
def test_qwen_matches_the_diffusers_pipeline(engine, specs):
    plan = plan_of(units(*specs), seeds=(3, 4), steps=4)
    assert all(r.ref.endswith("qwen/controlnet-union") and r.union_mode is None for r in plan.models.controlnets)
    sweep = engine.generate(plan, plan.images)
    for item in plan.images:
        ref = reference(engine, plan, item.style, item.seed)
        assert sweep[item.index].shape == ref.shape == (64, 64, 3)
        assert np.abs(sweep[item.index] - ref).max() < 1e-4
    assert np.abs(sweep[0] - sweep[1]).max() > 0.05  # seeds differ


def test_styles_of_other_prompt_lengths_share_a_batch_and_match_the_pipeline(engine):
    """Two styles in one batch: prompts padded with a mask, as the pipeline does for a list."""
    plan = plan_of(styles=("modern", "pencil-sketch"), seeds=(5,), steps=3, cfg=3.5)
    assert len(engine.batches(plan, plan.images)) == 1
    sweep = engine.generate(plan, plan.images)
    for item in plan.images:
        assert np.abs(sweep[item.index] - reference(engine, plan, item.style, item.seed)).max() < 1e-4
    assert np.abs(sweep[0] - sweep[1]).max() > 1e-3  # the prompts matter


def test_true_cfg_off_is_one_pass_and_matches(engine):
    plan = plan_of(seeds=(2,), steps=3, cfg=1.0)
    out = engine.generate(plan, plan.images)[0]
    assert engine.stats["transformer"] == 3  # no negative pass
    assert np.abs(out - reference(engine, plan, 0, 2)).max() < 1e-4
    cfg = plan_of(seeds=(2,), steps=3, cfg=4.0)
    assert np.abs(engine.generate(cfg, cfg.images)[0] - out).max() > 1e-3


def test_units_outside_their_window_are_not_run(engine):
    plan = plan_of(units(("depth", 0.9, 0.0, 0.5), ("canny", 0.6, 0.5, 1.0), ("depth", 0.0, 0.0, 1.0)),
                   seeds=(1, 2), steps=4)
    _, nets = engine.load(plan.models)
    assert len({id(n.value) for n in nets}) == 1  # every unit runs the one union net
    calls = [0]
    hook = nets[0].value.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        engine.generate(plan, plan.images)
    finally:
        hook.remove()
    # 4 steps, one batch of 2: depth in steps 0-1, canny in 2-3, the scale-0 depth never.
    assert calls == [4]
    assert engine.stats["controlnet0"] == 4 and engine.stats["controlnet1"] == 4
    assert "controlnet2" not in engine.stats
    assert engine.stats["transformer"] == 2 * 4 * 2  # true CFG: prompt and negative pass
    assert engine.stats["prompt_encodes"] == 1


def test_an_image_is_the_same_alone_or_in_a_sweep(engine):
    plan = plan_of(styles=("modern", "industrial"), seeds=(0, 1, 2), steps=3)
    sweep = engine.generate(plan, plan.images)
    assert len(engine.batches(plan, plan.images)) == 1 and engine.stats["prompt_encodes"] == 2
    for index in (0, 4):
        alone = engine.generate(plan, [plan.images[index]])[index]
        assert np.abs(alone - sweep[index]).max() <= 1e-4
    assert np.abs(sweep[0] - sweep[1]).max() > 1e-3  # seeds differ


def test_every_builtin_preset_has_a_qwen_section_used_by_the_plan():
    presets = load_presets(include_user=False)
    for name, preset in presets.items():
        q = preset.qwen
        assert q.get("prompt") and q.get("negative") and 30 <= q.get("steps") <= 50 and 3 <= q.get("cfg") <= 5, name
        assert "depth" in q["controls"] and "lines" in q["controls"], name
    plan = plan_of([{"type": "depth", "image": b64(depth_image())}, {"type": "canny", "image": b64(lines_image())}],
                   steps=None, cfg=None)
    style, modern = plan.styles[0], presets["modern"].qwen
    assert (style.prompt, style.negative, style.cfg, style.steps) == (modern["prompt"], modern["negative"],
                                                                      modern["cfg"], modern["steps"])
    assert style.scheduler == "flow_euler"
    assert style.units[0].scale == modern["controls"]["depth"].scale
    assert style.units[1].scale == modern["controls"]["lines"].scale  # canny falls back to lines
    assert plan.params(plan.images[0])["model"]["family"] == "tiny-qwen"


def test_a_qwen_section_is_validated(tmp_path):
    from archviz_controlnet.core.presets import PresetError, load_preset_file

    path = tmp_path / "mine.toml"
    path.write_text('prompt = "a room"\n[qwen]\nscheduler = "unipc"\n')
    with pytest.raises(PresetError, match=r"qwen.scheduler: unknown key \(known: cfg, steps, controls, prompt, "
                                          r"negative\)"):
        load_preset_file(path)


@pytest.mark.parametrize("extra, field, words", [
    ({"scheduler": "unipc"}, "scheduler", "flow-matching"),
    ({"controls": [{"type": "depth", "image": b64(depth_image(72, 64))}]}, "width", "Qwen-Image needs a multiple of 16"),
    ({"controls": [{"type": "seg", "image": b64(depth_image())}]}, "controls[0].type", "not trained on 'seg'"),
    ({"init_image": b64(depth_image())}, "init_image", "does not take one yet"),
])
def test_qwen_job_errors_name_the_field(extra, field, words):
    from test_backend_engine import make_plan

    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-qwen", **({"scheduler": None} | extra))
    assert err.value.field == field and words in str(err.value)
    assert "\n" not in str(err.value)


def test_unit_types_line_style_size_and_ids():
    from archviz_controlnet.backend.models import registry as M
    from archviz_controlnet.core import passes as P

    assert J.control_types_for("qwen") == J.control_types_for("tiny-qwen") == ("depth", "lines", "canny", "mlsd",
                                                                                  "lineart")
    assert J.FAMILY_ARCH[J.FAMILY_ALIASES["qwen-image"]] == "qwen"
    assert P.line_style_for("lines", "qwen") == P.line_style_for("lines", "tiny-qwen") == "canny"
    assert P.size_multiple("qwen") == P.size_multiple("tiny-qwen") == 16
    real = M.resolve_models(J.ModelSpec(family="qwen"), ["depth", "lines"], [None, None])
    assert real.base == "Qwen/Qwen-Image" and {r.ref for r in real.controlnets} == {"InstantX/Qwen-Image-ControlNet-Union"}
    assert [r for r, _c, _l in M.CATALOG["qwen"]] == ["Qwen/Qwen-Image", "InstantX/Qwen-Image-ControlNet-Union"]
    assert M.hub_needs(real)[0] == ("Qwen/Qwen-Image", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
                                    "base model")


def test_long_prompts_are_reported(engine):
    from archviz_controlnet.backend.engine.families.qwen import MAX_SEQUENCE_LENGTH, prompt_overflow

    base, _ = engine.load(plan_of().models)
    tok = base.value["tokenizer"]
    assert prompt_overflow(tok, "prompt", "a modern interior") == ""
    long = " ".join(["concrete"] * (MAX_SEQUENCE_LENGTH + 20))
    message = prompt_overflow(tok, "prompt", long)
    assert message.startswith("the prompt is ") and f"reads {MAX_SEQUENCE_LENGTH}" in message


def test_full_size_configs_are_the_real_architecture_on_the_meta_device():
    """Transformer 20.4 B (40.9 GB bf16 on the hub), Qwen2.5-VL text encoder 8.3 B (16.6 GB,
    the "7B" with its vision tower), union ControlNet 1.77 B (3.54 GB), VAE 127 M (254 MB):
    built on the meta device (shapes only, no memory)."""
    from archviz_controlnet.bench import configs_qwen as C

    comps, nets = C.build_random("meta", torch.bfloat16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(comps["transformer"]) == 20_430_401_088
    assert count(comps["text_encoder"]) == 8_292_166_656
    assert count(nets[0]) == 1_768_003_584
    assert count(comps["vae"]) == 126_892_531
    assert next(comps["transformer"].parameters()).device.type == "meta"
    assert comps["transformer"].config.num_layers == 60 and nets[0].config.num_layers == 5


def test_bench_qwen_config_builds_on_the_meta_device(monkeypatch):
    from archviz_controlnet.bench import runner

    monkeypatch.setenv("ARCHVIZ_MEMORY_BUDGET_GB", "200")  # fp32 shapes of ~30 B parameters
    spec = runner.Spec(config="qwen", device="meta", size=runner.DEFAULT_SIZE["qwen"])
    engine = runner.build_engine(spec)
    plan = runner.make_plan(spec, "full")
    base, nets = engine.load(plan.models)
    assert base.value["transformer"].config.num_layers == 60 and len({id(n.value) for n in nets}) == 1
    assert (plan.width, plan.height) == (1328, 1328) and plan.styles[0].scheduler == "flow_euler"


def test_bench_tiny_qwen_both_baselines(tmp_path, capsys):
    """QwenImageControlNetPipeline per (style, seed) and batched against the engine: same images."""
    text, report, sides = bench_both_baselines(tmp_path, capsys, "tiny-qwen", 3, "window-skip")
    for case in ("full", "early-depth"):
        assert sides["ours", case]["forwards"]["transformer"] == 3 * 4 * 2  # true CFG: two passes per image and step
    assert sides["ours", "early-depth"]["forwards"]["controlnet0"] < sides["ours", "full"]["forwards"]["controlnet0"]
    assert "archviz bench: config tiny-qwen" in text and "ratio vs batched" in text
    assert report["rows"][0]["max_diff"] <= 1e-3




GB = 2**30


@pytest.mark.parametrize("free_gb, name", MEMORY_PROFILE_CHOICES["qwen"])
def test_memory_profile_is_chosen_from_free_vram(free_gb, name):
    """Qwen-Image's 8-bit transformer alone is 20.4 GB: a 24 GB card streams it."""
    from archviz_controlnet.backend.engine import memory as M

    profile = M.choose_profile("qwen", "cuda", int(free_gb * GB))
    assert profile.name == name and profile.changes_images == (name != "full")
    assert M.choose_profile("qwen", "cpu", None) is M.NONE
    assert M.choose_profile("qwen", "cuda", 80 * GB, "12gb").stream == "all"


def test_a_memory_profile_is_recorded_and_runs(engine):
    """The 24 GB profile forced on the CPU: int8 weight-only transformer and net, the text
    encoder on the CPU; recorded in every image's parameters."""
    pytest.importorskip("torchao")
    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.backend.engine.sweep import build_plan

    small = Engine("cpu", memory_profile="24gb")
    small.cache = engine.cache  # the same warm tiny models
    plan = plan_of(seeds=(0,), steps=2)
    changes = small.image_changes_for("qwen")
    assert changes == {"memory_profile": "24gb", "quantize": "int8-weight"}
    labelled = build_plan(plan.job, load_presets(include_user=False), "float32", changes)
    assert labelled.params(labelled.images[0])["engine_options"] == changes
    assert labelled.images[0].params_sha256 != plan.images[0].params_sha256
    out = small.generate(plan, plan.images)[0]
    exact = engine.generate(plan, plan.images)[0]
    assert np.isfinite(out).all() and 0 < np.abs(out - exact).max() < 0.5


def test_the_streaming_profile_needs_accelerate_or_runs(engine):
    """16 GB and smaller cards: the 8-bit transformer and net streamed block by block
    (diffusers' group offloading, which needs the accelerate package)."""
    pytest.importorskip("torchao")
    from archviz_controlnet.backend.engine.runner import Engine

    small = Engine("cpu", memory_profile="16gb")
    small.cache = engine.cache
    plan = plan_of(seeds=(0,), steps=2)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="memory profile '16gb' .*needs the accelerate package"):
            small.generate(plan, plan.images)
    else:
        assert np.isfinite(small.generate(plan, plan.images)[0]).all()


def test_guess_mode_is_refused_not_ignored(engine):
    from archviz_controlnet.backend.engine.runner import Engine

    other = Engine("cpu", options={"guess_mode": True})
    other.cache = engine.cache
    plan = plan_of(seeds=(0,), steps=2)
    with pytest.raises(RuntimeError, match="guess_mode: the qwen family has no guess mode"):
        other.generate(plan, plan.images)
