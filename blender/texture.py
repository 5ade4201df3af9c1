"""``archviz texture SCENE.blend --cameras A,B,C --out DIR``: texture the scene from several
cameras and bake it, so every side of the design looks the same and an animation rendered
from the bake cannot flicker.

1. Every camera's exact passes are rendered first (depth, lines, normal, object index, and
   Cycles' UV pass), so a camera that sees nothing is refused before anything is generated.
   Meshes without UVs get a generated unwrap (smart project) in this session only; the
   user's .blend is only ever read.
2. View 1 is generated with the control units and the style. Each following view gets the
   scene as textured so far (the atlas sampled at its pixels' UVs, core/texture.py) and a
   mask of what it sees that no earlier view covered well, and inpaints only the mask with
   its own controls and the same style and seed (the region-edit machinery, core/region.py).
   The new pixels are colour-matched to the texels they overlap, then splatted into the
   atlas weighted by facing angle with a feathered edge at the view's silhouettes.
3. One RGBA PNG per object (alpha: how well the views covered the texel), materials that
   show it (an Emission of the bake mixed over the object's own shader by that alpha, so a
   surface no camera saw keeps its own look) on object-linked slots, saved as
   ``DIR/textured.blend``; ``DIR/texture.json`` is the coverage report.

Every finished view leaves ``DIR/views/NN_<camera>/`` (image, mask, init, atlas after it,
view.json with its parameters' hash): a rerun keeps the views whose parameters are the same
and goes on from there; Ctrl+C (or the panel's Cancel) keeps the finished ones.

Exit status: 0 done; 1 the backend failed; 2 a bad argument or file; 3 the scene cannot be
textured (no camera, a camera that sees nothing, nothing to texture); 130 cancelled.
"""

import json
import os
import sys
import time

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SCENE_ERROR = 3
EXIT_CANCELLED = 130
VERSION = 1  # bump when the same parameters would give a different bake
PREFIX = "archviz texture"


class TextureFailure(RuntimeError):
    """The scene cannot be textured; ``code`` is the exit status."""

    def __init__(self, message, code=EXIT_SCENE_ERROR):
        super().__init__(message)
        self.code = code


def add_arguments(parser):
    from ..core import families

    parser.add_argument("scene", help="the .blend file (only read: the result is DIR/textured.blend)")
    parser.add_argument("--cameras", required=True, help="comma-separated camera names, in the order they are made")
    parser.add_argument("--out", required=True, help="output folder: textured.blend, textures/, views/, texture.json")
    parser.add_argument("--objects", default="",
                        help="comma-separated mesh objects to texture (default: every mesh that renders)")
    inpainting = [a.label for a in families.ARCHES.values() if a.region]
    parser.add_argument("--model", default="sd15", help=families.model_help() + "; it must do inpainting "
                        f"({', '.join(inpainting[:-1])} and {inpainting[-1]}, and their tiny families)")
    parser.add_argument("--styles", default="modern", help="the style preset (one; archviz presets lists them)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every view")
    parser.add_argument("--controls", default="depth,lines", help="control units, as archviz sweep --controls")
    parser.add_argument("--long-side", type=int, default=None, help="view long side in pixels (default the family's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the style preset's)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the style preset's)")
    parser.add_argument("--texture-size", type=int, default=1024,
                        help="largest texture side per object (each object gets about as many texels as it "
                             "has pixels in its nearest view, a power of two up to this)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="summed view weight from which a texel counts as covered well (default 0.2; "
                             "one face seen at 60 degrees gives 0.5)")
    parser.add_argument("--check-cameras", default="",
                        help="comma-separated cameras that are not generated from: the report says how much of "
                             "what they see the bake covers (held-out views)")
    parser.add_argument("--backend", default=os.environ.get("ARCHVIZ_BACKEND_URL", ""),
                        help="URL of a running backend (default: start a local one for this run)")
    parser.add_argument("--token", default=os.environ.get("ARCHVIZ_TOKEN", ""), help="backend access token")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                        help="device for a backend this command starts")


def _names(text):
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _say(text):
    print(text, flush=True)


