"""Depth fitted to the view, line styles per model, supersample reduction, z-fighting, and
classes from BIM names, facing and multilingual keywords: the pure-numpy side."""

import json
import math

import numpy as np
import pytest

from archviz_controlnet.core import classes as C
from archviz_controlnet.core import passes as P

BG = 1e10


# ---------------------------------------------------------------- depth

def _ground_view(ground_far, h=192, w=256, fov_deg=40.0, eye=1.6, site=25.0):
    """A camera standing on a ground plane (cut at ``ground_far`` metres) looking at a
    building 15-25 m away: rows below the horizon see the ground."""
    z = np.full((h, w), BG)
    for r in range(h):
        a = math.radians((r + 0.5 - h / 2) / h * fov_deg)
        if a > 0:
            d = eye / math.tan(a)
            if d <= ground_far:
                z[r, :] = d
    building = np.zeros((h, w), dtype=bool)
    building[30:110, 60:200] = True
    z[30:110, 60:200] = np.broadcast_to(np.linspace(15.0, 25.0, 140), (80, 140))
    return z, building


def test_view_range_uses_the_levels_and_clips_little():
    z, _ = _ground_view(100.0)
    rng = P.view_depth_range(z)
    img = P.depth_image(z, rng)
    geo = img[P.geometry_mask(z)]
    assert rng.mode == "view" and rng.as_dict()["percentiles"] == list(P.VIEW_PERCENTILES)
    assert len(np.unique(geo)) > 100 and geo.min() == 0 and geo.max() == 255  # the synthetic view has 108 depths
    assert (geo == 255).mean() < 0.02 and (geo == 0).mean() < 0.03
    assert (img[~P.geometry_mask(z)] == 0).all()  # background black


def test_one_near_pixel_and_a_huge_ground_plane_do_not_squash_the_view():
    z, building = _ground_view(100.0)
    base = P.depth_image(z, P.view_depth_range(z))
    near = z.copy()
    near[5, 5] = 0.01  # a speck right at the lens
    assert np.abs(P.depth_image(near, P.view_depth_range(near))[building].astype(int) - base[building]).max() <= 1
    huge, _ = _ground_view(20000.0)  # the same view on a 20 km ground plane
    moved = np.abs(P.depth_image(huge, P.view_depth_range(huge))[building].astype(int) - base[building])
    assert moved.max() <= 6
    # The scene's bounds on the other hand flatten the building to white.
    bounds = P.depth_range_from_bounds(np.array([[-1e4, -1e4, 0], [1e4, 1e4, 10]]), np.zeros((1, 3)))
    assert (P.depth_image(huge, bounds)[building] == 255).all()


def test_depth_modes_are_checked():
    assert P.check_depth_mode("Sequence") == "sequence"
    with pytest.raises(P.PassError, match="'flat'.*view, sequence, scene, manual"):
        P.check_depth_mode("flat")
    with pytest.raises(P.PassError, match="no geometry"):
        P.view_depth_range(np.full((4, 4), BG))


# ---------------------------------------------------------------- lines

def _box_and_circle_mask(n=256):
    mask = np.zeros((n, n), dtype=bool)
    mask[40, 20:120] = mask[120, 20:120] = True
    mask[40:121, 20] = mask[40:121, 119] = True
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - 180, xx - 180)
    mask |= np.abs(r - 45) < 0.5
    return mask


def test_line_styles_differ_as_each_model_was_trained():
    mask = _box_and_circle_mask()
    canny = P.styled_lines("canny", mask, mask, 1, 256)
    assert set(np.unique(canny)) == {0, 255}
    lineart = P.styled_lines("lineart", mask, mask, 1, 256)
    assert len(np.unique(lineart)) > 2  # anti-aliased
    soft = P.styled_lines("softedge", mask, mask, 1, 256)
    assert (soft > 0).sum() > 2 * (lineart > 0).sum() and len(np.unique(soft)) > 20  # soft, wider
    mlsd = P.mlsd_image(mask, 512) > 0  # at 512 px MLSD keeps segments of 20 px and more
    assert set(np.unique(mlsd)) <= {False, True}
    assert mlsd[40, 30:110].all() and mlsd[50:110, 20].all()  # straight sides kept
    circle = mask[130:240, 130:240]
    # The circle is not straight: at most a few chords where it is flattest are left.
    assert mlsd[130:240, 130:240].sum() < 0.35 * circle.sum()
    with pytest.raises(P.PassError, match="'pencil'"):
        P.check_line_style("pencil")


