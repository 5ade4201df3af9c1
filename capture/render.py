"""Render exact control passes from a scene camera: one Cycles render (1 sample, no
denoise, pixel-centre rays) writes a multilayer EXR with Depth, Normal, Object Index and
Material Index; ``core`` turns those floats into control images.

Everything this module changes on the scene (render settings, pass indices) is put back
when it returns, also when it fails.
"""

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import bpy
import numpy as np

from ..core import classes as core_classes
from ..core import passes as core_passes
from ..core.exr import read_exr
from ..core.png import atomic_write, write_png

PASS_NAMES = ("depth", "lines", "normal", "seg")
EXR_NAME = "passes.exr"
RENDERABLE_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME"}


class CaptureError(RuntimeError):
    """The scene cannot give control passes; the message says why in the user's terms."""


@dataclass
class CaptureOptions:
    camera: str = ""  # object name; empty = the scene camera
    long_side: int = 512
    multiple: int = 8  # sides a multiple of this (16 for FLUX.1)
    frame: int | None = None
    passes: tuple = PASS_NAMES
    near: float = 0.0  # 0 = from the scene bounds
    far: float = 0.0
    near_ratio: float = 0.15
    crease_angle: float = 30.0
    background_class: str = core_classes.DEFAULT_BACKGROUND_CLASS
    fallback_class: str = core_classes.DEFAULT_FALLBACK_CLASS
    class_table: str = ""  # JSON file of keyword -> class, before the defaults


@dataclass
class CaptureResult:
    out_dir: str
    files: dict = field(default_factory=dict)  # pass name -> path
    info: dict = field(default_factory=dict)  # what passes.json holds
    seconds: float = 0.0


class _Overrides:
    """Set attributes now, put every old value back on exit (in reverse order)."""

    def __init__(self):
        self._saved = []

    def set(self, owner, attr, value):
        self._saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def restore(self):
        for owner, attr, value in reversed(self._saved):
            try:
                setattr(owner, attr, value)
            except ReferenceError:  # the datablock went away meanwhile
                pass
        self._saved.clear()


@contextmanager
def _overrides():
    ov = _Overrides()
    try:
        yield ov
    finally:
        ov.restore()


# ---------------------------------------------------------------- scene queries

def resolve_camera(scene, name=""):
    if name:
        obj = scene.objects.get(name)
        if obj is None:
            cams = ", ".join(o.name for o in scene.objects if o.type == "CAMERA") or "none"
            raise CaptureError(f"no object named {name!r} in scene {scene.name!r} (cameras: {cams})")
        if obj.type != "CAMERA":
            raise CaptureError(f"object {name!r} is a {obj.type.lower()}, not a camera")
        return obj
    if scene.camera is None:
        raise CaptureError(f"scene {scene.name!r} has no camera: add one and make it the scene camera, or pass a camera name")
    return scene.camera


#: Beyond this distance from the origin (metres) Blender's single-precision geometry is
#: too coarse for exact control images.
HUGE_COORDINATE = 1e7


def _depsgraph(scene, view_layer):
    return bpy.context.evaluated_depsgraph_get() if bpy.context.scene == scene else view_layer.depsgraph


def _has_faces(obj, depsgraph):
    """False for a mesh with no faces after modifiers (points and edges do not render)."""
    if obj.type != "MESH":
        return True
    try:
        return len(obj.evaluated_get(depsgraph).data.polygons) > 0
    except (RuntimeError, ReferenceError, AttributeError):
        return True


def renderable_objects(scene, view_layer, with_faceless=False):
    """Objects that render: visible ones of the scene, plus the objects that collection
    instances (linked furniture, say) bring in. Meshes without faces are left out."""
    depsgraph = _depsgraph(scene, view_layer)
    found = [o for o in scene.objects
             if o.type in RENDERABLE_TYPES and not o.hide_render and o.visible_get(view_layer=view_layer)]
    seen = set(found)
    for inst in depsgraph.object_instances:
        if inst.is_instance:
            obj = inst.object.original
            if obj.type in RENDERABLE_TYPES and obj not in seen and not obj.hide_render:
                seen.add(obj)
                found.append(obj)
    return found if with_faceless else [o for o in found if _has_faces(o, depsgraph)]


