"""Render exact control passes from a scene camera: one Cycles render (1 sample, no
denoise, pixel-centre rays) writes a multilayer EXR with Depth, Normal, Object Index and
Material Index; ``core`` turns those floats into control images.

Everything this module changes on the scene (render settings, pass indices) is put back
when it returns, also when it fails.
"""

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import bpy
import numpy as np

from ...core import classes as core_classes
from ...core import passes as core_passes
from ...core.exr import ExrError, read_exr
from ...core.png import atomic_write, folder_lock, looks_full, temp_name, write_png
from .. import compat
from . import ifc as capture_ifc

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
    # view | sequence | scene | manual; empty: manual when near/far are given, else view
    depth_range: str = ""
    near: float = 0.0  # manual range
    far: float = 0.0
    near_ratio: float = 0.15  # scene mode
    depth_percentiles: tuple = core_passes.VIEW_PERCENTILES  # view and sequence modes
    sequence_samples: int = 24  # frames sampled by the sequence mode
    crease_angle: float = 30.0
    # lines.png: "auto" (the style of the default SD 1.5 lines model) or one of LINE_STYLES;
    # each style in line_styles is (also) written as lines_<style>.png
    line_style: str = "auto"
    line_styles: tuple = ()
    supersample: int = 2  # passes rendered this many times finer, reduced to the nearest sample
    background_class: str = core_classes.DEFAULT_BACKGROUND_CLASS
    fallback_class: str = core_classes.DEFAULT_FALLBACK_CLASS
    class_table: str = ""  # JSON or TOML class table, before the built-in one
    beauty: bool = False  # also render beauty.png with the scene's materials and lights
    beauty_engine: str = "CYCLES"  # CYCLES | EEVEE
    beauty_samples: int = 16

    def depth_mode(self):
        if self.depth_range:
            return core_passes.check_depth_mode(self.depth_range)
        return "manual" if (self.near or self.far) else core_passes.DEFAULT_DEPTH_MODE


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


def _render_candidates(scene, view_layer):
    """Objects a Cycles render of ``view_layer`` draws (:mod:`.ifc`: hide_render, camera
    visibility, collection exclusion, not the viewport's flags), plus the objects that
    collection instances (linked furniture, say) bring in."""
    depsgraph = _depsgraph(scene, view_layer)
    collections = capture_ifc.render_collections(view_layer)
    found = [o for o in scene.objects if o.type in RENDERABLE_TYPES and capture_ifc.render_visible(o, collections)]
    seen = set(found)
    for inst in depsgraph.object_instances:
        if inst.is_instance:
            obj = inst.object.original
            if obj.type in RENDERABLE_TYPES and obj not in seen and not obj.hide_render:
                seen.add(obj)
                found.append(obj)
    return found, depsgraph


def renderable_objects(scene, view_layer, with_faceless=False):
    """Objects that render: what Cycles draws of the scene, plus the objects that
    collection instances bring in, less IFC elements that are no geometry (IfcSpace,
    IfcOpeningElement, ...: :func:`non_physical_objects`). Meshes without faces are left
    out."""
    found, depsgraph = _render_candidates(scene, view_layer)
    reader = capture_ifc.IfcReader(scene)
    found = [o for o in found if not reader.facts(o).non_physical()]
    return found if with_faceless else [o for o in found if _has_faces(o, depsgraph)]


def non_physical_objects(scene, view_layer):
    """IFC elements that Cycles would draw but that are no geometry (IfcSpace,
    IfcOpeningElement, IfcVirtualElement, IfcAnnotation, IfcGrid): the capture hides
    them from its render, whatever their flags."""
    found, _ = _render_candidates(scene, view_layer)
    reader = capture_ifc.IfcReader(scene)
    return [o for o in found if reader.facts(o).non_physical()]


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
    """The range of the ``scene`` mode (or ``manual`` when near/far are given)."""
    if options.depth_mode() == "manual" or options.near or options.far:
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


