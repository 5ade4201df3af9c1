"""``archviz texture`` and ``archviz walkthrough`` end to end on a scene of known geometry:
real Cycles passes, a real backend process on loopback, the tiny SD 1.5 model (64 px, 2
steps). A block seen by two cameras, a screen behind it, and a box hidden behind the screen
that no camera sees."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from backend_support import base_env, read_only_folder, read_png, running_server

TESTS = os.path.dirname(os.path.abspath(__file__))

SCENE = r"""
import sys, bpy
sys.path.insert(0, sys.argv[1])
from blender_support import fresh_scene, box, camera, material
fresh_scene(64, 64)
def coloured(name, rgb):
    mat = material(name)
    mat.use_nodes = True
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*rgb, 1.0)
    return mat
world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs[0].default_value = (0.5, 0.5, 0.5, 1.0)
bpy.context.scene.world = world
grey = coloured("Grey", (0.6, 0.6, 0.6))
box("Block", (0, 0, 0), (2, 2, 2), material=grey)
box("Screen", (0, 5, 0), (6, 0.2, 6), material=grey)
box("Hidden", (0, 8, 0), (1, 1, 1), material=coloured("Secret", (0.8, 0.1, 0.1)))
camera("Front", (0, -6, 1.0), (0, 0, 0))
camera("Side", (5, -4, 1.5), (0, 0, 0))
camera("Back", (0, 12, 1.0), (0, 0, 0), make_active=False)
camera("Away", (0, -6, 0), (0, -12, 0), make_active=False)
bpy.context.scene.camera = bpy.data.objects["Front"]
lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
bpy.context.scene.collection.objects.link(lamp)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
for cam in [o for o in bpy.data.objects if o.type == "CAMERA"]:
    bpy.data.objects.remove(cam)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[3])
"""

RENDER = r"""
import sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
s = bpy.context.scene
s.render.engine = "CYCLES"
s.cycles.samples = 16
s.cycles.use_denoising = False
s.cycles.seed = 0
s.view_settings.view_transform = "Standard"
s.render.image_settings.file_format = "PNG"
for cam in sys.argv[3].split(","):
    s.camera = bpy.data.objects[cam]
    s.render.filepath = sys.argv[2] + "/" + cam + ".png"
    bpy.ops.render.render(write_still=True)
"""


def env():
    return base_env()


def archviz(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env(), **kw)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("texture_scene")
    path, bare = folder / "block.blend", folder / "nocamera.blend"
    subprocess.run([sys.executable, "-c", SCENE, TESTS, str(path), str(bare)], check=True, capture_output=True,
                   timeout=120)
    return path, bare


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


TEXTURE = ("--model", "tiny", "--long-side", "64", "--steps", "2", "--texture-size", "64")


@pytest.fixture(scope="module")
def textured(scene, server, tmp_path_factory):
    path = scene[0]
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    out = tmp_path_factory.mktemp("textured")
    proc = archviz("texture", str(path), "--cameras", "Front,Side", "--check-cameras", "Back", *TEXTURE,
                   "--backend", server.url, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    renders = out / "renders"
    renders.mkdir()
    subprocess.run([sys.executable, "-c", RENDER, str(out / "textured.blend"), str(renders), "Front,Side,Back"],
                   check=True, capture_output=True, timeout=120)
    original = out / "original"
    original.mkdir()
    subprocess.run([sys.executable, "-c", RENDER, str(path), str(original), "Back"], check=True,
                   capture_output=True, timeout=120)
    return out, proc, before


def _pixels(scene_path, camera, points, size=(64, 64)):
    """Pixel positions of world points in ``camera``'s 64x64 image (run in a child: bpy)."""
    code = (r"import sys, json, bpy; sys.path.insert(0, sys.argv[1]); "
            r"from blender_support import project; bpy.ops.wm.open_mainfile(filepath=sys.argv[2]); "
            r"s = bpy.context.scene; print(json.dumps(project(s, bpy.data.objects[sys.argv[3]], "
            r"json.loads(sys.argv[4]), (64, 64)).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, TESTS, str(scene_path), camera, json.dumps(points)],
                         capture_output=True, text=True, check=True, timeout=60)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def _patch(image, xy, r=1):
    x, y = int(round(xy[0])), int(round(xy[1]))
    return image[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).astype(np.float64).mean(0)