def _bounds_corners(objects, depsgraph):
    """World-space bounding-box corners of every instance of ``objects`` (an object placed
    by several collection instances counts at each place)."""
    wanted = set(objects)
    corners = []
    for inst in depsgraph.object_instances:
        obj = inst.object
        if obj.original not in wanted:
            continue
        mw = np.array(inst.matrix_world, dtype=np.float64)
        local = np.array([tuple(c) for c in obj.bound_box], dtype=np.float64)
        if local.size:
            corners.append(local @ mw[:3, :3].T + mw[:3, 3])
    return np.concatenate(corners) if corners else np.zeros((0, 3))


def _in_reach(corners, cams, clip_ends):
    """Whether a box (its 8 corners) comes within some camera's clip range."""
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return any(np.linalg.norm(np.clip(c, lo, hi) - c) <= far for c, far in zip(cams, clip_ends))


def scene_depth_range(scene, view_layer, options):
    if options.near or options.far:
        return core_passes.user_depth_range(options.near, options.far)
    depsgraph = _depsgraph(scene, view_layer)
    cam_objs = [o for o in scene.objects if o.type == "CAMERA"]
    cams = [np.array(o.matrix_world.translation, dtype=np.float64) for o in cam_objs]
    clip_ends = [o.data.clip_end for o in cam_objs]
    boxes = []
    for obj in renderable_objects(scene, view_layer):
        c = _bounds_corners([obj], depsgraph)
        # An object no camera can reach (beyond every clip end) does not render: it must not
        # stretch the depth range either (a stray object 1e30 m away would flatten it).
        if len(c) and (not cams or _in_reach(c, cams, clip_ends)):
            boxes.append(c)
    corners = np.concatenate(boxes) if boxes else np.zeros((0, 3))
    return core_passes.depth_range_from_bounds(corners, np.array(cams), near_ratio=options.near_ratio)


def check_scene_numbers(scene, view_layer, camera):
    """CaptureError naming the camera or objects whose placement is not a finite number, or
    so far from the origin that single precision is too coarse."""
    depsgraph = _depsgraph(scene, view_layer)
    cam = np.array(camera.evaluated_get(depsgraph).matrix_world, dtype=np.float64)
    if not np.isfinite(cam).all():
        raise CaptureError(f"camera {camera.name!r} has a location, rotation or scale that is not a finite number "
                           "(NaN or infinity): reset its transform")
    if np.abs(cam[:3, 3]).max() > HUGE_COORDINATE:
        raise CaptureError(f"camera {camera.name!r} is {np.abs(cam[:3, 3]).max():.3g} m from the origin; geometry "
                           f"that far out (over {HUGE_COORDINATE:.0e} m) is too imprecise for control images: "
                           "move the scene near the origin")
    bad = []
    for obj in renderable_objects(scene, view_layer, with_faceless=True):
        corners = _bounds_corners([obj], depsgraph)
        if len(corners) and not np.isfinite(corners).all():
            bad.append(obj.name)
    if bad:
        raise CaptureError(f"object(s) {', '.join(repr(n) for n in sorted(bad)[:5])} have a location, rotation, "
                           "scale or vertices that are not finite numbers (NaN or infinity): fix or delete them")


def _camera_inside_object(camera, objects, obj_id, hit, depsgraph):
    """The object the camera sits inside when every pixel sees only that one object."""
    ids = np.unique(obj_id[hit])
    if not hit.all() or len(ids) != 1 or not 1 <= ids[0] <= len(objects):
        return None
    obj = objects[int(ids[0]) - 1]
    corners = _bounds_corners([obj], depsgraph)
    pos = np.array(camera.matrix_world.translation, dtype=np.float64)
    if len(corners) and (corners.min(axis=0) <= pos).all() and (pos <= corners.max(axis=0)).all():
        return obj
    return None


