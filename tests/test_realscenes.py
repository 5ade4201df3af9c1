"""Control passes on real files nobody here wrote: the KIT FZK-Haus (ArchiCAD IFC, built
the Bonsai way by bench/realscenes.py) and the Crytek Sponza atrium (glTF importer).
Numbers are checked against the geometry with Blender's ray cast. The files are read from
../shared/realscenes beside the checkout; without them these tests skip."""

import json
import os

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

from archviz_controlnet.bench import realscenes as R  # noqa: E402
from archviz_controlnet.blender.capture.render import CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core import passes as P  # noqa: E402
from archviz_controlnet.core.classes import ADE20K  # noqa: E402

HOUSE = R.DATA_DIR / R.HOUSE_NPZ
SPONZA = R.DATA_DIR / R.SPONZA_GLB
LONG_SIDE = 256
FACTOR = 2

pytestmark = pytest.mark.skipif(not (HOUSE.is_file() and SPONZA.is_file()),
                                reason=f"real scenes not found in {R.DATA_DIR} (../shared/realscenes beside the checkout)")


def load(path):
    with Image.open(path) as im:
        return np.array(im)


def _expected_class(obj, normal_z):
    """What the seg pass must say for a surface of a house element facing ``normal_z``."""
    return R.expected_class(obj.name.split("/", 1)[0], obj.get("PredefinedType", ""), normal_z)


