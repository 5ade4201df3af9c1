"""The FLUX.1 family with the tiny-flux models: the engine against diffusers'
FluxControlNetPipeline (windows, several units, union modes), units outside their window
not run, an image the same alone or in a sweep, preset sections, the memory-profile
choice. The CLI sweep and the Blender operator: tests/test_family_front_ends.py."""

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.engine import memory as M
from archviz_controlnet.backend.engine.runner import Engine
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.presets import load_presets

from backend_support import b64, depth_image, lines_image, MEMORY_PROFILE_CHOICES

GB = 2**30


pytestmark = pytest.mark.usefixtures("home")  # conftest.py: the tiny models' home, quiet logs; `engine` too


def plan_of(controls=None, union=False, styles=("modern",), seeds=(0,), steps=3, **extra):
    from test_backend_engine import make_plan

    controls = controls if controls is not None else [
        {"type": "depth", "image": b64(depth_image()), "scale": 0.9},
        {"type": "canny", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}]
    return make_plan(family="tiny-flux", controls=controls, union=union, styles=styles, seeds=seeds, steps=steps,
                     scheduler=None, cfg=extra.pop("cfg", 3.5), **extra)


def reference(engine, plan, style_index, seed):
    """FluxControlNetPipeline (a FluxMultiControlNetModel of the plan's nets) for one (style, seed)."""
    base, nets = engine.load(plan.models)
    pipe = engine.helper_pipeline("flux", base.value, [n.value for n in nets])
    pipe.set_progress_bar_config(disable=True)
    style = plan.styles[style_index]
    return pipe(style.prompt, control_image=[c.image for c in plan.controls], num_inference_steps=style.steps,
                guidance_scale=style.cfg, height=plan.height, width=plan.width,
                controlnet_conditioning_scale=[u.scale for u in style.units],
                control_guidance_start=[u.start for u in style.units],
                control_guidance_end=[u.end for u in style.units],
                control_mode=[r.union_mode for r in plan.models.controlnets],
                max_sequence_length=32, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="np").images[0]


def units(*specs):
    images = {"depth": depth_image(), "canny": lines_image(), "lines": lines_image()}
    return [{"type": t, "image": b64(images[t]), "scale": s, "start": a, "end": b} for t, s, a, b in specs]


@pytest.mark.parametrize("specs", [
    (("depth", 0.9, 0.0, 1.0), ("canny", 0.6, 0.0, 1.0)),
    (("depth", 0.9, 0.0, 0.5), ("canny", 0.6, 0.2, 1.0)),  # windows
    (("depth", 0.8, 0.0, 1.0), ("canny", 0.0, 0.5, 1.0)),  # scale 0
    (("depth", 0.7, 0.3, 1.0),),
])
def test_flux_matches_the_diffusers_pipeline(engine, specs):
    plan = plan_of(units(*specs), seeds=(3, 4), steps=4)
    sweep = engine.generate(plan, plan.images)
    for item in plan.images:
        ref = reference(engine, plan, item.style, item.seed)
        assert sweep[item.index].shape == ref.shape == (64, 64, 3)
        assert np.abs(sweep[item.index] - ref).max() < 1e-4
    assert np.abs(sweep[0] - sweep[1]).max() > 0.05  # seeds differ


def test_flux_union_modes_match_the_diffusers_pipeline(engine):
    plan = plan_of(units(("depth", 0.7, 0.0, 0.8), ("lines", 0.5, 0.2, 1.0)), union=True, seeds=(5,), steps=4)
    assert [r.union_mode for r in plan.models.controlnets] == [2, 0]  # InstantX modes: depth 2, canny 0
    assert plan.models.controlnets[0].ref.endswith("flux/controlnet-union")
    ours = engine.generate(plan, plan.images)[0]
    assert np.abs(ours - reference(engine, plan, 0, 5)).max() < 1e-4
    # the mode really matters: the same net with both units in canny mode gives another image
    swapped = plan_of(units(("canny", 0.7, 0.0, 0.8), ("lines", 0.5, 0.2, 1.0)), union=True, seeds=(5,), steps=4)
    assert np.abs(engine.generate(swapped, swapped.images)[0] - ours).max() > 1e-3