def _camera_rays_world(scene, camera, depsgraph, grid):
    """Origins and unit directions (world space) of a grid of pixel-centre rays, and the
    camera's forward axis."""
    mw = np.array(camera.evaluated_get(depsgraph).matrix_world, dtype=np.float64)
    rot = mw[:3, :3] / np.linalg.norm(mw[:3, :3], axis=0)
    frame = [tuple(v) for v in camera.data.view_frame(scene=scene)]
    ortho = camera.data.type == "ORTHO"
    dirs_cam = core_passes.pixel_rays(grid, frame, orthographic=ortho).reshape(-1, 3)
    if ortho:
        f = np.asarray(frame)
        w, h = grid
        xs = f[:, 0].min() + (np.arange(w) + 0.5) / w * (f[:, 0].max() - f[:, 0].min())
        ys = f[:, 1].max() - (np.arange(h) + 0.5) / h * (f[:, 1].max() - f[:, 1].min())
        local = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        origins = mw[:3, 3] + local[:, :1] * rot[:, 0] + local[:, 1:] * rot[:, 1]
    else:
        origins = np.broadcast_to(mw[:3, 3], dirs_cam.shape)
    dirs = dirs_cam @ rot.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return origins, dirs, -rot[:, 2]


def sample_depths(scene, view_layer, camera, renderable, grid=(64, 48)):
    """Z depths (along the camera axis) seen by a grid of rays, from Blender's ray cast
    against what renders (hidden-from-render objects are looked through)."""
    from mathutils import Vector

    depsgraph = _depsgraph(scene, view_layer)
    origins, dirs, forward = _camera_rays_world(scene, camera, depsgraph, grid)
    clip_start, clip_end = camera.data.clip_start, camera.data.clip_end
    out = []
    for o, d in zip(origins, dirs):
        start, travelled = Vector(o), 0.0
        direction = Vector(d)
        for _ in range(8):
            hit, loc, _n, _i, obj, _m = scene.ray_cast(depsgraph, start, direction, distance=clip_end - travelled)
            if not hit:
                break
            z = float(np.dot(np.array(loc) - o, forward))
            if obj is not None and obj.original in renderable and z >= clip_start:
                out.append(z)
                break
            step = (loc - start).length + 1e-4
            travelled += step
            start = loc + direction * 1e-4
    return np.array(out)


def sequence_depth_range(scene, view_layer, camera, options):
    """One range for one camera over the scene's frame range: the view mode's percentiles
    over ray-cast samples of up to ``options.sequence_samples`` frames spread evenly over
    frame_start..frame_end (the same frames whatever frame is rendered, so the range
    does not change from frame to frame)."""
    first, last = scene.frame_start, scene.frame_end
    if last < first:
        raise CaptureError(f"scene {scene.name!r} frame range {first}..{last} is empty")
    if options.sequence_samples < 1:
        raise CaptureError(f"sequence samples must be at least 1, got {options.sequence_samples!r}")
    count = min(options.sequence_samples, last - first + 1)
    frames = sorted({int(round(f)) for f in np.linspace(first, last, count)})
    return frames_depth_range(scene, view_layer, camera, frames, options.depth_percentiles, (first, last))


def frames_depth_range(scene, view_layer, camera, frames, percentiles, span):
    """The depth range of ray-cast samples of the frames ``frames`` together (the scene's
    current frame is put back); ``span`` (first, last) is the range they stand for, in the
    record and the error."""
    renderable = set(renderable_objects(scene, view_layer))
    current = scene.frame_current
    samples = []
    try:
        for f in frames:
            scene.frame_set(f)
            samples.append(sample_depths(scene, view_layer, camera, renderable))
    finally:
        scene.frame_set(current)
    z = np.concatenate(samples) if samples else np.zeros(0)
    if z.size == 0:
        raise CaptureError(f"camera {camera.name!r} sees no geometry in any sampled frame of {span[0]}..{span[1]}")
    return core_passes.inverse_depth_range(1.0 / z, percentiles, source="sequence", mode="sequence",
                                           extra={"frames": list(span), "frames_sampled": len(frames)})


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


