"""The example interior (examples/build_interior.py): built headless with the bpy module,
saved, reopened, and checked for the facts the demo and the capture tests rely on:
cameras, named meshes with materials, a window that is a real hole, a door opening with a
leaf, every resolution level of the semantic classes, and what the main camera sees."""

import importlib.util
import math
import os
import subprocess
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Vector  # noqa: E402  (after bpy: the bpy module provides mathutils)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "build_interior.py")

ADE20K_NAMES = {
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "earth", "door", "table", "plant", "curtain", "chair", "car",
    "water", "painting", "sofa", "shelf", "house", "mirror", "rug", "fence", "desk",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "column", "counter", "sink",
    "skyscraper", "fireplace", "refrigerator", "path", "stairs", "stairway", "bookcase",
    "blind", "coffee table", "toilet", "flower", "countertop", "stove", "kitchen island",
    "light", "chandelier", "awning", "streetlight", "ottoman", "swimming pool", "stool",
    "step", "sconce", "radiator",
}

ARCHITECTURE = ["Floor", "Ceiling", "Wall_North", "Wall_South", "Wall_East", "Wall_West",
                "Window_Frame", "Door_Frame", "Door"]
FURNITURE = ["Table", "Chair_1", "Chair_2", "Chair_3", "Chair_4", "Sofa", "Coffee_Table",
             "Lamp", "Plant_Pot", "Plant_Leaves", "Rug", "Shelf", "Credenza"]

# What the scene promises, written out here rather than read from the builder.
OBJECT_PROPS = {
    "Floor": "floor", "Ceiling": "ceiling", "Wall_North": "wall", "Wall_South": "wall",
    "Wall_East": "wall", "Wall_West": "wall", "Window_Frame": "windowpane",
    "Door": "door", "Door_Frame": "door", "Coffee_Table": "coffee table",
}
# Left to the keyword table: no archviz_class on the object, its materials or collection.
KEYWORD_OBJECTS = {
    "Table": "table", "Chair_1": "chair", "Chair_2": "chair", "Chair_3": "chair",
    "Chair_4": "chair", "Lamp": "lamp", "Plant_Pot": "plant", "Plant_Leaves": "plant",
    "Rug": "rug", "Shelf": "shelf",
}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_interior", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return _load_builder()


