"""``archviz sweep --init beauty|PATH --strength S`` end to end: real Cycles passes (the
beauty pass too), a real backend process, the tiny SD 1.5 model; resume keeps restyles of
the same strength and remakes those of another; bad values are one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from backend_support import TEST_HOME, read_png

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def interior(tmp_path_factory):
    pytest.importorskip("bpy")
    path = tmp_path_factory.mktemp("scene") / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(path)],
                   check=True, capture_output=True, timeout=300)
    return str(path)


def sweep(scene, out, *extra):
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    return subprocess.run([ARCHVIZ, "sweep", scene, "--styles", "modern", "--seeds", "0", "--model", "tiny",
                           "--long-side", "64", "--steps", "4", "--supersample", "1", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def test_restyle_from_the_beauty_pass_records_and_resumes(interior, tmp_path):
    out = tmp_path / "out"
    first = sweep(interior, out, "--init", "beauty", "--strength", "0.5")
    assert first.returncode == 0, first.stderr
    assert "1 new image(s)" in first.stdout
    cams = [d for d in os.listdir(out / "passes")]
    assert len(cams) == 1
    beauty, _ = read_png(str(out / "passes" / cams[0] / "beauty.png"))
    images = sorted(p for p in os.listdir(out) if p.endswith("_s0.png"))
    assert len(images) == 1
    pixels, meta = read_png(str(out / images[0]))
    params = json.loads(meta["archviz"])["params"]
    assert params["init"]["strength"] == 0.5 and len(params["init"]["image_sha256"]) == 64
    assert meta["strength"] == "0.5" and meta["init_sha256"] == params["init"]["image_sha256"]
    assert "Denoising strength: 0.5" in meta["parameters"]
    assert pixels.shape == beauty.shape
    again = sweep(interior, out, "--init", "beauty", "--strength", "0.5")
    assert again.returncode == 0 and "0 new image(s), 1 already on disk" in again.stdout
    creative = sweep(interior, out, "--init", "beauty", "--strength", "creative")
    assert creative.returncode == 0 and "1 new image(s), 0 already on disk" in creative.stdout
    params = json.loads(read_png(str(out / images[0]))[1]["archviz"])["params"]
    assert params["init"]["strength"] == 0.8
    # a PNG of one's own: the beauty pass copied elsewhere gives the same init hash
    own = tmp_path / "mine.png"
    own.write_bytes((out / "passes" / cams[0] / "beauty.png").read_bytes())
    path_run = sweep(interior, out, "--init", str(own), "--strength", "creative")
    assert path_run.returncode == 0 and "0 new image(s), 1 already on disk" in path_run.stdout


@pytest.mark.parametrize("extra, message", [
    (["--init", "beauty", "--strength", "1.5"], "archviz sweep: --strength '1.5': must be from 0 (precise) to 1 (creative)"),
    (["--init", "beauty", "--strength", "wild"], "archviz sweep: --strength 'wild': expected a number from 0 to 1"),
    (["--strength", "0.3"], "archviz sweep: --strength 0.3 needs --init beauty|PATH"),
    (["--init", "nowhere.png"], "archviz sweep: --init 'nowhere.png': no such file"),
])
def test_bad_restyle_arguments_are_one_line_errors(interior, tmp_path, extra, message):
    proc = sweep(interior, tmp_path / "bad", *extra)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


def test_restyle_box_in_blender_generates_from_the_beauty_pass(interior, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.blender import backend, tasks

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=interior)
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.supersample = 64, 4, 1
        settings.output_dir = str(tmp_path / "out")
        settings.use_restyle, settings.restyle_strength = True, 0.45
        assert bpy.ops.archviz.generate() == {"FINISHED"}
        made = [i for i in bpy.data.images if "archviz_style" in i]
        assert len(made) == 1
        assert made[0]["strength"] == 0.45  # the restyle's strength on the image datablock
        _pixels, meta = read_png(made[0]["archviz_path"])
        assert meta["strength"] == "0.45" and meta["params_sha256"] == made[0]["params_sha256"]
        assert json.loads(meta["archviz"])["params"]["init"]["strength"] == 0.45
        camera = made[0]["archviz_camera"]
        assert os.path.isfile(tmp_path / "out" / "passes" / camera / "beauty.png")
        # a region edit of the selected objects from the Restyle box
        import numpy as np

        settings.use_restyle, settings.region_mode = False, "SELECTED"
        settings.output_dir = str(tmp_path / "region")
        for obj in bpy.context.view_layer.objects:
            obj.select_set(obj.name == "Sofa")
        assert bpy.ops.archviz.generate() == {"FINISHED"}
        edited = max((i for i in bpy.data.images if "archviz_style" in i), key=lambda i: i["archviz_loaded_at"])
        assert edited["strength"] == 1.0
        pixels, meta = read_png(edited["archviz_path"])
        beauty, _ = read_png(str(tmp_path / "region" / "passes" / camera / "beauty.png"))
        mask, _ = read_png(str(tmp_path / "region" / f"{camera}_region_mask.png"))
        outside = mask[..., 0] == 0
        assert outside.any() and (~outside).any() and float(meta["region_coverage"]) > 0
        assert np.array_equal(pixels[outside], beauty[outside])
        settings.region_mode = "SELECTED"
        for obj in bpy.context.view_layer.objects:
            obj.select_set(False)
        with pytest.raises(RuntimeError, match="region-objects: Selected Objects: no objects are selected"):
            bpy.ops.archviz.generate()  # the operator's one-line error report
    finally:
        tasks.Task.current = None
        backend.stop_started_backends()
        archviz_controlnet.unregister()


# ---------------------------------------------------------------- region edits

def test_region_edit_of_the_floor_keeps_every_other_pixel_of_the_beauty_pass(interior, tmp_path):
    import numpy as np

    from archviz_controlnet.core import region as R

    out = tmp_path / "out"
    proc = sweep(interior, out, "--region", "floor,rug")
    assert proc.returncode == 0, proc.stderr
    cam = os.listdir(out / "passes")[0]
    passes = out / "passes" / cam
    beauty, _ = read_png(str(passes / "beauty.png"))
    mask, _ = read_png(str(out / f"{cam}_region_mask.png"))
    alpha = mask[..., 0] / 255.0
    exact = R.region_mask(str(passes), classes="floor,rug")
    assert np.array_equal(alpha > 0, R.feathered_alpha(exact) > 0) and (alpha[exact] == 1).all()
    image = next(p for p in os.listdir(out) if p.endswith("_s0.png"))
    pixels, meta = read_png(str(out / image))
    assert np.array_equal(pixels[alpha == 0], beauty[alpha == 0])  # outside: the source, exactly
    assert np.abs(pixels[alpha == 1].astype(int) - beauty[alpha == 1]).mean() > 5  # inside: made anew
    assert float(meta["region_coverage"]) == R.coverage(alpha) > 0.1
    params = json.loads(meta["archviz"])["params"]
    assert params["init"]["strength"] == 1.0 and len(params["region"]["mask_sha256"]) == 64
    again = sweep(interior, out, "--region", "floor,rug")
    assert again.returncode == 0 and "0 new image(s), 1 already on disk" in again.stdout
    other = sweep(interior, out, "--region", "floor")
    assert other.returncode == 0 and "1 new image(s)" in other.stdout  # another mask: another image


def test_region_objects_mask_is_exactly_their_pixels_in_the_object_pass(interior, tmp_path):
    import numpy as np

    from archviz_controlnet.core import region as R

    out = tmp_path / "out"
    proc = sweep(interior, out, "--region-objects", "Sofa,Rug", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    passes = out / "passes" / os.listdir(out / "passes")[0]
    info = json.loads((passes / "passes.json").read_text())
    ids = np.load(passes / "object_ids.npy")
    mask = R.region_mask(str(passes), objects=["Sofa", "Rug"])
    expected = (ids == info["object_index"]["Sofa"]) | (ids == info["object_index"]["Rug"])
    assert mask.any() and np.array_equal(mask, expected)
    # the object pass agrees with the class pass: the sofa's pixels are the sofa class's
    sofa_class = np.load(passes / "class_ids.npy") == 23
    assert np.array_equal(ids == info["object_index"]["Sofa"], sofa_class)


@pytest.mark.parametrize("extra, message", [
    (["--region", "marble"], "archviz sweep: --region: unknown region class 'marble'"),
    (["--region", "bathtub"], "archviz sweep: region: 'bathtub': no pixel of that class in view of camera"),
    (["--region-objects", "Shelf"], "archviz sweep: region-objects: 'Shelf' is not in view of camera"),
    (["--region-objects", "Ghost"], "archviz sweep: region-objects: 'Ghost': no such renderable object"),
    (["--region", "floor", "--region-objects", "Sofa"], "archviz sweep: give --region CLASSES or --region-objects"),
])
def test_bad_regions_are_one_line_errors(interior, tmp_path, extra, message):
    proc = sweep(interior, tmp_path / "bad", *extra)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