def _camera_inside_object(camera, objects, obj_id, hit, depsgraph, scene):
    """The object the camera sits inside: every pixel sees that one object, the camera is
    within its bounds, and rays from the camera meet its faces from behind (the Normal
    pass turns normals toward the viewer, so Blender's ray cast tells). A real model in
    one mesh (Sponza) filling the view from the front is not inside anything."""
    ids = np.unique(obj_id[hit])
    if not hit.all() or len(ids) != 1 or not 1 <= ids[0] <= len(objects):
        return None
    obj = objects[int(ids[0]) - 1]
    corners = _bounds_corners([obj], depsgraph)
    pos = np.array(camera.matrix_world.translation, dtype=np.float64)
    if not (len(corners) and (corners.min(axis=0) <= pos).all() and (pos <= corners.max(axis=0)).all()):
        return None
    from mathutils import Vector

    origins, dirs, _ = _camera_rays_world(scene, camera, depsgraph, (5, 5))
    back = front = 0
    for o, d in zip(origins, dirs):
        ok, _loc, normal, _i, _obj, _m = scene.ray_cast(depsgraph, Vector(o), Vector(d))
        if ok:
            if float(np.dot(np.array(normal), d)) > 0:
                back += 1
            else:
                front += 1
    return obj if back > front else None


def _custom_class(idblock):
    if idblock is None:
        return None
    value = idblock.get("archviz_class")
    return str(value) if value not in (None, "") else None


def _collection_of(obj, scene):
    """The first collection that holds the object (the scene collection if none)."""
    return obj.users_collection[0] if obj.users_collection else scene.collection


def class_table(options):
    return (core_classes.KeywordTable.from_file(options.class_table) if options.class_table
            else core_classes.KeywordTable())


def class_legend(scene, objects, options, table=None):
    """Class per (object index, material index) and what passes.json says about it.

    Object i gets pass_index i + 1 and material j gets pass_index j + 1 during the
    render; 0 is "no material". Returns (materials, {(oi, mi): Resolution}, table).
    A resolution's class may be a facing rule, decided per pixel later.
    """
    table = table or class_table(options)
    table.check(options.fallback_class, what="fallback class")
    materials = []
    for obj in objects:
        for slot in obj.material_slots:
            if slot.material is not None and slot.material not in materials:
                materials.append(slot.material)
    pairs = {}  # (object index, material index) -> Resolution
    reader = capture_ifc.IfcReader(scene)
    depsgraph, inclined = _depsgraph(scene, scene.view_layers[0]), {}
    for oi, obj in enumerate(objects, start=1):
        coll = _collection_of(obj, scene)
        facts = reader.facts(obj)
        obj_mats = [s.material for s in obj.material_slots if s.material is not None] or [None]
        for mat in obj_mats:
            mi = materials.index(mat) + 1 if mat is not None else 0
            res = core_classes.classify(
                (_custom_class(obj), _custom_class(mat), _custom_class(coll)),
                (obj.name, mat.name if mat else "", coll.name if coll is not scene.collection else ""),
                table, fallback=options.fallback_class, predefined=facts.predefined,
                ifc_class=facts.ifc_class or None, parents=facts.parents)
            pairs[(oi, mi)] = _inclined(res, obj, table, depsgraph, inclined)
    return materials, pairs, table


def _inclined(res, obj, table, depsgraph, cache):
    """A facing rule with an ``inclined`` class (a slab) gives way to that class where the
    object's upward faces are mostly sloped: a pitched roof of slabs is a roof, edges and all."""
    facing = table.facing.get(res.cls)
    if res.rule == "property" or facing is None or not facing.inclined:
        return res
    if obj not in cache:
        faces = capture_ifc.face_normals_z(obj, depsgraph)
        cache[obj] = faces is not None and core_classes.inclined_object(facing, *faces)
    if not cache[obj]:
        return res
    return core_classes.Resolution(facing.inclined, res.rule, f"{res.source}, inclined", res.parent)


# ---------------------------------------------------------------- render

def _frame(ov, scene, view_layer, camera, engine, size, path):
    """What every render of ours sets: this camera, this engine, exactly ``size`` pixels
    (square pixels, no border), no compositor or sequencer, only ``view_layer``, written to
    ``path`` as given."""
    render = scene.render
    ov.set(scene, "camera", camera)
    ov.set(render, "engine", engine)
    ov.set(render, "resolution_x", size[0])
    ov.set(render, "resolution_y", size[1])
    ov.set(render, "resolution_percentage", 100)
    ov.set(render, "pixel_aspect_x", 1.0)
    ov.set(render, "pixel_aspect_y", 1.0)
    ov.set(render, "use_border", False)
    ov.set(render, "use_compositing", False)
    ov.set(render, "use_sequencer", False)
    ov.set(render, "filepath", path)
    ov.set(render, "use_file_extension", False)
    for layer in scene.view_layers:
        ov.set(layer, "use", layer == view_layer)
    return render


