"""Scenes of our own, one per rule of the view-fitted control passes: depth per view and
per sequence, a huge ground plane, IFC classes with per-pixel facing on one object, line
styles, thin rails through supersampling, the beauty pass, line styles per model in sweeps
(real Cycles renders, small)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")
import bmesh  # noqa: E402  (after bpy)

from blender_support import box, camera, fresh_scene, material, plane, project  # noqa: E402

from archviz_controlnet.blender.capture.render import CaptureError, CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core.classes import ADE20K  # noqa: E402


def load(path):
    with Image.open(path) as im:
        return np.array(im)


def capture(tmp_path, name="passes", **kw):
    kw.setdefault("long_side", 128)
    return render_controls(bpy.context.scene, str(tmp_path / name), CaptureOptions(**kw))


def colour(cls):
    return ADE20K[cls][1]


# ---------------------------------------------------------------- depth

def _building_on_ground(side):
    fresh_scene(160, 120)
    house = box("Building_Haus", (0, 0, 3), (10, 8, 6))
    ground = plane("Terrain", (0, 0, 0), size=side)
    cam = camera(location=(-4, -22, 1.7), target=(0, 0, 3), lens=35)
    cam.data.clip_end = 1e5
    return house, ground, cam


def test_huge_ground_plane_does_not_change_the_building_in_view_mode(tmp_path):
    _building_on_ground(100.0)
    small = capture(tmp_path, "small", passes=("depth", "seg"))
    _building_on_ground(20000.0)
    huge = capture(tmp_path, "huge", passes=("depth", "seg"))
    huge_scene = capture(tmp_path, "huge_scene", passes=("depth",), depth_range="scene")
    seg = load(huge.files["seg"])
    building = (seg == colour("building")).all(axis=-1)
    assert building.mean() > 0.2
    a, b = load(small.files["depth"]).astype(int), load(huge.files["depth"]).astype(int)
    assert np.abs(a - b)[building].max() <= 6  # the plane only adds far ground
    assert 0 < b[building].min() and b[building].max() < 255  # neither black nor white: it keeps its relief
    assert (load(huge_scene.files["depth"])[building] == 255).mean() > 0.95  # scene bounds: solid white
    stats = huge.info["depth_stats"]
    assert stats["clipped_near"] + stats["clipped_far"] < 0.08 and stats["levels_used"] > 40
    assert huge.info["depth_range"]["mode"] == "view" and huge.info["depth_range"]["far"] < 200


def test_sequence_range_holds_over_the_frames_and_view_does_not(tmp_path):
    fresh_scene(96, 72)
    box("Chair", (0, 0, 0), (1, 1, 1))
    box("Wall", (0, 4, 0), (8, 0.2, 6))
    cam = camera(location=(0, -8, 0.5))
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 20
    for frame, y in ((1, -8.0), (20, -3.0)):
        cam.location.y = y
        cam.keyframe_insert("location", frame=frame)
    seq1 = capture(tmp_path, "s1", passes=("depth",), depth_range="sequence", frame=1)
    seq20 = capture(tmp_path, "s20", passes=("depth",), depth_range="sequence", frame=20)
    assert seq1.info["depth_range"] == seq20.info["depth_range"]
    rng = seq1.info["depth_range"]
    assert rng["mode"] == "sequence" and rng["frames"] == [1, 20] and rng["frames_sampled"] == 20
    view1 = capture(tmp_path, "v1", passes=("depth",), frame=1)
    view20 = capture(tmp_path, "v20", passes=("depth",), frame=20)
    assert view1.info["depth_range"]["near"] > 2 * view20.info["depth_range"]["near"]
    # The held range spans both ends of the move.
    assert rng["near"] <= view20.info["depth_range"]["near"] * 1.1 and rng["far"] >= view1.info["depth_range"]["far"] * 0.8
    assert scene.frame_current == 1  # put back


# ---------------------------------------------------------------- classes

def _two_level_slab(name):
    """One object: a floor slab below the camera and a ceiling slab above it."""
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    for centre, size in (((0, 4, -0.15), (8, 8, 0.3)), ((0, 10, 3.15), (8, 8, 0.3))):
        geom = bmesh.ops.create_cube(bm, size=1.0)
        verts = [g for g in geom["verts"]]
        bmesh.ops.scale(bm, vec=size, verts=verts)
        bmesh.ops.translate(bm, vec=centre, verts=verts)
    bm.to_mesh(mesh)
    bm.free()
    return bpy.data.objects.new(name, mesh)


def test_ifc_classes_and_floor_and_ceiling_on_one_slab(tmp_path):
    scene = fresh_scene(200, 150)
    project_c = bpy.data.collections.new("IfcProject/Door Project")
    scene.collection.children.link(project_c)
    site_c = bpy.data.collections.new("IfcSite/Garden")
    project_c.children.link(site_c)
    building_c = bpy.data.collections.new("IfcBuilding/Building Wall Street")
    site_c.children.link(building_c)
    storey = bpy.data.collections.new("IfcBuildingStorey/Floor 1 Building")
    building_c.children.link(storey)
    slab = _two_level_slab("IfcSlab/Decke-1")
    slab["PredefinedType"] = "FLOOR"
    storey.objects.link(slab)
    wall = box("IfcWallStandardCase/W-1", (0, 14.2, 1.5), (8, 0.2, 3), collection=storey, material=material("Anstrich"))
    window = box("IfcWindow/F-1", (-2.5, 14.0, 1.5), (1.2, 0.2, 1.2), collection=storey, material=material("Glas"))
    proxy = box("IfcBuildingElementProxy/Objekt-7", (2.5, 6, 0.5), (1, 1, 1), collection=storey)
    chair = box("IfcFurnishingElement/Stuhl-1", (-2.5, 6, 0.4), (0.6, 0.6, 0.8), collection=storey)
    site = box("IfcSite/Gelaende", (0, 4, -1.0), (30, 30, 1.0), collection=site_c, material=material("Rasen"))
    cam = camera(location=(0, -3, 1.4), target=(0, 8, 1.4), lens=18)
    result = capture(tmp_path, long_side=200)
    seg = load(result.files["seg"])
    size = (200, 152)

    def at(point):
        c, r = np.rint(project(scene, cam, [point], size)[0]).astype(int)
        return tuple(seg[r, c])

    assert at((0, 3, 0.0)) == colour("floor")  # lower slab seen from above
    assert at((0, 9, 3.0)) == colour("ceiling")  # upper slab, same object, seen from below
    assert at((1, 14.1, 2.4)) == colour("wall")
    assert at((-2.5, 13.9, 1.5)) == colour("windowpane")
    assert at((2.5, 5.5, 0.5)) == colour("wall")  # the proxy: fallback (its containers' names do not decide)
    assert at((-2.5, 5.7, 0.4)) == colour("chair")  # furnishing by its own name
    info = result.info
    slab_entry = info["objects"]["IfcSlab/Decke-1"][0]
    assert slab_entry["rule"] == "facing" and slab_entry["decided_by"] == "ifc" and slab_entry["class"] == "slab"
    assert slab_entry["facing"]["up"] == "floor" and slab_entry["facing"]["down"] == "ceiling"
    assert info["objects"]["IfcWallStandardCase/W-1"][0]["rule"] == "ifc"
    assert info["objects"]["IfcFurnishingElement/Stuhl-1"][0]["rule"] == "keyword"
    assert info["unclassified"] == ["IfcBuildingElementProxy/Objekt-7"]
    proxy_share = info["objects"]["IfcBuildingElementProxy/Objekt-7"][0]["pixels"]
    assert info["fallback_share"] == pytest.approx(proxy_share, abs=1e-4) and 0 < proxy_share < 0.1
    assert site.name in info["objects"]  # below the slab: out of view, still listed
    legend = {e["class"]: e for e in info["legend"]}
    assert legend["floor"]["in_view"] and legend["ceiling"]["in_view"]


def test_roof_is_building_outside_and_ceiling_below(tmp_path):
    scene = fresh_scene(160, 120)
    roof = plane("IfcRoof/Dach", (0, 0, 3), size=6, rotation=(0.5, 0, 0))  # single-sided, pitched
    outside = camera("Outside", location=(0, -9, 7), target=(0, 0, 3), lens=35)
    below = camera("Below", location=(0, 0, 1.2), target=(0, 0.5, 3), lens=24, make_active=False)
    for cam, cls in ((outside, "building"), (below, "ceiling")):
        result = capture(tmp_path, cam.name, camera=cam.name, passes=("seg",))
        seg = load(result.files["seg"])
        c, r = np.rint(project(scene, cam, [roof.location], (128, 96))[0]).astype(int)
        assert tuple(seg[r, c]) == colour(cls), cam.name


def test_a_model_in_one_mesh_filling_the_view_from_inside_renders(tmp_path):
    """A room modelled as one mesh with its faces turned inward (as an imported interior
    like Sponza is) fills the view from the front: that is not a camera stuck inside a
    solid, which sees only back faces."""
    fresh_scene(64, 48)
    room = box("Room", (0, 0, 1.5), (8, 8, 3))
    bm = bmesh.new()
    bm.from_mesh(room.data)
    bmesh.ops.reverse_faces(bm, faces=bm.faces[:])
    bm.to_mesh(room.data)
    bm.free()
    camera(location=(0, -2, 1.5), target=(0, 3, 1.2), lens=24)
    result = capture(tmp_path, long_side=64, fallback_class="surface")
    shares = {e["class"]: e["pixels"] for e in result.info["legend"]}
    assert shares["floor"] > 0.1 and shares["ceiling"] > 0.1 and shares["wall"] > 0.3


# ---------------------------------------------------------------- lines

def test_line_styles_differ_as_specified(tmp_path):
    fresh_scene(512, 256)
    box("Cabinet", (-1.6, 0, 0), (1.4, 1.4, 1.4))
    bpy.ops.mesh.primitive_uv_sphere_add(segments=64, ring_count=32, radius=0.55, location=(1.6, 0, 0))
    bpy.context.object.name = "Ball"
    bpy.ops.object.shade_smooth()
    camera(location=(0, -7, 1.5), target=(0, 0, 0), lens=45)
    result = capture(tmp_path, long_side=512, passes=("lines",), line_styles=("canny", "lineart", "mlsd", "softedge"))
    img = {s: load(result.files[f"lines_{s}"]) for s in ("canny", "lineart", "mlsd", "softedge")}
    assert result.info["lines"]["style"] == "lineart"  # auto: the default SD 1.5 lines model
    assert (load(result.files["lines"]) == img["lineart"]).all()
    assert set(np.unique(img["canny"])) == {0, 255}
    assert set(np.unique(img["mlsd"])) == {0, 255}
    grey = lambda a: ((a > 0) & (a < 255)).sum()  # noqa: E731
    assert grey(img["lineart"]) > 0.2 * (img["lineart"] > 0).sum()  # anti-aliased strokes
    assert (img["softedge"] > 0).sum() > 2 * (img["lineart"] > 0).sum()  # soft and wider
    assert len(np.unique(img["softedge"])) > 50
    # MLSD: straight segments only. Of the ball's round outline at most a few chords are
    # left (as MLSD gives), the cabinet's straight edges stay.
    left, right = slice(0, 240), slice(272, 512)
    assert img["canny"][:, right].sum() > 0.2 * img["canny"][:, left].sum()  # the ball has its outline
    assert img["mlsd"][:, left].sum() > 0.7 * img["canny"][:, left].sum()
    assert img["mlsd"][:, right].sum() < 0.3 * img["canny"][:, right].sum()


def _rail_scene(width=512, height=128):
    scene = fresh_scene(width, height)
    box("Wall", (0, 14, 0), (30, 0.2, 8))
    rail = box("Handrail", (0, 10, 0.3), (8, 0.02, 0.02), rotation=(0, np.radians(6), 0))
    cam = camera(location=(0, 0, 0), target=(0, 10, 0), lens=24)
    return scene, rail, cam


def _rail_columns(scene, cam, rail, size):
    import mathutils

    ends = [rail.matrix_world @ mathutils.Vector((x, 0, 0)) for x in (-0.5, 0.5)]
    px = project(scene, cam, ends, size)
    c0, c1 = sorted(np.rint(px[:, 0]).astype(int))
    return px, range(c0 + 3, c1 - 2)


def test_thin_rail_stays_continuous_with_supersampling(tmp_path):
    scene, rail, cam = _rail_scene()
    pixel_at_10m = 36.0 / 24.0 * 10.0 / 512  # metres per pixel at the rail
    assert 0.02 / pixel_at_10m < 0.75  # thinner than a pixel
    size = (512, 128)
    px, cols = _rail_columns(scene, cam, rail, size)
    for factor, continuous in ((2, True), (1, False)):
        result = capture(tmp_path, f"ss{factor}", long_side=512, supersample=factor, line_style="canny")
        seg = load(result.files["seg"])
        rail_px = (seg == colour("railing")).all(axis=-1)
        covered = [rail_px[:, c].any() for c in cols]
        if not continuous:
            assert not all(covered)  # one sample per pixel breaks it: what supersampling fixes
            continue
        assert all(covered)
        z = np.load(result.files["depth_raw"])
        depth = load(result.files["depth"])
        lines = load(result.files["lines"])
        for c in cols:
            rows = np.flatnonzero(rail_px[:, c])
            assert (np.abs(z[rows, c] - 10.0) < 0.5).all()  # depth sees the rail, not the wall behind
            assert (depth[rows, c] > depth[rows.max() + 3, c]).all()  # nearer than the wall: brighter
            t = (c - px[0, 0]) / (px[1, 0] - px[0, 0])
            row = px[0, 1] + t * (px[1, 1] - px[0, 1])
            assert lines[max(0, int(row) - 2):int(row) + 3, c].any()
        assert result.info["supersample"] == 2


# ---------------------------------------------------------------- beauty

def test_beauty_pass_optional_timed_and_from_the_same_camera(tmp_path):
    fresh_scene(64, 48)
    mat = material("Red")
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.8, 0.05, 0.05, 1.0)
    box("Chair", (0, 0, 0), (1, 1, 1), material=mat)
    light = bpy.data.lights.new("Sun", "SUN")
    sun = bpy.data.objects.new("Sun", light)
    bpy.context.scene.collection.objects.link(sun)
    camera(location=(1, -5, 1))
    plain = capture(tmp_path, "plain", long_side=64)
    assert "beauty" not in plain.files and not os.path.exists(tmp_path / "plain" / "beauty.png")
    result = capture(tmp_path, "beauty", long_side=64, beauty=True, beauty_samples=2)
    beauty = load(result.files["beauty"])
    assert beauty.shape == (48, 64, 3) and beauty.std() > 5
    info = json.loads((tmp_path / "beauty" / "passes.json").read_text())
    assert info["beauty"]["engine"] == "CYCLES" and info["beauty"]["samples"] == 2 and info["beauty"]["seconds"] > 0
    assert info["files"]["beauty"] == "beauty.png"
    assert bpy.context.scene.render.engine != "CYCLES" or bpy.context.scene.cycles.samples != 2  # put back
    # The chair is where the seg pass has it.
    seg = load(result.files["seg"])
    chair = (seg != colour("sky")).any(axis=-1)
    assert beauty[chair][:, 0].mean() > 2 * beauty[chair][:, 2].mean()  # red where the chair is
    with pytest.raises(CaptureError, match="'OPENGL'"):
        capture(tmp_path, "bad", beauty=True, beauty_engine="OPENGL")


# ---------------------------------------------------------------- sweeps

def test_each_line_unit_gets_the_style_of_its_model(tmp_path, monkeypatch):
    from archviz_controlnet.blender import sweeping
    from archviz_controlnet.core.sweep import ControlUnit

    units = [ControlUnit("depth", 0.9), ControlUnit("lines", 0.6), ControlUnit("canny", 0.5)]
    base = CaptureOptions()
    assert sweeping.control_choices(units, ["modern"], "sd15", base) == ("view", {1: "lineart", 2: "canny"})
    assert sweeping.control_choices(units, ["modern"], "sdxl", base)[1] == {1: "canny", 2: "canny"}
    override = CaptureOptions(line_style="softedge", depth_range="scene")
    assert sweeping.control_choices(units, ["modern"], "tiny", override) == ("scene", {1: "softedge", 2: "softedge"})
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "sketchy.toml").write_text('prompt = "a sketch"\n[controls.depth]\nrange = "sequence"\n'
                                          '[controls.lines]\nline_style = "mlsd"\n')
    monkeypatch.setenv("ARCHVIZ_PRESET_DIR", str(presets))
    assert sweeping.control_choices(units, ["sketchy"], "sd15", base) == ("sequence", {1: "mlsd", 2: "mlsd"})
    # And the job reads the file of that style.
    fresh_scene(64, 48)
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera(location=(0, -6, 0))
    jobs = sweeping.prepare_jobs(bpy.context.scene, [bpy.context.scene.camera], units, ["modern"], [0], "sdxl",
                                 str(tmp_path / "out"), CaptureOptions(long_side=64))
    passes_dir = tmp_path / "out" / "passes" / "Camera"
    assert (passes_dir / "lines_canny.png").exists() and not (passes_dir / "lines_lineart.png").exists()
    info = json.loads((passes_dir / "passes.json").read_text())
    assert info["lines"]["styles"]["canny"] == "lines_canny.png"
    assert len(jobs) == 1 and [c["type"] for c in jobs[0][1]["controls"]] == ["depth", "lines", "canny"]