def _custom_class(idblock):
    if idblock is None:
        return None
    value = idblock.get("archviz_class")
    return str(value) if value not in (None, "") else None


def _collection_of(obj, scene):
    """The first collection that holds the object (the scene collection if none)."""
    return obj.users_collection[0] if obj.users_collection else scene.collection


def class_legend(scene, objects, options):
    """Class per (object index, material index) and the legend for passes.json.

    Object i gets pass_index i + 1 and material j gets pass_index j + 1 during the
    render; 0 is "no material". Returns (labels lookup, class list, legend dict).
    """
    table = (core_classes.KeywordTable.from_file(options.class_table) if options.class_table
             else core_classes.KeywordTable())
    materials = []
    for obj in objects:
        for slot in obj.material_slots:
            if slot.material is not None and slot.material not in materials:
                materials.append(slot.material)
    pair_class = {}  # (object index, material index) -> class name
    sources = {}
    for oi, obj in enumerate(objects, start=1):
        coll = _collection_of(obj, scene)
        obj_mats = [s.material for s in obj.material_slots if s.material is not None] or [None]
        for mat in obj_mats:
            mi = materials.index(mat) + 1 if mat is not None else 0
            cls, how = core_classes.resolve_class(
                (_custom_class(obj), _custom_class(mat), _custom_class(coll)),
                (obj.name, mat.name if mat else "", coll.name if coll is not scene.collection else ""),
                table, fallback=options.fallback_class)
            pair_class[(oi, mi)] = cls
            sources.setdefault(obj.name, []).append({"material": mat.name if mat else None, "class": cls, "from": how})
    return materials, pair_class, sources


# ---------------------------------------------------------------- render

def _configure_render(ov, scene, view_layer, camera, size, exr_path):
    render = scene.render
    ov.set(scene, "camera", camera)
    ov.set(render, "engine", "CYCLES")
    ov.set(render, "resolution_x", size[0])
    ov.set(render, "resolution_y", size[1])
    ov.set(render, "resolution_percentage", 100)
    ov.set(render, "pixel_aspect_x", 1.0)
    ov.set(render, "pixel_aspect_y", 1.0)
    ov.set(render, "use_border", False)
    ov.set(render, "use_compositing", False)
    ov.set(render, "use_sequencer", False)
    ov.set(render, "film_transparent", False)
    ov.set(render, "filepath", exr_path)
    ov.set(render, "use_file_extension", False)
    cycles = scene.cycles
    ov.set(cycles, "samples", 1)
    ov.set(cycles, "use_adaptive_sampling", False)
    ov.set(cycles, "use_denoising", False)
    ov.set(cycles, "max_bounces", 0)
    ov.set(cycles, "seed", 0)
    ov.set(cycles, "use_animated_seed", False)
    # One ray through each pixel centre: ids and depth are exact, never blended.
    ov.set(cycles, "pixel_filter_type", "BOX")
    ov.set(cycles, "filter_width", 0.01)
    ov.set(cycles, "use_auto_tile", False)
    settings = render.image_settings
    ov.set(settings, "media_type", "MULTI_LAYER_IMAGE")
    ov.set(settings, "file_format", "OPEN_EXR_MULTILAYER")
    ov.set(settings, "color_depth", "32")
    ov.set(settings, "exr_codec", "ZIP")
    for layer in scene.view_layers:
        ov.set(layer, "use", layer == view_layer)
    for attr in ("use_pass_z", "use_pass_normal", "use_pass_object_index", "use_pass_material_index"):
        ov.set(view_layer, attr, True)


def _find_channel(channels, suffix):
    for name, arr in channels.items():
        if name.endswith(suffix):
            return arr
    raise CaptureError(f"the render did not write a {suffix!r} pass (channels: {', '.join(sorted(channels))})")


