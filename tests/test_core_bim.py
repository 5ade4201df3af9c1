"""The BIM rules of core (no Blender): assemblies decide the class of their generic parts,
non-physical IFC classes, inclined slabs are roofs, and modelling seams draw no line."""

import math

import numpy as np
import pytest

from archviz_controlnet.core import classes as C
from archviz_controlnet.core import passes as P

STOREY = "IfcBuildingStorey/EG"


def _cls(obj, parents=(), props=(None, None, None), mat="", table=None, predefined=""):
    return C.classify(props, (obj, mat, STOREY), table or C.KeywordTable(), parents=parents, predefined=predefined)


@pytest.mark.parametrize("part,parents,cls", [
    ("IfcMember/Wange links", [("IfcStair", "IfcStair/Treppe")], "stairs"),  # a stringer
    ("IfcPlate/Stufe 3", [("IfcStair", "IfcStair/Treppe")], "stairs"),
    ("IfcSlab/Podest", [("IfcStair", "IfcStair/Treppe")], "stairs"),  # a landing
    ("IfcMember/Baluster 7", [("IfcRailing", "IfcRailing/Gelaender")], "railing"),
    ("IfcMember/Pfosten", [("IfcCurtainWall", "IfcCurtainWall/CW-1")], "windowpane"),  # a mullion
    ("IfcPlate/Panel 4", [("IfcCurtainWall", "IfcCurtainWall/CW-1")], "windowpane"),
    ("IfcMember/Sparren-3", [("IfcRoof", "IfcRoof/Dach")], "roof"),  # a rafter
    ("IfcBeam/Pfette", [("IfcElementAssembly", "IfcElementAssembly/Binder"), ("IfcRoof", "IfcRoof/Dach")], "roof"),
    ("IfcSlab/Rampe", [("IfcRamp", "IfcRamp/R1")], "floor"),
])
def test_generic_parts_take_the_class_of_their_assembly(part, parents, cls):
    res = _cls(part, parents)
    assert (res.cls, res.rule) == (cls, "aggregate")
    deciding = next(name for pc, name in parents if pc in C.KeywordTable().aggregate_parents)
    assert res.parent == deciding
    entry = res.as_dict(C.KeywordTable())
    assert entry["parent"] == deciding and entry["from"].startswith(part.split("/")[0] + " in ")


def test_parts_that_say_more_keep_their_class_and_loose_parts_stay_generic():
    stair = [("IfcStair", "IfcStair/Treppe")]
    assert _cls("IfcRailing/Handlauf", stair).cls == "railing"  # not a generic part
    assert _cls("IfcDoor/D1", [("IfcCurtainWall", "IfcCurtainWall/CW")]).cls == "door"
    assert (_cls("IfcMember/Sparren-1").cls, _cls("IfcMember/Sparren-1").rule) == ("ceiling", "ifc")
    # A non-generic parent in between stops the walk; a property still wins over all.
    assert _cls("IfcMember/M", [("IfcWall", "IfcWall/W"), ("IfcStair", "IfcStair/T")]).rule == "ifc"
    assert _cls("IfcMember/Wange", stair, props=("column", None, None)).cls == "column"


