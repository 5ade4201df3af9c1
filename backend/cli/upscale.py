"""``archviz upscale IMAGE --scale 2|4 --scene BLEND``: exact tiled upscaling of a generated
image (backend/engine/upscale.py). The control passes of the image's camera are rendered again at
the target size (in a child process, like ``archviz sweep``), then the engine refines the
enlarged image tile by tile in this process. The model, prompt, sampling and control units
come from the image's own metadata; the result keeps them, plus the upscale's settings."""

from __future__ import annotations

import json
import os
import sys

EXIT_BAD_INPUT, EXIT_SCENE_ERROR, EXIT_FAILED = 2, 3, 1
#: the largest output, in pixels (a 4x upscale of 1024 px: 4096 x 4096)
DEFAULT_MAX_PIXELS = 4096 * 4096


def add_arguments(parser):
    from ..engine.upscale import DEFAULT_OVERLAP, DEFAULT_STRENGTH, DEFAULT_TILE

    parser.add_argument("image", help="a PNG made by archviz (its metadata names model, prompt and controls)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 4), help="2 or 4 times each side")
    parser.add_argument("--scene", required=True, help="the .blend the image was made from (passes at the target size)")
    parser.add_argument("--camera", default="", help="its camera (default: the scene camera)")
    parser.add_argument("--tile", type=int, default=None, help=f"tile side in px (default {DEFAULT_TILE}; 1024 SDXL)")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="overlap of neighbouring tiles in px")
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                        help="img2img strength of each tile (low: keep the content, redraw the detail)")
    parser.add_argument("--max-pixels", type=int, default=int(os.environ.get("ARCHVIZ_UPSCALE_MAX_PIXELS",
                                                                             DEFAULT_MAX_PIXELS)),
                        help="refuse outputs larger than this many pixels (ARCHVIZ_UPSCALE_MAX_PIXELS)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--out", default=None, help="output PNG (default: IMAGE_x<scale>.png beside it)")
    parser.add_argument("--progress", default="bar", choices=("bar", "json"),
                        help="bar (default), or one JSON object per line on stdout (the Blender operator reads them)")


def _fail(message, code):
    print(f"archviz upscale: {message}", file=sys.stderr)
    return code


def peak_rss_mb():
    """This process's peak resident memory in MB (the render child not included); None
    where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def _say(args, **event):
    """``--progress json``: one JSON object per line on stdout."""
    if args.progress == "json":
        print(json.dumps(event), flush=True)


def read_params(path):
    """The generation parameters from an archviz PNG's metadata, or ValueError naming the
    file (and the field): the pixel count is checked from the header before anything is
    decoded, and the metadata's fields before any is used."""
    from PIL import Image, UnidentifiedImageError

    from ...core import jobs as J

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > J.MAX_PNG_PIXELS:
                raise ValueError(f"{path}: {w}x{h} = {w * h / 1e6:.0f} megapixels is over the limit of "
                                 f"{J.MAX_PNG_PIXELS / 1e6:.0f} megapixels")
            text = dict(im.text)
            pixels = im.convert("RGB")
            pixels.load()
    except Image.DecompressionBombError:  # Pillow's own guard fired at open: our limit, the header's size
        from ...core.png import png_size

        with open(path, "rb") as fh:
            size = png_size(fh.read(24))
        said = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} megapixels" if size else "the picture"
        raise ValueError(f"{path}: {said} is over the limit of {J.MAX_PNG_PIXELS / 1e6:.0f} megapixels") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        params = json.loads(text["archviz"])["params"]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{path} has no archviz metadata (not an image made by archviz sweep)") from None
    check_params(params, path)
    return pixels, params, text