def render_controls(scene, out_dir, options=None):
    """Render the control passes of ``scene`` into ``out_dir``; return a CaptureResult.

    Raises CaptureError for scenes that cannot give passes (no camera, nothing in view).
    """
    options = options or CaptureOptions()
    wanted = tuple(options.passes)
    unknown = [p for p in wanted if p not in PASS_NAMES]
    if unknown or not wanted:
        raise CaptureError(f"unknown pass {unknown[0]!r}; choose from {', '.join(PASS_NAMES)}" if unknown
                           else "no passes chosen")
    core_classes.check_class(options.background_class, what="background class")
    core_classes.check_class(options.fallback_class, what="fallback class")
    camera = resolve_camera(scene, options.camera)
    if camera.data.type == "PANO":
        raise CaptureError(f"camera {camera.name!r} is panoramic; control passes need a perspective or orthographic camera")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise CaptureError(f"cannot create output folder {out_dir}: {exc.strerror}") from exc
    if not os.access(out_dir, os.W_OK):
        raise CaptureError(f"output folder {out_dir} is not writable")

    started = time.perf_counter()
    frame_before = scene.frame_current
    if options.frame is not None:
        scene.frame_set(options.frame)
    try:
        view_layer = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
        size = core_passes.control_resolution(
            scene.render.resolution_x, scene.render.resolution_y, options.long_side,
            (scene.render.pixel_aspect_x, scene.render.pixel_aspect_y), options.multiple)
        check_scene_numbers(scene, view_layer, camera)
        objects = renderable_objects(scene, view_layer)
        if not objects:
            faceless = [o.name for o in renderable_objects(scene, view_layer, with_faceless=True)]
            raise CaptureError(f"scene {scene.name!r} has no visible geometry to render"
                               + (f": {', '.join(repr(n) for n in faceless[:5])} have no faces (points and edges "
                                  "do not render)" if faceless else ""))
        depth_range = scene_depth_range(scene, view_layer, options)
        materials, pair_class, sources = class_legend(scene, objects, options)
        exr_path = os.path.join(os.path.abspath(out_dir), EXR_NAME)
        with _overrides() as ov:
            for i, obj in enumerate(objects, start=1):
                ov.set(obj, "pass_index", i)
            for j, mat in enumerate(materials, start=1):
                ov.set(mat, "pass_index", j)
            _configure_render(ov, scene, view_layer, camera, size, exr_path)
            bpy.ops.render.render(write_still=True, scene=scene.name, layer=view_layer.name)
            rot = np.array(camera.matrix_world.to_3x3().normalized(), dtype=np.float64)
        if not os.path.exists(exr_path):
            raise CaptureError(f"Cycles did not write {exr_path}")
        channels = read_exr(exr_path)
        result = _write_controls(channels, out_dir, wanted, options, size, depth_range, rot,
                                 camera, scene, objects, materials, pair_class, sources)
    finally:
        if options.frame is not None:
            scene.frame_set(frame_before)
    result.seconds = time.perf_counter() - started
    result.info["seconds"] = round(result.seconds, 3)
    atomic_write(os.path.join(out_dir, "passes.json"), json.dumps(result.info, indent=2).encode())
    result.files["json"] = os.path.join(out_dir, "passes.json")
    return result


