"""``archviz walkthrough SCENE.blend --camera CAM --frames 1-120 --out DIR``: render a
camera's animation to PNG frames with Cycles or EEVEE and encode them into an MP4 with
Blender's own FFmpeg (blender/movie.py). Made for ``DIR/textured.blend`` of ``archviz
texture``: the bake is one texture seen from every frame, so the walkthrough cannot flicker.

The command also saves ``DIR/walkthrough.blend``: the scene with the MP4 as a movie strip
in its Video Sequencer (and a movie clip), so opening it shows the walk; the operator puts
the strip into the open scene instead. Cycles renders with a fixed noise seed, so the render noise is the same pattern in every
frame. The .blend is only read. Exit status: 0 done; 2 a bad argument or file; 3 the scene
cannot render it (no such camera, an engine this Blender cannot run headless); 130 cancelled.
"""

import os
import sys
import time

EXIT_BAD_INPUT = 2
EXIT_SCENE_ERROR = 3
EXIT_CANCELLED = 130
PREFIX = "archviz walkthrough"


def add_arguments(parser):
    parser.add_argument("scene", help="the .blend file (e.g. DIR/textured.blend of archviz texture)")
    parser.add_argument("--camera", required=True, help="the camera whose animation is rendered")
    parser.add_argument("--frames", default="", help="first-last frame, e.g. 1-120 (default: the scene's range)")
    parser.add_argument("--engine", default="cycles", type=str.lower, help="cycles (default) or eevee")
    parser.add_argument("--samples", type=int, default=16, help="render samples per frame")
    parser.add_argument("--long-side", type=int, default=0, help="long side in pixels (default: the scene's)")
    parser.add_argument("--fps", type=float, default=0.0, help="frames per second of the MP4 (default: the scene's)")
    parser.add_argument("--out", required=True, help="folder for frame_NNNN.png and walk.mp4")