def run(args):
    from .capture.blendfile import input_problem

    problem = input_problem(args.scene, args.out)
    if problem is None and not _names(args.cameras):
        problem = "--cameras: no camera names given (e.g. --cameras Front,Back)"
    if problem is None and not 16 <= args.texture_size <= 8192:
        problem = f"--texture-size must be from 16 to 8192, got {args.texture_size}"
    if problem is None and args.threshold is not None and not 0 < args.threshold <= 4:
        problem = f"--threshold must be above 0 and at most 4, got {args.threshold:g}"
    if problem is None and len(_names(args.styles)) != 1:
        problem = f"--styles {args.styles!r}: give exactly one style (every view shares it)"
    if problem is None:
        problem = _model_problem(args.model)
    if problem is None:
        from ..core.presets import load_presets_tolerant, style_names_problem

        problem = style_names_problem(_names(args.styles), None if args.backend else set(load_presets_tolerant()[0]))
    if problem:
        print(f"{PREFIX}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return texture(args)
    except TextureFailure as exc:
        print(f"{PREFIX}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PREFIX}: cancelled; the views finished so far are kept in {os.path.join(args.out, 'views')} "
              "(run the same command again to go on)", file=sys.stderr)
        return EXIT_CANCELLED


def _model_problem(model):
    from ..core import families

    if os.path.exists(model):
        return None  # a local SD 1.5 base
    arch = families.arch_of(model)
    if arch is None:
        return f"--model {model!r}: unknown model family ({', '.join(families.names(menu=True))})"
    if not families.ARCHES[arch].region:
        able = ", ".join(f.name for f in families.FAMILIES.values() if f.menu and families.ARCHES[f.arch].region)
        return f"--model {model!r}: texturing inpaints each new view under a mask, which {model} does not do; use {able}"
    return None


# ---------------------------------------------------------------- scene side

def resolve_texture_cameras(scene, names, option="--cameras"):
    cams = []
    all_cams = sorted(o.name for o in scene.objects if o.type == "CAMERA")
    if not all_cams:
        raise TextureFailure(f"scene {scene.name!r} has no camera: add one per side to texture from")
    for name in names:
        obj = scene.objects.get(name)
        if obj is None:
            raise TextureFailure(f"{option}: no camera named {name!r} in scene {scene.name!r} "
                                 f"(cameras: {', '.join(all_cams)})")
        if obj.type != "CAMERA":
            raise TextureFailure(f"{option}: {name!r} is a {obj.type.lower()}, not a camera")
        if obj in cams:
            raise TextureFailure(f"{option}: camera {name!r} is given twice")
        cams.append(obj)
    from ..core.texture import MAX_VIEWS

    if len(cams) > MAX_VIEWS:
        raise TextureFailure(f"{option}: {len(cams)} cameras; at most {MAX_VIEWS}")
    return cams


def texture_objects(scene, names):
    """The mesh objects to texture: those named, else every mesh that renders."""
    from .capture.render import renderable_objects

    view_layer = scene.view_layers[0]
    renderable = renderable_objects(scene, view_layer)
    if not names:
        objs = [o for o in renderable if o.type == "MESH"]
        if not objs:
            raise TextureFailure(f"scene {scene.name!r} has no mesh that renders: nothing to texture")
        return objs
    objs = []
    for name in names:
        obj = scene.objects.get(name)
        if obj is None:
            raise TextureFailure(f"--objects: no object named {name!r} in scene {scene.name!r}")
        if obj.type != "MESH":
            raise TextureFailure(f"--objects: {name!r} is a {obj.type.lower()}, not a mesh; only meshes can be "
                                 "textured")
        if obj not in renderable:
            raise TextureFailure(f"--objects: {name!r} does not render (hidden from renders or has no faces)")
        objs.append(obj)
    return objs


def ensure_uvs(objects):
    """Give each mesh without UVs a smart-project unwrap (this session's copy only).
    Returns the names unwrapped."""
    import bpy

    done = []
    meshes = {}
    for obj in objects:
        if len(obj.data.uv_layers) == 0 and obj.data not in meshes:
            meshes[obj.data] = obj
    if not meshes:
        return done
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    for mesh, obj in meshes.items():
        for o in view_layer.objects:
            o.select_set(False)
        if obj.name not in view_layer.objects:
            mesh.uv_layers.new(name="UVMap")  # not in this view layer: plain layer, filled below
            continue
        view_layer.objects.active = obj
        obj.select_set(True)
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="EDIT")
            bpy.ops.mesh.reveal()
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=1.1519, island_margin=0.02)
            bpy.ops.object.mode_set(mode="OBJECT")
        obj.select_set(False)
        done.append(obj.name)
    view_layer.objects.active = previous
    return done