def _configure_render(ov, scene, view_layer, camera, size, exr_path):
    render = _frame(ov, scene, view_layer, camera, "CYCLES", size, exr_path)
    ov.set(render, "film_transparent", False)
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
    for attr, value in compat.output_format(settings, "EXR_MULTILAYER"):
        ov.set(settings, attr, value)
    ov.set(settings, "color_depth", "32")
    ov.set(settings, "exr_codec", "ZIP")
    for attr in ("use_pass_z", "use_pass_normal", "use_pass_object_index", "use_pass_material_index"):
        ov.set(view_layer, attr, True)


def _find_channel(channels, suffix):
    arr = compat.pass_channel(channels, suffix)
    if arr is not None:
        return arr
    raise CaptureError(f"the render did not write a {suffix!r} pass (channels: {', '.join(sorted(channels))})")


def _check_options(options):
    wanted = tuple(options.passes)
    unknown = [p for p in wanted if p not in PASS_NAMES]
    if unknown or not wanted:
        raise CaptureError(f"unknown pass {unknown[0]!r}; choose from {', '.join(PASS_NAMES)}" if unknown
                           else "no passes chosen")
    core_classes.check_class(options.background_class, what="background class")
    options.depth_mode()  # raises PassError naming a bad mode
    if options.line_style != "auto":
        core_passes.check_line_style(options.line_style)
    for style in options.line_styles:
        core_passes.check_line_style(style)
    if isinstance(options.supersample, bool) or not isinstance(options.supersample, int) \
            or not 1 <= options.supersample <= 4:
        raise CaptureError(f"supersample must be 1, 2, 3 or 4, got {options.supersample!r}")
    if options.beauty:
        beauty_engine(options.beauty_engine)
        if isinstance(options.beauty_samples, bool) or not isinstance(options.beauty_samples, int) \
                or not 1 <= options.beauty_samples <= 4096:
            raise CaptureError(f"beauty samples must be a whole number from 1 to 4096, got {options.beauty_samples!r}")
    return wanted