def test_flux_controls_steer_and_scale_zero_is_absent(engine):
    full = engine.generate(p := plan_of(units(("depth", 0.9, 0, 1), ("canny", 0.6, 0, 1)), steps=3), p.images)[0]
    zero = engine.generate(p := plan_of(units(("depth", 0.9, 0, 1), ("canny", 0.0, 0, 1)), steps=3), p.images)[0]
    alone = engine.generate(p := plan_of(units(("depth", 0.9, 0, 1)), steps=3), p.images)[0]
    assert np.abs(full - zero).max() > 0.02
    # scale 0 is "not there" up to the control latent's noise, which is drawn either way
    # (diffusers draws it for every control image); so compare to the reference instead
    p = plan_of(units(("depth", 0.9, 0, 1), ("canny", 0.0, 0, 1)), steps=3)
    assert np.abs(zero - reference(engine, p, 0, 0)).max() < 1e-4
    assert np.abs(alone - zero).max() > 1e-3  # one control latent fewer: another noise draw


def test_units_outside_their_window_are_not_run(engine):
    plan = plan_of(units(("depth", 0.9, 0.0, 0.5), ("canny", 0.6, 0.5, 1.0), ("depth", 0.0, 0.0, 1.0)),
                   seeds=(1, 2), steps=4)
    _, nets = engine.load(plan.models)
    calls = [0, 0]
    hooks = [n.value.register_forward_pre_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, n in enumerate(nets[:2])]  # the third unit shares the depth net
    try:
        engine.generate(plan, plan.images)
    finally:
        for h in hooks:
            h.remove()
    # 4 steps, one batch of 2: depth in steps 0-1, canny in 2-3, the scale-0 depth never.
    assert calls == [2, 2]
    assert engine.stats["controlnet0"] == 4 and engine.stats["controlnet1"] == 4
    assert "controlnet2" not in engine.stats and engine.stats["transformer"] == 8


def test_an_image_is_the_same_alone_or_in_a_sweep(engine):
    plan = plan_of(styles=("modern", "industrial"), seeds=(0, 1, 2), steps=3)
    sweep = engine.generate(plan, plan.images)
    assert len(engine.batches(plan, plan.images)) == 1 and engine.stats["prompt_encodes"] == 2
    for index in (0, 4):
        alone = engine.generate(plan, [plan.images[index]])[index]
        assert np.abs(alone - sweep[index]).max() <= 1e-3
    assert np.abs(sweep[0] - sweep[3]).max() > 1e-3  # styles differ


def test_every_builtin_preset_has_a_flux_section_used_by_the_plan():
    presets = load_presets(include_user=False)
    for name, preset in presets.items():
        assert preset.flux.get("prompt") and preset.flux.get("cfg") and preset.flux.get("steps"), name
        assert "depth" in preset.flux["controls"] and "lines" in preset.flux["controls"], name
    plan = plan_of([{"type": "depth", "image": b64(depth_image())}, {"type": "canny", "image": b64(lines_image())}],
                   steps=None, cfg=None)
    style, modern = plan.styles[0], presets["modern"].flux
    assert (style.prompt, style.cfg, style.steps) == (modern["prompt"], modern["cfg"], modern["steps"])
    assert style.negative == "" and style.scheduler == "flow_euler"
    assert style.units[0].scale == modern["controls"]["depth"].scale
    assert style.units[1].scale == modern["controls"]["lines"].scale  # canny falls back to lines
    assert style.units[1].end == modern["controls"]["lines"].end
    assert plan.params(plan.images[0])["model"]["family"] == "tiny-flux"


@pytest.mark.parametrize("extra, field, words", [
    ({"scheduler": "unipc"}, "scheduler", "flow-matching"),
    ({"controls": [{"type": "depth", "image": b64(depth_image(72, 64))}]}, "width", "multiple of 16"),
])
def test_flux_job_errors_name_the_field(extra, field, words):
    from test_backend_engine import make_plan

    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-flux", **({"scheduler": None} | extra))
    assert err.value.field == field and words in str(err.value)


def test_flux_has_no_negative_prompt_and_no_normal_net():
    from test_backend_engine import make_plan

    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-flux", scheduler=None, styles=[{"preset": "modern", "negative": "blurry"}])
    assert err.value.field == "styles[0].negative"
    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-flux", scheduler=None, union=True,
                  controls=[{"type": "normal", "image": b64(depth_image())}])
    assert err.value.field == "controls[0].type" and "no 'normal' mode" in str(err.value)


@pytest.mark.parametrize("free_gb, name", MEMORY_PROFILE_CHOICES["flux"])
def test_memory_profile_is_chosen_from_free_vram(free_gb, name):
    profile = M.choose_profile("flux", "cuda", int(free_gb * GB))
    assert profile.name == name
    assert profile.changes_images == (name != "full")


