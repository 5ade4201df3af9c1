"""BIM models built here the Bonsai way (``IfcClass/Name`` objects, aggregates as empty
parents and ``IfcStair/...`` collections, IfcSpace volumes flagged every way a user does),
rendered by Cycles and checked against Blender's ray cast: assemblies decide their parts'
class, non-physical elements are never drawn, pitched roofs of slabs are roofs, and
modelling seams draw no line."""

import json

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

from blender_support import box, camera, deg, fresh_scene, material, project  # noqa: E402

from archviz_controlnet.bench.realscenes import pixel_hits  # noqa: E402
from archviz_controlnet.blender.capture.render import CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core.classes import ADE20K  # noqa: E402

COLOUR_CLASS = {rgb: name for name, (_i, rgb) in ADE20K.items()}


def load(path):
    with Image.open(path) as im:
        return np.array(im)


def capture(tmp_path, name, **kw):
    kw.setdefault("supersample", 1)  # pixel centres: the ray casts below see what each pixel shows
    return render_controls(bpy.context.scene, str(tmp_path / name), CaptureOptions(**kw))


def storey(name="IfcBuildingStorey/EG"):
    coll = bpy.data.collections.new(name)
    bpy.context.scene.collection.children.link(coll)
    return coll


def aggregate(name, parent_coll, as_empty=True, as_collection=True):
    """An assembly the Bonsai way: an empty parent object and/or a collection of its name."""
    empty = coll = None
    if as_empty:
        empty = bpy.data.objects.new(name, None)
        parent_coll.objects.link(empty)
    if as_collection:
        coll = bpy.data.collections.new(name)
        parent_coll.children.link(coll)
    return empty, coll


def part(name, location, size, empty, coll, fallback_coll, **kw):
    obj = box(name, location, size, collection=coll or fallback_coll, **kw)
    if empty is not None:
        obj.parent = empty
    return obj


def classes_against_ray_casts(scene, cam, result, expected, step=2):
    """(right, total) over ray-cast pixel centres away from outlines: the seg colour
    against ``expected(object, normal z)``."""
    seg = load(result.files["seg"])
    ids = np.load(result.files["object_ids"])
    right = total = 0
    wrong = []
    for (r, c), (obj, nz, _z) in pixel_hits(scene, cam, tuple(result.info["resolution"]), step).items():
        block = ids[max(0, r - 1):r + 2, max(0, c - 1):c + 2]
        if not (block == ids[r, c]).all():
            continue
        want = expected(obj, nz)
        got = COLOUR_CLASS.get(tuple(int(v) for v in seg[r, c]))
        total += 1
        right += got == want
        if got != want:
            wrong.append((obj.name, want, got))
    return right, total, wrong