def uv_facts(objects):
    """Per object: (share of the UV square its faces use, hash of its UVs)."""
    import hashlib

    import numpy as np

    out = {}
    for obj in objects:
        mesh = obj.data
        layer = next((u for u in mesh.uv_layers if u.active_render), mesh.uv_layers.active)
        uv = np.zeros(len(mesh.loops) * 2, np.float32)
        layer.data.foreach_get("uv", uv)
        uv = uv.reshape(-1, 2)
        area = 0.0
        starts = np.zeros(len(mesh.polygons), np.int64)
        counts = np.zeros(len(mesh.polygons), np.int64)
        mesh.polygons.foreach_get("loop_start", starts)
        mesh.polygons.foreach_get("loop_total", counts)
        for k in np.unique(counts):  # shoelace, grouped by polygon size
            sel = counts == k
            idx = starts[sel][:, None] + np.arange(k)[None, :]
            p = uv[idx].astype(np.float64)
            q = np.roll(p, -1, axis=1)
            area += float(np.abs((p[..., 0] * q[..., 1] - q[..., 0] * p[..., 1]).sum(1)).sum() / 2)
        out[obj.name] = (min(1.0, max(area, 1e-3)), hashlib.sha256(uv.tobytes()).hexdigest()[:16],
                         layer.name)
    return out


class ViewPasses:
    """One camera's pixels: object id, UV, weight, and the passes folder."""

    def __init__(self, camera, passes_dir, info, obj_ids, uv, weight, depth):
        self.camera, self.passes_dir, self.info = camera, passes_dir, info
        self.obj_ids, self.uv, self.weight, self.depth = obj_ids, uv, weight, depth
        self.size = tuple(info["resolution"])
        self.names = {i: n for n, i in info["object_index"].items()}


def render_view(scene, camera, passes_dir, options, textured, feather_px):
    """Render one camera's passes (with the UV pass) and read its per-pixel facts."""
    import numpy as np

    from ..core import passes as core_passes
    from ..core import texture as T
    from ..core.classes import ClassError
    from ..core.exr import ExrError, read_exr
    from ..core.passes import PassError
    from . import compat
    from .capture.render import EXR_NAME, CaptureError, render_controls

    scene.view_layers[0].use_pass_uv = True
    for layer in scene.view_layers:
        layer.use_pass_uv = True
    try:
        result = render_controls(scene, passes_dir, options)
    except (CaptureError, PassError, ClassError, ExrError) as exc:
        raise TextureFailure(str(exc)) from None
    info = result.info
    channels = read_exr(os.path.join(passes_dir, EXR_NAME))
    uv = np.stack([compat.pass_channel(channels, f"UV.{c}") for c in ("U", "V")], axis=-1) \
        if compat.pass_channel(channels, "UV.U") is not None else \
        np.stack([compat.pass_channel(channels, f"UV.{c}") for c in ("X", "Y")], axis=-1)
    normal = np.stack([compat.pass_channel(channels, f"Normal.{c}") for c in "XYZ"], axis=-1)
    depth = compat.pass_channel(channels, "Depth.Z")
    obj_ids = np.load(os.path.join(passes_dir, "object_ids.npy"))
    wanted = {info["object_index"][n] for n in textured if n in info["object_index"]}
    obj_ids = np.where(np.isin(obj_ids, list(wanted)), obj_ids, 0)
    if not (obj_ids > 0).any():
        raise TextureFailure(f"camera {camera.name!r} sees none of the objects to texture "
                             f"({', '.join(sorted(textured)[:5])}{'...' if len(textured) > 5 else ''})")
    rot = np.array(camera.matrix_world.to_3x3().normalized(), dtype=np.float64)
    frame = [tuple(v) for v in camera.data.view_frame(scene=scene)]
    rays = core_passes.pixel_rays(tuple(info["resolution"]), frame, orthographic=camera.data.type == "ORTHO") @ rot.T
    weight = T.view_weights(obj_ids, depth, normal, rays, feather_px)
    weight = np.where(obj_ids > 0, weight, 0.0)
    return ViewPasses(camera, passes_dir, info, obj_ids, uv, weight, depth)


