"""``archviz dataset SCENE.blend [...] --views N --out DIR``: paired ControlNet training
data rendered by Blender.

Per scene it places N cameras (inside rooms at eye height and above, and around the
building), checks with Blender's ray cast that no camera sits inside geometry or right
against a surface, and renders for each view the target (the scene with its own
materials and lights) and the chosen control passes from the very same camera at the very
same size. Captions come from the scene: the classes in view, finish words of the
materials in view, and an optional ``SCENE.prompt.txt``. The layout is described in
:mod:`..core.dataset`. Re-running resumes; each view is made from its own seed.

Blender side: stdlib + numpy + bpy, never torch.
"""

import json
import math
import os
import shutil
import sys
import time

import bpy
import numpy as np
from mathutils import Vector

from ...core import dataset as D
from ...core import passes as core_passes
from ...core.exr import read_exr
from ...core.png import atomic_write
from .. import compat
from .render import (EXR_NAME, CaptureError, CaptureOptions, _bounds_corners, _depsgraph, _overrides, beauty_engine,
                     class_legend, render_controls, renderable_objects)

CAMERA_NAME = "ArchVizDatasetCamera"
EYE_HEIGHT = (1.2, 1.8)  # metres above the floor
INTERIOR_LENS = (16.0, 28.0)  # mm on a 36 mm sensor: the wide lenses interiors are shot with
EXTERIOR_LENS = (24.0, 50.0)
CLEARANCE = 0.3  # metres from the camera to the nearest surface
MAX_TRIES = 80
TARGET_SAMPLES = 16


# ---------------------------------------------------------------------------------------
# Where a camera may go
# ---------------------------------------------------------------------------------------


def _directions():
    dirs = [Vector((x, y, z)).normalized() for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
            if (x, y, z) != (0, 0, 0)]
    return dirs


_DIRS = _directions()


def camera_problem(scene, depsgraph, location, clearance=CLEARANCE):
    """Why a camera may not stand at ``location`` ('' when it may): a ray in one of 26
    directions meets a face from behind (the camera is inside a closed object), or a
    surface is nearer than ``clearance``."""
    origin = Vector(location)
    for d in _DIRS:
        hit, loc, normal, _i, obj, _m = scene.ray_cast(depsgraph, origin, d, distance=1e5)
        if not hit:
            continue
        if normal.dot(d) > 1e-4:
            return f"inside {obj.name!r}"
        if (loc - origin).length < clearance:
            return f"{(loc - origin).length:.2f} m from {obj.name!r}"
    return ""


def view_problem(scene, depsgraph, cam_obj, min_hits=0.4, min_distance=0.4):
    """Why the camera's view is not worth a pair ('' when it is): fewer than ``min_hits``
    of a 5 x 5 grid of rays through the frame meet geometry, or the centre ray meets a
    surface nearer than ``min_distance`` (staring at a wall)."""
    mw = cam_obj.matrix_world
    origin = mw.translation
    frame = cam_obj.data.view_frame(scene=scene)  # four corners in camera space
    xs = [v.x for v in frame]
    ys = [v.y for v in frame]
    z = frame[0].z
    hits = 0
    for u in np.linspace(0.1, 0.9, 5):
        for v in np.linspace(0.1, 0.9, 5):
            local = Vector((min(xs) + u * (max(xs) - min(xs)), min(ys) + v * (max(ys) - min(ys)), z))
            d = (mw.to_3x3() @ local).normalized()
            hit, *_rest = scene.ray_cast(depsgraph, origin, d, distance=1e4)
            hits += bool(hit)
    if hits < min_hits * 25:
        return f"only {hits} of 25 rays meet geometry"
    forward = (mw.to_3x3() @ Vector((0.0, 0.0, -1.0))).normalized()
    hit, loc, _n, _i, obj, _m = scene.ray_cast(depsgraph, origin, forward, distance=1e4)
    if hit and (loc - origin).length < min_distance:
        return f"facing {obj.name!r} {(loc - origin).length:.2f} m away"
    return ""


