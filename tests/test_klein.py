"""FLUX.2 Klein (backend/engine/families/klein.py): the engine against ``Flux2KleinPipeline`` on
the tiny model (with and without references, the control passes as reference images), the
order of its references, scale 0, its limits and refusals in one line, and ``archviz sweep
--model tiny-klein --reference`` end to end on loopback."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend_support import b64, beauty_image, depth_image, lines_image

pytestmark = pytest.mark.usefixtures("home")


def _board(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.integers(0, 255, (4, 5, 3), dtype=np.uint8), 16, 0), 16, 1)  # 64x80


REF_A, REF_B = b64(beauty_image()), b64(_board(1))


def _plan(references=None, seeds=(3, 4), controls=None, **kw):
    from test_backend_engine import make_plan

    controls = controls if controls is not None else [
        {"type": "depth", "image": b64(depth_image()), "scale": 1.0},
        {"type": "lines", "image": b64(lines_image()), "scale": 1.0}]
    return make_plan(family="tiny-klein", controls=controls, steps=2, seeds=seeds, cfg=None, scheduler=None,
                     references=references, **kw)


def _pil(text: str):
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def _pipeline(engine, plan, images, seed):
    """The plain diffusers call: the references, then the control images, as its ``image`` list."""
    base, _nets = engine.load(plan.models)
    pipe = engine.helper_pipeline("klein", base.value, None)
    pipe.set_progress_bar_config(disable=True)
    style = plan.styles[0]
    return pipe(prompt=style.prompt, image=images or None, num_inference_steps=style.steps, guidance_scale=1.0,
                height=plan.height, width=plan.width, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="np").images[0]


def test_klein_equals_the_diffusers_pipeline_with_and_without_references(engine):
    assert _plan().width % 16 == 0
    plain = _plan(controls=[{"type": "depth", "image": b64(depth_image()), "scale": 0.0}])
    ours = engine.generate(plain, plain.images)
    for i, seed in enumerate((3, 4)):  # no image at all (the unit at scale 0 takes no slot): text to image
        assert np.abs(ours[i] - _pipeline(engine, plain, [], seed)).max() <= 1e-4

    plan = _plan(references=[{"image": REF_A, "scale": 1.0}, {"image": REF_B, "scale": 1.0}])
    ours = engine.generate(plan, plan.images)
    images = [_pil(REF_A), _pil(REF_B), *[c.image for c in plan.controls]]
    for i, seed in enumerate((3, 4)):
        assert np.abs(ours[i] - _pipeline(engine, plan, images, seed)).max() <= 1e-4
    assert engine.stats["transformer"] == 2 * 2 and engine.timings["references"] > 0
    assert np.abs(ours[0] - engine.generate(plain, plain.images)[0]).mean() > 0.005


def test_klein_reference_order_matters_and_scale_zero_is_no_reference(engine):
    ab = _plan(references=[{"image": REF_A, "scale": 1.0}, {"image": REF_B, "scale": 1.0}], seeds=(3,))
    ba = _plan(references=[{"image": REF_B, "scale": 1.0}, {"image": REF_A, "scale": 1.0}], seeds=(3,))
    assert ab.images[0].params_sha256 != ba.images[0].params_sha256  # each image has its own position
    assert [e["image_sha256"] for e in ab.params(ab.images[0])["references"]] == [r.sha256 for r in ab.references]
    x, y = engine.generate(ab, ab.images)[0], engine.generate(ba, ba.images)[0]
    assert np.abs(x - y).mean() > 1e-3

    plain = _plan(seeds=(3,))
    zero = _plan(references=[{"image": REF_A, "scale": 0.0}], seeds=(3,))
    assert zero.images[0].params_sha256 == plain.images[0].params_sha256
    assert np.array_equal(engine.generate(zero, zero.images)[0], engine.generate(plain, plain.images)[0])
    # a control unit at scale 0 takes no slot: the same pixels as no unit
    unit_zero = _plan(controls=[{"type": "depth", "image": b64(depth_image()), "scale": 0.0},
                                {"type": "lines", "image": b64(lines_image()), "scale": 1.0}], seeds=(3,))
    lines_only = _plan(controls=[{"type": "lines", "image": b64(lines_image()), "scale": 1.0}], seeds=(3,))
    assert np.array_equal(engine.generate(unit_zero, unit_zero.images)[0],
                          engine.generate(lines_only, lines_only.images)[0])


def test_klein_limits_and_refusals_are_one_line():
    from archviz_controlnet.core import jobs as J

    def job(**kw):
        data = {"model": {"family": "tiny-klein"}, "styles": ["modern"], "seeds": [0],
                "controls": [{"type": "depth", "image": b64(depth_image())}], **kw}
        return J.Job.from_dict(data)

    with pytest.raises(J.JobError) as err:
        job(references=[{"image": REF_A}] * 10)
    assert "10 references and 1 control images" in str(err.value) and "at most 10" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(J.JobError) as err:
        job(references=[{"image": REF_A, "scale": 0.5}])
    assert "reference scale 0.5" in str(err.value) and "no per-reference strength" in str(err.value)
    job(references=[{"image": REF_A}] * 9)  # nine and one control: ten in all

    from test_backend_engine import make_plan

    # restyle and region edits: tests/test_klein_edits.py
    with pytest.raises(J.JobError) as err:
        make_plan(family="tiny-klein", cfg=3.0, scheduler=None)
    assert "cfg 1 only" in str(err.value)


def test_archviz_sweep_tiny_klein_with_references_end_to_end(tmp_path):
    """The real CLI: a Blender scene's depth and lines, two references in order, through a real
    backend on loopback; a scale other than 1 and too many images are one line each."""
    import json
    import subprocess
    import sys

    from test_references import ROOT, SCENE_SCRIPT, _run

    scene = tmp_path / "room.blend"
    subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(ROOT / "tests"), str(scene)], check=True,
                   capture_output=True, timeout=120)
    a, b = tmp_path / "brick.png", tmp_path / "board.jpg"
    Image.fromarray(beauty_image()).save(a)
    Image.fromarray(_board(2)).save(b, format="JPEG")
    common = [scene, "--model", "tiny-klein", "--styles", "modern", "--seeds", "0", "--steps", "2",
              "--long-side", "64"]
    bad = {("--reference", a, "--reference-scale", "0.5"): "no per-reference strength",
           tuple(x for _ in range(9) for x in ("--reference", a)): "9 references and 2 control images"}
    for extra, words in bad.items():
        proc = _run("sweep", *common, *extra, "--out", tmp_path / "bad")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-2000:]

    out = tmp_path / "out"
    proc = _run("sweep", *common, "--reference", a, "--reference", b, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 new image(s)" in proc.stdout
    with Image.open(out / "Camera_modern_s0.png") as im:
        params = json.loads(im.text["archviz"])["params"]
    assert [r["scale"] for r in params["references"]] == [1.0, 1.0]
    assert [u["model"] for u in params["controls"]] == ["reference image", "reference image"]
    # the other order is another image: resume does not take the one on disk for it
    swapped = _run("sweep", *common, "--reference", b, "--reference", a, "--out", out)
    assert swapped.returncode == 0 and "1 new image(s)" in swapped.stdout, swapped.stdout[-2000:]
