"""Control passes from real Cycles renders of scenes with known geometry (bpy headless)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

from blender_support import box, box_corners, camera, deg, fresh_scene, material, plane, project  # noqa: E402

from archviz_controlnet.blender.capture.render import CaptureError, CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core.classes import ADE20K  # noqa: E402


def load(out, name):
    with Image.open(os.path.join(out, name)) as im:
        return np.array(im)


def capture(tmp_path, **kw):
    out = str(tmp_path / "passes")
    render = bpy.context.scene.render
    kw.setdefault("long_side", min(512, max(render.resolution_x, render.resolution_y)))  # small scenes render fast
    result = render_controls(bpy.context.scene, out, CaptureOptions(**kw))
    return out, result


def test_depth_is_inverse_monotonic_exact_and_background_black(tmp_path):
    scene = fresh_scene(256, 256)
    boxes = [box(f"Box{i}", (x, y, 0), (1, 1, 1)) for i, (x, y) in enumerate([(-1.5, 0), (0, 3), (1.5, 6)])]
    cam = camera(location=(0, -6, 0), target=(0, 0, 0), lens=30)
    out, result = capture(tmp_path, depth_range="scene")
    z = np.load(os.path.join(out, "depth.npy"))
    depth = load(out, "depth.png")
    assert depth.shape == (256, 256) and z.shape == (256, 256)
    values = []
    for b, front in zip(boxes, (5.5, 8.5, 11.5)):
        col, row = np.rint(project(scene, cam, [np.array(b.location) - np.array([0, 0.5, 0])], (256, 256))[0]).astype(int)
        # Z is the distance along the camera axis to the front face, exactly.
        assert z[row, col] == pytest.approx(front, rel=1e-4)
        values.append(int(depth[row, col]))
    assert values[0] > values[1] > values[2] > 0  # near is brighter
    background = ~np.isfinite(z)
    assert background.any() and (depth[background] == 0).all()
    rng = result.info["depth_range"]
    assert rng["source"] == "scene bounds" and rng["near"] == pytest.approx(5.5) and rng["far"] > 12.0
    assert rng["mode"] == "scene"


def test_scene_depth_range_is_the_same_for_every_camera_of_a_scene(tmp_path):
    fresh_scene(128, 128)
    box("Box", (0, 0, 0), (1, 1, 1))
    camera("A", location=(0, -6, 0))
    camera("B", location=(4, -4, 2), make_active=False)
    _, ra = capture(tmp_path / "a", depth_range="scene")
    _, rb = capture(tmp_path / "b", camera="B", depth_range="scene")
    assert ra.info["depth_range"] == rb.info["depth_range"]
    # The default fits each view: the two cameras get their own ranges.
    _, va = capture(tmp_path / "va")
    _, vb = capture(tmp_path / "vb", camera="B")
    assert va.info["depth_range"]["mode"] == "view" and va.info["depth_range"] != vb.info["depth_range"]
    _, ru = capture(tmp_path / "u", near=2.0, far=9.0)
    assert ru.info["depth_range"] == {"near": 2.0, "far": 9.0, "source": "user", "mode": "manual"}
    _, rm = capture(tmp_path / "m", near=2.0, far=9.0, depth_range="manual")
    assert rm.info["depth_range"] == ru.info["depth_range"]


@pytest.mark.parametrize("rotation,expected", [
    ((90, 0, 0), (0.0, 0.0, 1.0)),  # facing the camera
    ((90, 0, 30), (0.5, 0.0, 0.866)),  # turned to the right
    ((90, 0, -30), (-0.5, 0.0, 0.866)),  # turned to the left
    ((60, 0, 0), (0.0, 0.5, 0.866)),  # tilted up
    ((120, 0, 0), (0.0, -0.5, 0.866)),  # tilted down
])
def test_plane_normals_code_to_expected_channels(tmp_path, rotation, expected):
    fresh_scene(128, 128)
    plane("Panel", (0, 0, 0), size=3.0, rotation=tuple(deg(a) for a in rotation))
    camera(location=(0, -6, 0))
    out, _ = capture(tmp_path, passes=("normal",))
    img = load(out, "normal.png").astype(float)
    centre = img[60:68, 60:68].reshape(-1, 3).mean(axis=0)
    x, y, zc = expected
    want = np.array([(1 - x) / 2, (1 + y) / 2, (1 + zc) / 2]) * 255
    np.testing.assert_allclose(centre, want, atol=2.0)
    assert tuple(img[0, 0].astype(int)) == (128, 128, 255)  # background corner
    if rotation == (90, 0, 0):
        assert tuple(img[64, 64].astype(int)) == (128, 128, 255)


def _segment_distance(points, a, b):
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def test_lines_on_box_silhouettes_and_creases_not_inside_faces(tmp_path):
    scene = fresh_scene(256, 256)
    cube = box("Cube", (0, 0, 0), (2, 2, 2))
    cam = camera(location=(3.5, -6, 2.8), target=(0, 0, 0), lens=35)
    out, _ = capture(tmp_path, passes=("lines",), line_style="canny")
    lines = load(out, "lines.png")
    assert set(np.unique(lines)) == {0, 255}
    corners = np.array(box_corners(cube))
    px = project(scene, cam, corners, (256, 256))
    lo, hi = corners.min(0), corners.max(0)
    # The camera sees the -Y, +X and +Z faces; an edge is visible if it borders one of them.
    visible_edges = []
    for i in range(8):
        for j in range(i + 1, 8):
            diff = np.abs(corners[i] - corners[j]) > 1e-6
            if diff.sum() != 1:
                continue
            shared = ~diff
            on_visible_face = (shared[1] and corners[i][1] == lo[1]) or (shared[0] and corners[i][0] == hi[0]) \
                or (shared[2] and corners[i][2] == hi[2])
            if on_visible_face:
                visible_edges.append((px[i], px[j]))
    assert len(visible_edges) == 9
    rows, cols = np.nonzero(lines)
    line_px = np.stack([cols, rows], axis=1).astype(float)
    dist = np.min([_segment_distance(line_px, a, b) for a, b in visible_edges], axis=0)
    assert dist.max() <= 2.0  # every line pixel lies on a visible edge
    for a, b in visible_edges:  # every visible edge is drawn
        for t in np.linspace(0.1, 0.9, 9):
            p = a + t * (b - a)
            near = np.hypot(line_px[:, 0] - p[0], line_px[:, 1] - p[1]).min()
            assert near <= 2.0, f"no line near edge point {p}"
    # Face centres stay black.
    for centre in ([0, -1, 0], [1, 0, 0], [0, 0, 1]):
        c, r = np.rint(project(scene, cam, [centre], (256, 256))[0]).astype(int)
        assert not lines[r - 4:r + 5, c - 4:c + 5].any()


def test_seg_classes_exact_palette_and_sky(tmp_path):
    scene = fresh_scene(320, 160)
    furniture = bpy.data.collections.new("Furniture")
    scene.collection.children.link(furniture)
    rugs = bpy.data.collections.new("Floor coverings")
    rugs["archviz_class"] = "rug"
    scene.collection.children.link(rugs)
    objs = {
        "wall": box("Wall_North", (0, 4, 0), (12, 0.2, 6)),  # keyword on the object name
        "door": box("Box_A", (-3, 0, 0), (1, 1, 2)),  # object property
        "sofa": box("Box_B", (-1, 0, 0), (1, 1, 1), material=material("Fabric", "sofa")),  # material property
        "rug": box("Box_C", (1, 0, 0), (1, 1, 0.3), collection=rugs),  # collection property
        "chair": box("Box_D", (3, 0, 0), (1, 1, 1), collection=furniture, material=material("Oak")),
        "table": box("Thing", (0, 0, -2), (1, 1, 0.5), material=material("Table_Top")),  # material name
    }
    objs["door"]["archviz_class"] = "door"
    objs["chair"].name = "Chair_7"  # keyword in the object name beats the collection
    box("Blob", (0, 0, 2), (0.6, 0.6, 0.6))  # nothing says what it is: the fallback
    cam = camera(location=(0, -9, 0), target=(0, 0, 0), lens=28)
    out, result = capture(tmp_path, passes=("seg",))
    seg = load(out, "seg.png")
    assert seg.shape == (160, 320, 3)
    palette = {tuple(c) for _, c in ADE20K.values()}
    colours = {tuple(c) for c in np.unique(seg.reshape(-1, 3), axis=0)}
    assert colours <= palette  # exact palette entries, no blends
    for cls, obj in objs.items():
        front = np.array(obj.location) - np.array([0, obj.scale[1] / 2, 0])
        c, r = np.rint(project(scene, cam, [front], (320, 160))[0]).astype(int)
        assert tuple(seg[r, c]) == ADE20K[cls][1], cls
    c, r = np.rint(project(scene, cam, [(0, -0.3, 2)], (320, 160))[0]).astype(int)
    assert tuple(seg[r, c]) == ADE20K["wall"][1]  # fallback class
    assert tuple(seg[0, 0]) == ADE20K["sky"][1]  # above the wall: no geometry
    info = json.loads((tmp_path / "passes" / "passes.json").read_text())
    assert info["unclassified"] == ["Blob"]
    assert {e["class"] for e in info["legend"]} >= set(objs)
    entry = info["objects"]["Box_B"][0]
    assert {k: entry[k] for k in ("material", "class", "rule", "from")} == {
        "material": "Fabric", "class": "sofa", "rule": "property", "from": "material property"}
    assert info["objects"]["Blob"][0]["rule"] == "fallback" and 0 < info["fallback_share"] < 1
    assert result.info["objects"]["Box_C"][0]["from"] == "collection property"


def test_background_class_is_configurable(tmp_path):
    fresh_scene(64, 64)
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera(location=(0, -6, 0))
    out, _ = capture(tmp_path, passes=("seg",), background_class="building")
    assert tuple(load(out, "seg.png")[0, 0]) == ADE20K["building"][1]


def test_orthographic_portrait_camera(tmp_path):
    scene = fresh_scene(1080, 1920)
    box("Chair", (0, 0, 0), (1, 1, 1))
    cam = camera(location=(0, -6, 0), ortho_scale=4.0)
    out, result = capture(tmp_path)
    depth = load(out, "depth.png")
    assert depth.shape == (512, 288)
    assert result.info["lens"]["type"] == "orthographic" and result.info["resolution"] == [288, 512]
    z = np.load(os.path.join(out, "depth.npy"))
    c, r = np.rint(project(scene, cam, [(0, -0.5, 0)], (288, 512))[0]).astype(int)
    assert z[r, c] == pytest.approx(5.5, rel=1e-4)
    # Orthographic: the front face is one depth everywhere.
    face = z[np.isfinite(z)]
    assert np.isclose(face, 5.5, rtol=1e-4).mean() > 0.95
    lines = load(out, "lines.png")
    assert lines.any() and not lines[r - 5:r + 5, c - 5:c + 5].any()
    for name in ("depth", "lines", "normal", "seg"):
        assert load(out, f"{name}.png").shape[:2] == (512, 288)


def test_no_camera_is_a_clear_error(tmp_path):
    fresh_scene()
    box("Chair", (0, 0, 0), (1, 1, 1))
    with pytest.raises(CaptureError, match="has no camera"):
        capture(tmp_path)
    camera("Cam")
    with pytest.raises(CaptureError, match="no object named 'Nope'.*cameras: Cam"):
        capture(tmp_path, camera="Nope")
    with pytest.raises(CaptureError, match="'Chair' is a mesh, not a camera"):
        capture(tmp_path, camera="Chair")


def test_empty_view_is_a_clear_error_and_writes_no_images(tmp_path):
    fresh_scene()
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera(location=(0, -6, 0), target=(0, -12, 0))  # looking away
    with pytest.raises(CaptureError, match="nothing in view of camera 'Camera'"):
        capture(tmp_path)
    assert not [p for p in os.listdir(tmp_path / "passes") if p.endswith(".png")]


def test_scene_settings_are_restored(tmp_path):
    scene = fresh_scene(640, 480)
    obj = box("Chair", (0, 0, 0), (1, 1, 1), material=material("Oak"))
    obj.pass_index = 7
    camera(location=(0, -6, 0))
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.filepath = "//renders/"
    scene.cycles.samples = 64
    layer = scene.view_layers[0]
    capture(tmp_path)
    assert scene.render.engine == "BLENDER_WORKBENCH"
    assert scene.render.filepath == "//renders/"
    assert (scene.render.resolution_x, scene.render.resolution_y) == (640, 480)
    assert scene.cycles.samples == 64 and obj.pass_index == 7
    assert bpy.data.materials["Oak"].pass_index == 0
    assert not layer.use_pass_normal and not layer.use_pass_object_index
    assert scene.render.image_settings.file_format == "PNG"


def test_bad_options_name_the_value(tmp_path):
    fresh_scene()
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera()
    with pytest.raises(CaptureError, match="unknown pass 'albedo'"):
        capture(tmp_path, passes=("depth", "albedo"))
    with pytest.raises(ValueError, match="500"):
        capture(tmp_path, long_side=500)
    with pytest.raises(ValueError, match="'skyy'"):
        capture(tmp_path, background_class="skyy")