def vertical_spans(scene, depsgraph, x, y, top, bottom):
    """Free spans along the vertical line at (x, y): (floor z, ceiling z or None) from the
    top down. A span is free space with a surface facing up below it; ceiling None means
    open sky above (outside)."""
    spans = []
    z = top
    ceiling = None
    for _ in range(64):
        hit, loc, normal, *_rest = scene.ray_cast(depsgraph, Vector((x, y, z)), Vector((0, 0, -1)), distance=z - bottom)
        if not hit:
            break
        if normal.z > 0.7:  # an upward face met from above: a floor under free space
            spans.append((loc.z, ceiling))
            ceiling = None
        elif normal.z < -0.7:  # a downward face met from above: we leave a solid, a ceiling is above
            ceiling = loc.z
        else:
            ceiling = None
        z = loc.z - 1e-3
    return spans


def scene_bounds(scene, view_layer):
    objects = renderable_objects(scene, view_layer)
    if not objects:
        raise CaptureError(f"scene {scene.name!r} has no visible geometry to render")
    corners = _bounds_corners(objects, _depsgraph(scene, view_layer))
    return corners.min(axis=0), corners.max(axis=0)


def _aim(cam_obj, yaw, pitch):
    """Level camera turned by ``yaw`` (radians, 0 = looking along +y) and tilted by ``pitch``."""
    cam_obj.rotation_euler = (math.pi / 2 + pitch, 0.0, yaw)


def place_camera(scene, view_layer, cam_obj, rng, bounds, interior, rooms_exist=True):
    """Put ``cam_obj`` at a view drawn from ``rng``: inside a room (floor and ceiling
    around it) when ``interior``, else around the building. Returns
    (kind, tries). CaptureError after MAX_TRIES draws without a good view."""
    lo, hi = bounds
    depsgraph = _depsgraph(scene, view_layer)
    centre = (lo + hi) / 2
    size = hi - lo
    reasons = {}
    interior = interior and rooms_exist
    for tries in range(1, MAX_TRIES + 1):
        if interior:
            x = rng.uniform(lo[0] + CLEARANCE, hi[0] - CLEARANCE)
            y = rng.uniform(lo[1] + CLEARANCE, hi[1] - CLEARANCE)
            rooms = [(f, c) for f, c in vertical_spans(scene, depsgraph, x, y, hi[2] + 1.0, lo[2] - 1.0)
                     if c is not None and c - f >= 2.0]
            if not rooms:
                reasons["no room here"] = reasons.get("no room here", 0) + 1
                continue
            floor, ceiling = rooms[int(rng.integers(len(rooms)))]
            if rng.random() < 0.75:  # eye height
                z = floor + rng.uniform(*EYE_HEIGHT)
                pitch = math.radians(rng.uniform(-12.0, 8.0))
            else:  # above eye height, looking down a little
                z = floor + rng.uniform(EYE_HEIGHT[1], max(EYE_HEIGHT[1] + 0.01, ceiling - floor - CLEARANCE))
                pitch = math.radians(rng.uniform(-30.0, -8.0))
            yaw = rng.uniform(0.0, 2 * math.pi)
            lens = rng.uniform(*INTERIOR_LENS)
            location = (x, y, z)
        else:
            radius = 0.5 * math.hypot(size[0], size[1]) * rng.uniform(1.3, 2.4) + 2.0
            angle = rng.uniform(0.0, 2 * math.pi)
            ground = lo[2]
            z = ground + rng.uniform(1.5, 1.5 + 1.2 * max(size[2], 1.0))
            location = (centre[0] + radius * math.cos(angle), centre[1] + radius * math.sin(angle), z)
            target = Vector((centre[0], centre[1], ground + rng.uniform(0.3, 0.7) * size[2]))
            d = target - Vector(location)
            yaw = math.atan2(d.y, d.x) - math.pi / 2 + math.radians(rng.uniform(-8.0, 8.0))
            pitch = math.atan2(d.z, math.hypot(d.x, d.y))
            lens = rng.uniform(*EXTERIOR_LENS)
        problem = camera_problem(scene, depsgraph, location)
        if not problem:
            cam_obj.location = location
            _aim(cam_obj, yaw, pitch)
            cam_obj.data.lens = lens
            view_layer.update()
            problem = view_problem(scene, depsgraph, cam_obj)
        if not problem:
            return ("interior" if interior else "exterior"), tries
        key = problem.split(" ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    raise CaptureError(f"scene {scene.name!r}: no good camera place in {MAX_TRIES} tries "
                       f"({', '.join(f'{k}: {v}' for k, v in reasons.items())})")