def test_user_table_adds_aggregate_parents(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[aggregate.parents]\nIfcShadingDevice = "awning"\n')
    mine = C.KeywordTable.from_file(str(path))
    assert _cls("IfcMember/Lamelle", [("IfcShadingDevice", "IfcShadingDevice/S")], table=mine).cls == "awning"
    assert _cls("IfcMember/Wange", [("IfcStair", "IfcStair/T")], table=mine).cls == "stairs"  # built-in kept
    path.write_text('[aggregate.parents]\nIfcStair = "stairz"\n')
    with pytest.raises(C.ClassError, match="'stairz'"):
        C.KeywordTable.from_file(str(path))
    path.write_text('[aggregate]\nparts = "IfcMember"\n')
    with pytest.raises(C.ClassError, match="aggregate parts"):
        C.KeywordTable.from_file(str(path))


def test_non_physical_ifc_classes():
    for cls in ("IfcSpace", "IfcOpeningElement", "IfcVirtualElement", "IfcAnnotation", "IfcGrid"):
        assert C.is_non_physical(cls), cls
    for cls in ("IfcWall", "IfcSlab", "IfcMember", "", None):
        assert not C.is_non_physical(cls), cls


def test_a_slab_is_floor_only_where_near_horizontal():
    slab = C.KeywordTable().facing["slab"]
    nz = np.cos(np.radians([0.0, 5.0, 15.0, 35.0, 55.0, 90.0, 180.0, 145.0]))
    assert C.facing_labels(nz, slab).tolist() == ["floor", "floor", "building", "building", "building", "wall",
                                                  "ceiling", "ceiling"]
    assert "building" in C.KeywordTable().classes_of("slab")
    # A whole slab whose upward faces are mostly inclined is a roof (edges and all).
    pitched = np.cos(np.radians([35.0, 35.0, 145.0, 90.0]))
    flat = np.cos(np.radians([0.0, 0.0, 180.0, 90.0]))
    areas = np.array([10.0, 10.0, 20.0, 1.0])
    assert C.inclined_object(slab, pitched, areas) and not C.inclined_object(slab, flat, areas)
    assert slab.inclined == "roof" and slab.as_dict()["flat_cos"] == pytest.approx(0.985)


def test_sloped_and_inclined_facing_keys_are_checked(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[facing.deck]\nup = "floor"\ndown = "ceiling"\nsloped = "path"\n')
    with pytest.raises(C.ClassError, match="'sloped' and 'flat_cos' go together"):
        C.KeywordTable.from_file(str(path))
    path.write_text('[facing.deck]\nup = "floor"\ndown = "ceiling"\nsloped = "path"\nflat_cos = 0.3\n')
    with pytest.raises(C.ClassError, match="flat_cos must be a number above min_cos"):
        C.KeywordTable.from_file(str(path))
    path.write_text('[facing.deck]\nup = "floor"\ndown = "ceiling"\nsloped = "path"\nflat_cos = 0.99\n'
                    'inclined = "nowhere"\n')
    with pytest.raises(C.ClassError, match="'nowhere'"):
        C.KeywordTable.from_file(str(path))


def _two_walls(gap=0.0, bend_deg=0.0):
    """A wall seen head-on, 5 m away, whose upper half is another object; the upper half
    stands ``gap`` metres further back or is turned ``bend_deg`` about the seam."""
    h, w = 40, 30
    z = np.full((h, w), 5.0)
    n = np.zeros((h, w, 3))
    n[..., 2] = 1.0
    upper = np.arange(h)[:, None] < h // 2
    z[upper[:, 0]] += gap
    if bend_deg:
        t = math.radians(bend_deg)
        rows = np.arange(h // 2)[::-1] + 0.5
        z[: h // 2] = (5.0 + rows * 0.05 * math.tan(t))[:, None]  # leaning back above the seam
        n[: h // 2] = (0.0, math.sin(t), math.cos(t))
    obj = np.where(upper, 2, 1) * np.ones((h, w), dtype=int)
    cls = np.zeros((h, w), dtype=int)  # one class: wall
    return z, n, obj, cls


def test_a_modelling_seam_draws_no_line_but_a_step_or_bend_does():
    z, n, obj, cls = _two_walls()
    # Before: object ids alone drew the seam across the flat wall.
    assert P.line_mask(z, n, ids=(obj,), orthographic=True)[19:21].any()
    assert not P.line_mask(z, n, ids=(cls,), seam_ids=(obj,), orthographic=True).any()
    z, n, obj, cls = _two_walls(gap=0.05)  # 1% further back: a real step
    assert P.line_mask(z, n, ids=(cls,), seam_ids=(obj,), orthographic=True)[19:21].all(axis=1).any()
    # A bend is a line where it is a crease, as inside one object: how a surface was cut
    # into objects never shows.
    for bend, crease in ((12.0, False), (40.0, True)):
        z, n, obj, cls = _two_walls(bend_deg=bend)
        one = P.line_mask(z, n, orthographic=True)[19:21].any()
        two = P.line_mask(z, n, ids=(cls,), seam_ids=(obj,), orthographic=True)[19:21].any()
        assert one == two == crease, bend
    # A class (or material) change is a line even in one plane.
    z, n, obj, cls = _two_walls()
    assert P.line_mask(z, n, ids=(np.where(obj == 2, 5, 0),), seam_ids=(obj,), orthographic=True)[19:21].any()
