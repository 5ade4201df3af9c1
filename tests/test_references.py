"""Reference images (core/references.py): IP-Adapter for SD 1.5, FLUX.1 Redux, against the
diffusers pipelines with the same adapter or prior on the tiny models; scale 0 and order;
bad references in one line; ``archviz sweep --reference`` end to end on loopback."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend_support import TEST_HOME, b64, beauty_image, depth_image, lines_image

pytestmark = pytest.mark.usefixtures("home")

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
ROOT = Path(__file__).resolve().parent.parent


def _board(seed: int) -> np.ndarray:
    """A mood-board stand-in: blocks of colour, different per seed."""
    rng = np.random.default_rng(seed)
    img = np.repeat(np.repeat(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), 16, 0), 16, 1)
    return img


REF_A, REF_B = b64(beauty_image()), b64(_board(1))


def _plan(family="tiny", references=None, seeds=(3,), **kw):
    from test_backend_engine import make_plan

    if family == "tiny-flux":
        kw = dict(cfg=3.5, scheduler=None, controls=[{"type": "depth", "image": b64(depth_image()), "scale": 0.8}],
                  **kw)
    return make_plan(family=family, steps=2, seeds=seeds, references=references, **kw)


def _pil(text: str):
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def test_sd15_ip_adapter_equals_the_diffusers_pipeline_with_the_same_adapter(engine):
    from archviz_controlnet.backend.engine.families.sd import make_scheduler
    from archviz_controlnet.backend.engine.families.reference_models import REAL

    plan = _plan(references=[{"image": REF_A, "scale": 0.7}, {"image": REF_B, "scale": 1.2}])
    ours = engine.generate(plan, plan.images)[0]

    base, nets = engine.load(plan.models)
    style = plan.styles[0]
    pipe = engine.helper_pipeline("sd15", base.value, [n.value for n in nets])
    pipe.scheduler = make_scheduler(style.scheduler, base.value["scheduler_config"])
    pipe.set_progress_bar_config(disable=True)
    spec = REAL["sd15"]  # diffusers' own loading: the adapter and its image encoder from the folder
    pipe.load_ip_adapter(plan.models.references, subfolder=spec.subfolder, weight_name=spec.weight_name)
    pipe.set_ip_adapter_scale([[0.7, 1.2]])
    mask = torch.ones(1, 2, plan.height, plan.width)
    ref = pipe(style.prompt, negative_prompt=style.negative or None, image=[c.image for c in plan.controls],
               ip_adapter_image=[[_pil(REF_A), _pil(REF_B)]], cross_attention_kwargs={"ip_adapter_masks": [mask]},
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert np.abs(ours - ref).max() <= 1e-4
    assert engine.stats and engine.timings["references"] > 0


def test_sdxl_ip_adapter_equals_the_diffusers_pipeline_with_the_same_adapter(engine):
    from archviz_controlnet.backend.engine.families.sd import make_scheduler
    from archviz_controlnet.backend.engine.families.reference_models import REAL

    plan = _plan("tiny-sdxl", references=[{"image": REF_A, "scale": 0.8}, {"image": REF_B, "scale": 0.5}],
                 controls=[{"type": "depth", "image": b64(depth_image()), "scale": 0.9}])
    ours = engine.generate(plan, plan.images)[0]

    base, nets = engine.load(plan.models)
    style = plan.styles[0]
    pipe = engine.helper_pipeline("sdxl", base.value, [n.value for n in nets])
    pipe.scheduler = make_scheduler(style.scheduler, base.value["scheduler_config"])
    pipe.set_progress_bar_config(disable=True)
    spec = REAL["sdxl"]  # diffusers' own loading: the SDXL adapter with the ViT-H encoder it names
    pipe.load_ip_adapter(plan.models.references, subfolder=spec.subfolder, weight_name=spec.weight_name,
                         image_encoder_folder=spec.encoder)
    pipe.set_ip_adapter_scale([[0.8, 0.5]])
    mask = torch.ones(1, 2, plan.height, plan.width)
    ref = pipe(style.prompt, negative_prompt=style.negative or None, image=[c.image for c in plan.controls],
               ip_adapter_image=[[_pil(REF_A), _pil(REF_B)]], cross_attention_kwargs={"ip_adapter_masks": [mask]},
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
               controlnet_conditioning_scale=[u.scale for u in style.units],
               control_guidance_start=[u.start for u in style.units],
               control_guidance_end=[u.end for u in style.units],
               generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    pipe.unload_ip_adapter()  # the warm UNet as the engine keeps it between jobs
    base.value.pop("ip_adapter", None)
    assert np.abs(ours - ref).max() <= 1e-4


def test_sd15_reference_changes_the_image_scale_zero_is_no_reference_and_order_is_free(engine):
    plain = _plan()
    with_ref = _plan(references=[{"image": REF_A, "scale": 1.0}])
    zero = _plan(references=[{"image": REF_A, "scale": 0.0}])
    a = engine.generate(plain, plain.images)[0]
    b = engine.generate(with_ref, with_ref.images)[0]
    c = engine.generate(zero, zero.images)[0]  # after a job that loaded the adapter: taken out again
    assert np.abs(a - b).mean() > 0.01
    assert np.array_equal(a, c)
    assert zero.images[0].params_sha256 == plain.images[0].params_sha256
    assert with_ref.images[0].params_sha256 != plain.images[0].params_sha256
    params = with_ref.params(with_ref.images[0])
    assert params["references"] == [{"image_sha256": with_ref.references[0].sha256, "scale": 1.0}]
    assert params["model"]["references"].endswith("sd15/ip-adapter")

    ab = _plan(references=[{"image": REF_A, "scale": 0.5}, {"image": REF_B, "scale": 1.0}])
    ba = _plan(references=[{"image": REF_B, "scale": 1.0}, {"image": REF_A, "scale": 0.5}])
    other = _plan(references=[{"image": REF_A, "scale": 1.0}, {"image": REF_B, "scale": 0.5}])
    assert ab.images[0].params_sha256 == ba.images[0].params_sha256 != other.images[0].params_sha256
    x, y = engine.generate(ab, ab.images)[0], engine.generate(ba, ba.images)[0]
    assert np.abs(x - y).max() <= 1e-4  # a sum over the references: the same up to float rounding


def test_flux_redux_equals_the_diffusers_prior_and_pipeline(engine):
    from diffusers import FluxPriorReduxPipeline

    refs = [{"image": REF_A, "scale": 0.6}, {"image": REF_B, "scale": 0.9}]
    plan = _plan("tiny-flux", references=refs)
    ours = engine.generate(plan, plan.images)[0]

    base, nets = engine.load(plan.models)
    comps = base.value
    model = engine.cache.reference_model(plan.models).value
    pipe = engine.helper_pipeline("flux", comps, [n.value for n in nets])
    pipe.set_progress_bar_config(disable=True)
    style = plan.styles[0]
    from archviz_controlnet.backend.engine.families.flux import Flux

    prompt, pooled, _ids = pipe.encode_prompt(style.prompt, prompt_2=None, device="cpu", num_images_per_prompt=1,
                                              max_sequence_length=Flux.max_sequence_length(comps))
    prior = FluxPriorReduxPipeline(image_encoder=model["image_encoder"], feature_extractor=model["feature_extractor"],
                                   image_embedder=model["image_embedder"], text_encoder=comps["text_encoder"],
                                   tokenizer=comps["tokenizer"], text_encoder_2=comps["text_encoder_2"],
                                   tokenizer_2=comps["tokenizer_2"])
    out = prior([_pil(REF_A), _pil(REF_B)], prompt_embeds=prompt.repeat(2, 1, 1), pooled_prompt_embeds=pooled.repeat(2, 1),
                prompt_embeds_scale=[0.6, 0.9], pooled_prompt_embeds_scale=[0.6, 0.9])
    ref = pipe(prompt_embeds=out.prompt_embeds, pooled_prompt_embeds=out.pooled_prompt_embeds,
               control_image=[c.image for c in plan.controls], controlnet_conditioning_scale=[0.8],
               control_guidance_start=[u.start for u in style.units], control_guidance_end=[u.end for u in style.units],
               num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
               generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert np.abs(ours - ref).max() <= 1e-4

    plain = _plan("tiny-flux")
    assert np.abs(engine.generate(plain, plain.images)[0] - ours).mean() > 0.005
    swapped = _plan("tiny-flux", references=refs[::-1])
    assert swapped.images[0].params_sha256 == plan.images[0].params_sha256  # a weighted sum: order-free
    assert np.abs(engine.generate(swapped, swapped.images)[0] - ours).max() <= 1e-4


def test_bad_references_are_one_line_errors(tmp_path):
    from archviz_controlnet.core import jobs as J
    from archviz_controlnet.core.references import (ReferenceError, params_entries, reference_entry,
                                                    reference_family_problem)

    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(tiny)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    cases = {str(tmp_path / "missing.jpg"): "no such file", str(text): "is not an image",
             str(tiny): "1x1 px, too small", str(tmp_path): "is a folder"}
    for path, words in cases.items():
        with pytest.raises(ReferenceError) as err:
            reference_entry(path)
        assert words in str(err.value) and "\n" not in str(err.value) and path in str(err.value)
    assert "takes at most 4" in reference_family_problem("sd15", 5)
    assert "takes no reference images" in reference_family_problem("zimage", 1)
    # the job validator: the family, the count, a bad image, a bad scale, each naming the field
    base = {"controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["modern"], "seeds": [0]}
    bad = {
        "references": ({"model": "tiny-zimage", "references": [{"image": REF_A}]}, "takes no reference images"),
        "references[0].image": ({"references": [{"image": base64.b64encode(b"hello there").decode()}]},
                                "not an image"),
        "references[0].scale": ({"references": [{"image": REF_A, "scale": 3}]}, "between 0 and 2"),
    }
    for field, (extra, words) in bad.items():
        with pytest.raises(J.JobError) as err:
            J.Job.from_dict({**base, **extra})
        assert err.value.field == field and words in str(err.value), str(err.value)
    with pytest.raises(J.JobError, match="takes at most 4"):
        J.Job.from_dict({**base, "references": [{"image": REF_A}] * 5})
    # an ordered mechanism keeps the order in the parameters, an order-free one sorts
    pairs = [("b" * 64, 1.0), ("a" * 64, 0.5)]
    assert [e["image_sha256"][0] for e in params_entries(pairs, order_free=False)] == ["b", "a"]
    assert [e["image_sha256"][0] for e in params_entries(pairs, order_free=True)] == ["a", "b"]


def test_backend_refuses_a_too_small_reference_naming_it():
    from archviz_controlnet.core import jobs as J

    small = b64(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(J.JobError) as err:
        _plan(references=[{"image": REF_A}, {"image": small}])
    assert err.value.field == "references[1].image" and "too small" in str(err.value)


SCENE_SCRIPT = r"""
import sys, bpy
sys.path.insert(0, sys.argv[1])
from blender_support import fresh_scene, box, plane, camera
fresh_scene(64, 64)
box("Wall", (0, 2, 0), (4, 0.2, 3))
plane("Floor", (0, 0, -1), 8)
camera("Camera", (0, -5, 0.5), (0, 0, 0))
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
"""


def _run(*args, timeout=300):
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ARCHVIZ_PRESET_DIR": str(TEST_HOME / "no-user-presets")}
    return subprocess.run([ARCHVIZ, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def test_archviz_sweep_with_references_end_to_end_and_bad_ones_in_one_line(tmp_path):
    import json

    scene = tmp_path / "room.blend"
    subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(ROOT / "tests"), str(scene)], check=True,
                   capture_output=True, timeout=120)
    board = tmp_path / "board.jpg"
    Image.fromarray(_board(2)).save(board, format="JPEG")
    common = [scene, "--model", "tiny", "--styles", "modern", "--seeds", "0", "--steps", "2", "--long-side", "64"]
    bad = {("--reference", tmp_path / "nope.png"): "no such file",
           ("--reference", board, "--reference-scale", "5"): "--reference-scale must be from 0 to 2",
           ("--reference", board, "--model", "tiny-zimage"): "takes no reference images",
           ("--reference-scale", "0.5"): "needs a --reference image"}
    for extra, words in bad.items():
        proc = _run("sweep", *common, *extra, "--out", tmp_path / "bad")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-2000:]

    out = tmp_path / "out"
    proc = _run("sweep", *common, "--reference", board, "--reference-scale", "0.8", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 new image(s)" in proc.stdout
    with Image.open(out / "Camera_modern_s0.png") as im:
        params = json.loads(im.text["archviz"])["params"]
    assert params["references"][0]["scale"] == 0.8 and len(params["references"]) == 1
    again = _run("sweep", *common, "--reference", board, "--reference-scale", "0.8", "--out", out)
    assert again.returncode == 0 and "0 new image(s), 1 already on disk" in again.stdout  # resume keeps it


def test_bench_prints_the_per_image_cost_of_references_for_each_family(tmp_path, capsys):
    import json

    from archviz_controlnet import cli

    out = tmp_path / "refs.json"
    assert cli.main(["bench", "--references", "--device", "cpu", "--styles", "modern", "--seeds", "0",
                     "--steps", "2", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {r["family"]: r for r in json.loads(out.read_text())["references"]}
    assert set(rows) == {"tiny", "tiny-sdxl", "tiny-flux", "tiny-klein"}
    for family, row in rows.items():
        assert all(row["per_image_s"][str(n)] > 0 for n in (0, 1, 2)) and row["encode_s"] > 0
        assert any(line.startswith(family + " ") for line in text.splitlines())