# ---------------------------------------------------------------------------------------
# Variations: materials per class, light power
# ---------------------------------------------------------------------------------------


def check_variations(scene, view_layer, rules, scene_key):
    """DatasetError naming a material a rule asks for that this scene does not have."""
    for cls, names in rules.items():
        for name in names:
            if bpy.data.materials.get(name) is None:
                have = ", ".join(sorted(m.name for m in bpy.data.materials)[:12])
                raise D.DatasetError(f"--vary-material {cls}=...: scene {scene_key!r} has no material {name!r} "
                                     f"(it has: {have})")


def apply_variations(ov, scene, view_layer, rng, rules, light_scale):
    """Draw this view's materials and light power from ``rng`` and set them through
    ``ov`` (put back when the view is done). Returns what was drawn."""
    drawn = {}
    if rules:
        objects = renderable_objects(scene, view_layer)
        _mats, pairs, _table = class_legend(scene, objects, CaptureOptions())
        classes_of = {}
        for (oi, _mi), res in pairs.items():
            classes_of.setdefault(oi, set()).add(res.cls)
        for cls, names in sorted(rules.items()):
            mat = bpy.data.materials[names[int(rng.integers(len(names)))]]
            drawn.setdefault("materials", {})[cls] = mat.name
            for oi, obj in enumerate(objects, start=1):
                if cls in classes_of.get(oi, ()):
                    for slot in obj.material_slots:
                        ov.set(slot, "material", mat)
    if light_scale:
        lo, hi = light_scale
        factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        drawn["light_scale"] = round(factor, 5)
        for obj in scene.objects:
            if obj.type == "LIGHT":
                ov.set(obj.data, "energy", obj.data.energy * factor)
    return drawn


# ---------------------------------------------------------------------------------------
# One view
# ---------------------------------------------------------------------------------------


def _materials_in_view(scene, view_layer, exr_path):
    """Names of the materials any pixel of the last capture shows (material pass index j is
    the j-th material of :func:`.render.class_legend`)."""
    channels = read_exr(exr_path)
    mat = compat.pass_channel(channels, "Material Index.X")
    z = compat.pass_channel(channels, "Depth.Z")
    ids = set(np.unique(np.rint(mat[core_passes.geometry_mask(z)])).astype(int).tolist())
    materials, _pairs, _src = class_legend(scene, renderable_objects(scene, view_layer), CaptureOptions())
    return [m for j, m in enumerate(materials, start=1) if j in ids]


def make_view(scene, view_layer, cam_obj, out_dir, scene_key, view, seed, controls, long_side, interior_share,
              samples, prompt, bounds, rooms_exist, rules=None, light_scale=None, engine="CYCLES"):
    """Place the camera for one view, render its control passes and target, and return
    its metadata row (files are in place before the row exists)."""
    vseed = D.view_seed(seed, scene_key, view)
    rng = np.random.default_rng(vseed)
    interior = D.interior_draw(seed, scene_key, view) < interior_share
    kind, _tries = place_camera(scene, view_layer, cam_obj, rng, bounds, interior, rooms_exist)
    name = D.view_name(scene_key, view)
    work = os.path.join(out_dir, ".work", name)
    shutil.rmtree(work, ignore_errors=True)
    with _overrides() as ov:
        # Variations draw from their own stream, so adding them keeps every camera in place.
        drawn = apply_variations(ov, scene, view_layer, np.random.default_rng([vseed, 1]), rules, light_scale)
        # The target is the capture's beauty pass: same camera, same size, the scene's own
        # materials and lights.
        result = render_controls(scene, work, CaptureOptions(camera=cam_obj.name, long_side=long_side,
                                                             passes=tuple(controls), beauty=True,
                                                             beauty_engine=engine, beauty_samples=samples))
        size = tuple(result.info["resolution"])
        materials = _materials_in_view(scene, view_layer, os.path.join(work, EXR_NAME))
    files = {}
    for ctype in controls:
        rel = f"conditioning/{ctype}/{name}.png"
        os.makedirs(os.path.join(out_dir, "conditioning", ctype), exist_ok=True)
        os.replace(result.files[ctype], os.path.join(out_dir, rel))
        files[ctype] = rel
    target_rel = f"images/{name}.png"
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.replace(result.files["beauty"], os.path.join(out_dir, target_rel))
    shutil.rmtree(work, ignore_errors=True)
    classes = [e["class"] for e in result.info["legend"] if e["in_view"]]
    tags = D.style_tags([m.name for m in materials], [m.get("archviz_style", "") for m in materials])
    return {
        "file_name": target_rel,
        "conditioning_image_file_name": files[controls[0]],
        "text": D.caption(kind, classes, tags, prompt),
        "control": controls[0],
        "controls": files,
        "name": name,
        "scene": scene_key,
        "view": view,
        "seed": vseed,
        "kind": kind,
        # Full precision: the view can be rendered again from these numbers exactly.
        "camera": {"location": list(cam_obj.location), "rotation_euler": list(cam_obj.rotation_euler),
                   "lens_mm": cam_obj.data.lens, "sensor_width_mm": cam_obj.data.sensor_width},
        "size": list(size),
        "classes": classes,
        "materials": [m.name for m in materials],
        **({"variation": drawn} if drawn else {}),
    }