def check_params(params, path) -> None:
    """ValueError naming the file and the field when the metadata's ``params`` are not what
    archviz sweep writes (a hand-edited or hostile PNG)."""
    import math

    from ...core import jobs as J
    from ...core.families import FAMILIES

    def bad(field, why):
        return ValueError(f"{path}: its archviz metadata's params.{field} {why} (not an image made by archviz "
                          "sweep, or edited since)")

    if not isinstance(params, dict):
        raise ValueError(f"{path}: its archviz metadata's params is {J._short(params, 40)}, not an object (not an "
                         "image made by archviz sweep, or edited since)")
    model = params.get("model")
    if not isinstance(model, dict) or model.get("family") not in FAMILIES:
        family = model.get("family") if isinstance(model, dict) else model
        raise bad("model.family", f"is {J._short(family, 40)}, not one of {', '.join(FAMILIES)}")
    for key in ("prompt", "negative"):
        value = params.get(key)
        if not isinstance(value, str) or len(value) > J.MAX_PROMPT_CHARS or "\0" in value:
            raise bad(key, f"is {J._short(value, 40)}, not a text of at most {J.MAX_PROMPT_CHARS} characters")
    for key, lo, hi, whole in (("steps", 1, J.MAX_STEPS, True), ("cfg", 0, J.MAX_CFG, False),
                               ("seed", 0, 2**32 - 1, True)):
        value = params.get(key)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int))
                or not math.isfinite(value) or not lo <= value <= hi):
            raise bad(key, f"is {J._short(value, 40)}, not a number from {lo} to {hi}")
    if "scheduler" in params and not (isinstance(params["scheduler"], str) and len(params["scheduler"]) <= 64):
        raise bad("scheduler", f"is {J._short(params['scheduler'], 40)}, not a scheduler's name")
    controls = params.get("controls")
    if not isinstance(controls, list) or not 1 <= len(controls) <= 8:
        raise bad("controls", f"is {J._short(controls, 40)}, not a list of 1 to 8 control units")
    for i, c in enumerate(controls):
        if not isinstance(c, dict) or c.get("type") not in J.CONTROL_TYPES:
            kind = c.get("type") if isinstance(c, dict) else c
            raise bad(f"controls[{i}].type", f"is {J._short(kind, 40)}, not one of {', '.join(J.CONTROL_TYPES)}")
        for key in ("scale", "start", "end"):
            value = c.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 <= value <= J.MAX_SCALE):
                raise bad(f"controls[{i}].{key}", f"is {J._short(value, 40)}, not a number from 0 to {J.MAX_SCALE}")
        for key in ("mode", "model"):
            if c.get(key) is not None and not isinstance(c[key], str):
                raise bad(f"controls[{i}].{key}", f"is {J._short(c[key], 40)}, not a text")


