"""``archviz dataset`` on the example interior at 64 px: the documented layout, aligned
pairs from one camera, no camera inside geometry, resume and reproducible views, captions,
and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import mathutils  # noqa: E402

from archviz_controlnet.blender.capture import dataset as CD  # noqa: E402
from archviz_controlnet.blender.capture.render import CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core import dataset as D  # noqa: E402
from archviz_controlnet.core.exr import read_exr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
VIEWS = 6
CONTROLS = ("depth", "lines", "seg")


def read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def blend(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(path)],
                   check=True, capture_output=True)
    (path.parent / "interior.prompt.txt").write_text("a Scandinavian living room,\n photographed\n")
    return path


@pytest.fixture(scope="module")
def made(blend, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / "data"
    rows, seconds, count = CD.make_dataset([str(blend)], str(out), VIEWS, CONTROLS, long_side=64, seed=5,
                                           samples=2, progress=False, log=lambda *_: None)
    return out, rows, count


def test_layout_is_imagefolder_with_metadata_jsonl(made):
    out, rows, count = made
    assert count == VIEWS and len(rows) == VIEWS
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert lines == rows
    assert [r["name"] for r in rows] == [f"interior_{v:05d}" for v in range(VIEWS)]
    settings = json.loads((out / "dataset.json").read_text())
    assert settings["controls"] == list(CONTROLS) and settings["long_side"] == 64 and settings["views"] == VIEWS
    assert settings["line_style"] == "lineart" and settings["target_engine"] == "CYCLES"
    for row in rows:
        assert row["file_name"] == f"images/{row['name']}.png"
        first = f"conditioning/depth/{row['name']}.png"
        assert row["conditioning_image_file_name"] == row["controls"]["depth"] == first
        assert set(row["controls"]) == set(CONTROLS)
        target = read_png(out / row["file_name"])
        assert target.shape == (row["size"][1], row["size"][0], 3) == (32, 64, 3)
        assert target.std() > 1.0  # a rendered image, not a blank
        for ctype, rel in row["controls"].items():
            assert read_png(out / rel).shape == target.shape, (row["name"], ctype)
        assert row["seed"] == D.view_seed(5, "interior", row["view"])
    assert not (out / ".work").exists()
    kinds = [r["kind"] for r in rows]
    assert 3 <= kinds.count("interior") <= 5 and "exterior" in kinds


def test_captions_come_from_the_scene(made):
    _out, rows, _ = made
    for row in rows:
        assert row["text"].startswith("a Scandinavian living room, photographed, ")
        where = "an interior view" if row["kind"] == "interior" else "an exterior view of a building"
        assert where in row["text"]
        assert all(c in row["text"] for c in row["classes"])
        assert row["classes"] and row["materials"]
    interior = [r for r in rows if r["kind"] == "interior"]
    assert any("plaster" in r["text"] for r in interior)


def _camera_from_row(scene, row):
    cam = bpy.data.objects.get("CheckCamera")
    if cam is None:
        cam = bpy.data.objects.new("CheckCamera", bpy.data.cameras.new("CheckCamera"))
        scene.collection.objects.link(cam)
    cam.location = row["camera"]["location"]
    cam.rotation_euler = row["camera"]["rotation_euler"]
    cam.data.lens = row["camera"]["lens_mm"]
    cam.data.sensor_width = row["camera"]["sensor_width_mm"]
    cam.data.clip_start, cam.data.clip_end = 0.05, 1000.0
    bpy.context.view_layer.update()
    return cam


def test_pairs_are_aligned_and_no_camera_is_inside_geometry(made, blend, tmp_path):
    out, rows, _ = made
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    depsgraph = bpy.context.evaluated_depsgraph_get()
    furniture = [o for o in bpy.data.collections["Furniture"].all_objects if o.type == "MESH"]
    for row in rows:
        loc = np.array(row["camera"]["location"])
        for obj in furniture:  # the camera is in no piece of furniture's box
            corners = np.array([obj.matrix_world @ mathutils.Vector(c) for c in obj.bound_box])
            assert not ((corners.min(0) <= loc).all() and (loc <= corners.max(0)).all()), (row["name"], obj.name)
        assert CD.camera_problem(scene, depsgraph, loc) == "", row["name"]
        assert 16.0 <= row["camera"]["lens_mm"] <= 50.0
    # The check can fail: a point inside the credenza is inside it.
    credenza = bpy.data.objects["Credenza"]
    centre = sum((credenza.matrix_world @ mathutils.Vector(c) for c in credenza.bound_box),
                 mathutils.Vector()) / 8
    assert "inside" in CD.camera_problem(scene, depsgraph, centre, clearance=0.0)
    # Same camera: the control the dataset holds is what the capture renders from the
    # camera recorded for that view, pixel for pixel.
    row = next(r for r in rows if r["kind"] == "interior")
    cam = _camera_from_row(scene, row)
    result = render_controls(scene, str(tmp_path / "again"), CaptureOptions(camera=cam.name, long_side=64,
                                                                            passes=("depth", "seg")))
    assert np.array_equal(read_png(result.files["depth"]), read_png(out / row["controls"]["depth"]))
    assert np.array_equal(read_png(result.files["seg"]), read_png(out / row["controls"]["seg"]))
    assert read_exr(str(tmp_path / "again" / "passes.exr"))  # the EXR the material tags come from


def test_resume_and_reproducible_views(made, blend, tmp_path):
    out, rows, _ = made
    more, _s, count = CD.make_dataset([str(blend)], str(out), VIEWS + 2, CONTROLS, long_side=64, seed=5,
                                      samples=2, progress=False, log=lambda *_: None)
    assert count == 2 and more[:VIEWS] == rows and len(more) == VIEWS + 2
    again, _s, count = CD.make_dataset([str(blend)], str(tmp_path / "other"), 2, CONTROLS, long_side=64, seed=5,
                                       samples=2, progress=False, log=lambda *_: None)
    assert count == 2 and again == rows[:2]
    for row in again:
        for rel in [row["file_name"], *row["controls"].values()]:
            assert np.array_equal(read_png(tmp_path / "other" / rel), read_png(out / rel)), rel
    with pytest.raises(D.DatasetError, match="made with long_side 64, not 128"):
        CD.make_dataset([str(blend)], str(out), VIEWS, CONTROLS, long_side=128, seed=5, samples=2, progress=False)


def test_materials_and_lights_vary_per_view_and_cameras_stay(made, blend, tmp_path):
    out, rows, _ = made
    rules = {"floor": ["Terracotta", "Brushed_Steel"]}
    varied, _s, _n = CD.make_dataset([str(blend)], str(tmp_path / "varied"), 3, CONTROLS, long_side=64, seed=5,
                                     samples=2, progress=False, log=lambda *_: None, materials=rules,
                                     light_scale=(0.25, 4.0))
    changed = 0
    for row, base in zip(varied, rows):
        assert row["camera"] == base["camera"] and row["kind"] == base["kind"]
        assert row["variation"]["materials"]["floor"] in rules["floor"]
        assert 0.25 <= row["variation"]["light_scale"] <= 4.0
        assert np.array_equal(read_png(tmp_path / "varied" / row["controls"]["depth"]),
                              read_png(out / base["controls"]["depth"]))
        target = read_png(tmp_path / "varied" / row["file_name"])
        changed += not np.array_equal(target, read_png(out / base["file_name"]))
        if "floor" in row["classes"]:
            assert row["variation"]["materials"]["floor"] in row["materials"]
            assert "Oak_Floor" not in row["materials"]
    assert changed == 3
    with pytest.raises(D.DatasetError, match="has no material 'Marble_Nero'"):
        CD.make_dataset([str(blend)], str(tmp_path / "bad"), 1, CONTROLS, long_side=64, progress=False,
                        materials={"floor": ["Marble_Nero"]})
    with pytest.raises(D.DatasetError, match="'floorboards'"):
        D.parse_material_rules(["floorboards=Oak_Floor"])
    with pytest.raises(D.DatasetError, match="LOW:HIGH"):
        D.parse_light_scale("2")


def test_bad_input_gets_one_line_errors(blend, tmp_path):
    def run(*args):
        proc = subprocess.run([ARCHVIZ, "dataset", *args], capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""

    out = str(tmp_path / "o")
    code, err = run(str(blend), "--views", "0", "--out", out)
    assert code == 2 and err == "archviz dataset: --views 0: make at least 1 view per scene"
    code, err = run(str(blend), "--views", "2", "--out", out, "--controls", "depth,albedo")
    assert code == 2 and "unknown control type 'albedo'" in err
    code, err = run(str(tmp_path / "missing.blend"), "--views", "2", "--out", out)
    assert code == 2 and "no such .blend file" in err and "missing.blend" in err
    code, err = run(str(blend), "--views", "2", "--out", out, "--long-side", "100")
    assert code == 2 and "--long-side 100" in err
    assert not os.path.exists(out)


def test_pure_helpers():
    assert D.parse_controls("seg, depth,seg") == ("seg", "depth")
    assert D.style_tags(["Oak_Floor", "Plaster_White", "Mat.001"], ["Japandi"]) == ["oak", "plaster", "white",
                                                                                     "japandi"]
    assert D.caption("exterior", ["wall"], [], "") == "an exterior view of a building with wall"
    draws = [D.interior_draw(0, "s", v) < 0.7 for v in range(100)]
    assert 65 <= sum(draws) <= 75
    assert D.view_seed(0, "s", 3) == D.view_seed(0, "s", 3) != D.view_seed(1, "s", 3)