def _dataset_camera(scene):
    data = bpy.data.cameras.new(CAMERA_NAME)
    data.sensor_width = 36.0
    data.sensor_fit = "AUTO"
    data.clip_start = 0.05
    data.clip_end = 1000.0
    obj = bpy.data.objects.new(CAMERA_NAME, data)
    scene.collection.objects.link(obj)
    return obj


def make_dataset(scenes, out_dir, views, controls, long_side=512, seed=0, interior_share=0.7,
                 samples=TARGET_SAMPLES, progress=True, log=print, materials=None, light_scale=None,
                 engine="CYCLES"):
    """Render ``views`` pairs per scene into ``out_dir``; returns (rows, seconds, made now)."""
    from tqdm import tqdm

    if views < 1:
        raise D.DatasetError(f"--views {views}: make at least 1 view per scene")
    if long_side < 32 or long_side > 4096 or long_side % 8:
        raise D.DatasetError(f"--long-side {long_side}: a multiple of 8 from 32 to 4096")
    if not 0.0 <= interior_share <= 1.0:
        raise D.DatasetError(f"--interior-share {interior_share}: between 0 and 1")
    for s in scenes:
        if not os.path.isfile(s) or not s.endswith(".blend"):
            raise D.DatasetError(f"no such .blend file: {s}")
    keys = [D.scene_key(s) for s in scenes]
    if len(set(keys)) != len(keys):
        raise D.DatasetError("two scenes have the same file name; views are named after it")
    beauty_engine(engine)  # CaptureError naming it when unknown
    wanted = D.settings(scenes, views, controls, long_side, seed, interior_share, samples, materials, light_scale,
                        engine)
    os.makedirs(out_dir, exist_ok=True)
    done = D.check_resume(out_dir, wanted)
    atomic_write(os.path.join(out_dir, D.SETTINGS), json.dumps(wanted, indent=2).encode())
    rows = dict(done)
    total = views * len(scenes)
    bar = tqdm(total=total, initial=min(len(done), total), desc="dataset",
               unit="view", disable=not progress, mininterval=1.0)
    started, made = time.perf_counter(), 0
    meta_path = os.path.join(out_dir, D.METADATA)
    try:
        for scene_path, key in zip(scenes, keys):
            todo = [v for v in range(views) if D.view_name(key, v) not in done]
            if not todo:
                continue
            bpy.ops.wm.open_mainfile(filepath=os.path.abspath(scene_path))
            scene = bpy.context.scene
            view_layer = bpy.context.view_layer
            prompt = D.read_prompt_file(scene_path)
            check_variations(scene, view_layer, materials or {}, key)
            cam_obj = _dataset_camera(scene)
            view_layer.update()
            bounds = scene_bounds(scene, view_layer)
            rooms_exist = _has_rooms(scene, view_layer, bounds)
            if not rooms_exist and interior_share > 0:
                log(f"{key}: no room with a floor and a ceiling found; all views are around the building")
            for v in todo:
                row = make_view(scene, view_layer, cam_obj, out_dir, key, v, seed, controls, long_side,
                                interior_share, samples, prompt, bounds, rooms_exist, materials, light_scale,
                                engine)
                rows[row["name"]] = row
                with open(meta_path, "a", encoding="utf-8") as fh:  # this view is done, even if the next fails
                    fh.write(json.dumps(row) + "\n")
                made += 1
                bar.update(1)
    finally:
        bar.close()
        order = {k: i for i, k in enumerate(keys)}
        ordered = sorted(rows.values(), key=lambda r: (order.get(r["scene"], len(order)), r["view"]))
        D.write_metadata(out_dir, ordered)
        shutil.rmtree(os.path.join(out_dir, ".work"), ignore_errors=True)
    return ordered, time.perf_counter() - started, made