def run(args):
    import numpy as np

    from ...core import jobs as J

    if not os.path.isfile(args.scene):
        return _fail(f"--scene {args.scene!r}: no such file", EXIT_BAD_INPUT)
    if not 0.0 <= args.strength <= 1.0:
        return _fail(f"--strength {args.strength:g}: must be from 0 to 1", EXIT_BAD_INPUT)
    try:
        pixels, params, _text = read_params(args.image)
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    width, height = pixels.size[0] * args.scale, pixels.size[1] * args.scale
    if width * height > args.max_pixels:
        return _fail(f"--scale {args.scale}: {width}x{height} = {width * height:,} pixels is over the limit of "
                     f"{args.max_pixels:,} pixels (--max-pixels, ARCHVIZ_UPSCALE_MAX_PIXELS)", EXIT_BAD_INPUT)
    family = params["model"]["family"]
    tile = args.tile or (1024 if "sdxl" in family or "flux" in family else 512)
    if tile % 8 or args.overlap % 8 or not 0 <= args.overlap < tile:
        return _fail(f"--tile {tile} / --overlap {args.overlap}: multiples of 8 with the overlap below the tile",
                     EXIT_BAD_INPUT)
    out = args.out or os.path.splitext(args.image)[0] + f"_x{args.scale}.png"
    upscale_params = {"source": params, "scale": args.scale, "tile": tile, "overlap": args.overlap,
                      "strength": args.strength, "width": width, "height": height}
    from ..server.outputs import existing_matches, png_bytes
    from ..engine.sweep import params_sha256

    digest = params_sha256(upscale_params)
    if existing_matches(out, digest):
        if args.progress == "json":
            _say(args, state="done", path=os.path.abspath(out), kept=True)
        else:
            print(f"kept {out} (made before with the same parameters)")
        return 0

    # 1. The passes at the target size, in a child process (a renderer crash names the camera).
    from ...core.render_child import RenderCrash, run_passes_child
    from ...core.passes import line_style_for

    # A pass folder of this run's own: two upscales into one folder at once (two sweeps
    # with --upscale) never render into, or read from, each other's passes.
    import tempfile

    from ...core.png import current_umask

    upscale_root = os.path.join(os.path.dirname(os.path.abspath(out)), "passes_upscale")
    try:
        os.makedirs(upscale_root, exist_ok=True)
        passes_dir = tempfile.mkdtemp(prefix=J.safe_name(os.path.splitext(os.path.basename(out))[0]) + "_"
                                      + J.safe_name(args.camera or "scene") + f"_{width}x{height}_", dir=upscale_root)
        os.chmod(passes_dir, 0o777 & ~current_umask())
    except OSError as exc:
        return _fail(f"cannot create the pass folder in {upscale_root}: {exc.strerror}", EXIT_SCENE_ERROR)
    line_styles = sorted({line_style_for(c["type"], "sd15" if family == "tiny" else family.replace("tiny-", ""))
                          for c in params["controls"] if c["type"] in J.LINE_TYPES})
    # The image's sides were rounded to the family's multiple at its long side; the same
    # rounding at scale x the multiple gives exactly scale x its size (the same framing).
    from ...core.passes import size_multiple

    multiple = size_multiple(family) * args.scale
    argv = [os.path.abspath(args.scene), "--out", passes_dir, "--long-side", str(max(width, height)),
            "--multiple", str(multiple), "--passes", "depth,lines,normal,seg"]
    if args.camera:
        argv += ["--camera", args.camera]
    if line_styles:
        argv += ["--line-styles", ",".join(line_styles)]
    if args.progress == "json":
        _say(args, state="rendering", width=width, height=height)
    else:
        print(f"rendering the control passes at {width}x{height}")
    try:
        code, err = run_passes_child(argv, args.scene, capture_output=True)
    except RenderCrash as exc:
        return _fail(str(exc), EXIT_SCENE_ERROR)
    if code:
        lines = [ln for ln in (err or "").splitlines() if ln.startswith("archviz passes: ")]
        return _fail(lines[-1].removeprefix("archviz passes: ") if lines else f"rendering the passes failed "
                     f"(exit status {code})", EXIT_SCENE_ERROR)
    from PIL import Image

    controls = []
    for c in params["controls"]:
        if c["type"] in J.LINE_TYPES:
            name = f"lines_{line_style_for(c['type'], 'sd15' if family == 'tiny' else family.replace('tiny-', ''))}.png"
        else:
            name = f"{c['type']}.png"
        with Image.open(os.path.join(passes_dir, name)) as im:
            img = np.asarray(im.convert("RGB"))
        unit = {k: c[k] for k in ("type", "scale", "start", "end", "mode") if c.get(k) is not None}
        if c.get("model") and "#" not in c["model"] and os.path.exists(c["model"]):
            unit["model"] = c["model"]
        controls.append((unit, img))
    rendered = controls[0][1].shape[1], controls[0][1].shape[0]
    if rendered != (width, height):
        print(f"archviz upscale: the passes came out {rendered[0]}x{rendered[1]} (the camera's aspect at "
              f"{max(width, height)} px); the output takes that size", file=sys.stderr)
        width, height = rendered

    # 2. Tile by tile.
    from tqdm import tqdm

    from ..engine.runner import Engine, to_uint8
    from ..engine.upscale import upscale

    template = {"model": {"family": family}, "styles": [{"name": "upscale", "prompt": params["prompt"],
                                                         "negative": params["negative"]}],
                "steps": params["steps"], "cfg": params["cfg"]}
    from ...core.families import FAMILIES

    if not (family in FAMILIES and FAMILIES[family].arch == "flux"):  # FLUX.1 has one sampler
        template["scheduler"] = params["scheduler"]
    import time

    engine = Engine(args.device)
    bar = tqdm(total=1, desc="tiles", unit="tile", disable=args.progress == "json")
    started = [time.perf_counter()]

    def on_tile(done, total, _box):
        bar.total = total
        bar.n = done
        bar.refresh()
        now = time.perf_counter()
        _say(args, state="refining", tile=done, tiles=total, seconds=round(now - started[0], 3),
             peak_rss_mb=peak_rss_mb())
        started[0] = now

    t0 = time.perf_counter()
    try:
        image = upscale(engine, template, np.asarray(pixels), controls, seed=int(params["seed"]), tile=tile,
                        overlap=args.overlap, strength=args.strength, on_tile=on_tile)
    except (J.JobError, ValueError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except RuntimeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        bar.close()
    meta = {"archviz": json.dumps({"params": upscale_params}), "params_sha256": digest,
            "upscale": f"{args.scale}x, {tile} px tiles, overlap {args.overlap}, strength {args.strength:g}",
            "prompt": params["prompt"], "seed": str(params["seed"])}
    from ..server.outputs import atomic_write

    atomic_write(out, png_bytes(to_uint8(image), meta))
    seconds, peak = time.perf_counter() - t0, peak_rss_mb()
    if args.progress == "json":
        _say(args, state="done", path=os.path.abspath(out), width=int(image.shape[1]), height=int(image.shape[0]),
             tiles=bar.total, seconds=round(seconds, 2), peak_rss_mb=peak)
    else:
        memory = f", peak memory {peak:.0f} MB" if peak is not None else ""
        print(f"{out}: {image.shape[1]}x{image.shape[0]} from {pixels.size[0]}x{pixels.size[1]} "
              f"({bar.total} tiles of {tile} px in {seconds:.1f} s, {seconds / bar.total:.2f} s per tile{memory})")
    return 0