def _write_controls(channels, out_dir, wanted, options, size, depth_range, rot, camera, scene,
                    objects, materials, pair_class, sources):
    z = _find_channel(channels, "Depth.Z")
    hit = core_passes.geometry_mask(z)
    if not hit.any():
        raise CaptureError(f"nothing in view of camera {camera.name!r}: every pixel sees the world background "
                           "(check where the camera points, its clip range and hidden objects)")
    world_n = np.stack([_find_channel(channels, f"Normal.{c}") for c in "XYZ"], axis=-1)
    cam_n = core_passes.camera_space_normals(world_n, rot)
    obj_id = np.rint(_find_channel(channels, "Object Index.X")).astype(np.int64)
    mat_id = np.rint(_find_channel(channels, "Material Index.X")).astype(np.int64)
    inside = _camera_inside_object(camera, objects, obj_id, hit, _depsgraph(scene, scene.view_layers[0])
                                   if bpy.context.scene != scene else bpy.context.evaluated_depsgraph_get())
    if inside is not None:
        raise CaptureError(f"camera {camera.name!r} is inside object {inside.name!r} and sees nothing but its inside "
                           "faces: move the camera out of it or hide it from renders (a room shell needs its "
                           "contents, or a camera outside it)")
    orthographic = camera.data.type == "ORTHO"

    files = {}
    if "depth" in wanted:
        files["depth"] = os.path.join(out_dir, "depth.png")
        write_png(files["depth"], core_passes.depth_image(z, depth_range))
        files["depth_raw"] = os.path.join(out_dir, "depth.npy")
        raw = np.where(hit, z, np.inf).astype(np.float32)
        with open(files["depth_raw"] + ".tmp", "wb") as fh:
            np.save(fh, raw)
        os.replace(files["depth_raw"] + ".tmp", files["depth_raw"])
    if "lines" in wanted:
        files["lines"] = os.path.join(out_dir, "lines.png")
        write_png(files["lines"], core_passes.line_image(z, cam_n, ids=(obj_id, mat_id), orthographic=orthographic,
                                                         crease_angle=options.crease_angle))
    if "normal" in wanted:
        files["normal"] = os.path.join(out_dir, "normal.png")
        write_png(files["normal"], core_passes.normal_image(cam_n, hit))

    class_names = sorted(set(pair_class.values()) | {options.fallback_class})
    labels = np.full(z.shape, class_names.index(core_classes.check_class(options.fallback_class)), dtype=np.int64)
    for (oi, mi), cls in pair_class.items():
        labels[(obj_id == oi) & (mat_id == mi)] = class_names.index(cls)
    if "seg" in wanted:
        files["seg"] = os.path.join(out_dir, "seg.png")
        background = core_classes.ADE20K[core_classes.check_class(options.background_class)][1]
        write_png(files["seg"], core_passes.seg_image(labels, core_classes.palette_lut(class_names), hit, background))

    seen = set(np.unique(labels[hit]).tolist())
    data = camera.data
    info = {
        "camera": camera.name,
        "lens": {"type": {"PERSP": "perspective", "ORTHO": "orthographic"}[data.type],
                 "focal_length_mm": data.lens, "sensor_width_mm": data.sensor_width,
                 "ortho_scale": data.ortho_scale, "clip_start": data.clip_start, "clip_end": data.clip_end},
        "camera_matrix_world": [list(row) for row in camera.matrix_world],
        "resolution": list(size),
        "frame": scene.frame_current,
        "depth_range": depth_range.as_dict(),
        "depth_encoding": "inverse depth: (1/z - 1/far) / (1/near - 1/far), near = white, background black",
        "normal_encoding": "camera space, R = (1 - x)/2, G = (1 + y)/2, B = (1 + z)/2",
        "lines": {"crease_angle_deg": options.crease_angle},
        "background_class": core_classes.check_class(options.background_class),
        "fallback_class": core_classes.check_class(options.fallback_class),
        "legend": [
            {"class": name, "ade20k_index": core_classes.ADE20K[name][0], "color": list(core_classes.ADE20K[name][1]),
             "in_view": i in seen}
            for i, name in enumerate(class_names) if name in pair_class.values()
        ],
        "objects": sources,
        "unclassified": sorted(n for n, entries in sources.items() if any(e["from"] == "fallback" for e in entries)),
        "files": {k: os.path.basename(v) for k, v in files.items()} | {"exr": EXR_NAME},
        "blender": bpy.app.version_string,
    }
    return CaptureResult(out_dir=out_dir, files=files, info=info)