def depth_of(objects, cam, size):
    """Z along the camera axis of the nearest of ``objects`` through each pixel centre
    (inf where none), from BVH trees of their own meshes: what the render must show when
    exactly these objects are drawn."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    from archviz_controlnet.bench.realscenes import camera_rays

    trees = []
    for obj in objects:
        mw = obj.matrix_world
        trees.append(BVHTree.FromPolygons([tuple(mw @ v.co) for v in obj.data.vertices],
                                          [tuple(p.vertices) for p in obj.data.polygons]))
    origin, dirs, forward = camera_rays(bpy.context.scene, cam, size)
    out = np.full(dirs.shape[:2], np.inf)
    for r in range(dirs.shape[0]):
        for c in range(dirs.shape[1]):
            for tree in trees:
                loc = tree.ray_cast(Vector(origin), Vector(dirs[r, c]))[0]
                if loc is not None:
                    out[r, c] = min(out[r, c], float((np.array(loc) - origin) @ forward))
    return out


# ---------------------------------------------------------------- 1. assemblies

def test_assembly_parts_take_the_class_of_their_aggregate(tmp_path):
    scene = fresh_scene(128, 96)
    eg = storey()
    # A stair as an empty parent only; a railing as a collection only; a curtain wall as both.
    st, _ = aggregate("IfcStair/Treppe", eg, as_collection=False)
    part("IfcMember/Wange-L", (-3.0, 0, 0.5), (0.1, 1.0, 2.0), st, None, eg)  # stringers
    part("IfcMember/Wange-R", (-2.0, 0, 0.5), (0.1, 1.0, 2.0), st, None, eg)
    for i in range(3):
        part(f"IfcPlate/Stufe-{i}", (-2.5, -0.1, -0.2 + 0.6 * i), (0.9, 0.3, 0.08), st, None, eg)
    _, rail = aggregate("IfcRailing/Gelaender", eg, as_empty=False)
    for i in range(4):
        part(f"IfcMember/Baluster-{i}", (-1.0 + 0.45 * i, 0, 0.0), (0.12, 0.12, 1.6), None, rail, eg)
    part("IfcMember/Handlauf", (-0.32, 0, 0.9), (1.6, 0.14, 0.14), None, rail, eg)
    cw, cwc = aggregate("IfcCurtainWall/CW-1", eg)
    for i in range(3):
        part(f"IfcMember/Pfosten-{i}", (1.2 + 0.9 * i, 0.3, 0.5), (0.12, 0.2, 2.4), cw, cwc, eg)
    for i in range(2):
        part(f"IfcPlate/Paneel-{i}", (1.65 + 0.9 * i, 0.35, 0.5), (0.78, 0.04, 2.4), cw, cwc, eg)
    part("IfcMember/Sparren", (0.0, 0.5, 2.2), (8.0, 0.2, 0.2), None, None, eg)  # no assembly: generic
    cam = camera(location=(0, -7, 0.6), target=(0, 0, 0.5), lens=28)
    result = capture(tmp_path, "parts", long_side=128)

    def expected(obj, _nz):
        if obj.name.startswith(("IfcMember/Wange", "IfcPlate/Stufe")):
            return "stairs"
        if obj.name.startswith(("IfcMember/Baluster", "IfcMember/Handlauf")):
            return "railing"
        if obj.name.startswith(("IfcMember/Pfosten", "IfcPlate/Paneel")):
            return "windowpane"
        return "ceiling"

    right, total, wrong = classes_against_ray_casts(scene, cam, result, expected)
    assert total > 150 and right == total, wrong[:5]
    info = json.loads(open(result.files["json"]).read())
    seen = {e["class"] for e in info["legend"] if e["in_view"]}
    assert {"stairs", "railing", "windowpane", "ceiling"} <= seen
    for name, parent in (("IfcMember/Wange-L", "IfcStair/Treppe"), ("IfcMember/Baluster-0", "IfcRailing/Gelaender"),
                         ("IfcPlate/Paneel-1", "IfcCurtainWall/CW-1")):
        entry = info["objects"][name][0]
        assert entry["rule"] == "aggregate" and entry["parent"] == parent, (name, entry)
    assert info["objects"]["IfcMember/Sparren"][0]["rule"] == "ifc"
    assert info["ifc"]["IfcMember/Wange-L"] == {"class": "IfcMember", "predefined": None, "storey": "EG",
                                                "parents": [["IfcStair", "IfcStair/Treppe"]], "source": "name"}
    assert info["ifc"]["IfcPlate/Paneel-0"]["parents"] == [["IfcCurtainWall", "IfcCurtainWall/CW-1"]]


# ---------------------------------------------------------------- 2. non-physical elements, render visibility

def test_spaces_are_never_drawn_however_flagged_and_visibility_is_the_renders(tmp_path):
    scene = fresh_scene(96, 96)
    eg = storey()
    hidden = bpy.data.collections.new("Hidden")  # excluded from the view layer
    eg.children.link(hidden)
    off = bpy.data.collections.new("Off")  # hidden from renders at collection level
    eg.children.link(off)
    off.hide_render = True
    bounce = bpy.data.collections.new("Bounce")  # indirect-only: camera rays do not see it
    eg.children.link(bounce)
    back = box("IfcWall/Rueckwand", (0, 3.0, 0), (12.0, 0.2, 9.0), collection=eg)
    chair = box("Chair", (1.2, 1.0, -1.2), (0.6, 0.6, 0.6), collection=eg)
    box("Sofa", (-1.2, 1.0, -1.2), (0.8, 0.6, 0.6), collection=off)  # Cycles does not draw it
    box("Table", (0.0, 1.0, 1.2), (0.8, 0.6, 0.3), collection=hidden)  # nor this
    box("Lamp", (-2.0, 1.0, 1.2), (0.4, 0.4, 0.4), collection=bounce)  # nor this
    spaces = [box(f"IfcSpace/{i}", (-2.25 + 1.5 * i, 0.0, 0.0), (1.4, 1.5, 3.6), collection=eg) for i in range(4)]
    spaces[0].hide_viewport = True
    spaces[1].display_type = "WIRE"
    spaces[2].display_type = "BOUNDS"
    spaces[3].hide_render = True  # already left out by Cycles
    veiled = box("IfcSpace/5", (0, 0.0, 1.6), (6.0, 1.5, 0.3), collection=hidden)  # excluded collection
    opening = box("IfcOpeningElement/O1", (0, 2.5, 0.0), (1.0, 0.8, 2.0), collection=eg)
    cam = camera(location=(0, -6, 0), target=(0, 0, 0), lens=30)
    bpy.context.view_layer.layer_collection.children[eg.name].children[hidden.name].exclude = True
    bpy.context.view_layer.layer_collection.children[eg.name].children[bounce.name].indirect_only = True
    spaces[1].hide_set(True)  # the eye: a viewport flag as well
    chair.hide_set(True)  # hidden in the viewport only: Cycles draws it, so must the passes
    flags = [(o.name, o.hide_render, o.hide_viewport, o.display_type) for o in bpy.data.objects]
    result = capture(tmp_path, "spaces", long_side=96)

    # What Cycles must draw is the back wall and the chair, nothing else: ray casts against those two.
    z = np.load(result.files["depth_raw"])
    want = depth_of([back, chair], cam, (96, 96))
    assert np.isfinite(want).mean() > 0.6
    assert (np.isfinite(z) == np.isfinite(want)).mean() > 0.99
    both = np.isfinite(z) & np.isfinite(want)
    err = np.abs(z[both] - want[both]) / want[both]
    assert np.median(err) < 1e-5 and (err < 1e-3).mean() > 0.99  # no space, sofa or table in the depth
    seg = load(result.files["seg"])
    r, c = np.rint(project(scene, cam, [(1.2, 0.7, -1.2)], (96, 96))[0][::-1]).astype(int)
    assert tuple(seg[r, c]) == ADE20K["chair"][1]  # the viewport-hidden chair is drawn and named
    info = result.info
    assert info["fallback_share"] == 0 and not info["unclassified"]
    assert "Chair" in info["objects"] and not {"Sofa", "Table", "Lamp"} & set(info["objects"])
    left = info["left_out"]
    assert set(left) == {"IfcSpace/0", "IfcSpace/1", "IfcSpace/2", "IfcOpeningElement/O1"}, left
    assert all(left[f"IfcSpace/{i}"]["pixels"] > 0.05 for i in range(3)), left
    assert left["IfcSpace/0"]["ifc_class"] == "IfcSpace" and left["IfcOpeningElement/O1"]["pixels"] > 0.005
    # The user's flags are as they were.
    assert flags == [(o.name, o.hide_render, o.hide_viewport, o.display_type) for o in bpy.data.objects]
    assert spaces[1].hide_get() and chair.hide_get() and not veiled.hide_render and not opening.hide_render
    assert bpy.context.view_layer.layer_collection.children[eg.name].children[hidden.name].exclude
    assert back.pass_index == 0


# ---------------------------------------------------------------- 3. pitched roofs

def test_a_pitched_roof_of_slabs_is_a_roof_and_a_flat_slab_a_floor(tmp_path):
    scene = fresh_scene(128, 96)
    eg = storey()
    box("IfcSlab/Decke", (0, 0, 0), (6.0, 5.0, 0.25), collection=eg)  # flat: a floor from above
    for name, y, sign in (("IfcSlab/Dach-1", -1.3, 1), ("IfcSlab/Dach-2", 1.3, -1)):
        box(name, (0, y, 1.6), (4.0, 2.9, 0.2), collection=eg, rotation=(deg(sign * 35.0), 0, 0))
    cam = camera(location=(7.5, -6.5, 6.0), target=(0, 0, 0.8), lens=30)
    result = capture(tmp_path, "roof", long_side=128)

    def expected(obj, nz):
        if obj.name.startswith("IfcSlab/Dach"):
            return "ceiling" if nz <= -0.5 else "building"  # roof: outside building, inside ceiling
        return "floor" if nz >= 0.5 else ("ceiling" if nz <= -0.5 else "wall")

    right, total, wrong = classes_against_ray_casts(scene, cam, result, expected)
    assert total > 300 and right / total > 0.99, wrong[:5]
    roofs = {o for (o, _nz, _z) in pixel_hits(scene, cam, tuple(result.info["resolution"]), 4).values()
             if o.name.startswith("IfcSlab/Dach")}
    assert len(roofs) == 2
    entry = result.info["objects"]["IfcSlab/Dach-1"][0]
    assert entry["class"] == "roof" and entry["from"] == "IfcSlab, inclined"
    assert result.info["objects"]["IfcSlab/Decke"][0]["class"] == "slab"


# ---------------------------------------------------------------- 4. modelling seams

def test_walls_split_per_storey_in_one_plane_draw_no_seam(tmp_path):
    fresh_scene(96, 96)
    eg, og = storey(), storey("IfcBuildingStorey/OG")
    paint, brick = material("Anstrich"), material("Ziegel")
    box("IfcWall/Wand-EG", (-0.8, 0, -1.0), (2.4, 0.3, 2.0), collection=eg, material=paint)
    box("IfcWall/Wand-OG", (-0.8, 0, 1.0), (2.4, 0.3, 2.0), collection=og, material=paint)
    box("IfcWall/Sockel", (1.4, 0, -1.0), (2.0, 0.3, 2.0), collection=eg, material=brick)  # another material
    box("IfcWall/Giebel", (1.4, 0.25, 1.0), (2.0, 0.3, 2.0), collection=og, material=brick)  # 25 cm back
    cam = camera(location=(0, -7, 0), target=(0, 0, 0), lens=35)
    result = capture(tmp_path, "seams", long_side=96, supersample=2, line_style="canny")
    lines = load(result.files["lines"]) > 0
    size = (96, 96)
    (c_seam, r_seam), = np.rint(project(bpy.context.scene, cam, [(-0.8, -0.15, 0.0)], size)).astype(int)
    ends = [(-1.8, -0.15, 0), (0.1, -0.15, 0)]
    (c_left, _), (c_mid, _) = np.rint(project(bpy.context.scene, cam, ends, size)).astype(int)
    seam_band = lines[r_seam - 1:r_seam + 2, c_left + 2:c_mid - 2]
    assert seam_band.shape[1] > 10 and not seam_band.any()  # the storey seam: no line
    (c_mat, r_mat), = np.rint(project(bpy.context.scene, cam, [(0.4, -0.15, -1.0)], size)).astype(int)
    assert lines[r_mat - 3:r_mat + 4, c_mat - 1:c_mat + 2].any(axis=1).mean() > 0.8  # material change: a line
    (c_step, r_step), = np.rint(project(bpy.context.scene, cam, [(1.4, -0.15, 0.0)], size)).astype(int)
    assert lines[r_step - 1:r_step + 2, c_step - 3:c_step + 4].any(axis=0).mean() > 0.8  # set back: a line