def run(args):
    from .capture.blendfile import input_problem

    problem = input_problem(args.scene, args.out)
    if problem is None and args.engine not in ("cycles", "eevee"):
        problem = f"--engine {args.engine!r}: choose cycles or eevee"
    if problem is None and not 1 <= args.samples <= 4096:
        problem = f"--samples must be from 1 to 4096, got {args.samples}"
    if problem is None and args.long_side and not 16 <= args.long_side <= 8192:
        problem = f"--long-side must be from 16 to 8192, got {args.long_side}"
    if problem is None and args.fps and not 0 < args.fps <= 240:
        problem = f"--fps must be above 0 and at most 240, got {args.fps:g}"
    if problem:
        print(f"{PREFIX}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import bpy

    from ..core.video import parse_frames
    from .capture.blendfile import BlendFileError, open_blend

    try:
        warning = open_blend(args.scene)
    except BlendFileError as exc:
        print(f"{PREFIX}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if warning:
        print(f"{PREFIX}: {warning}", file=sys.stderr)
    scene = bpy.context.scene
    try:
        frames = parse_frames(args.frames, scene.frame_start, scene.frame_end, inside_scene=False, most=10000) \
            if args.frames else (scene.frame_start, scene.frame_end)
    except ValueError as exc:
        print(f"{PREFIX}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = render_walkthrough(scene, args.camera, frames, os.path.abspath(args.out), engine=args.engine,
                                    samples=args.samples, long_side=args.long_side, fps=args.fps,
                                    progress=lambda i, n, f: print(f"frame {f} ({i}/{n})", flush=True))
    except WalkthroughError as exc:
        print(f"{PREFIX}: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    except KeyboardInterrupt:
        print(f"{PREFIX}: cancelled; the frames rendered so far are in {args.out}", file=sys.stderr)
        return EXIT_CANCELLED
    print(f"rendered {result['frames']} frame(s) with {result['engine']} in {result['seconds']:.1f} s: "
          f"{result['mp4']}")
    from . import movie

    movie.show_movie(scene, result["mp4"], "walkthrough")
    shown = os.path.join(os.path.abspath(args.out), "walkthrough.blend")
    bpy.ops.wm.save_as_mainfile(filepath=shown, copy=True, compress=True)
    print(f"the MP4 is in the Video Sequencer of {shown} (the scene file itself is not changed)")
    return 0


class WalkthroughError(RuntimeError):
    """A walkthrough that cannot be rendered; the message names the value."""


def render_walkthrough(scene, camera_name, frames, out_dir, engine="cycles", samples=16, long_side=0, fps=0.0,
                       progress=None, cancelled=lambda: False):
    """Render ``frames`` (first, last) of ``camera_name`` into ``out_dir/frame_NNNN.png`` and
    ``out_dir/walk.mp4``. Every render setting it changes is put back. Returns a summary."""
    import bpy

    from ..core.png import temp_name
    from . import movie
    from .capture.render import CaptureError, _overrides, beauty_engine
    from .capture.render import _frame as frame_settings

    cam = scene.objects.get(camera_name)
    if cam is None or cam.type != "CAMERA":
        cams = ", ".join(sorted(o.name for o in scene.objects if o.type == "CAMERA")) or "none"
        if cam is None:
            raise WalkthroughError(f"--camera {camera_name!r}: no camera of that name in scene {scene.name!r} "
                                   f"(cameras: {cams})")
        raise WalkthroughError(f"--camera {camera_name!r} is a {cam.type.lower()}, not a camera")
    try:
        engine_id = beauty_engine(engine)
    except CaptureError as exc:
        raise WalkthroughError(str(exc)) from None
    r = scene.render
    w, h = r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100
    if long_side:
        k = long_side / max(w, h)
        w, h = max(2, round(w * k)), max(2, round(h * k))
    w, h = w - w % 2, h - h % 2  # H.264 wants even sides
    fps = fps or r.fps / r.fps_base
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    paths = []
    current = scene.frame_current
    view_layer = scene.view_layers[0]
    try:
        with _overrides() as ov:
            for i, f in enumerate(range(frames[0], frames[1] + 1), start=1):
                if cancelled():
                    raise KeyboardInterrupt
                path = os.path.join(out_dir, f"frame_{f:04d}.png")
                part = temp_name(path)  # Blender writes it there (no extension added); renamed when whole
                render = frame_settings(ov, scene, view_layer, cam, engine_id, (w, h), part)
                ov.set(render, "use_compositing", False)
                from . import compat

                for attr, value in compat.output_format(render.image_settings, "PNG"):
                    ov.set(render.image_settings, attr, value)
                ov.set(render.image_settings, "color_mode", "RGB")
                if engine_id == "CYCLES":
                    ov.set(scene.cycles, "samples", samples)
                    ov.set(scene.cycles, "use_adaptive_sampling", False)
                    ov.set(scene.cycles, "use_animated_seed", False)
                    ov.set(scene.cycles, "seed", 0)
                else:
                    ov.set(scene.eevee, "taa_render_samples", samples)
                scene.frame_set(f)
                try:
                    bpy.ops.render.render(write_still=True, scene=scene.name, layer=view_layer.name)
                except RuntimeError as exc:
                    raise WalkthroughError(f"{engine} cannot render frame {f} here: {' '.join(str(exc).split())}") \
                        from None
                if not os.path.exists(part):
                    raise WalkthroughError(f"{engine} wrote no image for frame {f} (a headless {engine} may need "
                                           "a GPU context; try --engine cycles)")
                os.replace(part, path)
                paths.append(path)
                if progress:
                    progress(i, frames[1] - frames[0] + 1, f)
    finally:
        scene.frame_set(current)
    try:
        mp4 = movie.encode_frames(paths, os.path.join(out_dir, "walk.mp4"), fps)
    except movie.MovieError as exc:
        raise WalkthroughError(str(exc)) from None
    return {"frames": len(paths), "engine": engine_id, "mp4": mp4, "paths": paths,
            "seconds": time.perf_counter() - started, "size": [w, h], "fps": fps}