def read_image(path):
    """A PNG as float HxWx3 in [0, 1], row 0 the top (Blender's image loader)."""
    import bpy
    import numpy as np

    img = bpy.data.images.load(os.path.abspath(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1, :, :3].astype(np.float64)


# ---------------------------------------------------------------- the run

def texture(args):
    import bpy  # noqa: F401 - Blender first

    import numpy as np

    from ..core import jobs as J
    from ..core import region as R
    from ..core import texture as T
    from ..core.passes import PassError, default_long_side, size_multiple
    from ..core.png import write_png
    from ..core.sweep import ControlUnit, camera_job
    from .capture.blendfile import BlendFileError, open_blend
    from .capture.render import CaptureOptions
    from .sweeping import control_choices, model_spec

    started = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    scene_path = os.path.abspath(args.scene)
    with open(scene_path, "rb") as fh:
        import hashlib

        blend_sha = hashlib.sha256(fh.read()).hexdigest()
    try:
        os.makedirs(os.path.join(out_dir, "views"), exist_ok=True)
    except OSError as exc:
        raise TextureFailure(f"cannot create output folder {out_dir}: {exc.strerror}", EXIT_BAD_INPUT) from None
    try:
        warning = open_blend(scene_path)
    except BlendFileError as exc:
        raise TextureFailure(str(exc), EXIT_BAD_INPUT) from None
    if warning:
        print(f"{PREFIX}: {warning}", file=sys.stderr)
    scene = bpy.context.scene
    cameras = resolve_texture_cameras(scene, _names(args.cameras))
    checks = resolve_texture_cameras(scene, _names(args.check_cameras), "--check-cameras") \
        if _names(args.check_cameras) else []
    objects = texture_objects(scene, _names(args.objects))
    style = _names(args.styles)[0]
    threshold = args.threshold if args.threshold is not None else T.DEFAULT_THRESHOLD
    try:
        units = [ControlUnit.parse(u) for u in _names(args.controls)]
        long_side = args.long_side or default_long_side(args.model)
        spec = model_spec(args.model)
    except (J.JobError, PassError) as exc:
        raise TextureFailure(str(exc), EXIT_BAD_INPUT) from None
    base = CaptureOptions(long_side=long_side, multiple=size_multiple(args.model), supersample=1)
    depth_mode, line_styles = control_choices(units, [style], args.model, base)
    units = [_replace(u, line_style=line_styles[i]) if i in line_styles else u for i, u in enumerate(units)]
    unwrapped = ensure_uvs(objects)
    if unwrapped:
        _say(f"generated UVs (smart project, in textured.blend only) for {len(unwrapped)} mesh(es): "
             f"{', '.join(unwrapped[:5])}{'...' if len(unwrapped) > 5 else ''}")
    uvs = uv_facts(objects)
    names = sorted(uvs)
    feather_px = max(2, long_side // 32)

    def options_for(cam):
        passes = tuple(sorted({"depth", "lines", "normal", "seg"} | {"lines" if u.type in J.LINE_TYPES else u.type
                                                                    for u in units}))
        return CaptureOptions(**{**base.__dict__, "camera": cam.name, "depth_range": depth_mode,
                                 "line_styles": tuple(sorted(set(line_styles.values()))), "passes": passes})

    _say(f"rendering the passes of {len(cameras)} camera(s): {', '.join(c.name for c in cameras)}")
    views = []
    for i, cam in enumerate(cameras):
        folder = os.path.join(out_dir, "views", f"{i + 1:02d}_{J.safe_name(cam.name)}")
        views.append(render_view(scene, cam, os.path.join(folder, "passes"), options_for(cam), set(names),
                                 feather_px))
    # Texture sizes: about as many texels as the object's pixels in its nearest view.
    sizes, pixels = {}, {n: [] for n in names}
    for v in views:
        for oid, name in v.names.items():
            if name in pixels:
                pixels[name].append(int((v.obj_ids == oid).sum()))
    for name in names:
        if max(pixels[name] or [0]) > 0:
            side = T.texture_side(max(pixels[name]), uvs[name][0], args.texture_size)
            sizes[name] = (side, side)
    if not sizes:
        raise TextureFailure("no camera sees any of the objects to texture")

    client = proc = None
    atlas = T.Atlas(sizes)
    report_views = []
    params = {"version": VERSION, "blend_sha256": blend_sha, "model": spec, "style": style, "seed": args.seed,
              "steps": args.steps, "cfg": args.cfg, "units": [u.__dict__ for u in units], "long_side": long_side,
              "sizes": sizes, "threshold": threshold, "feather": feather_px,
              "uvs": {n: uvs[n][1] for n in names}, "cameras": []}
    try:
        for i, (cam, v) in enumerate(zip(cameras, views)):
            folder = os.path.dirname(v.passes_dir)
            params["cameras"].append(cam.name)
            key = T.params_hash(params)
            view_json = os.path.join(folder, "view.json")
            atlas_path = os.path.join(folder, "atlas.npz")
            kept = _kept_view(view_json, atlas_path, key, sizes)
            if kept is not None:
                atlas = kept[0]
                report_views.append(kept[1])
                _say(f"view {i + 1}/{len(cameras)} {cam.name}: kept (already on disk with these parameters)")
                continue
            t0 = time.perf_counter()
            obj_sel = v.obj_ids > 0
            if i == 0:
                need = obj_sel & (v.weight > 0)
                alpha = np.ones(v.obj_ids.shape, np.float32)
                init_path = mask = None
                before = np.zeros(v.obj_ids.shape + (3,))
                known = np.zeros(v.obj_ids.shape)
            else:
                before, known = T.sample_view(atlas, v.obj_ids, v.uv, v.names)
                need = T.need_mask(v.obj_ids, known, v.weight, threshold)
                alpha = R.feathered_alpha(need, max(1, long_side // 256), max(2, long_side // 128)) if need.any() \
                    else np.zeros(v.obj_ids.shape, np.float32)
                init = np.where(known[..., None] > 0, before, 0.5)
                init_path = os.path.join(folder, "init.png")
                write_png(init_path, np.clip(np.rint(init * 255), 0, 255).astype(np.uint8))
                mask = R.alpha_png(alpha)
            share = float(need.sum()) / max(1, int(obj_sel.sum()))
            _say(f"view {i + 1}/{len(cameras)} {cam.name}: "
                 + (f"generating {share:.0%} of what it sees" if need.any() else "nothing new to make"))
            matched = None
            if need.any():
                if client is None:
                    client, proc = _connect(args, out_dir, args.model, units)
                job = camera_job(v.passes_dir, units, [style], [args.seed], model=spec,
                                 output_dir=folder if not args.backend else None, name_prefix=J.safe_name(cam.name),
                                 steps=args.steps, cfg=args.cfg, init=init_path,
                                 strength=1.0 if init_path else None, mask=mask)
                image_path = _run_job(client, proc, cam.name, job, folder)
                image = read_image(image_path)
                if i > 0:
                    overlap = (alpha >= 1.0) & (known > 0) & obj_sel & ~need
                    image, matched = T.colour_match(image, before, overlap, (alpha > 0) & obj_sel)
            else:
                image = np.where(known[..., None] > 0, before, 0.5)
            contribution = v.weight * alpha * obj_sel
            for oid, name in v.names.items():
                sel = (v.obj_ids == oid) & (contribution > 0)
                if name not in sizes or not sel.any():
                    continue
                radius = T.splat_radius(sizes[name][0] * sizes[name][1] * uvs[name][0], int((v.obj_ids == oid).sum()))
                colour, mean_w, _hits = T.splat_view(v.uv[sel], image[sel], contribution[sel], sizes[name], radius)
                atlas.add(name, i, colour, mean_w)
            write_png(os.path.join(folder, "image.png"), np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
            write_png(os.path.join(folder, "mask.png"), R.alpha_png(alpha * obj_sel))
            atlas.save(atlas_path)
            entry = {"camera": cam.name, "params_sha256": key, "generated_share": round(share, 4),
                     "seconds": round(time.perf_counter() - t0, 3), "colour_match": matched,
                     "resolution": list(v.size)}
            _atomic_json(view_json, entry)
            report_views.append(entry)
            _say(f"view {i + 1}/{len(cameras)} {cam.name}: done in {entry['seconds']:.1f} s")
    finally:
        if proc is not None:
            proc.stop()

    t0 = time.perf_counter()
    textures = bake(scene, objects, atlas, sizes, uvs, threshold, out_dir)
    bake_seconds = time.perf_counter() - t0
    report = {"scene": scene_path, "cameras": [c.name for c in cameras], "model": spec, "style": style,
              "seed": args.seed, "threshold": threshold, "views": report_views,
              "objects": T.coverage(atlas, names=sorted(sizes), threshold=threshold,
                                    view_names=[c.name for c in cameras]),
              "textures": textures, "bake_seconds": round(bake_seconds, 3), "uv_generated": unwrapped}
    for name, entry in report["objects"].items():
        entry["texture_size"] = list(sizes[name])
    report["mismatch"] = _mismatch(views, atlas, out_dir)
    report["seams"] = dict(zip(("ratio", "boundary_pairs"), T.seam_ratio(atlas, sorted(sizes), threshold)))
    if checks:
        report["check_cameras"] = {}
        for cam in checks:
            folder = os.path.join(out_dir, "check", J.safe_name(cam.name))
            try:
                v = render_view(scene, cam, folder, options_for(cam), set(names), feather_px)
            except TextureFailure as exc:
                report["check_cameras"][cam.name] = {"error": str(exc)}
                continue
            _c, w = T.sample_view(atlas, v.obj_ids, v.uv, v.names)
            seen = v.obj_ids > 0
            report["check_cameras"][cam.name] = {
                "covered": round(float((w[seen] >= threshold).mean()), 4),
                "baked": round(float((w[seen] > 0).mean()), 4), "pixels": int(seen.sum())}
    report["seconds"] = round(time.perf_counter() - started, 3)
    _atomic_json(os.path.join(out_dir, "texture.json"), report)
    for name, entry in sorted(report["objects"].items()):
        views_text = ", ".join(f"{k} {v:.0%}" for k, v in entry["by_view"].items())
        _say(f"  {name}: {entry['covered']:.0%} of its visible surface covered ({views_text})")
    for cam, entry in report.get("check_cameras", {}).items():
        if "error" not in entry:
            _say(f"  held-out camera {cam}: {entry['covered']:.0%} of what it sees is covered well")
    _say(f"baked {len(textures)} texture(s) in {bake_seconds:.2f} s: {os.path.join(out_dir, 'textured.blend')}")
    return 0


def _replace(unit, **changes):
    from dataclasses import replace

    return replace(unit, **changes)


def _atomic_json(path, data):
    from ..core.png import atomic_write

    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def _kept_view(view_json, atlas_path, key, sizes):
    """(atlas, view entry) of a finished view with these parameters, else None."""
    from ..core import texture as T

    try:
        with open(view_json, encoding="utf-8") as fh:
            entry = json.load(fh)
        if entry.get("params_sha256") != key:
            return None
        return T.Atlas.load(atlas_path, sizes), entry
    except (OSError, ValueError, KeyError, T.TextureError):
        return None


def _connect(args, out_dir, model, units):
    from ..core.client import BackendError
    from .backend import connect
    from .sweeping import model_roots_of

    try:
        client, proc = connect(url=args.backend, token=args.token, device=args.device,
                               log_path=os.path.join(out_dir, "backend.log") if not args.backend else None,
                               output_roots=[out_dir],
                               model_roots=model_roots_of(model) + [u.model for u in units if u.model])
    except BackendError as exc:
        raise TextureFailure(str(exc), EXIT_FAILED) from None
    if proc is not None:
        _say(f"started a backend at {proc.url} (log: {proc.log_path})")
    return client, proc


def _run_job(client, proc, camera, job, folder):
    """Run one view's job; the path of its image in ``folder``."""
    from ..core.client import BackendError
    from ..core.sweep import SweepRunner

    runner = SweepRunner(client, [(camera, job)], folder)
    try:
        state = runner.run(lambda event: None)
    except KeyboardInterrupt:
        runner.cancel()
        raise
    except (BackendError, OSError) as exc:
        raise TextureFailure(f"camera {camera!r}: {exc}", EXIT_FAILED) from None
    if state != "done" or not runner.images:
        raise TextureFailure(f"camera {camera!r}: the backend did not make the view ({state}: "
                             f"{'; '.join(runner.errors) or 'no image'})", EXIT_FAILED)
    return runner.images[0]["path"]


def _mismatch(views, atlas, out_dir):
    """Per view: mean absolute difference per channel (0-255) between its own image and the
    bake seen from it, over its pixels whose texels two or more views reached."""
    import numpy as np

    from ..core import texture as T

    out = {}
    for i, v in enumerate(views):
        path = os.path.join(os.path.dirname(v.passes_dir), "image.png")
        if not os.path.exists(path):
            continue
        image = read_image(path)
        colour, _w = T.sample_view(atlas, v.obj_ids, v.uv, v.names)
        multi = np.zeros(v.obj_ids.shape, bool)
        for oid, name in v.names.items():
            sel = v.obj_ids == oid
            if name not in atlas.sizes or not sel.any():
                continue
            seen = atlas.seen[name]
            w, h = atlas.sizes[name]
            x, y = T.texel_coords(v.uv[sel], (w, h))
            bits = seen[np.clip(np.rint(y).astype(int), 0, h - 1), np.clip(np.rint(x).astype(int), 0, w - 1)]
            multi[sel] = np.array([bin(int(b)).count("1") >= 2 for b in bits]) if len(bits) else False
        if multi.sum() == 0:
            continue
        diff = np.abs(image[multi] - colour[multi]).mean(0) * 255
        out[v.camera.name] = {"pixels": int(multi.sum()), "mean_abs_diff_rgb": [round(float(d), 2) for d in diff]}
    return out


# ---------------------------------------------------------------- bake

def bake(scene, objects, atlas, sizes, uvs, threshold, out_dir):
    """Write one RGBA PNG per object, give each object materials that show it over its own
    shader (object-linked slots), and save ``out_dir/textured.blend``. Returns {object: png}."""
    import bpy

    from ..core import jobs as J
    from ..core import texture as T
    from ..core.png import temp_name, write_png

    tex_dir = os.path.join(out_dir, "textures")
    os.makedirs(tex_dir, exist_ok=True)
    written = {}
    for obj in objects:
        if obj.name not in sizes or not (atlas.wsum[obj.name] > 0).any():
            continue
        rgba = T.bake_rgba(atlas, obj.name, threshold)
        png = os.path.join(tex_dir, f"{J.safe_name(obj.name)}.png")
        write_png(png, rgba)
        image = bpy.data.images.load(png, check_existing=False)
        image.name = f"{obj.name} bake"
        image.alpha_mode = "CHANNEL_PACKED"
        # relative to the open file; saving the copy into out_dir remaps it to //textures/...
        image.filepath = bpy.path.relpath(png)
        _assign(obj, image, uvs[obj.name][2])
        written[obj.name] = os.path.relpath(png, out_dir)
    # The bake already holds the look of the generated images: shown through Standard, as
    # it is, not tone-mapped a second time.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    final = os.path.join(out_dir, "textured.blend")
    part = temp_name(final) + ".blend"  # unique, so two runs into one folder never share it
    bpy.ops.wm.save_as_mainfile(filepath=part, copy=True, relative_remap=True, compress=False)
    os.replace(part, final)
    return written


def _assign(obj, image, uv_name):
    from . import compat

    if not obj.material_slots:
        obj.data.materials.append(None)
    for slot in obj.material_slots:
        original = slot.material
        mat = original.copy() if original is not None else _plain_material(obj.name)
        mat.name = f"{original.name if original else 'Surface'} ({obj.name} bake)"
        tree = compat.node_tree(mat)
        nodes, links = tree.nodes, tree.links
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output), None) \
            or next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        surface = out.inputs["Surface"]
        source = surface.links[0].from_socket if surface.links else None
        if source is None:
            bsdf = nodes.new("ShaderNodeBsdfDiffuse")
            source = bsdf.outputs[0]
        uvmap = nodes.new("ShaderNodeUVMap")
        uvmap.uv_map = uv_name
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image
        tex.interpolation = "Linear"
        tex.extension = "EXTEND"
        links.new(uvmap.outputs["UV"], tex.inputs["Vector"])
        emit = nodes.new("ShaderNodeEmission")
        links.new(tex.outputs["Color"], emit.inputs["Color"])
        mix = nodes.new("ShaderNodeMixShader")
        links.new(tex.outputs["Alpha"], mix.inputs[0])
        links.new(source, mix.inputs[1])
        links.new(emit.outputs[0], mix.inputs[2])
        links.new(mix.outputs[0], surface)
        slot.link = "OBJECT"
        slot.material = mat


def _plain_material(name):
    import bpy

    mat = bpy.data.materials.new(f"{name} surface")
    return mat