def beauty_engine(name):
    """Blender's render engine id for CYCLES or EEVEE."""
    key = str(name).strip().upper()
    engines = [i.identifier for i in bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items]
    if key == "CYCLES":
        return "CYCLES"
    if key in ("EEVEE", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"):
        for ident in ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"):
            if ident in engines:
                return ident
    raise CaptureError(f"unknown beauty engine {name!r}; choose CYCLES or EEVEE")


def render_controls(scene, out_dir, options=None):
    """Render the control passes of ``scene`` into ``out_dir``; return a CaptureResult.

    Raises CaptureError for scenes that cannot give passes (no camera, nothing in view).
    """
    options = options or CaptureOptions()
    wanted = _check_options(options)
    camera = resolve_camera(scene, options.camera)
    if camera.data.type == "PANO":
        raise CaptureError(f"camera {camera.name!r} is panoramic; control passes need a perspective or orthographic camera")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise CaptureError(f"cannot create output folder {out_dir}: {exc.strerror}") from exc
    if not os.access(out_dir, os.W_OK):
        raise CaptureError(f"output folder {out_dir} is not writable")
    # Runs rendering into one folder take turns: each file below is written under a unique
    # temporary name and renamed, and the folder's set of files stays one run's.
    with folder_lock(out_dir, lambda: print(f"archviz passes: waiting for another run writing into {out_dir}",
                                             file=sys.stderr, flush=True)):
        return _render_controls(scene, out_dir, options, wanted, camera)


def _render_controls(scene, out_dir, options, wanted, camera):
    started = time.perf_counter()
    frame_before = scene.frame_current
    if options.frame is not None:
        scene.frame_set(options.frame)
    timings = {}
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
        mode = options.depth_mode()
        t0 = time.perf_counter()
        if mode in ("scene", "manual"):
            depth_range = scene_depth_range(scene, view_layer, options)
        elif mode == "sequence":
            depth_range = sequence_depth_range(scene, view_layer, camera, options)
        else:
            depth_range = None  # fitted to the rendered view
        timings["depth_range"] = time.perf_counter() - t0
        materials, pairs, table = class_legend(scene, objects, options)
        # IfcSpace & co. are hidden from this render only: the user's flags come back after.
        left_out = non_physical_objects(scene, view_layer)
        factor = options.supersample
        exr_path = os.path.join(os.path.abspath(out_dir), EXR_NAME)
        exr_tmp = temp_name(exr_path)  # Blender writes it there; renamed once it reads back whole
        t0 = time.perf_counter()
        with _overrides() as ov:
            for obj in left_out:
                ov.set(obj, "hide_render", True)
            for i, obj in enumerate(objects, start=1):
                ov.set(obj, "pass_index", i)
            for j, mat in enumerate(materials, start=1):
                ov.set(mat, "pass_index", j)
            _configure_render(ov, scene, view_layer, camera, (size[0] * factor, size[1] * factor), exr_tmp)
            bpy.ops.render.render(write_still=True, scene=scene.name, layer=view_layer.name)
            rot = np.array(camera.matrix_world.to_3x3().normalized(), dtype=np.float64)
            frame = [tuple(v) for v in camera.data.view_frame(scene=scene)]
        timings["render"] = time.perf_counter() - t0
        if not os.path.exists(exr_tmp):
            raise CaptureError(f"Cycles did not write {exr_path}")
        t0 = time.perf_counter()
        try:
            channels = read_exr(exr_tmp)
        except ExrError as exc:  # said for passes.exr, with what the renderer managed to write
            exc.written, exc.cut = os.path.getsize(exr_tmp), looks_full(exr_tmp)
            os.unlink(exr_tmp)
            raise
        os.replace(exr_tmp, exr_path)
        result = _write_controls(channels, out_dir, wanted, options, size, depth_range, rot, frame,
                                 camera, scene, objects, materials, pairs, table, left_out=left_out)
        timings["images"] = time.perf_counter() - t0
        if options.beauty:
            result.files["beauty"] = os.path.join(out_dir, "beauty.png")
            with _overrides() as ov:
                for obj in left_out:
                    ov.set(obj, "hide_render", True)
                result.info["beauty"] = render_beauty(scene, view_layer, camera, size, result.files["beauty"], options)
            result.info["files"]["beauty"] = "beauty.png"
    finally:
        if options.frame is not None:
            scene.frame_set(frame_before)
    result.seconds = time.perf_counter() - started
    result.info["seconds"] = round(result.seconds, 3)
    result.info["timings"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write(os.path.join(out_dir, "passes.json"), json.dumps(result.info, indent=2).encode())
    result.files["json"] = os.path.join(out_dir, "passes.json")
    return result


#: At most this many pixel-centre rays measure what a left-out object would have covered.
LEFT_OUT_RAYS = 4096


def ifc_provenance(scene, objects):
    """What passes.json says of the IFC data of each IFC object: its class, PredefinedType,
    storey, the aggregates above it (nearest first) and where that came from ("bonsai":
    Bonsai's live IFC data; "name": Bonsai-style names and custom properties)."""
    reader = capture_ifc.IfcReader(scene)
    out = {}
    for obj in objects:
        facts = reader.facts(obj)
        if facts.ifc_class:
            out[obj.name] = {"class": facts.ifc_class, "predefined": facts.predefined or None,
                             "storey": facts.storey or None, "parents": [list(p) for p in facts.parents],
                             "source": facts.source}
    return out


def left_out_figures(scene, depsgraph, camera, left_out, size, z):
    """What passes.json says of the non-physical IFC elements the render left out: per
    object, its IFC class and the share of the view it would have covered had it been
    drawn (pixel-centre rays on a grid of at most LEFT_OUT_RAYS, against ``z``, the
    depth drawn, inf where the background shows)."""
    if not left_out:
        return {}
    reader = capture_ifc.IfcReader(scene)
    origins, dirs, forward = _camera_rays_world(scene, camera, depsgraph, size)
    step = max(1, int(np.ceil(np.sqrt(size[0] * size[1] / LEFT_OUT_RAYS))))
    grid = np.zeros((size[1], size[0]), dtype=bool)
    grid[step // 2::step, step // 2::step] = True
    sel = grid.ravel()
    shares = capture_ifc.would_cover(left_out, origins[sel], dirs[sel], forward, np.asarray(z).ravel()[sel])
    return {obj.name: {"ifc_class": reader.facts(obj).ifc_class, "reason": "non-physical IFC element",
                       "pixels": round(shares[obj.name], 5)} for obj in left_out}


def _npy(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def render_beauty(scene, view_layer, camera, size, path, options):
    """beauty.png: the scene from the same camera at the control size, with its own
    materials, lights and colour management, EEVEE or Cycles at ``options.beauty_samples``.
    Returns what passes.json records (engine, samples, seconds)."""
    engine = beauty_engine(options.beauty_engine)
    started = time.perf_counter()
    final, path = path, temp_name(path)  # renamed into place once written whole
    with _overrides() as ov:
        render = _frame(ov, scene, view_layer, camera, engine, size, path)
        settings = render.image_settings
        for attr, value in compat.output_format(settings, "PNG"):
            ov.set(settings, attr, value)
        ov.set(settings, "color_mode", "RGB")
        ov.set(settings, "color_depth", "8")
        if engine == "CYCLES":
            ov.set(scene.cycles, "samples", options.beauty_samples)
            ov.set(scene.cycles, "use_adaptive_sampling", False)
        else:
            ov.set(scene.eevee, "taa_render_samples", options.beauty_samples)
        bpy.ops.render.render(write_still=True, scene=scene.name, layer=view_layer.name)
    if not os.path.exists(path):
        raise CaptureError(f"{engine} did not write {final}")
    os.replace(path, final)
    return {"engine": engine, "samples": options.beauty_samples, "seconds": round(time.perf_counter() - started, 3)}


def _labels(obj_id, mat_id, hit, facing_nz, pairs, table, fallback):
    """Per-pixel class index into ``class_names``, the names, and per-pixel fallback mask."""
    fallback = table.check(fallback, what="fallback class")
    names = set()
    for res in pairs.values():
        names.update(table.classes_of(res.cls))
    names.update(table.classes_of(fallback))
    class_names = sorted(names)
    index = {n: i for i, n in enumerate(class_names)}
    labels = np.zeros(obj_id.shape, dtype=np.int64)
    fell_back = np.zeros(obj_id.shape, dtype=bool)
    # Pixels of pairs nothing names (objects rendered with another material index) fall back.
    fallback_res = core_classes.Resolution(fallback, "fallback", "fallback")
    # One pass over the pixels grouped by (object, material): the cost does not grow with
    # the number of objects in the scene, only with those in view.
    keys = obj_id[hit].astype(np.int64) * 65536 + mat_id[hit]
    nz = np.asarray(facing_nz)[hit]
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    out_labels = np.zeros(keys.shape, dtype=np.int64)
    out_fell = np.zeros(keys.shape, dtype=bool)
    start = 0
    for key, count in zip(uniq.tolist(), counts.tolist()):
        sel = order[start:start + count]
        start += count
        res = pairs.get((key // 65536, key % 65536), fallback_res)
        out_fell[sel] = res.rule == "fallback"
        if table.is_facing(res.cls):
            f = table.facing[res.cls]
            bands = np.array([index[f.up], index[f.down], index[f.side], index[f.sloped or f.up]])
            out_labels[sel] = bands[core_classes.facing_band(nz[sel], f)]
        else:
            out_labels[sel] = index[res.cls]
    labels[hit] = out_labels
    fell_back[hit] = out_fell
    return labels, class_names, fell_back & hit


def _write_controls(channels, out_dir, wanted, options, size, depth_range, rot, frame, camera, scene,
                    objects, materials, pairs, table, left_out=()):
    factor = options.supersample
    z_fine = _find_channel(channels, "Depth.Z")
    world_fine = np.stack([_find_channel(channels, f"Normal.{c}") for c in "XYZ"], axis=-1)
    obj_fine = np.rint(_find_channel(channels, "Object Index.X")).astype(np.int64)
    mat_fine = np.rint(_find_channel(channels, "Material Index.X")).astype(np.int64)
    # Flush coplanar objects (z-fighting) would speckle lines and seg: settle them first.
    keys = core_passes.settle_coplanar_ids(z_fine, world_fine, obj_fine * 65536 + mat_fine)
    obj_fine, mat_fine = keys // 65536, keys % 65536
    z, world_n, obj_id, mat_id = core_passes.reduce_nearest(z_fine, factor, world_fine, obj_fine, mat_fine)
    hit = core_passes.geometry_mask(z)
    if not hit.any():
        raise CaptureError(f"nothing in view of camera {camera.name!r}: every pixel sees the world background "
                           "(check where the camera points, its clip range and hidden objects)")
    cam_n = core_passes.camera_space_normals(world_n, rot)
    orthographic = camera.data.type == "ORTHO"
    rays = core_passes.pixel_rays(size, frame, orthographic=orthographic)
    depsgraph = (_depsgraph(scene, scene.view_layers[0]) if bpy.context.scene != scene
                 else bpy.context.evaluated_depsgraph_get())
    inside = _camera_inside_object(camera, objects, obj_id, hit, depsgraph, scene)
    if inside is not None:
        raise CaptureError(f"camera {camera.name!r} is inside object {inside.name!r} and sees nothing but its inside "
                           "faces: move the camera out of it or hide it from renders (a room shell needs its "
                           "contents, or a camera outside it)")
    if depth_range is None:
        depth_range = core_passes.view_depth_range(z, options.depth_percentiles)

    files = {}
    depth_u8 = core_passes.depth_image(z, depth_range)
    if "depth" in wanted:
        files["depth"] = os.path.join(out_dir, "depth.png")
        write_png(files["depth"], depth_u8)
        files["depth_raw"] = os.path.join(out_dir, "depth.npy")
        raw = np.where(hit, z, np.inf).astype(np.float32)
        atomic_write(files["depth_raw"], _npy(raw))
    geo = depth_u8[hit]
    depth_stats = {"levels_used": int(len(np.unique(geo))),
                   "clipped_near": round(float((geo == 255).mean()), 4),
                   "clipped_far": round(float((geo == 0).mean()), 4)}

    line_info = {"crease_angle_deg": options.crease_angle}
    if "lines" in wanted:
        primary = core_passes.line_style_for("lines", "sd15", options.line_style)
        styles = [primary] + [st for st in dict.fromkeys(options.line_styles) if st != primary]
        # Lines are found on the fine passes (the nearest-sample reduction moves each
        # pixel's sample inside its block, so depth is not affine there) and the canny
        # and mlsd masks are the blocks any fine line crosses.
        # Creases compare neighbouring normals only, which any rotation keeps: the world
        # normals serve as they are.
        # Class and material changes are lines; where two objects of one class and material
        # meet, only an edge of the geometry is (modelling seams are not).
        rays_fine = core_passes.pixel_rays((size[0] * factor, size[1] * factor), frame, orthographic=orthographic)
        hit_fine = core_passes.geometry_mask(z_fine)
        labels_fine, _names, _fb = _labels(obj_fine, mat_fine, hit_fine,
                                           core_passes.toward_viewer(world_fine, rot, rays_fine)[..., 2],
                                           pairs, table, options.fallback_class)
        mask_fine = core_passes.line_mask(z_fine, world_fine, ids=(labels_fine, mat_fine), seam_ids=(obj_fine,),
                                          orthographic=orthographic, crease_angle=options.crease_angle)
        mask = core_passes.thin(core_passes.block_any(mask_fine, factor)) if factor > 1 else mask_fine
        line_files = {}
        for style in styles:
            img = core_passes.styled_lines(style, mask, mask_fine, factor, max(size))
            if style == primary:
                files["lines"] = os.path.join(out_dir, "lines.png")
                write_png(files["lines"], img)
                line_files[style] = "lines.png"
            if style in options.line_styles:  # asked for by name (a control unit's model)
                files[f"lines_{style}"] = os.path.join(out_dir, f"lines_{style}.png")
                write_png(files[f"lines_{style}"], img)
                line_files[style] = f"lines_{style}.png"
        line_info.update({"style": primary, "styles": line_files,
                          "override": options.line_style if options.line_style != "auto" else None})
    if "normal" in wanted:
        files["normal"] = os.path.join(out_dir, "normal.png")
        write_png(files["normal"], core_passes.normal_image(cam_n, hit))

    facing_nz = core_passes.toward_viewer(world_n, rot, rays)[..., 2]
    labels, class_names, fell_back = _labels(obj_id, mat_id, hit, facing_nz, pairs, table, options.fallback_class)
    if "seg" in wanted:
        files["seg"] = os.path.join(out_dir, "seg.png")
        background = core_classes.ADE20K[core_classes.check_class(options.background_class)][1]
        write_png(files["seg"], core_passes.seg_image(labels, core_classes.palette_lut(class_names), hit, background))

    # Object and class ids per pixel (0 / -1 where no geometry): region edits take their
    # masks from these (core/region.py); info["object_index"] names the object ids.
    ade = np.array([core_classes.ADE20K[n][0] for n in class_names], dtype=np.int16)
    for key, ids in (("object_ids", np.where(hit, obj_id, 0).astype(np.int32)),
                     ("class_ids", np.where(hit, ade[labels], -1).astype(np.int16))):
        files[key] = os.path.join(out_dir, f"{key}.npy")
        atomic_write(files[key], _npy(ids))

    n_hit = max(1, int(hit.sum()))
    shares = np.bincount(labels[hit], minlength=len(class_names)) / n_hit
    sources = {}
    keys, counts = np.unique(obj_id[hit].astype(np.int64) * 65536 + mat_id[hit], return_counts=True)
    in_view = dict(zip(keys.tolist(), counts.tolist()))
    for (oi, mi), res in pairs.items():
        obj = objects[oi - 1]
        entry = {"material": materials[mi - 1].name if mi else None, **res.as_dict(table)}
        entry["pixels"] = round(in_view.get(oi * 65536 + mi, 0) / n_hit, 5)
        sources.setdefault(obj.name, []).append(entry)
    data = camera.data
    info = {
        "camera": camera.name,
        "lens": {"type": {"PERSP": "perspective", "ORTHO": "orthographic"}[data.type],
                 "focal_length_mm": data.lens, "sensor_width_mm": data.sensor_width,
                 "ortho_scale": data.ortho_scale, "clip_start": data.clip_start, "clip_end": data.clip_end},
        "camera_matrix_world": [list(row) for row in camera.matrix_world],
        "resolution": list(size),
        "supersample": factor,
        "frame": scene.frame_current,
        "depth_range": depth_range.as_dict(),
        "depth_stats": depth_stats,
        "depth_encoding": "inverse depth: (1/z - 1/far) / (1/near - 1/far), near = white, background black",
        "normal_encoding": "camera space, R = (1 - x)/2, G = (1 + y)/2, B = (1 + z)/2",
        "lines": line_info,
        "background_class": core_classes.check_class(options.background_class),
        "fallback_class": table.check(options.fallback_class, what="fallback class"),
        "fallback_share": round(float(fell_back.sum()) / n_hit, 5),
        "legend": [
            {"class": name, "ade20k_index": core_classes.ADE20K[name][0], "color": list(core_classes.ADE20K[name][1]),
             "in_view": bool(shares[i] > 0), "pixels": round(float(shares[i]), 5)}
            for i, name in enumerate(class_names)
        ],
        "objects": sources,
        "object_index": {obj.name: i for i, obj in enumerate(objects, start=1)},
        "unclassified": sorted(n for n, entries in sources.items() if any(e["rule"] == "fallback" for e in entries)),
        "left_out": left_out_figures(scene, depsgraph, camera, left_out, size, np.where(hit, z, np.inf)),
        "ifc": ifc_provenance(scene, objects),
        "files": {k: os.path.basename(v) for k, v in files.items()} | {"exr": EXR_NAME},
        "blender": compat.VERSION_STRING,
    }
    return CaptureResult(out_dir=out_dir, files=files, info=info)
