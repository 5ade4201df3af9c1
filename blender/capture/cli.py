"""``archviz passes SCENE.blend --out DIR``: render the control passes of a saved scene.

Exit status: 0 done; 2 a bad argument or a file that cannot be read (not a .blend, empty,
truncated, a folder) or an output folder that cannot be written; 3 the scene cannot give
passes (no camera, nothing in view, ...) or the renderer crashed (the render runs in a
child process, so the crash is reported with the camera and scene it hit)."""

import argparse
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_SCENE_ERROR = 3


def _pass_list(text):
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_image_arguments(parser):
    """How the control images are made: options ``archviz passes`` and ``archviz sweep`` share."""
    parser.add_argument("--near", type=float, default=0.0, help="fixed depth range near (with --far; implies manual)")
    parser.add_argument("--far", type=float, default=0.0, help="fixed depth range far")
    parser.add_argument("--depth-range", choices=("view", "sequence", "scene", "manual"), default="",
                        help="how near (white) and far (black) are chosen: view (default: robust percentiles of "
                             "this view), sequence (one range over the scene's frame range), scene (the scene's "
                             "bounds, same for every camera), manual (--near/--far)")
    parser.add_argument("--line-style", choices=("auto", "canny", "lineart", "mlsd", "softedge"), default="auto",
                        help="line style (auto: what the line unit's model was trained on; lineart for lines.png "
                             "without a model)")
    parser.add_argument("--supersample", type=int, default=2,
                        help="render the passes this many times finer (1-4) so thin geometry stays continuous")


def add_arguments(parser):
    parser.add_argument("scene", help="the .blend file")
    parser.add_argument("--out", required=True, help="folder for depth.png, lines.png, normal.png, seg.png, passes.json")
    parser.add_argument("--camera", default="", help="camera object name (default: the scene camera)")
    parser.add_argument("--long-side", type=int, default=512, help="long side in pixels, multiple of 8 (1024 for SDXL)")
    parser.add_argument("--multiple", type=int, choices=(8, 16, 32, 64), default=8,
                        help="both sides a multiple of this: 8, or 16 for FLUX.1 and Qwen-Image (x2, x4 for archviz upscale)")
    parser.add_argument("--frame", type=int, default=None, help="frame to render (default: the saved current frame)")
    parser.add_argument("--passes", type=_pass_list, default=("depth", "lines", "normal", "seg"),
                        help="comma-separated subset of depth,lines,normal,seg")
    add_image_arguments(parser)
    parser.add_argument("--line-styles", type=_pass_list, default=(),
                        help="also write lines_<style>.png for each of these comma-separated styles")
    parser.add_argument("--beauty", action="store_true",
                        help="also render beauty.png with the scene's own materials and lights")
    parser.add_argument("--beauty-engine", choices=("CYCLES", "EEVEE"), default="CYCLES", type=str.upper,
                        help="engine of the beauty pass")
    parser.add_argument("--beauty-samples", type=int, default=16, help="samples of the beauty pass")
    parser.add_argument("--crease-angle", type=float, default=30.0, help="degrees between normals that make a line")
    parser.add_argument("--background-class", default="sky", help="ADE20K class of pixels without geometry")
    parser.add_argument("--fallback-class", default="wall",
                        help="ADE20K class (or facing rule, e.g. surface) of objects nothing classifies")
    parser.add_argument("--class-table", default="",
                        help="class table (JSON keyword -> class, or TOML/JSON in the layout of core/class_table.toml), "
                             "tried before the built-in one")
    parser.add_argument("--render-child", default=None, help=argparse.SUPPRESS)  # STATUS file: this is the child


def capture_options(args):
    """The CaptureOptions these ``archviz passes`` arguments ask for (the inverse of
    :func:`...core.render_child.options_argv`, which a sweep uses to hand a camera to a child process)."""
    from .render import CaptureOptions

    return CaptureOptions(camera=args.camera, long_side=args.long_side, multiple=args.multiple, frame=args.frame,
                          passes=args.passes, near=args.near, far=args.far, crease_angle=args.crease_angle,
                          background_class=args.background_class, fallback_class=args.fallback_class,
                          class_table=args.class_table, depth_range=args.depth_range,
                          line_style=args.line_style, line_styles=args.line_styles, supersample=args.supersample,
                          beauty=args.beauty, beauty_engine=args.beauty_engine, beauty_samples=args.beauty_samples)


def run(args):
    from .blendfile import input_problem

    problem = input_problem(args.scene, args.out)
    if problem:
        print(f"archviz passes: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.render_child is None:
        return _run_parent(args)
    return _run_child(args)


def _run_parent(args):
    """Render in a child process: a renderer crash ends the child, not this command."""
    from ...core.render_child import RenderCrash, run_passes_child

    argv = [a for a in (args._argv[1:] if getattr(args, "_argv", None) else sys.argv[2:])]
    try:
        code, _ = run_passes_child(argv, args.scene)
    except RenderCrash as exc:
        print(f"archviz passes: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    return code


def _run_child(args):
    import bpy

    from ...core.classes import ClassError
    from ...core.exr import ExrError
    from ...core.passes import PassError
    from .blendfile import BlendFileError, open_blend
    from ...core.render_child import crash_for_test, write_status
    from .render import CaptureError, render_controls, resolve_camera

    try:
        warning = open_blend(args.scene)
    except BlendFileError as exc:
        print(f"archviz passes: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if warning:
        print(f"archviz passes: {warning}", file=sys.stderr)
    options = capture_options(args)
    scene = bpy.context.scene
    try:
        write_status(args.render_child, scene=scene.name, camera=resolve_camera(scene, args.camera).name)
        crash_for_test()
        result = render_controls(scene, os.path.abspath(args.out), options)
    except (CaptureError, PassError, ClassError) as exc:
        print(f"archviz passes: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    except ExrError as exc:  # Blender writes the EXR itself and does not say when it is cut short
        from ...core.png import looks_full

        exr = os.path.join(os.path.abspath(args.out), "passes.exr")
        if getattr(exc, "cut", False) or (not hasattr(exc, "cut") and os.path.exists(exr) and looks_full(exr)):
            written = getattr(exc, "written", None)
            written = written if written is not None else os.path.getsize(exr)
            print(f"archviz passes: disk full while writing {exr} (the renderer could write only "
                  f"{written} bytes of it, removed); the files finished before it are kept", file=sys.stderr)
            if not hasattr(exc, "written"):
                os.unlink(exr)
        else:
            print(f"archviz passes: the renderer wrote a damaged {exr}: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    except OSError as exc:  # a pass file could not be written: disk full, permissions
        from ...core.png import WriteError, write_error

        if not isinstance(exc, WriteError):
            exc = write_error(exc, exc.filename or os.path.abspath(args.out))
        print(f"archviz passes: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    w, h = result.info["resolution"]
    rng = result.info["depth_range"]
    print(f"rendered {', '.join(p for p in options.passes)} from camera {result.info['camera']!r} "
          f"at {w}x{h} in {result.seconds:.2f} s (depth range {rng['mode']}: {rng['near']:.3g}-{rng['far']:.3g} m, "
          f"fallback {result.info['fallback_share']:.1%} of the geometry)")
    if "beauty" in result.info:
        print(f"beauty pass: {result.info['beauty']['engine']} at {result.info['beauty']['samples']} samples "
              f"in {result.info['beauty']['seconds']:.2f} s")
    for name, path in result.files.items():
        print(f"  {name:9s} {path}")
    return 0