def ray_cast_samples(scene, camera, size, step=8):
    """For every ``step``-th pixel: the nearest of its FACTOR x FACTOR sub-sample hits
    (what the nearest-sample reduction keeps): z along the camera axis, the object, and
    the normal turned toward the camera. Pixels whose sub-samples hit different objects
    (edges) are marked."""
    import mathutils

    depsgraph = bpy.context.evaluated_depsgraph_get()
    w, h = size
    fine = P.pixel_rays((w * FACTOR, h * FACTOR), [tuple(v) for v in camera.data.view_frame(scene=scene)])
    mw = np.array(camera.matrix_world)
    rot = mw[:3, :3] / np.linalg.norm(mw[:3, :3], axis=0)
    origin = mathutils.Vector(mw[:3, 3])
    forward = -rot[:, 2]
    out = []
    for r in range(step // 2, h, step):
        for c in range(step // 2, w, step):
            hits = []
            for dr in range(FACTOR):
                for dc in range(FACTOR):
                    d = rot @ fine[r * FACTOR + dr, c * FACTOR + dc]
                    d /= np.linalg.norm(d)
                    ok, loc, normal, _i, obj, _m = scene.ray_cast(depsgraph, origin, mathutils.Vector(d))
                    if ok:
                        n = np.array(normal)
                        if n @ d > 0:
                            n = -n
                        hits.append((float((np.array(loc) - mw[:3, 3]) @ forward), obj.original, n))
            if hits:
                z, obj, n = min(hits, key=lambda t: t[0])
                out.append({"row": r, "col": c, "z": z, "obj": obj, "nz": float(n[2]),
                            "edge": len({id(hh[1]) for hh in hits}) > 1 or len(hits) < FACTOR * FACTOR})
    return out


@pytest.fixture(scope="module")
def house(tmp_path_factory):
    """The FZK-Haus built once; every view rendered once, with ray-cast samples."""
    out = tmp_path_factory.mktemp("house")
    scene = R.build_house(HOUSE, width=1600, height=1200)
    views = {}
    for cam in R.HOUSE_CAMERAS:
        result = render_controls(scene, str(out / cam), CaptureOptions(
            camera=cam, long_side=LONG_SIDE, supersample=FACTOR, line_styles=("canny", "lineart", "mlsd", "softedge")))
        samples = ray_cast_samples(scene, scene.objects[cam], tuple(result.info["resolution"]))
        views[cam] = (result, samples)
    rail1 = render_controls(scene, str(out / "rail_ss1"), CaptureOptions(camera="Int_OG", long_side=LONG_SIDE,
                                                                          supersample=1, passes=("seg",)))
    return {"views": views, "rail_ss1": rail1, "out": out}


def test_house_is_built_the_bonsai_way(house):
    names = [o.name for o in bpy.data.objects if o.type == "MESH"]
    assert "IfcWallStandardCase/Wand-Ext-ERDG-1" in names and "IfcSlab/Slab-033" in names
    storey = bpy.data.collections["IfcBuildingStorey/Erdgeschoss"]
    assert bpy.data.objects["IfcWallStandardCase/Wand-Ext-ERDG-1"].users_collection[0] == storey
    assert storey.name in [c.name for c in bpy.data.collections["IfcBuilding/FZK-Haus"].children]
    assert {"Glas", "Gras", "Beton", "Ziegel"} <= {m.name for m in bpy.data.materials}


def test_depth_matches_the_ray_cast_geometry(house):
    for cam, (result, samples) in house["views"].items():
        z = np.load(result.files["depth_raw"])
        inner = [s for s in samples if not s["edge"]]
        assert len(inner) > 100, cam
        err = np.array([abs(z[s["row"], s["col"]] - s["z"]) / s["z"] for s in inner])
        assert np.median(err) < 1e-5 and (err < 1e-3).mean() > 0.98, (cam, np.sort(err)[-5:])


def test_house_depth_uses_most_levels_with_little_clipped(house):
    for cam, (result, _) in house["views"].items():
        stats = result.info["depth_stats"]
        assert result.info["depth_range"]["mode"] == "view"
        assert stats["levels_used"] >= 180, (cam, stats)
        assert stats["clipped_near"] + stats["clipped_far"] < 0.05, (cam, stats)
        depth = load(result.files["depth"])
        seg = load(result.files["seg"])
        assert (depth[(seg == ADE20K["sky"][1]).all(axis=-1)] == 0).all()  # background black


def test_ifc_classes_give_the_right_colours(house):
    for cam, (result, samples) in house["views"].items():
        seg = load(result.files["seg"])
        inner = [s for s in samples if not s["edge"] and not 0.45 < abs(s["nz"]) < 0.55]
        good = [tuple(seg[s["row"], s["col"]]) == ADE20K[_expected_class(s["obj"], s["nz"])][1] for s in inner]
        assert np.mean(good) > 0.97, (cam, np.mean(good))
        assert result.info["fallback_share"] < 0.01, cam
        assert not result.info["unclassified"], cam


def test_one_slab_is_ceiling_below_and_floor_above(house):
    def slab_pixels(cam):
        result, samples = house["views"][cam]
        seg = load(result.files["seg"])
        return [tuple(seg[s["row"], s["col"]]) for s in samples
                if s["obj"].name == "IfcSlab/Slab-033" and not s["edge"] and abs(s["nz"]) > 0.9]

    below, above = slab_pixels("Int_EG"), slab_pixels("Int_OG")
    assert len(below) > 50 and len(above) > 50
    assert all(c == ADE20K["ceiling"][1] for c in below)
    assert all(c == ADE20K["floor"][1] for c in above)
    entry = house["views"]["Int_OG"][0].info["objects"]["IfcSlab/Slab-033"][0]
    assert entry["rule"] == "facing" and entry["decided_by"] == "ifc" and entry["from"] == "IfcSlab"


def test_balusters_hold_together_with_supersampling(house):
    ss2 = load(house["views"]["Int_OG"][0].files["seg"])
    ss1 = load(house["rail_ss1"].files["seg"])
    colour = ADE20K["railing"][1]
    rail2, rail1 = (ss2 == colour).all(axis=-1), (ss1 == colour).all(axis=-1)
    assert rail2.sum() > rail1.sum()
    pieces2, pieces1 = len(P._components(rail2)), len(P._components(rail1))
    assert pieces2 < pieces1, (pieces2, pieces1)


def test_line_styles_on_the_house(house):
    result, _ = house["views"]["Int_OG"]
    img = {s: load(result.files[f"lines_{s}"]) for s in ("canny", "lineart", "mlsd", "softedge")}
    assert set(np.unique(img["canny"])) == {0, 255} and set(np.unique(img["mlsd"])) == {0, 255}
    assert ((img["lineart"] > 0) & (img["lineart"] < 255)).sum() > 0.2 * (img["lineart"] > 0).sum()
    assert (img["softedge"] > 0).sum() > 2 * (img["lineart"] > 0).sum()
    # MLSD segments lie on the edges canny finds, and leave out what is not straight.
    near_canny = P.dilate(img["canny"] > 0, 1.5)
    mlsd = img["mlsd"] > 0
    assert (mlsd & near_canny).sum() > 0.9 * mlsd.sum()
    assert 0.3 * (img["canny"] > 0).sum() < mlsd.sum() < (img["canny"] > 0).sum()


def test_huge_ground_plane_leaves_the_house_depth_alone(house, tmp_path):
    depths = {}
    for side in (100.0, 20000.0):
        scene = R.build_house(HOUSE, width=1600, height=1200, ground_plane=side)
        depths[side] = render_controls(scene, str(tmp_path / f"g{int(side)}"), CaptureOptions(
            camera="Ext_SW", long_side=LONG_SIDE, passes=("depth", "seg")))
    scene_mode = render_controls(scene, str(tmp_path / "scene"), CaptureOptions(
        camera="Ext_SW", long_side=LONG_SIDE, passes=("depth",), depth_range="scene"))
    seg = load(depths[20000.0].files["seg"])
    house_px = np.ones(seg.shape[:2], dtype=bool)
    for cls in ("sky", "grass", "earth"):  # not the house: background, site lawn, terrain plane
        house_px &= ~(seg == ADE20K[cls][1]).all(axis=-1)
    assert house_px.mean() > 0.1
    a, b = (load(depths[s].files["depth"]).astype(int) for s in (100.0, 20000.0))
    assert np.abs(a - b)[house_px].mean() < 4 and np.abs(a - b)[house_px].max() <= 8
    assert (load(scene_mode.files["depth"])[house_px] == 255).mean() > 0.95  # the old range: solid white


@pytest.fixture(scope="module")
def sponza(tmp_path_factory, house):  # after the house: each fixture owns Blender's one scene in turn
    out = tmp_path_factory.mktemp("sponza")
    scene = R.build_sponza(SPONZA, width=1600, height=1200)
    result = render_controls(scene, str(out / "Atrium"), CaptureOptions(camera="Atrium", long_side=LONG_SIDE))
    facing = render_controls(scene, str(out / "surface"), CaptureOptions(
        camera="Atrium", long_side=LONG_SIDE, passes=("seg",), fallback_class="surface"))
    samples = ray_cast_samples(scene, scene.objects["Atrium"], tuple(result.info["resolution"]))
    return result, facing, samples


def test_sponza_depth_and_what_happens_without_names(sponza):
    result, facing, samples = sponza
    stats = result.info["depth_stats"]
    assert stats["levels_used"] >= 200 and stats["clipped_near"] + stats["clipped_far"] < 0.06
    z = np.load(result.files["depth_raw"])
    err = np.array([abs(z[s["row"], s["col"]] - s["z"]) / s["z"] for s in samples if not s["edge"]])
    assert np.median(err) < 1e-5 and (err < 1e-3).mean() > 0.98
    # One unnamed mesh: everything falls back, and passes.json says so.
    assert result.info["fallback_share"] == 1.0 and result.info["unclassified"] == ["geometry_0"]
    # With a facing rule as the fallback, floor, ceiling and walls come apart by facing.
    info = json.loads(open(facing.files["json"]).read())
    shares = {e["class"]: e["pixels"] for e in info["legend"]}
    assert shares["floor"] > 0.1 and shares["wall"] > 0.2 and shares["ceiling"] > 0.005
    seg = load(facing.files["seg"])
    for s in samples:
        if not s["edge"] and abs(s["nz"]) > 0.9:
            assert tuple(seg[s["row"], s["col"]]) == ADE20K["floor" if s["nz"] > 0 else "ceiling"][1]


def test_realscenes_script_prints_the_table(tmp_path, capsys, sponza):
    rc = R.main(["--out", str(tmp_path), "--sizes", "128", "--views", "Ext_SW,Atrium"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "levels" in text and "FZK-Haus   Ext_SW" in text and "Sponza     Atrium" in text
    assert "seams lit" in text and "IFC share right per class" in text
    assert ("FZK-Bonsai Ext_SW" in text) == (R.DATA_DIR / R.HOUSE_IFC).is_file()
    assert os.path.isfile(tmp_path / "fzk_house.blend") and os.path.isfile(tmp_path / "sponza.blend")


@pytest.fixture(scope="module")
def bonsai_house(tmp_path_factory):
    """The FZK-Haus as a Bonsai import looks (no PredefinedType, the IFC file's IfcSpace
    volumes as hidden wire objects), every view rendered and judged once. Used by the
    last tests of this file only: it takes over Blender's one scene."""
    if not (R.DATA_DIR / R.HOUSE_IFC).is_file():
        pytest.skip(f"{R.HOUSE_IFC} not found in {R.DATA_DIR}")
    out = tmp_path_factory.mktemp("bonsai")
    scene = R.build_house(HOUSE, width=1600, height=1200, bonsai=True)
    views = {}
    for cam in R.HOUSE_CAMERAS:
        result = render_controls(scene, str(out / cam), CaptureOptions(camera=cam, long_side=LONG_SIDE,
                                                                        supersample=FACTOR, passes=("lines", "normal",
                                                                                                    "depth", "seg")))
        views[cam] = (result, R.class_figures(scene, scene.objects[cam], result),
                      R.seam_figures(scene, scene.objects[cam], result))
    return views


def test_bonsai_house_draws_no_space_and_gets_every_class_right(bonsai_house):
    for cam, (result, figures, _seams) in bonsai_house.items():
        total = sum(n for n, _ in figures.values())
        assert total > 300, cam
        for cls, (n, right) in figures.items():
            if n >= 0.005 * total:
                assert right / n >= 0.9, (cam, cls, right / n)
        assert result.info["fallback_share"] < 0.01 and not result.info["unclassified"], cam
        left = result.info["left_out"]
        assert sorted(left) == [f"IfcSpace/{i}" for i in range(1, 8)], (cam, sorted(left))
        assert all(e["reason"] == "non-physical IFC element" for e in left.values())
        if cam.startswith("Int"):  # inside, the rooms' volumes would have covered much of the view
            assert sum(e["pixels"] for e in left.values()) > 0.05, (cam, left)
    # The roof slabs carry no PredefinedType here: their slope makes them the roof.
    figures = bonsai_house["Ext_SW"][1]
    assert figures["building"][0] > 40 and figures["building"][1] / figures["building"][0] > 0.97
    entry = bonsai_house["Ext_SW"][0].info["objects"]["IfcSlab/Dach-1"][0]
    assert entry["class"] == "roof" and entry["from"] == "IfcSlab, inclined"


def test_bonsai_house_storey_seams_in_the_facade_draw_no_line(bonsai_house):
    pairs, lit = bonsai_house["Ext_SW"][2]
    assert pairs > 40 and lit == 0, (pairs, lit)
