"""EngineOptions on the tiny models: the exact ones keep the pixels, the labelled ones
(quantize, token merging) change them a little, switch off cleanly and never touch the
loaded models; bad values are errors that name them."""

import json

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.engine import runner as E
from archviz_controlnet.backend.engine.runner import Engine, EngineOptions

from backend_support import use_test_home
from test_backend_engine import make_plan


@pytest.fixture(scope="module", autouse=True)
def home():
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        yield


@pytest.fixture(scope="module")
def engine(home):
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
    assert EngineOptions().replace(**changes).image_changes() == {}
    assert max_diff(run(engine, plan, **changes), reference) <= 1e-4


@pytest.mark.parametrize("changes", [
    {"quantize": "int8"},
    {"quantize": "int8-weight"},
    {"quantize": "fp8-weight"},
    {"token_merging": 0.5},
])
def test_labelled_options_change_images_a_little_and_leave_the_models_alone(engine, plan, reference, changes):
    before = state(engine, plan)
    assert EngineOptions().replace(**changes).image_changes() == changes
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
        to_q = lambda m: m.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight  # noqa: E731
        assert type(to_q(copy_)) is not torch.nn.Parameter  # a torchao tensor subclass
        assert type(to_q(unet)) is torch.nn.Parameter
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
        assert name.endswith("*") == bool(defaults.replace(**changes(defaults)).image_changes()), name


@pytest.mark.parametrize("items, changes", [
    (["compile=true", "cuda-graphs=on"], {"compile": True, "cuda_graphs": True}),
    (["quantize=int8", " token_merging = 0.4"], {"quantize": "int8", "token_merging": 0.4}),
    (["vae_batch=2", "channels_last=0"], {"vae_batch": 2, "channels_last": False}),
    ([], {}),
])
def test_option_texts_parse_to_typed_changes(items, changes):
    assert EngineOptions.parse(items) == changes


@pytest.mark.parametrize("item, message", [
    ("turbo=1", r"engine option 'turbo=1': expected NAME=VALUE with NAME one of skip_inactive, .*token_merging"),
    ("compile", r"engine option 'compile': expected NAME=VALUE"),
    ("compile=maybe", r"engine option 'compile=maybe': compile takes a bool, got 'maybe'"),
    ("vae_batch=two", r"engine option 'vae_batch=two': vae_batch takes a int, got 'two'"),
    ("quantize=int4", r"quantize: unknown 'int4'"),
    ("token_merging=2", r"token_merging: must be a fraction from 0 to 0.75, got 2.0"),
])
def test_bad_option_texts_name_the_item(item, message):
    with pytest.raises(ValueError, match=message):
        EngineOptions.parse([item])


def test_options_given_as_changes_start_from_the_device_defaults():
    opts = Engine("cpu", options={"token_merging": 0.25}).options
    assert opts == EngineOptions.defaults("cpu").replace(token_merging=0.25) and opts.channels_last


def test_serve_records_image_changing_options_in_every_image(tmp_path, plan):
    """A real ``archviz serve --option ...``: health and log say what is on, the images'
    parameters carry it, so their hash differs from the exact engine's and a resumed sweep
    never takes one for the other."""
    from backend_support import base_env, read_png, running_server

    from archviz_controlnet.backend.engine.sweep import build_plan, params_sha256
    from archviz_controlnet.core.presets import load_presets

    env = {**base_env(), "ARCHVIZ_ENGINE_OPTIONS": "quantize=int8,token_merging=0.1"}
    job = {**plan.job.to_dict(), "output_dir": str(tmp_path), "seeds": [0], "styles": ["modern"], "steps": 2}
    with running_server(["--output-root", str(tmp_path), "--option", "token_merging=0.5"], env=env) as server:
        health = server.get("/v1/health").json()
        assert health["engine_options_changing_images"] == {"quantize": "int8", "token_merging": 0.5}
        status = server.wait(server.submit(job))
        assert status["state"] == "done", status["error"]
        log = "".join(server.log)
    assert "engine options that change images are on: quantize=int8, token_merging=0.5" in log
    texts = [read_png(p)[1] for p in sorted(tmp_path.glob("*.png"))]
    text = next(t for t in texts if "archviz" in t)  # the image, not the contact sheet
    params = json.loads(text["archviz"])["params"]
    assert params["engine_options"] == {"quantize": "int8", "token_merging": 0.5}
    assert text["params_sha256"] == params_sha256(params)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["engine_options"] == {"quantize": "int8", "token_merging": 0.5}
    from archviz_controlnet.core import jobs as J

    exact = build_plan(J.Job.from_dict(job), load_presets(include_user=False), "float32")
    assert "engine_options" not in exact.params(exact.images[0])
    assert exact.images[0].params_sha256 != text["params_sha256"]


def test_serve_refuses_a_bad_option_naming_it():
    import subprocess
    import sys

    from backend_support import REPO, base_env

    out = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "serve", "--port", "0", "--device", "cpu",
                          "--option", "quantize=int4"], capture_output=True, text=True, env=base_env(), cwd=str(REPO),
                         timeout=120)
    assert out.returncode == 2
    assert "archviz serve: quantize: unknown 'int4'" in out.stderr