def test_memory_profile_only_for_flux_and_named_ones_are_kept():
    assert M.choose_profile("sdxl", "cuda", 8 * GB) is M.NONE
    assert M.choose_profile("flux", "cpu", None) is M.NONE
    assert M.choose_profile("flux", "cuda", 80 * GB, "16gb").name == "16gb"
    assert M.quantize_mode(M.choose_profile("flux", "cuda", 20 * GB), fp8_capable=True) == "fp8-weight"
    assert M.quantize_mode(M.choose_profile("flux", "cuda", 20 * GB), fp8_capable=False) == "int8-weight"
    with pytest.raises(ValueError, match="memory profile: unknown '8gb'"):
        M.choose_profile("flux", "cuda", 8 * GB, "8gb")
    with pytest.raises(ValueError, match="unknown 'tiny'"):
        Engine("cpu", memory_profile="tiny")


def test_a_memory_profile_is_recorded_and_runs(engine):
    """The 24 GB profile forced on the CPU: int8 weight-only transformer and nets, text
    encoders on the CPU; recorded in every image's parameters."""
    pytest.importorskip("torchao")
    small = Engine("cpu", memory_profile="24gb")
    small.cache = engine.cache  # the same warm tiny models
    plan = plan_of(seeds=(0,), steps=2)
    changes = small.image_changes_for("flux")
    assert changes == {"memory_profile": "24gb", "quantize": "int8-weight"}
    assert small.image_changes_for("sd15") == {} and engine.image_changes_for("flux") == {}
    from archviz_controlnet.backend.engine.sweep import build_plan

    labelled = build_plan(plan.job, load_presets(include_user=False), "float32", changes)
    assert labelled.params(labelled.images[0])["engine_options"] == changes
    assert labelled.images[0].params_sha256 != plan.images[0].params_sha256
    out = small.generate(plan, plan.images)[0]
    exact = engine.generate(plan, plan.images)[0]
    assert np.isfinite(out).all() and 0 < np.abs(out - exact).max() < 0.5
    assert small.options.quantize == "none"  # the profile's quantize lasts one job


def test_streaming_profiles_need_accelerate_or_run(engine):
    """12 GB: the transformer and nets streamed block by block (diffusers' group offloading,
    which needs the accelerate package): it runs, or says which package is missing."""
    pytest.importorskip("torchao")
    small = Engine("cpu", memory_profile="12gb")
    small.cache = engine.cache
    plan = plan_of(seeds=(0,), steps=2)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="memory profile '12gb' .*needs the accelerate package"):
            small.generate(plan, plan.images)
    else:
        assert np.isfinite(small.generate(plan, plan.images)[0]).all()




def test_unit_types_offered_per_family():
    assert J.control_types_for("tiny-flux") == J.control_types_for("flux") == ("depth", "lines", "canny", "mlsd",
                                                                                "lineart")
    assert "seg" in J.control_types_for("sd15") and "seg" not in J.control_types_for("sdxl")
    assert "normal" in J.control_types_for("sdxl", union=True)
    assert J.control_types_for("/some/local/folder") == J.CONTROL_TYPES  # a local base is SD 1.5


def test_quantize_onto_quantizes_piece_by_piece_like_the_whole(engine):
    """The memory profiles' path from CPU memory to the GPU (here CPU to CPU): every Linear
    quantized, the same outputs as quantizing the whole model at once."""
    import copy

    pytest.importorskip("torchao")
    from archviz_controlnet.backend.engine.runner import quantize_linear, quantize_onto

    plan = plan_of(seeds=(0,), steps=2)
    base, _ = engine.load(plan.models)
    transformer = base.value["transformer"]
    whole = quantize_linear(copy.deepcopy(transformer), "int8-weight", engine.device)
    pieces = quantize_onto(copy.deepcopy(transformer), "int8-weight", engine.device)
    linears = [m for m in pieces.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight.data) is not torch.Tensor for m in linears)  # torchao tensors
    x = torch.randn(1, 16, 64)
    kwargs = dict(encoder_hidden_states=torch.randn(1, 8, 32), pooled_projections=torch.randn(1, 32),
                  timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                  guidance=torch.tensor([3.5]), return_dict=False)
    with torch.no_grad():
        a, b, plain = whole(x, **kwargs)[0], pieces(x, **kwargs)[0], transformer(x, **kwargs)[0]
    torch.testing.assert_close(a, b)
    assert (a - plain).abs().max() > 0  # really quantized