@pytest.fixture(scope="module")
def blend_path(builder, tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "sub" / "interior.blend"
    t0 = time.perf_counter()
    returned = builder.main(["--out", str(out)])
    elapsed = time.perf_counter() - t0
    print(f"\nexample interior: built and saved in {elapsed:.2f} s")
    assert os.path.abspath(returned) == os.path.abspath(out)
    assert out.is_file() and out.stat().st_size > 0
    return str(out)


@pytest.fixture
def scene(blend_path):
    """Each test reopens the saved file, so it checks what is on disk."""
    bpy.ops.wm.open_mainfile(filepath=blend_path)
    return bpy.context.scene


def _cast(scene, origin, direction, distance=1.0e4):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    hit, location, normal, _index, obj, _matrix = scene.ray_cast(
        depsgraph, Vector(origin), Vector(direction).normalized(), distance=distance)
    return hit, location, normal, (obj.name if hit else None)


# ---------------------------------------------------------------------------- file

def test_build_returns_scene_and_resets_file(builder):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.data.objects.new("Leftover", None)
    scene = builder.build_interior()
    assert isinstance(scene, bpy.types.Scene)
    assert "Leftover" not in bpy.data.objects  # built from an empty file
    assert set(ARCHITECTURE + FURNITURE) <= set(bpy.data.objects.keys())


def test_cameras_and_render_settings(scene, builder):
    assert scene.camera is not None and scene.camera.name == "Camera"
    x0, x1, y0, y1 = builder.ROOM_X0, builder.ROOM_X1, builder.ROOM_Y0, builder.ROOM_Y1
    for name in ("Camera", "Camera_Corner"):
        cam = bpy.data.objects[name]
        assert cam.type == "CAMERA" and cam.data.type == "PERSP"
        assert 24.0 <= cam.data.lens <= 28.0
        loc = cam.matrix_world.translation
        assert x0 < loc.x < x1 and y0 < loc.y < y1, f"{name} outside the room: {tuple(loc)}"
        assert 1.5 <= loc.z <= 1.7, f"{name} not at eye height: {loc.z}"
    a = bpy.data.objects["Camera"].matrix_world.translation
    b = bpy.data.objects["Camera_Corner"].matrix_world.translation
    assert (a - b).length > 3.0  # a different corner, not the same view
    assert (scene.render.resolution_x, scene.render.resolution_y) == (1920, 1080)
    assert scene.render.engine == "CYCLES"
    assert scene.world is not None


def test_named_meshes_with_materials_in_collections(scene):
    arch = bpy.data.collections["Architecture"]
    furniture = bpy.data.collections["Furniture"]
    furniture_all = set(furniture.all_objects.keys())
    for name in ARCHITECTURE + FURNITURE:
        obj = bpy.data.objects.get(name)
        assert obj is not None, f"missing object {name}"
        assert obj.type == "MESH", name
        assert len(obj.data.polygons) > 0 and len(obj.data.vertices) >= 8, name
        mats = [s.material for s in obj.material_slots]
        assert mats and all(m is not None for m in mats), f"{name} has an empty material slot"
        used = {p.material_index for p in obj.data.polygons}
        assert used <= set(range(len(mats))), f"{name} uses a material index with no slot"
        # clear names, not Blender defaults
        assert not obj.name.startswith(("Cube", "Mesh", "Object"))
        assert all(not m.name.startswith("Material") for m in mats), name
    assert set(ARCHITECTURE) <= set(arch.objects.keys())
    assert set(FURNITURE) <= furniture_all
    assert not (set(arch.objects.keys()) & furniture_all)
    # Meshes are closed solids: every edge shared by exactly two faces (boxes, not planes).
    for name in ("Wall_North", "Wall_East", "Floor", "Table", "Sofa"):
        mesh = bpy.data.objects[name].data
        counts = {}
        for poly in mesh.polygons:
            for key in poly.edge_keys:
                counts[key] = counts.get(key, 0) + 1
        assert set(counts.values()) == {2}, f"{name} is not closed"


def test_walls_have_thickness(scene, builder):
    for name in ("Wall_North", "Wall_South", "Wall_East", "Wall_West"):
        obj = bpy.data.objects[name]
        xs = [(obj.matrix_world @ v.co).x for v in obj.data.vertices]
        ys = [(obj.matrix_world @ v.co).y for v in obj.data.vertices]
        zs = [(obj.matrix_world @ v.co).z for v in obj.data.vertices]
        thin = min(max(xs) - min(xs), max(ys) - min(ys))
        assert 0.1 <= thin <= 0.3, f"{name} thickness {thin}"
        assert max(zs) - min(zs) == pytest.approx(builder.ROOM_H, abs=1e-4)


# ---------------------------------------------------------------------------- openings

def test_window_is_a_real_hole(scene, builder):
    w, y1 = builder.WINDOW, builder.ROOM_Y1
    cx, cz = (w["x0"] + w["x1"]) / 2, (w["z0"] + w["z1"]) / 2
    # Through the centre of the opening: nothing there at all (no glass, nothing outside).
    hit, loc, _n, name = _cast(scene, (cx, 0.0, cz), (0, 1, 0))
    assert not hit, f"window centre ray hit {name} at {tuple(loc)}"
    # Slanted rays through the clear opening miss as well.
    for dx, dz in ((-0.5, 0.3), (0.5, -0.2), (0.2, 0.4)):
        target = Vector((cx + dx, y1 + 0.075, cz + dz * 0.6))
        origin = Vector((cx, -1.0, 1.4))
        hit, loc, _n, name = _cast(scene, origin, target - origin)
        assert not hit, f"ray through the window hit {name} at {tuple(loc)}"
    # Solid wall beside, below and above the opening: the ray stops on the wall's room face.
    for origin in ((-2.5, 0.0, 1.5), (cx, 0.0, w["z0"] / 2), (cx, 0.0, (w["z1"] + builder.ROOM_H) / 2)):
        hit, loc, normal, name = _cast(scene, origin, (0, 1, 0))
        assert hit and name == "Wall_North", (origin, name)
        assert loc.y == pytest.approx(y1, abs=1e-4)
        assert normal.y == pytest.approx(-1.0, abs=1e-4)
    # Just inside the opening's edge: the frame lines the hole.
    for origin in ((w["x0"] + 0.03, 0.0, cz), (w["x1"] - 0.03, 0.0, cz), (cx, 0.0, w["z1"] - 0.03)):
        hit, loc, _n, name = _cast(scene, origin, (0, 1, 0))
        assert hit and name == "Window_Frame", (origin, name)
        assert y1 <= loc.y <= y1 + builder.WALL_T


def test_door_opening_and_leaf(scene, builder):
    d, x1 = builder.DOOR, builder.ROOM_X1
    # Through the part of the opening that the ajar leaf leaves free: nothing.
    origin = (1.5, d["y0"] + d["jamb"] + 0.05, 1.0)
    hit, loc, _n, name = _cast(scene, origin, (1, 0, 0))
    assert not hit, f"door gap ray hit {name} at {tuple(loc)}"
    # Beside the opening: the east wall.
    hit, loc, normal, name = _cast(scene, (1.5, d["y0"] - 0.3, 1.8), (1, 0, 0))
    assert hit and name == "Wall_East" and loc.x == pytest.approx(x1, abs=1e-4)
    # Above the opening: wall too (the door has a head, the wall goes on to the ceiling).
    hit, _loc, _n, name = _cast(scene, (1.5, (d["y0"] + d["y1"]) / 2, d["height"] + 0.3), (1, 0, 0))
    assert hit and name == "Wall_East"
    # The leaf stands in the room, turned away from the wall plane, and a ray finds it.
    door = bpy.data.objects["Door"]
    corners = [door.matrix_world @ Vector(c) for c in door.bound_box]
    centre = sum(corners, Vector()) / 8
    assert centre.x < x1 and d["y0"] < centre.y < d["y1"]
    start = Vector((1.5, 1.2, 1.0))
    hit, _loc, _n, name = _cast(scene, start, centre - start)
    assert hit and name == "Door"
    yaw = math.degrees(door.matrix_world.to_euler().z)
    assert 10.0 <= abs(yaw) <= 90.0, f"door leaf yaw {yaw}"


def test_room_is_closed_except_window_and_door(scene, builder):
    """Rays in all directions from the middle of the room: each one that escapes leaves
    through the window or the door opening."""
    w, d = builder.WINDOW, builder.DOOR
    origin = Vector((0.0, -0.5, 1.4))
    n, escaped, through_window = 600, 0, 0
    golden = math.pi * (3.0 - math.sqrt(5.0))
    for i in range(n):
        z = 1.0 - 2.0 * (i + 0.5) / n
        r = math.sqrt(1.0 - z * z)
        direction = Vector((r * math.cos(golden * i), r * math.sin(golden * i), z))
        hit, _loc, _n, _name = _cast(scene, origin, direction)
        if hit:
            continue
        escaped += 1
        if direction.y > 0:
            t = (builder.ROOM_Y1 - origin.y) / direction.y
            p = origin + direction * t
            if w["x0"] <= p.x <= w["x1"] and w["z0"] <= p.z <= w["z1"]:
                through_window += 1
                continue
        assert direction.x > 0, f"ray {tuple(direction)} escaped the room"
        t = (builder.ROOM_X1 - origin.x) / direction.x
        p = origin + direction * t
        assert d["y0"] <= p.y <= d["y1"] and 0.0 <= p.z <= d["height"], \
            f"ray {tuple(direction)} escaped at {tuple(p)}, not through an opening"
    assert through_window > 0 and escaped < n / 4


# ---------------------------------------------------------------------------- classes

def test_class_properties_where_promised(scene):
    for name, cls in OBJECT_PROPS.items():
        assert bpy.data.objects[name].get("archviz_class") == cls, name
    sofa = bpy.data.objects["Sofa"]
    assert "archviz_class" not in sofa
    assert sofa.material_slots[0].material.name == "Fabric_Grey"
    assert sofa.material_slots[0].material.get("archviz_class") == "sofa"
    credenza = bpy.data.objects["Credenza"]
    assert "archviz_class" not in credenza
    assert all("archviz_class" not in s.material for s in credenza.material_slots)
    assert [c.name for c in credenza.users_collection] == ["Storage"]
    assert bpy.data.collections["Storage"].get("archviz_class") == "cabinet"
    for name in KEYWORD_OBJECTS:
        obj = bpy.data.objects[name]
        assert "archviz_class" not in obj, name
        assert all("archviz_class" not in s.material for s in obj.material_slots), name
        assert all("archviz_class" not in c for c in obj.users_collection), name
    # Every value used anywhere is an ADE20K name spelled as in CONVENTIONS.md.
    for idblock in list(bpy.data.objects) + list(bpy.data.materials) + list(bpy.data.collections):
        if "archviz_class" in idblock:
            assert idblock["archviz_class"] in ADE20K_NAMES, (idblock.name, idblock["archviz_class"])


def test_classes_resolve_through_each_level():
    """The add-on's resolver, fed the way the capture code feeds it, finds each class at
    the level the scene meant (object, material, collection property, keyword)."""
    classes = pytest.importorskip("archviz_controlnet.core.classes")
    builder = _load_builder()
    scene = builder.build_interior()
    table = classes.KeywordTable()
    got = {}
    for obj in scene.objects:
        if obj.type != "MESH":
            continue
        mat = obj.material_slots[0].material
        coll = obj.users_collection[0]

        def prop(block):
            return block.get("archviz_class") if block is not None else None

        got[obj.name] = classes.resolve_class(
            (prop(obj), prop(mat), prop(coll)), (obj.name, mat.name, coll.name), table)
    expected = {name: (cls, "object property") for name, cls in OBJECT_PROPS.items()}
    expected.update({name: (cls, "object name") for name, cls in KEYWORD_OBJECTS.items()})
    expected["Sofa"] = ("sofa", "material property")
    expected["Credenza"] = ("cabinet", "collection property")
    assert got == expected
    assert builder.CLASS_PLAN == expected  # the builder documents what it does


# ---------------------------------------------------------------------------- view

def _visible_fraction(scene, cam, obj, max_samples=300):
    """Fraction of sampled face centres that the camera sees first (and in frame)."""
    from bpy_extras.object_utils import world_to_camera_view
    eye = cam.matrix_world.translation
    polys = obj.data.polygons
    step = max(1, len(polys) // max_samples)
    seen = total = 0
    for poly in list(polys)[::step]:
        p = obj.matrix_world @ poly.center
        v = world_to_camera_view(scene, cam, p)
        total += 1
        if not (0.0 <= v.x <= 1.0 and 0.0 <= v.y <= 1.0 and v.z > 0.0):
            continue
        hit, _loc, _n, name = _cast(scene, eye, p - eye, distance=(p - eye).length + 1e-3)
        if hit and name == obj.name:
            seen += 1
    return seen / total


def test_main_camera_sees_the_room(scene, builder):
    cam = scene.camera
    for name in ("Wall_North", "Wall_East", "Floor", "Window_Frame", "Door", "Door_Frame",
                 "Table", "Chair_1", "Chair_2", "Chair_3", "Chair_4", "Sofa", "Lamp",
                 "Plant_Pot", "Plant_Leaves", "Rug", "Coffee_Table"):
        frac = _visible_fraction(scene, cam, bpy.data.objects[name])
        assert frac > 0.05, f"{name} hardly visible from Camera ({frac:.2f})"
    # The sky is seen through the window from the camera: nothing on the way.
    w = builder.WINDOW
    target = Vector(((w["x0"] + w["x1"]) / 2, builder.ROOM_Y1 + builder.WALL_T, (w["z0"] + w["z1"]) / 2))
    eye = cam.matrix_world.translation
    hit, _loc, _n, name = _cast(scene, eye, target - eye)
    assert not hit, f"the view through the window is blocked by {name}"


def test_corner_camera_sees_most_things(scene):
    cam = bpy.data.objects["Camera_Corner"]
    names = FURNITURE + ["Window_Frame"]
    seen = [n for n in names if _visible_fraction(scene, cam, bpy.data.objects[n]) > 0.05]
    assert len(seen) >= len(names) // 2, f"Camera_Corner sees only {seen}"
    assert "Window_Frame" in seen and "Table" in seen


# ---------------------------------------------------------------------------- command line

def test_command_line_after_double_dash(tmp_path):
    """As `blender -b --python build_interior.py -- --out X` passes it: args after `--`."""
    out = tmp_path / "nested" / "dir" / "cli.blend"
    proc = subprocess.run([sys.executable, SCRIPT, "--", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert proc.stdout.strip().splitlines()[-1] == str(out)