def _has_rooms(scene, view_layer, bounds):
    """True when some vertical line through the scene meets a floor with a ceiling 2 m or
    more above it (a 9 x 9 grid of probes)."""
    lo, hi = bounds
    depsgraph = _depsgraph(scene, view_layer)
    for x in np.linspace(lo[0], hi[0], 11)[1:-1]:
        for y in np.linspace(lo[1], hi[1], 11)[1:-1]:
            if any(c is not None and c - f >= 2.0
                   for f, c in vertical_spans(scene, depsgraph, x, y, hi[2] + 1.0, lo[2] - 1.0)):
                return True
    return False


# ---------------------------------------------------------------------------------------
# ``archviz dataset``
# ---------------------------------------------------------------------------------------


def add_arguments(parser):
    parser.add_argument("scenes", nargs="+", metavar="SCENE.blend", help="one or more .blend files")
    parser.add_argument("--views", type=int, required=True, help="camera views per scene")
    parser.add_argument("--out", required=True, help="dataset folder (imagefolder + metadata.jsonl)")
    parser.add_argument("--controls", default="depth,lines",
                        help="control passes per view, comma-separated: depth,lines,normal,seg (default depth,lines; "
                             "the first is the one train-controlnet uses unless told)")
    parser.add_argument("--long-side", type=int, default=512, help="long side in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (each view's own seed derives from it)")
    parser.add_argument("--interior-share", type=float, default=0.7,
                        help="share of views inside rooms; the rest are around the building (default 0.7)")
    parser.add_argument("--vary-material", action="append", default=[], metavar="CLASS=MAT,MAT",
                        help="per view, give objects of this ADE20K class one of these materials of the scene "
                             "(repeatable)")
    parser.add_argument("--light-scale", default="", metavar="LOW:HIGH",
                        help="per view, multiply every light's power by a factor drawn from this range")
    parser.add_argument("--samples", type=int, default=TARGET_SAMPLES,
                        help=f"samples of the target image, the capture's beauty pass (default {TARGET_SAMPLES})")
    parser.add_argument("--engine", default="CYCLES", help="engine of the target image: CYCLES (default) or EEVEE")


def run(args):
    from ...core.classes import ClassError
    from ...core.passes import PassError

    try:
        controls = D.parse_controls(args.controls)
        if args.samples < 1:
            raise D.DatasetError(f"--samples {args.samples}: at least 1")
        rules = D.parse_material_rules(args.vary_material)
        light_scale = D.parse_light_scale(args.light_scale)
        rows, seconds, made = make_dataset([os.path.abspath(s) for s in args.scenes], os.path.abspath(args.out),
                                           args.views, controls, args.long_side, args.seed, args.interior_share,
                                           args.samples, materials=rules, light_scale=light_scale,
                                           engine=args.engine)
    except (D.DatasetError, CaptureError, PassError, ClassError) as exc:
        print(f"archviz dataset: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, D.DatasetError) else 3
    size = rows[0]["size"] if rows else [0, 0]
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("interior", "exterior")}
    nbytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _d, fs in os.walk(args.out) for f in fs)
    print(f"{len(rows)} pairs ({made} made now in {seconds:.1f} s, {kinds['interior']} interior, "
          f"{kinds['exterior']} exterior) at {size[0]}x{size[1]}, {nbytes / 1e6:.1f} MB in {os.path.abspath(args.out)}")
    print(f"train on it: archviz train-controlnet --data {args.out} --base sd15 --out MY_CONTROLNET")
    return 0
