"""``archviz sweep SCENE.blend --styles ... --seeds ... --out DIR``: a whole sweep from a
terminal or a render box, with a progress bar. Re-running resumes: images already on
disk with the same parameters are kept, not made again (``--remake`` makes them again).
``archviz sweep --image PATH ...``: the same sweep from a photo or a sketch instead of a
scene; the backend runs the detectors on it (core/picture.py, backend/server/picture.py).

Exit status: 0 done; 1 the sweep failed (the backend, a full disk, a timeout); 2 a bad
argument or a file that cannot be read (not a .blend, empty, truncated, a folder; an
``--out`` that is a file or not writable; a token the backend refuses); 3 the scene
cannot give passes, or the renderer crashed on a camera; 130 cancelled (Ctrl+C).
"""

import os
import sys

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SCENE_ERROR = 3
EXIT_CANCELLED = 130


def add_arguments(parser):
    from ..core import families

    parser.add_argument("scene", nargs="?", default=None, help="the .blend file (or --image PATH instead)")
    parser.add_argument("--image", default=None, metavar="PATH",
                        help="sweep from a photo or a sketch (PNG, JPEG, WebP, BMP, TIFF) instead of a scene: "
                             "the controls come from detectors (DPT depth; lines: canny, mlsd or lineart as "
                             "the model wants); README: From a photo or a sketch")
    parser.add_argument("--styles", default=None,
                        help="comma-separated preset names (archviz presets lists them); with --edit optional")
    parser.add_argument("--seeds", required=True, help="seeds and ranges, e.g. 0-7 or 1,5,9")
    parser.add_argument("--cameras", default="scene",
                        help="scene (default), all, collection:NAME, or comma-separated camera names")
    parser.add_argument("--model", default="sd15", help=families.model_help())
    parser.add_argument("--controls", default=None,
                        help="control units type[:scale[:start[:end]]], comma-separated (default depth,lines; "
                             "values left out come from the style preset); custom:PATH[:scale...] uses a ControlNet "
                             "folder made by archviz train-controlnet")
    parser.add_argument("--backend", default=os.environ.get("ARCHVIZ_BACKEND_URL", ""),
                        help="URL of a running backend (default: start a local one for this run)")
    parser.add_argument("--token", default=os.environ.get("ARCHVIZ_TOKEN", ""), help="backend access token")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                        help="device for a backend this command starts")
    parser.add_argument("--long-side", type=int, default=None, help="control/output long side (default 512, 1024 for SDXL, FLUX.1 and Z-Image, 1328 for Qwen-Image)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the style preset's)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the style preset's)")
    parser.add_argument("--scheduler", default=None, help="unipc, dpmpp_2m_karras, euler_a or ddim (default: preset's)")
    parser.add_argument("--out", required=True, help="output folder (images, manifests, contact sheets, passes/)")
    from .capture.cli import add_image_arguments

    add_image_arguments(parser)  # --depth-range, --near/--far, --line-style, --supersample
    for action in parser._actions:  # an unknown --line-style is answered in one line by run()
        if "--line-style" in action.option_strings:
            action.choices = None
    parser.add_argument("--init", default=None, metavar="beauty|PATH",
                        help="restyle: start from the scene's own render (beauty: the beauty pass is rendered "
                             "too) or a PNG, with the controls still applied (README: Restyle)")
    parser.add_argument("--strength", default=None, metavar="S",
                        help="restyle strength, 0 (precise) to 1 (creative), or precise, faithful, balanced, "
                             "creative, free (default: balanced, 0.6)")
    parser.add_argument("--region", default=None, metavar="CLASS[,CLASS...]",
                        help="region edit: regenerate only these ADE20K classes of the init image (default init: "
                             "beauty, strength 1); README: Region edits")
    parser.add_argument("--region-objects", default=None, metavar="NAME[,NAME...]",
                        help="region edit: regenerate only these objects of the init image")
    parser.add_argument("--edit", action="append", default=None, metavar="TEXT",
                        help="instruction edit of the init image (default: the beauty pass) with --model kontext or "
                             "qwen-edit; repeat for several edit texts (x --styles x --seeds); README: Instruction "
                             "edits")
    parser.add_argument("--upscale", type=int, choices=(2, 4), default=None,
                        help="then upscale every image of the sweep 2x or 4x (archviz upscale: passes re-rendered "
                             "at the target size, refined tile by tile)")
    parser.add_argument("--fast", action="store_true",
                        help="the family's fast mode for quick looks (labelled, changes the pixels): SD 1.5/SDXL "
                             "with their LCM-LoRA (4 steps, cfg 1), FLUX.1 with FLUX.1-schnell (4 steps); "
                             "README: Fast mode")
    parser.add_argument("--reference", action="append", default=None, metavar="PATH",
                        help="a reference image to steer the look (a material, a mood board; PNG, JPEG, WebP, BMP or "
                             "TIFF); repeat for several. SD 1.5/SDXL: IP-Adapter, FLUX.1: Redux; docs: References")
    parser.add_argument("--reference-scale", type=float, default=None, metavar="S",
                        help="how strongly the references steer, 0 (not at all) to 2 (default 1)")
    parser.add_argument("--previews", default=None, metavar="DIR",
                        help="write each preview the backend makes while denoising into DIR "
                             "(<camera>_<style>_s<seed>_step<N>.png)")
    parser.add_argument("--preview-every", type=int, default=None, metavar="N",
                        help="a preview every N denoising steps (default 4; 0: none)")
    parser.add_argument("--remake", action="store_true",
                        help="make every image again, also those already on disk with the same parameters "
                             "(default: resume, keeping them)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="give up after S seconds: the jobs are cancelled on the backend (default: no limit)")
    from ..distributed.options import add_arguments as add_ray_arguments  # --ray [ADDRESS]: docs/ray.md

    add_ray_arguments(parser)


def _render_in_child(scene_path):
    """prepare_jobs' ``render``: each camera's passes in a child process (core/render_child.py),
    so a renderer crash is a CaptureError naming the camera, not the end of the sweep."""
    from ..core.render_child import RenderCrash, options_argv, run_passes_child
    from .capture.render import CaptureError

    def render(_scene, passes_dir, options):
        try:
            code, err = run_passes_child(options_argv(scene_path, passes_dir, options), scene_path,
                                         capture_output=True)
        except RenderCrash as exc:
            raise CaptureError(str(exc)) from None
        if code:
            lines = [ln.removeprefix("archviz passes: ") for ln in (err or "").splitlines()
                     if ln.startswith("archviz passes: ") and "warning:" not in ln]
            raise CaptureError(lines[-1] if lines else f"rendering the passes of camera {options.camera!r} "
                                                        f"failed (exit status {code})")
    return render


def _line_style_problem(style):
    from ..core.passes import LINE_STYLES

    if style != "auto" and style not in LINE_STYLES:
        return f"unknown --line-style {style!r}; choose from auto, {', '.join(LINE_STYLES)}"
    return None


def run(args):
    from .capture.blendfile import input_problem

    problem = _line_style_problem(args.line_style)
    if problem is None and args.image is not None:
        return run_image(args)
    if problem is None and args.scene is None:
        problem = "give a .blend file, or --image PATH to sweep from a photo or a sketch"
    problem = problem or input_problem(args.scene, args.out)
    if problem and args.scene and os.path.isfile(args.scene):
        from ..core.limits import sniff

        with open(args.scene, "rb") as fh:
            if sniff(fh.read(16)):
                problem += f"; to sweep from a photo or a sketch, give --image {args.scene}"
    if problem is None and args.timeout is not None and not args.timeout > 0:
        problem = f"--timeout must be a positive number of seconds, got {args.timeout:g}"
    if problem is None:
        from ..core.edit import edit_problem

        args.controls_given = args.controls is not None
        problem = edit_problem(args)  # --edit: the beauty pass by default, no controls
    if problem is None:
        from ..core.restyle import restyle_problem

        problem = restyle_problem(args)
        if args.edit:
            args.strength = None  # an instruction edit has none
    if args.controls is None:
        args.controls = "depth,lines"
    problem = problem or _preview_problem(args) or _styles_problem(args) or _reference_problem(args)
    if problem:
        print(f"archviz sweep: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import bpy  # noqa: F401 - Blender first, before the modules that use it

    from ..core import jobs as J
    from ..core.client import BackendError
    from ..core.passes import PassError, default_long_side, size_multiple
    from ..core.png import clean_stale_temps
    from ..core.sweep import ControlUnit
    from .capture.blendfile import BlendFileError, open_blend
    from .capture.render import CaptureError, CaptureOptions
    from .results import variant_exr
    from .sweeping import prepare_jobs, resolve_cameras

    try:
        seeds = J.parse_seeds(args.seeds)
        styles = [s.strip() for s in (args.styles or "").split(",") if s.strip()]
        if not styles and not args.edit:
            raise J.JobError("styles", "no styles given" if args.styles is not None else "--styles is required")
        units = [] if args.edit else [ControlUnit.parse(u) for u in args.controls.split(",") if u.strip()]
        model = args.model
        long_side = args.long_side or default_long_side(model)
        if args.edit:
            from ..core.edit import edit_styles

            sweep_styles = len(edit_styles(args.edit, styles))
        else:
            sweep_styles = len(styles)
    except J.JobError as exc:
        print(f"archviz sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ..distributed import ENV_ADDRESS
    from ..distributed.options import environment as ray_environment

    if args.backend and args.ray is not None and not os.environ.get(ENV_ADDRESS):
        print("archviz sweep: --ray spreads the work of a backend this command starts; a running backend "
              "(--backend) decides that itself (archviz serve --ray)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.backend and args.ray is not None:
        os.environ.update(ray_environment(args))  # the backend started below reads them (archviz serve --ray)
        print(f"sweeping on Ray ({args.ray or 'local'}): the local backend fans the images out to Ray actors")
    out_dir = os.path.abspath(args.out)
    try:
        warning = open_blend(args.scene)
    except BlendFileError as exc:
        print(f"archviz sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if warning:
        print(f"archviz sweep: {warning}", file=sys.stderr)
    scene = bpy.context.scene
    scene_path = os.path.abspath(args.scene)
    for folder in (out_dir, *(os.path.join(out_dir, "passes", d) for d in _subfolders(out_dir, "passes"))):
        clean_stale_temps(folder)  # temporary files of a run that was killed while writing
    try:
        cameras = resolve_cameras(scene, args.cameras)
        print(f"rendering control passes for {len(cameras)} camera(s): {', '.join(c.name for c in cameras)}")
        client, proc = _connect(args, out_dir, model, units)
        camera_jobs = prepare_jobs(scene, cameras, units, styles, seeds, model, out_dir,
                                   CaptureOptions(long_side=long_side, multiple=size_multiple(model),
                                                  depth_range=args.depth_range, near=args.near, far=args.far,
                                                  line_style=args.line_style, supersample=args.supersample),
                                   steps=args.steps, cfg=args.cfg,
                                   scheduler=args.scheduler, share_disk=not args.backend,
                                   render=_render_in_child(scene_path), skip_existing=not args.remake,
                                   init=args.init, strength=args.strength, region=args.region,
                                   region_objects=args.region_objects, edits=args.edit, fast=args.fast,
                                   preview_every=args.preview_every, references=args._references)
    except (J.JobError, CaptureError, PassError) as exc:
        print(f"archviz sweep: {exc}", file=sys.stderr)
        return EXIT_SCENE_ERROR
    except BackendError as exc:
        return _backend_failure(exc)
    if proc is not None:
        print(f"started a backend at {proc.url} (log: {proc.log_path})")
    try:
        device_warning = client.health().get("device_warning")
    except BackendError:
        device_warning = None  # the sweep below reports an unreachable backend itself
    if device_warning:
        print(f"archviz sweep: warning: {device_warning}", file=sys.stderr)
    state = _follow(args, client, proc, camera_jobs, out_dir, len(cameras) * sweep_styles * len(seeds),
                    variant_exr)
    if isinstance(state, int):
        return state
    if args.upscale and state != "cancelled":
        import subprocess

        from ..core.tiles import upscale_argv

        for image in args._images:  # each in its own process: the engine runs there, not next to bpy
            code = subprocess.call([sys.executable, "-m", "archviz_controlnet.cli",
                                    *upscale_argv(image["path"], args.upscale, scene_path, image["camera"])])
            if code:
                print(f"archviz sweep: upscaling {image['path']} failed (exit status {code}); the sweep's "
                      "images are kept", file=sys.stderr)
                return EXIT_FAILED
    return EXIT_CANCELLED if state == "cancelled" else 0


#: Options that need a scene's passes, refused with --image.
SCENE_ONLY = (("init", "--init"), ("strength", "--strength"), ("region", "--region"),
              ("region_objects", "--region-objects"), ("upscale", "--upscale"), ("depth_range", "--depth-range"),
              ("near", "--near"), ("far", "--far"), ("edit", "--edit"))


def run_image(args):
    """``archviz sweep --image PATH``: the sweep from a photo or a sketch. The backend
    checks and fits the picture (POST /v1/picture), then runs the detectors in the job and
    saves the controls in ``OUT/passes/<picture name>/``."""
    from ..core.picture import picture_problem

    problem = None
    if args.scene is not None:
        problem = f"give a .blend file or --image PATH, not both (got {args.scene} and --image {args.image})"
    for attr, flag in SCENE_ONLY:
        if problem is None and getattr(args, attr, None):
            problem = f"{flag} needs a scene's passes; a sweep from a picture (--image {args.image}) has none"
    if problem is None and args.cameras != "scene":
        problem = f"--cameras {args.cameras!r}: a sweep from a picture (--image) has no cameras"
    problem = problem or picture_problem(args.image)
    if problem is None:
        from .capture.blendfile import check_out_dir

        problem = check_out_dir(args.out)
    if problem is None and args.timeout is not None and not args.timeout > 0:
        problem = f"--timeout must be a positive number of seconds, got {args.timeout:g}"
    problem = problem or _preview_problem(args) or _styles_problem(args) or _reference_problem(args)
    if problem:
        print(f"archviz sweep: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ..core import jobs as J
    from ..core.client import BackendError
    from ..core.passes import PassError, default_long_side, size_multiple
    from ..core.picture import picture_job, unit_detectors
    from ..core.png import atomic_write, clean_stale_temps
    from ..core.sweep import ControlUnit, check_custom_base
    from .capture.render import CaptureOptions
    from .sweeping import control_choices, model_spec

    out_dir = os.path.abspath(args.out)
    name = J.safe_name(os.path.splitext(os.path.basename(args.image))[0])
    try:
        seeds = J.parse_seeds(args.seeds)
        styles = [s.strip() for s in (args.styles or "").split(",") if s.strip()]
        if not styles:
            raise J.JobError("styles", "no styles given" if args.styles is not None else "--styles is required")
        units = [ControlUnit.parse(u) for u in (args.controls or "depth,lines").split(",") if u.strip()]
        model = args.model
        check_custom_base(units, model)
        long_side = args.long_side or default_long_side(model)
        _depth, line_styles = control_choices(units, styles, model, CaptureOptions(line_style=args.line_style))
        detectors = unit_detectors(units, line_styles)
        spec = model_spec(model)
    except (J.JobError, PassError) as exc:
        print(f"archviz sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with open(args.image, "rb") as fh:
        data = fh.read()
    for folder in (out_dir, os.path.join(out_dir, "passes", name)):
        clean_stale_temps(folder)
    try:
        client, proc = _connect(args, out_dir, model, units)
    except BackendError as exc:
        return _backend_failure(exc)
    if proc is not None:
        print(f"started a backend at {proc.url} (log: {proc.log_path})")
    try:
        fitted = client.picture(data, long_side, size_multiple(model))
        width, height = fitted["width"], fitted["height"]
        src = fitted["source"]
        passes_dir = os.path.join(out_dir, "passes", name)
        os.makedirs(passes_dir, exist_ok=True)
        atomic_write(os.path.join(passes_dir, "picture.png"), J.decode_png(fitted["image"], "image"))
        job = picture_job(fitted["image"], width, height, units, detectors, styles, seeds, spec,
                          output_dir=out_dir if not args.backend else None, name_prefix=name, steps=args.steps,
                          cfg=args.cfg, scheduler=args.scheduler, skip_existing=not args.remake, fast=args.fast,
                          preview_every=args.preview_every)
        if args._references:
            job["references"] = args._references
    except (BackendError, J.JobError, OSError) as exc:
        if proc is not None:
            proc.stop()
        if isinstance(exc, BackendError) and exc.status == 422:  # the backend's word on the picture
            message = str(exc).split(" 422 ", 1)[-1].removeprefix("image: ")
            print(f"archviz sweep: --image {args.image}: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"archviz sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, J.JobError) else EXIT_FAILED
    print(f"picture {args.image}: {src['format']} {src['width']}x{src['height']} -> {width}x{height} for {model}; "
          f"detectors: {', '.join(f'{u.type}={d}' for u, d in zip(units, detectors))}")
    state = _follow(args, client, proc, [(name, job)], out_dir, len(styles) * len(seeds))
    if isinstance(state, int):
        return state
    passes_dir = os.path.join(out_dir, "passes", name)
    if args.backend:  # a backend elsewhere wrote them into its own folder: bring them here
        try:
            _fetch_controls(client, args._runner, passes_dir)
        except (BackendError, OSError, ValueError) as exc:
            print(f"archviz sweep: the controls could not be brought from the backend: {exc}; the images are "
                  "kept", file=sys.stderr)
            return EXIT_FAILED
    print(f"controls: {passes_dir}")
    return EXIT_CANCELLED if state == "cancelled" else 0


def _connect(args, out_dir, model, units):
    """(client, the backend process this command started or None) for a sweep into
    ``out_dir``: ``--backend URL``, or a local backend that may read the model folders."""
    from .backend import connect
    from .sweeping import model_roots_of

    return connect(url=args.backend, token=args.token, device=args.device,
                   log_path=os.path.join(out_dir, "backend.log") if not args.backend else None,
                   output_roots=[out_dir], model_roots=model_roots_of(model) + [u.model for u in units if u.model])


def _backend_failure(exc):
    """A backend that cannot be had or refuses the token, in one line; the exit status."""
    from ..core.client import BackendAuthError

    if isinstance(exc, BackendAuthError):
        print(f"archviz sweep: {exc}; give the server's token with --token TOKEN or ARCHVIZ_TOKEN", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"archviz sweep: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _styles_problem(args):
    """``--styles`` checked before any render or backend: preset names, and with a backend
    this command starts, presets it has (a remote backend may have presets of its own)."""
    from ..core.presets import load_presets_tolerant, style_names_problem

    names = [s.strip() for s in (args.styles or "").split(",") if s.strip()]
    if not names:
        return None
    known = None if args.backend else set(load_presets_tolerant()[0])
    return style_names_problem(names, known)


def _reference_problem(args):
    """``--reference`` / ``--reference-scale`` checked before any render or backend (one
    line): each file an image of a usable size, a scale from 0 to 2, and a family that
    takes that many references. Sets ``args._references`` (the job's entries)."""
    from ..core import jobs as J
    from ..core.references import (DEFAULT_REFERENCE_SCALE, MAX_REFERENCE_SCALE, ReferenceError, reference_entry,
                                   reference_family_problem, reference_scale_problem)

    args._references = None
    paths = args.reference or []
    scale = args.reference_scale
    flag = "--reference"
    if not paths:  # the styles' presets may give them ([reference] images = [...])
        from ..core.presets import load_presets_tolerant
        from ..core.references import preset_references

        names = [s.strip() for s in (args.styles or "").split(",") if s.strip()]
        try:
            paths, preset_scale, preset = preset_references(load_presets_tolerant()[0], names)
        except ReferenceError as exc:
            return str(exc)
        if paths:
            flag = f"preset {preset!r} [reference]"
            scale = preset_scale if scale is None else scale
    if scale is not None and not paths:
        return "--reference-scale needs a --reference image"
    if scale is not None and not 0.0 <= scale <= MAX_REFERENCE_SCALE:
        return f"--reference-scale must be from 0 to {MAX_REFERENCE_SCALE:g}, got {scale:g}"
    if not paths:
        return None
    arch = J.FAMILY_ARCH.get(J.FAMILY_ALIASES.get(args.model, args.model))
    if arch is not None:
        controls = 0 if args.edit else len([u for u in (args.controls or "depth,lines").split(",") if u.strip()])
        init = getattr(args, "init", None) is not None and not args.edit  # restyle: the init image is one more
        problem = reference_family_problem(arch, len(paths), controls, args.model, init) or reference_scale_problem(
            arch, [DEFAULT_REFERENCE_SCALE if scale is None else scale], args.model)
        if problem:
            return f"{flag}: {problem}"
    try:
        args._references = [reference_entry(p, DEFAULT_REFERENCE_SCALE if scale is None else scale, flag)
                            for p in paths]
    except ReferenceError as exc:
        return str(exc)
    return None


def _preview_problem(args):
    """What is wrong with --preview-every / --previews (None when nothing)."""
    if args.preview_every is not None and args.preview_every < 0:
        return f"--preview-every must be 0 (no previews) or a number of steps, got {args.preview_every}"
    if args.previews and os.path.isfile(args.previews):
        return f"--previews {args.previews!r} is a file; give a folder"
    return None


def _fetch_controls(client, runner, passes_dir):
    """The detectors' controls of a remote backend's jobs into ``passes_dir``, with controls.json."""
    import json

    from ..core.png import atomic_write

    for tracked in runner.tracked:
        if not tracked.job_id:
            continue
        status = client.job(tracked.job_id)
        notes = status.get("picture_controls") or []
        for n, note in enumerate(notes):
            atomic_write(os.path.join(passes_dir, os.path.basename(note["file"])), client.control(tracked.job_id, n))
        if notes:
            text = json.dumps({"width": status["width"], "height": status["height"], "controls": notes}, indent=2)
            atomic_write(os.path.join(passes_dir, "controls.json"), (text + "\n").encode())


def _subfolders(folder, name):
    try:
        return [e.name for e in os.scandir(os.path.join(folder, name)) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _follow(args, client, proc, camera_jobs, out_dir, total, on_image=None):
    """Run the jobs with a progress bar (and the model download's own bar); the backend
    this command started stops at the end. Returns the final state ("done", "cancelled"),
    or an exit status when the sweep failed. ``on_image(image, out_dir)``: after each image."""
    from tqdm import tqdm

    from ..core import jobs as J
    from ..core.client import BackendAuthError, BackendError
    from ..core.sweep import SweepGaveUp, SweepRunner
    from .results import contact_sheets

    previews_dir = os.path.abspath(args.previews) if args.previews else None
    if previews_dir:
        os.makedirs(previews_dir, exist_ok=True)
    if args.fast:
        print("fast mode: few-step variant of the family (labelled in each image's parameters; not the exact images)")
    runner = args._runner = SweepRunner(client, camera_jobs, out_dir, timeout=args.timeout, previews=bool(previews_dir))
    bar = tqdm(total=1000, desc="sweep", unit="", mininterval=1.0, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    counts = {"new": 0, "kept": 0}
    downloads = {}  # the model download's own bar (bytes), while one runs

    def emit(event):
        if event.kind == "download":
            show_download(event.download)
            return
        bar.n = int(event.fraction * 1000)
        bar.set_postfix_str(f"{event.images_done}/{total} images")
        if event.kind == "preview":
            p = event.image
            name = J.safe_name(f"{p['camera']}_{p['style']}_s{p['seed']}_step{p['step']}") + ".png"
            from ..core.png import atomic_write

            atomic_write(os.path.join(previews_dir, name), p["png"])
            bar.set_postfix_str(f"{event.images_done}/{total} images, preview {p['style']} s{p['seed']} "
                                f"step {p['step']}/{p['steps']}")
            return
        if event.kind == "image":
            counts["kept" if event.image["skipped"] else "new"] += 1
            if on_image is not None:
                on_image(event.image, out_dir)
        elif event.kind == "error":
            tqdm.write(f"error ({event.camera}): {event.message}")

    def show_download(d):
        from ..core.sweep import human_bytes

        dl = downloads.get("bar")
        if d.get("finished"):
            if dl is not None:
                dl.n = dl.total or dl.n
                dl.set_description_str("downloaded", refresh=False)
                dl.set_postfix_str(f"{d.get('files_fetched', 0)} file(s)")
                dl.close()
                downloads.pop("bar")  # a later download (a picture's detectors) gets a bar of its own
            tqdm.write(f"fetched {d.get('bytes_fetched', 0)} bytes ({human_bytes(d.get('bytes_fetched', 0))}) "
                       f"in {d.get('files_fetched', 0)} file(s) from the hub into the Hugging Face cache")
            return
        if dl is None:
            dl = downloads["bar"] = tqdm(total=int(d.get("total") or 0), unit="B", unit_scale=True, mininterval=0.5,
                                         desc="downloading models")
        dl.set_description_str(f"downloading {d.get('component', '')}")
        dl.n = int(d.get("done") or 0)
        dl.set_postfix_str(f"{d.get('file', '')} {human_bytes(int(d.get('file_done') or 0))}"
                           f"/{human_bytes(int(d.get('file_total') or 0))}, "
                           f"file {d.get('file_index', '?')}/{d.get('files_total', '?')}")

    try:
        state = runner.run(emit)
    except KeyboardInterrupt:
        runner.cancel()
        state = "cancelled"
    except BackendAuthError as exc:
        bar.close()
        return _backend_failure(exc)
    except (BackendError, OSError) as exc:
        bar.close()
        what = ("gave up: " if isinstance(exc, SweepGaveUp) else "") + str(exc)
        stopped = "" if isinstance(exc, BackendError) and not isinstance(exc, SweepGaveUp) else \
            "; its jobs were stopped on the backend"
        print(f"archviz sweep: {what}{stopped}\n{runner.images_on_disk()} image(s) of this sweep are in {out_dir}; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_FAILED
    finally:
        bar.close()
        if proc is not None:
            proc.stop()
    print(f"{counts['new']} new image(s), {counts['kept']} already on disk, in {out_dir}")
    for sheet in contact_sheets(out_dir, [camera for camera, _job in camera_jobs]):
        print(f"contact sheet: {sheet}")
    if state == "failed":
        print("archviz sweep: " + "; ".join(runner.errors), file=sys.stderr)
        return EXIT_FAILED
    args._images = runner.images
    return state
