"""Building blocks for Blender tests: exact boxes, planes and cameras in a fresh scene."""

import math
import os

import bpy  # first: with the bpy module, bmesh and mathutils exist only after it

import bmesh  # noqa: I001
import mathutils
import numpy as np
from bpy_extras.object_utils import world_to_camera_view


#: A script for ``python -c`` in a child process: ``SCENE_SCRIPT TESTS_DIR OUT.blend`` saves
#: a small scene (a wall, a table, a floor and a camera, 64 x 64).
SCENE_SCRIPT = r"""
import sys, bpy
sys.path.insert(0, sys.argv[1])
from blender_support import fresh_scene, box, plane, camera
fresh_scene(64, 64)
box("Wall", (0, 2, 0), (4, 0.2, 3))
box("Table", (0, 0, -0.5), (1, 1, 0.5))
plane("Floor", (0, 0, -1), 8)
camera("Camera", (0, -5, 0.5), (0, 0, 0))
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
"""


def fresh_scene(width=256, height=256):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = width
    scene.render.resolution_y = height
    return scene


def box(name, location, size, collection=None, material=None, rotation=(0.0, 0.0, 0.0)):
    """An axis-aligned box ``size`` (x, y, z) centred at ``location``."""
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    (collection or bpy.context.scene.collection).objects.link(obj)
    obj.location = location
    obj.scale = size
    obj.rotation_euler = rotation
    if material is not None:
        mesh.materials.append(material)
    return obj


def plane(name, location, size=2.0, rotation=(0.0, 0.0, 0.0)):
    """A square plane whose normal is +Z before ``rotation``."""
    mesh = bpy.data.meshes.new(name)
    h = size / 2.0
    mesh.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    obj.rotation_euler = rotation
    return obj


def camera(name="Camera", location=(0.0, -6.0, 0.0), target=(0.0, 0.0, 0.0), lens=50.0, ortho_scale=None,
           make_active=True):
    data = bpy.data.cameras.new(name)
    data.lens = lens
    if ortho_scale is not None:
        data.type = "ORTHO"
        data.ortho_scale = ortho_scale
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    direction = mathutils.Vector(target) - mathutils.Vector(location)
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    if make_active:
        bpy.context.scene.camera = obj
    bpy.context.view_layer.update()
    return obj


def project(scene, cam, points, size):
    """Pixel coordinates (col, row from the top) of world points in an image of ``size``."""
    w, h = size
    out = []
    for p in points:
        co = world_to_camera_view(scene, cam, mathutils.Vector(p))
        out.append((co.x * w - 0.5, (1.0 - co.y) * h - 0.5))
    return np.array(out)


def box_corners(obj):
    return [obj.matrix_world @ mathutils.Vector(c) for c in obj.bound_box]


def material(name, archviz_class=None):
    mat = bpy.data.materials.new(name)
    if archviz_class:
        mat["archviz_class"] = archviz_class
    return mat


def deg(x):
    return math.radians(x)


class RecordingLayout:
    """Stands in for UILayout (a panel cannot draw for real without a window): records every
    call and checks each against this Blender's RNA, so a property, operator or icon this
    Blender does not have fails here."""

    ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

    def __init__(self, calls):
        self.calls = calls
        self.use_property_split = False
        self.use_property_decorate = False
        self.enabled = True
        self.alert = False
        self.scale_y = 1.0

    def icon(self, data):
        self.calls.append(("icon", (data,), {}))
        return 0

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"a panel draws unknown property {prop!r}"
            if name in ("operator", "operator_menu_enum"):
                module, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, module), op), f"a panel draws unknown operator {args[0]!r}"
            icon = kwargs.get("icon")
            if icon is not None:
                assert icon in self.ICONS, f"Blender {bpy.app.version_string} has no icon {icon!r}"
            return RecordingLayout(self.calls)
        return record


def draw(cls, context):
    """The calls a panel class's draw() makes on a RecordingLayout."""
    calls = []
    cls.draw(type("Drawn", (), {"layout": RecordingLayout(calls)})(), context)
    return calls


def movie_roundtrip(movie, folder):
    """Encode five solid PNG frames (red, green, blue, red, green; 33x24, an odd width) with
    ``movie`` (the add-on's blender/movie.py, however it was imported), show the MP4 twice
    in the scene, and check what Blender reads back. Used by the project venv's test and by
    every Blender of the matrix."""
    frames = []
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    for i in range(5):
        image = bpy.data.images.new(f"frame{i}", 33, 24)
        pixels = np.zeros((24, 33, 4), np.float32)
        pixels[..., 3] = 1.0
        pixels[..., i % 3] = 1.0
        image.pixels.foreach_set(pixels.ravel())
        image.filepath_raw = os.path.join(folder, "frames", f"frame_{i:04d}.png")
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
        frames.append(os.path.join(folder, "frames", f"frame_{i:04d}.png"))
    scenes_before = len(bpy.data.scenes)
    out = movie.encode_frames(frames, os.path.join(folder, "movie", "walk.mp4"), 24)
    assert os.listdir(os.path.join(folder, "movie")) == ["walk.mp4"], os.listdir(os.path.join(folder, "movie"))
    assert len(bpy.data.scenes) == scenes_before  # the encoding scene is gone
    scene = bpy.context.scene
    for _ in range(2):  # a second show replaces the first strip
        strip, clip = movie.show_movie(scene, out, "walk")
    strips = [s for s in movie.compat.sequencer_strips(scene.sequence_editor) if s.name.startswith("walk")]
    assert [s.name for s in strips] == ["walk"] and strip.type == "MOVIE", [s.name for s in strips]
    assert clip.frame_duration == 5 and tuple(clip.size) == (32, 24), (clip.frame_duration, tuple(clip.size))
    first = bpy.data.images.load(out, check_existing=False)
    first.source = "MOVIE"
    read = np.empty(first.size[0] * first.size[1] * 4, np.float32)
    first.pixels.foreach_get(read)
    bpy.data.images.remove(first)
    mean = read.reshape(-1, 4).mean(0)
    assert mean[0] > 0.9 and mean[1] < 0.1 and mean[2] < 0.1, mean  # frame 1 is red, through H.264
    for bad, frames_arg, fps in (("no frames", [], 24), ("frame not found", [frames[0] + ".x"], 24),
                                 ("fps must be", frames, 0)):
        try:
            movie.encode_frames(frames_arg, os.path.join(folder, "bad.mp4"), fps)
        except movie.MovieError as exc:
            assert bad in str(exc) and "\n" not in str(exc), exc
        else:
            raise AssertionError(f"{bad}: no error")
    assert not os.path.exists(os.path.join(folder, "bad.mp4"))
    return out
