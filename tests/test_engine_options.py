"""EngineOptions on the tiny models: the exact ones keep the pixels, the labelled ones
(quantize, token merging) change them a little, switch off cleanly and never touch the
loaded models; bad values are errors that name them."""

import numpy as np
import pytest
import torch

from archviz_controlnet.backend import engine as E
from archviz_controlnet.backend.engine import Engine, EngineOptions

from test_backend_engine import home, make_plan  # noqa: F401 - the module fixture sets ARCHVIZ_HOME


@pytest.fixture(scope="module")
def engine(home):  # noqa: F811
    torch.set_num_threads(1)
    return Engine("cpu")


@pytest.fixture(scope="module")
def plan():
    return make_plan(styles=("modern", "industrial"), seeds=(0, 1), steps=3)


@pytest.fixture(scope="module")
def reference(engine, plan):
    engine.options = EngineOptions.defaults("cpu")
    return engine.generate(plan, plan.images)


def run(engine, plan, images=None, **changes):
    saved = engine.options
    engine.options = saved.replace(**changes)
    try:
        return engine.generate(plan, images or plan.images)
    finally:
        engine.options = saved


def max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in b)


def state(engine, plan):
    base, nets = engine.load(plan.models)
    return {name: t.clone() for m in [base.value["unet"], *[n.value for n in nets]]
            for name, t in m.state_dict().items()}


@pytest.mark.parametrize("changes", [
    {"channels_last": False},
    {"fused_qkv": True},
    {"sdpa_backend": "math"},
    {"vae_batch": 1},
    {"skip_inactive": False, "batch": False, "embeds_once": False, "cond_once": False},
])
def test_exact_options_keep_the_images(engine, plan, reference, changes):
    assert not EngineOptions().replace(**changes).changes_images
    assert max_diff(run(engine, plan, **changes), reference) <= 1e-4


@pytest.mark.parametrize("changes", [
    {"quantize": "int8"},
    {"quantize": "int8-weight"},
    {"quantize": "fp8-weight"},
    {"token_merging": 0.5},
])
def test_labelled_options_change_images_a_little_and_leave_the_models_alone(engine, plan, reference, changes):
    before = state(engine, plan)
    assert EngineOptions().replace(**changes).changes_images == list(changes)
    out = run(engine, plan, **changes)
    diff = max_diff(out, reference)
    assert 0 < diff < 0.25, diff  # other pixels, still the same picture
    assert all(np.isfinite(v).all() for v in out.values())
    # Back to the defaults: the very same images as before, from untouched weights.
    assert max_diff(engine.generate(plan, plan.images), reference) == 0.0
    after = state(engine, plan)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantize_keeps_a_copy_per_model_until_the_options_change(engine, plan):
    run(engine, plan, quantize="int8-weight")
    base, nets = engine.load(plan.models)
    unet = base.value["unet"]
    engine.options = engine.options.replace(quantize="int8-weight")
    try:
        copy_ = engine._runtime(unet)
        assert copy_ is not unet and engine._runtime(unet) is copy_  # made once, reused
        assert type(copy_.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight) is not torch.nn.Parameter
        assert type(unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight) is torch.nn.Parameter
    finally:
        engine.options = EngineOptions.defaults("cpu")
    engine.generate(plan, plan.images[:1])
    assert engine._quantized == {}  # dropped once the option is off


def test_token_merging_image_alone_equals_image_in_sweep(engine, plan):
    sweep = run(engine, plan, token_merging=0.5)
    alone = run(engine, plan, [plan.images[3]], token_merging=0.5)
    assert np.abs(alone[plan.images[3].index] - sweep[plan.images[3].index]).max() <= 1e-4


def test_token_merging_patches_the_highest_resolution_attention_and_is_removed(engine, plan):
    base, nets = engine.load(plan.models)
    unet = base.value["unet"]
    # The tiny UNets, like SDXL's, have no attention in their first down block.
    assert E.first_attention_downsample(unet) == 2
    run(engine, plan, token_merging=0.3)
    assert unet._tome_info["args"]["max_downsample"] == 2 and unet._tome_info["args"]["ratio"] == 0.3
    assert unet._tome_info["args"]["use_rand"] is False
    engine.restore_models([unet, *[n.value for n in nets]])
    assert not any(type(m).__name__ == "ToMeBlock" for m in unet.modules())
    assert getattr(unet, "_archviz_token_merging") == 0.0


def test_fp8_needs_a_recent_cuda_gpu(engine, plan):
    with pytest.raises(RuntimeError, match=r"'fp8' needs a CUDA GPU of compute capability 8\.9.*runs on cpu"):
        run(engine, plan, [plan.images[0]], quantize="fp8")


@pytest.mark.parametrize("field, value, message", [
    ("quantize", "int4", r"quantize: unknown 'int4' \(choose from none, int8"),
    ("token_merging", 0.9, r"token_merging: must be a fraction from 0 to 0.75, got 0.9"),
    ("token_merging", float("nan"), r"token_merging: .* got nan"),
    ("sdpa_backend", "fast", r"sdpa_backend: unknown 'fast'"),
    ("vae_batch", -1, r"vae_batch: must be >= 0, got -1"),
])
def test_bad_option_values_name_themselves(field, value, message):
    with pytest.raises(ValueError, match=message):
        EngineOptions(**{field: value})


def test_a_missing_package_names_the_option_and_the_package(monkeypatch):
    real = E.importlib.import_module

    def fake(name, *args):
        if name == "tomesd":
            raise ImportError("No module named 'tomesd'")
        return real(name, *args)

    monkeypatch.setattr(E.importlib, "import_module", fake)
    with pytest.raises(RuntimeError, match=r"token_merging: needs the tomesd package.*pip install tomesd"):
        E.optional_package("tomesd", "token_merging")


def test_bench_star_labels_are_the_options_that_change_images():
    from archviz_controlnet.bench.runner import ROWS

    defaults = EngineOptions()
    for name, changes in ROWS.items():
        assert name.endswith("*") == bool(defaults.replace(**changes(defaults)).changes_images), name