def test_texels_seen_from_two_cameras_get_one_colour(textured, scene):
    out, proc, _ = textured
    report = json.loads((out / "texture.json").read_text())
    assert [v["camera"] for v in report["views"]] == ["Front", "Side"]
    assert report["views"][0]["generated_share"] == 1.0 and 0 < report["views"][1]["generated_share"] < 1
    block = report["objects"]["Block"]
    assert set(block["by_view"]) == {"Front", "Side"} and block["covered"] > 0.9
    assert "Hidden" not in report["objects"]  # no camera sees it
    # Points on the block's front face (y = -1), seen by both cameras
    points = [[x, -1.0, z] for x in (-0.4, 0.0, 0.4) for z in (-0.4, 0.0, 0.4)]
    front = _pixels(scene[0], "Front", points)
    side = _pixels(scene[0], "Side", points)
    a, _ = read_png(str(out / "renders" / "Front.png"))
    b, _ = read_png(str(out / "renders" / "Side.png"))
    generated, _ = read_png(str(out / "views" / "01_Front" / "image.png"))
    diffs, spread = [], []
    for p, q in zip(front, side):
        ca, cb = _patch(a, p), _patch(b, q)
        diffs.append(np.abs(ca - cb).mean())
        spread.append(ca)
        # the bake shows what the first view generated there
        assert np.abs(ca - _patch(generated, p)).mean() < 40, (ca, _patch(generated, p))
    assert np.mean(diffs) < 12, diffs  # one colour seen from both sides, within filtering
    assert np.std(np.array(spread), axis=0).mean() > 3  # the face carries a texture, not one flat value
    assert report["seams"]["ratio"] is None or report["seams"]["ratio"] > 0
    assert "Front" in report["mismatch"] or "Side" in report["mismatch"]
    assert report["check_cameras"]["Back"]["covered"] < 0.2  # the held-out back view sees unmade surfaces