def test_lineart_width_scales_with_resolution():
    def stroke_width(long_side, factor=2):
        fine = np.zeros((long_side * factor, long_side * factor), dtype=bool)
        fine[long_side * factor // 2, :] = True
        img = P.lineart_image(fine, factor, long_side)
        return img[:, long_side // 2].astype(float).sum() / 255.0

    w512, w1024 = stroke_width(512), stroke_width(1024)
    assert 1.0 <= w512 <= 2.5 and w1024 == pytest.approx(2 * w512, rel=0.35)


def test_line_style_follows_the_model():
    from archviz_controlnet.backend.models import registry as models

    ids = {"sd15": models.SD15_CONTROLNETS, "sdxl": models.SDXL_CONTROLNETS}
    for family, table in ids.items():
        for ctype in ("lines", "lineart", "canny", "mlsd"):
            style = P.line_style_for(ctype, family)
            assert style in table[ctype], (family, ctype, style, table[ctype])  # the model's name says its style
    assert P.line_style_for("lines", "tiny") == "lineart" and P.line_style_for("lines", "tiny-sdxl") == "canny"
    assert P.line_style_for("lines", "flux") == P.line_style_for("lines", "tiny-flux") == "canny"  # union/canny nets
    assert P.line_style_for("lines", "sdxl", override="softedge") == "softedge"


def test_thinning_keeps_one_pixel_lines_connected():
    thick = np.zeros((20, 60), dtype=bool)
    thick[8:10, 5:55] = True
    thin = P.thin(thick)
    assert thin[:, 10:50].sum(axis=0).tolist() == [1] * 40


# ---------------------------------------------------------------- supersampling

def test_nearest_sample_reduction_keeps_a_rail_thinner_than_a_pixel():
    factor, n = 2, 64
    z = np.full((n * factor, n * factor), 20.0)  # a wall 20 m away
    ids = np.ones_like(z, dtype=np.int64)
    rows = (np.arange(n * factor) * 0.3 + 10).astype(int)  # a sloping rail one fine pixel thick
    z[rows, np.arange(n * factor)] = 10.0
    ids[rows, np.arange(n * factor)] = 2
    rz, rid = P.reduce_nearest(z, factor, ids)
    assert ((rid == 2).sum(axis=0) >= 1).all() and (rz[rid == 2] == 10.0).all()
    plain = ids[::factor, ::factor]  # one sample per pixel misses it
    assert ((plain == 2).sum(axis=0) == 0).any()


def test_z_fighting_settles_and_flush_boundaries_stay():
    rng = np.random.default_rng(0)
    z = np.full((40, 80), 5.0)
    n = np.zeros((40, 80, 3))
    n[..., 2] = 1.0
    keys = np.where(rng.random((40, 80)) < 0.8, 1, 2)  # two objects on one surface: speckle
    keys[:, 40:] = 3  # a flush neighbour (a door in its wall), straight boundary
    settled = P.settle_coplanar_ids(z, n, keys)
    assert (settled[:, :38] == 1).mean() > 0.99
    assert (settled[:, 40:] == 3).all() and (settled[:, :38] != 3).all()


def test_facing_flips_normals_seen_from_behind():
    rot = np.eye(3)  # camera looking down -z (world = camera frame)
    ray = np.array([0.0, 0.0, -1.0])
    up = np.array([[[0.0, 0.0, 1.0]]])
    assert P.toward_viewer(up, rot, ray)[0, 0, 2] == 1.0
    assert P.toward_viewer(-up, rot, ray)[0, 0, 2] == 1.0  # back of a plane seen: it faces the camera


# ---------------------------------------------------------------- classes

@pytest.mark.parametrize("name,expected", [
    ("Außenwand-EG", "wall"), ("Innenwand", "wall"), ("mur porteur", "wall"), ("Pared_Norte", "wall"),
    ("Parete", "wall"), ("Binnenmuur", "wall"),
    ("Fußboden", "floor"), ("Parkett", "floor"), ("Plancher", "floor"), ("Suelo", "floor"), ("Pavimento", "floor"),
    ("Vloer", "floor"),
    ("Decke", "ceiling"), ("Plafond", "ceiling"), ("Techo", "ceiling"), ("Soffitto", "ceiling"),
    ("EG-Fenster-3", "windowpane"), ("Fenêtre", "windowpane"), ("Ventana", "windowpane"), ("Finestra", "windowpane"),
    ("Raam", "windowpane"), ("Glas", "windowpane"), ("Verre", "windowpane"), ("Vidrio", "windowpane"),
    ("Vetro", "windowpane"),
    ("Haustür", "door"), ("Innentuer-1", "door"), ("Porte", "door"), ("Puerta", "door"), ("Porta", "door"),
    ("Voordeur", "door"),
    ("Wendeltreppe", "stairs"), ("Escalier", "stairs"), ("Escalera", "stairs"), ("Scala", "stairs"),
    ("Trap", "stairs"),
    ("Geländer", "railing"), ("Garde-corps", "railing"), ("Barandilla", "railing"), ("Ringhiera", "railing"),
    ("Leuning", "railing"),
    ("Dachfläche", "roof"), ("Ziegel", "roof"), ("Toiture", "roof"), ("Tejado", "roof"), ("Tetto", "roof"),
    ("Dakpan", "roof"),
    ("Stütze", "column"), ("Colonne", "column"), ("Columna", "column"), ("Pilastro", "column"), ("Kolom", "column"),
    ("Gelände", "earth"), ("Terrain", "earth"), ("Terreno", "earth"), ("Grond", "earth"),
    ("Gras", "grass"), ("Rasen", "grass"), ("Gazon", "grass"), ("Césped", "grass"), ("Erba", "grass"),
    ("Pflanze", "plant"), ("Plante", "plant"), ("Planta", "plant"), ("Pianta", "plant"),
    ("Stuhl", "chair"), ("Chaise", "chair"), ("Silla", "chair"), ("Sedia", "chair"), ("Stoel", "chair"),
    ("Esstisch", "table"), ("Mesa", "table"), ("Tavolo", "table"), ("Tafel", "table"),
    ("Kleiderschrank", "wardrobe"), ("Schrank", "cabinet"), ("Armoire", "cabinet"), ("Canapé", "sofa"),
    ("Divano", "sofa"), ("Bett", "bed"), ("Letto", "bed"),
    ("Beton", None), ("Kiefer", None), ("Architektur", None),
])
def test_keywords_in_six_languages(name, expected):
    assert C.KeywordTable().lookup(name) == expected


def _cls(obj, mat="", coll="", predefined="", props=(None, None, None), table=None, fallback="wall"):
    return C.classify(props, (obj, mat, coll), table or C.KeywordTable(), fallback=fallback, predefined=predefined)


def test_ifc_classes_come_first_and_map_to_ade20k():
    storey = "IfcBuildingStorey/Erdgeschoss"
    cases = {
        ("IfcWallStandardCase/Wand-Ext-ERDG-1", "Anstrich", ""): ("wall", "ifc"),
        ("IfcCurtainWall/CW-1", "Alu", ""): ("windowpane", "ifc"),
        ("IfcWindow/Door-Like-Name", "Kiefer", ""): ("windowpane", "ifc"),  # IFC beats the keyword
        ("IfcDoor/Haustuer", "Glas", ""): ("door", "ifc"),
        ("IfcSlab/Slab-033", "Beton", "FLOOR"): ("slab", "ifc"),
        ("IfcSlab/Dach-1", "Ziegel", "ROOF"): ("roof", "ifc"),
        ("IfcRoof/Roof", "", ""): ("roof", "ifc"),
        ("IfcCovering/Abhangdecke", "", "CEILING"): ("ceiling", "ifc"),
        ("IfcCovering/Estrich", "", "FLOORING"): ("floor", "ifc"),
        ("IfcCovering/Belag", "", ""): ("slab", "ifc"),
        ("IfcSite/Gelaende", "Gras", ""): ("grass", "ifc"),
        ("IfcSite/Gelaende", "Beton", ""): ("earth", "ifc"),
        ("IfcStair/Wendeltreppe", "", ""): ("stairs", "ifc"),
        ("IfcStairFlight/Lauf", "", ""): ("stairs", "ifc"),
        ("IfcRailing/Unnamed", "PEN_MATERIAL12", "HANDRAIL"): ("railing", "ifc"),
        ("IfcColumn/C1", "", ""): ("column", "ifc"),
        ("IfcBeam/Unterzug-1", "", ""): ("ceiling", "ifc"),
        ("IfcMember/Sparren-1", "Kiefer", ""): ("ceiling", "ifc"),
        ("IfcMember/Pfosten", "", "MULLION"): ("windowpane", "ifc"),
        ("IfcFurnishingElement/Stuhl-2", "Stoff", ""): ("chair", "keyword"),
        ("IfcBuildingElementProxy/Sofa 3-Sitzer", "", ""): ("sofa", "keyword"),
        ("IfcBuildingElementProxy/Objekt-7", "Stoff", ""): ("wall", "fallback"),
    }
    for (obj, mat, predefined), (cls, rule) in cases.items():
        res = _cls(obj, mat, storey, predefined)
        assert (res.cls, res.rule) == (cls, rule), (obj, res)


def test_spatial_containers_never_decide():
    for coll in ("IfcBuildingStorey/Building Level 1", "IfcBuilding/Wall Street 1", "IfcSite/Garden",
                 "IfcSpace/Kitchen", "IfcProject/Door Factory"):
        assert _cls("IfcBuildingElementProxy/Thing", "", coll).rule == "fallback", coll
    # An ordinary collection still decides, and a property on a container still counts.
    assert _cls("Thing", "", "Chairs").cls == "chair"
    assert _cls("IfcBuildingElementProxy/Thing", "", "IfcSpace/Kitchen", props=(None, None, "rug")).cls == "rug"


def test_facing_rules_in_the_table_and_from_the_user(tmp_path):
    table = C.KeywordTable()
    slab = table.facing["slab"]
    nz = np.array([1.0, -0.9, 0.1])
    assert C.facing_labels(nz, slab).tolist() == ["floor", "ceiling", "wall"]
    assert C.facing_labels(nz, table.facing["roof"]).tolist() == ["building", "ceiling", "building"]
    path = tmp_path / "mine.toml"
    path.write_text('[facing.worktop]\nup = "countertop"\ndown = "cabinet"\nside = "cabinet"\n\n'
                    '[[keyword]]\nclass = "worktop"\nen = ["island"]\nde = ["kücheninsel"]\n\n'
                    '[ifc]\nIfcFurniture = "worktop"\n')
    mine = C.KeywordTable.from_file(str(path))
    assert mine.lookup("Island_01") == "worktop" and mine.lookup("Kücheninsel") == "worktop"
    assert mine.lookup("Chair") == "chair"  # the built-in table still follows
    assert _cls("IfcFurniture/K1", table=mine).cls == "worktop"
    assert mine.classes_of("worktop") == ["countertop", "cabinet", "cabinet"]
    path.write_text('[facing.bad]\nup = "floor"\n')
    with pytest.raises(C.ClassError, match="'bad'.*'up' and 'down'"):
        C.KeywordTable.from_file(str(path))
    path.write_text('[[keyword]]\nclass = "floor"\nxx = ["a"]\n')
    with pytest.raises(C.ClassError, match="unknown language 'xx'"):
        C.KeywordTable.from_file(str(path))
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"pouf": "ottoman"}))
    assert C.KeywordTable.from_file(str(flat)).lookup("Pouf") == "ottoman"


def test_builtin_table_is_one_readable_file():
    import tomllib

    with open(C.TABLE_PATH, "rb") as fh:
        data = tomllib.load(fh)
    assert set(data) == {"facing", "ifc", "keyword", "aggregate"}
    langs = {lang for block in data["keyword"] for lang in block if lang != "class"}
    assert langs == set(C.LANGUAGES)
    for cls in ("wall", "floor", "ceiling", "windowpane", "door", "stairs", "railing", "roof", "column", "earth",
                "grass", "plant", "chair", "table"):
        blocks = [b for b in data["keyword"] if b["class"] == cls]
        assert blocks and {"de", "fr", "es", "it", "nl"} <= set().union(*blocks), cls