def test_unseen_surfaces_stay_as_they_were_and_the_users_file_is_untouched(textured, scene):
    out, _proc, before = textured
    path = scene[0]
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    back, _ = read_png(str(out / "renders" / "Back.png"))
    original, _ = read_png(str(out / "original" / "Back.png"))
    assert np.abs(back.astype(int) - original.astype(int)).mean() < 2.0
    assert (back.std() > 1)  # the render shows something (lit by the world)
    code = (r"import sys, bpy; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]); o = bpy.data.objects; "
            r"print([s.material.name for s in o['Hidden'].material_slots], o['Hidden'].data.uv_layers.keys(), "
            r"[s.link for s in o['Block'].material_slots], "
            r"[img.filepath for img in bpy.data.images if img.name.endswith('bake')])")
    info = subprocess.run([sys.executable, "-c", code, str(out / "textured.blend")], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip().splitlines()[-1]
    assert info.startswith("['Secret'] ") and "['OBJECT']" in info and "//textures/Block.png" in info, info
    code = (r"import sys, bpy; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]); o = bpy.data.objects; "
            r"print(o['Block'].data.uv_layers.keys(), [s.link for s in o['Block'].material_slots])")
    mine = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip().splitlines()[-1]
    assert mine == "[] ['DATA']", mine  # the user's scene has no generated UVs or bake materials


def test_cancelled_run_keeps_finished_views_and_resumes(scene, server, tmp_path):
    out = tmp_path / "cancel"
    # enough steps that view 2 is still generating when the interrupt lands (the runner sees
    # a job's end at once: a 2-step view takes about 0.1 s)
    slow = (*TEXTURE[:4], "--steps", "100", *TEXTURE[6:])
    cmd = [sys.executable, "-m", "archviz_controlnet.cli", "texture", str(scene[0]), "--cameras", "Front,Side",
           *slow, "--backend", server.url, "--out", str(out)]
    # Ctrl+C as a terminal gives it: a suite started in the background (``cmd &`` in a
    # script) runs with SIGINT ignored, which a child would inherit and never see the interrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("view 2/2 Side: generating"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest + err
    assert "cancelled; the views finished so far are kept" in err and "Traceback" not in err
    first = out / "views" / "01_Front"
    assert (first / "view.json").exists() and (first / "image.png").exists() and (first / "atlas.npz").exists()
    assert not (out / "views" / "02_Side" / "view.json").exists() and not (out / "textured.blend").exists()
    stamp = os.stat(first / "image.png").st_mtime_ns
    again = archviz("texture", str(scene[0]), "--cameras", "Front,Side", *slow, "--backend", server.url,
                    "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "view 1/2 Front: kept" in again.stdout and "view 2/2 Side: generating" in again.stdout
    assert os.stat(first / "image.png").st_mtime_ns == stamp and (out / "textured.blend").exists()


@pytest.mark.parametrize("case, extra, message", [
    ("nocamera", ["--cameras", "Front"], "archviz texture: scene 'Scene' has no camera"),
    ("block", ["--cameras", "Front,Nope"], "archviz texture: --cameras: no camera named 'Nope' in scene 'Scene'"),
    ("block", ["--cameras", "Front,Away"], "archviz texture: nothing in view of camera 'Away'"),
    ("block", ["--cameras", "Front", "--objects", "Lamp"],
     "archviz texture: --objects: 'Lamp' is a light, not a mesh; only meshes can be textured"),
    ("block", ["--cameras", "Front", "--model", "tiny-zimage"],
     "archviz texture: --model 'tiny-zimage': texturing inpaints each new view under a mask"),
])
def test_bad_input_is_one_line(scene, tmp_path, case, extra, message):
    path = scene[0] if case == "block" else scene[1]
    proc = archviz("texture", str(path), "--model", "tiny", *extra, "--out", str(tmp_path / "o"))  # last --model wins
    errors = [ln for ln in proc.stderr.splitlines() if not ln[:2].isdigit()]  # Blender's own timed log lines
    assert proc.returncode in (2, 3) and len(errors) == 1 and errors[0].startswith(message), proc.stderr
    assert not (tmp_path / "o" / "views" / "01_Front" / "view.json").exists()


def test_read_only_output_is_one_line(scene, tmp_path):
    cleanup = read_only_folder(tmp_path / "ro")
    try:
        proc = archviz("texture", str(scene[0]), "--cameras", "Front", "--out", str(tmp_path / "ro" / "out"))
    finally:
        cleanup()
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"archviz texture: --out {tmp_path / 'ro' / 'out'} cannot be created: {tmp_path / 'ro'} is not writable"]


#: Prints the type, name, length and file of each sequencer strip of the .blend argv[1], in a
#: fresh Blender (a child: the test's own bpy has another file open).
SHOWN_STRIPS = """
import sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
editor = bpy.context.scene.sequence_editor
for s in (editor.strips if hasattr(editor, "strips") else editor.sequences):
    print("STRIP", s.type, s.name, s.frame_final_duration, bpy.path.abspath(s.filepath))
"""


def test_walkthrough_renders_frames_and_an_mp4(textured, tmp_path):
    out = textured[0]
    walk = tmp_path / "walk"
    proc = archviz("walkthrough", str(out / "textured.blend"), "--camera", "Front", "--frames", "1-3", "--samples",
                   "2", "--long-side", "32", "--out", str(walk))
    assert proc.returncode == 0, proc.stderr
    frames = sorted(p.name for p in walk.iterdir() if p.suffix == ".png")
    assert frames == ["frame_0001.png", "frame_0002.png", "frame_0003.png"] and (walk / "walk.mp4").stat().st_size
    a, _ = read_png(str(walk / frames[0]))
    b, _ = read_png(str(walk / frames[2]))
    assert a.shape == (32, 32, 3) and np.abs(a.astype(int) - b).max() <= 2  # a still camera: the same frame
    shown = subprocess.run([sys.executable, "-c", SHOWN_STRIPS, str(walk / "walkthrough.blend")], capture_output=True,
                           text=True, timeout=120)
    strips = [line.split()[1:] for line in shown.stdout.splitlines() if line.startswith("STRIP ")]
    assert strips == [["MOVIE", "walkthrough", "3", str(walk / "walk.mp4")]], shown.stdout + shown.stderr
    bad = archviz("walkthrough", str(out / "textured.blend"), "--camera", "Lamp", "--out", str(tmp_path / "w2"))
    assert bad.returncode == 3 and bad.stderr.strip().splitlines()[-1] == \
        "archviz walkthrough: --camera 'Lamp' is a light, not a camera"


def test_texture_scene_from_the_panel_opens_the_result_as_a_new_scene(scene, server, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from blender_support import draw

    path = scene[0]
    before = path.read_bytes()
    monkeypatch.setenv("ARCHVIZ_BACKEND_URL", server.url)
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    bpy.ops.wm.open_mainfile(filepath=str(path))
    archviz_controlnet.register()
    try:
        props = bpy.context.scene.archviz.texture
        props.cameras, props.long_side, props.steps, props.texture_size = "Front,Side", 64, 2, 64
        props.output_dir = str(tmp_path / "panel")
        calls = draw(archviz_controlnet.panels.texture.VIEW3D_PT_archviz_texture, bpy.context)
        assert ("operator", ("archviz.texture_scene",), {"icon": "TEXTURE"}) in calls
        assert bpy.ops.archviz.texture_scene() == {"FINISHED"}
        assert props.result_scene == "Scene (textured)" and props.progress == 1.0
        assert "Block: " in props.report and "Front" in props.report
        textured = bpy.data.scenes["Scene (textured)"]
        block = next(o for o in textured.objects if o.name.startswith("Block"))
        assert block is not bpy.data.objects["Block"]
        assert block.material_slots[0].link == "OBJECT" and "bake" in block.material_slots[0].material.name
        mine = bpy.data.objects["Block"]
        assert [s.link for s in mine.material_slots] == ["DATA"] and mine.material_slots[0].material.name == "Grey"
        assert len(mine.data.uv_layers) == 0  # the user's mesh got no generated UVs
        assert bpy.context.scene == textured  # opened as the active scene
        bad = textured.archviz.texture
        bad.cameras = "Nope"
        with pytest.raises(RuntimeError, match="no camera named 'Nope'"):
            bpy.ops.archviz.texture_scene()
    finally:
        archviz_controlnet.unregister()
    assert path.read_bytes() == before
