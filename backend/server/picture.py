"""Sweeps from a photo or a sketch instead of a scene (``archviz sweep --image PATH``).

Two steps on the backend, so a remote backend works as well as a local one:

1. ``POST /v1/picture`` (:func:`fit_picture`): the file as the user has it (PNG, JPEG,
   WebP, BMP or TIFF) is decoded and checked here (the add-on side has no image library),
   and comes back as an RGB PNG at the model's resolution with the picture's aspect kept
   (long side given, both sides a multiple of 8, or 16 for FLUX.1).
2. The sweep job sends that PNG as the image of each control unit, with the detector to
   run on it (``preprocess``: canny, mlsd, lineart, depth). The job's parameters hash the
   picture's pixels and the detector (``controls[].image_sha256`` + ``preprocess``), so a
   resumed sweep never mixes pictures. Before the models load, :func:`fetch_weights`
   fetches the detectors' weights through the hub (the job shows the download like a
   model's) and :func:`prepare_controls` runs each detector once per job, and saves the controls beside the results
   in ``passes/<name>/`` (``depth.png``, ``lines_<style>.png``, ``controls.json``) with their
   settings in each control PNG's text and in every result's metadata.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
from pathlib import Path
from typing import Callable

from ...core import jobs as J
from ..models.preprocess import PreprocessorError, ensure_weights, run_detector

log = logging.getLogger("archviz.backend")

#: Formats a picture may come in (decoded by Pillow; anything else is refused by name).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
#: The short side of a picture below this is refused: nothing a detector could find.
MIN_SIDE = 64
#: Control file names in ``passes/<name>/`` per detector (as a scene's passes are named).
CONTROL_FILES = {"depth": "depth.png", "canny": "lines_canny.png", "mlsd": "lines_mlsd.png",
                 "lineart": "lines_lineart.png", "normal": "normal.png"}


def fit_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(w, h) with the picture's aspect at ``long_side``, both a multiple of ``multiple``
    (the short side rounded to the nearest multiple, at least the jobs' smallest size)."""
    least = -(-J.MIN_SIZE // multiple) * multiple
    short = max(least, int(round(long_side * min(width, height) / max(width, height) / multiple)) * multiple)
    return (long_side, short) if width >= height else (short, long_side)


#: Pictures decoded at once by the server (each a few hundred MB at 36 megapixels); further
#: uploads wait their turn instead of multiplying the memory.
MAX_DECODES_IN_FLIGHT = 1
_DECODES = threading.BoundedSemaphore(MAX_DECODES_IN_FLIGHT)
_ORIENTATION = 0x0112


def pixel_limit_error(field: str, fmt: str, w: int, h: int) -> J.JobError:
    """The README's words for a picture over the pixel limit (a bomb header as well)."""
    return J.JobError(field, f"{fmt} of {w}x{h} = {w * h / 1e6:.0f} megapixels is over the limit of "
                             f"{J.MAX_PNG_PIXELS / 1e6:.0f} megapixels")


def open_picture(data: bytes, field: str = "image"):
    """(the picture in ``data`` as a Pillow RGB image, its format): :func:`decode_picture`
    at full size."""
    image, fmt, _seen = decode_picture(data, field)
    return image, fmt


def decode_picture(data: bytes, field: str = "image", long_side: int | None = None):
    """(the picture in ``data`` as a Pillow RGB image, its format, its (width, height) as
    seen); a JobError naming ``field`` when it is not an image of an accepted format,
    cannot be decoded, is too small or too large.

    With ``long_side``, the picture is decoded no larger than needed for that size: a JPEG
    at a reduced DCT scale (Pillow's ``draft``), anything else reduced by a whole factor
    right after decoding (``Image.reduce``, premultiplied alpha), before the colour work
    that copies it."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise J.JobError(field, "the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > J.MAX_PNG_PIXELS:
                raise pixel_limit_error(field, fmt, w, h)
            if min(w, h) < MIN_SIDE:
                raise J.JobError(field, f"{fmt} of {w}x{h} px is too small: a picture needs at least {MIN_SIDE} px "
                                        "on its short side")
            seen = (h, w) if im.getexif().get(_ORIENTATION) in (5, 6, 7, 8) else (w, h)
            factor = max(1, max(w, h) // long_side) if long_side else 1
            if factor > 1 and fmt == "JPEG":
                im.draft(im.mode, (-(-w // factor), -(-h // factor)))
            im.load()
            small = im
            factor = max(1, max(im.size) // long_side) if long_side else 1
            if factor > 1:
                if small.mode.startswith("I;16"):
                    small = small.convert("I")
                elif small.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
                    small = small.convert("RGBA" if small.mode in ("P", "PA") else "RGB")
                small = small.reduce(factor)
                small.info = dict(im.info)
                exif = im.getexif()
                if exif.get(_ORIENTATION):
                    small.info["exif"] = exif.tobytes()
            return _rgb(small), fmt, seen
    except UnidentifiedImageError:
        raise J.JobError(field, f"not an image ({', '.join(FORMATS)} are read)") from None
    except J.JobError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard fired at open: say it in our words
        raise _bomb_error(data, field, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise J.JobError(field, f"the image is damaged and cannot be decoded ({exc})") from None


def _bomb_error(data: bytes, field: str, exc: Exception) -> J.JobError:
    """The README's pixel limit for a header Pillow refused as a decompression bomb: with the
    PNG's width and height from its IHDR chunk, else the pixel count Pillow gave."""
    import re

    from ...core.png import png_size

    size = png_size(data[:24])
    if size:
        return pixel_limit_error(field, "PNG", *size)
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" of {int(m.group(1)) / 1e6:.0f} megapixels" if m else ""
    return J.JobError(field, f"a picture{size} is over the limit of {J.MAX_PNG_PIXELS / 1e6:.0f} megapixels")


def _rgb(im):
    """RGB pixels as the picture is seen: a phone photo's EXIF rotation applied, 16-bit and
    float gray scaled to 8 bits, transparency over white paper (a sketch with a transparent
    background must not turn into lines on black)."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return im.convert("RGB")


def fit_picture(data: bytes, long_side: int, multiple: int) -> dict:
    """What ``POST /v1/picture`` answers: the picture as an RGB PNG of the fitted size, with
    its source size, format and file hash."""
    from PIL import Image

    if multiple not in (8, 16, 32, 64):
        raise J.JobError("multiple", f"must be 8, 16, 32 or 64, got {multiple}")
    if not J.MIN_SIZE <= long_side <= J.MAX_SIZE or long_side % multiple:
        raise J.JobError("long_side", f"must be a multiple of {multiple} in {J.MIN_SIZE}..{J.MAX_SIZE}, "
                                      f"got {long_side}")
    with _DECODES:  # one decode at a time: a few hundred MB each for the largest pictures
        try:
            image, fmt, (sw, sh) = decode_picture(data, long_side=long_side)
            w, h = fit_size(sw, sh, long_side, multiple)
            fitted = image.resize((w, h), Image.LANCZOS) if (w, h) != image.size else image
            del image
            buf = io.BytesIO()
            fitted.save(buf, format="PNG")
            del fitted
        finally:
            _trim_heap()  # hand the decode's freed heap back to the OS
    return {"image": base64.b64encode(buf.getvalue()).decode("ascii"), "width": w, "height": h,
            "source": {"width": sw, "height": sh, "format": fmt,
                       "file_sha256": hashlib.sha256(data).hexdigest()}}


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def fetch_weights(plan, progress=None, cancelled: Callable[[], bool] = lambda: False) -> dict:
    """The weights of the job's detectors as complete hub snapshots (downloaded with
    ``progress`` when missing); the download's tally."""
    return ensure_weights([c.preprocess for c in plan.controls if c.preprocess != "none"], progress=progress,
                          cancelled=cancelled)


def prepare_controls(plan, out_dir: Path, cancelled: Callable[[], bool] = lambda: False) -> None:
    """Run the job's detectors once (their weights: :func:`fetch_weights`), put each result
    in place of its picture in ``plan.controls`` (so the families use it as it is), save them
    in ``out_dir/passes/<name>/`` and note their settings in ``plan.preprocessed`` (the
    results' metadata)."""
    from PIL import PngImagePlugin

    from .outputs import atomic_write
    from ..engine.sweep import pixels_sha256

    if all(c.preprocess == "none" for c in plan.controls):
        return
    folder = out_dir / "passes" / J.safe_name(plan.job.name_prefix or "picture")
    folder.mkdir(parents=True, exist_ok=True)
    done, notes = {}, []
    for i, control in enumerate(plan.controls):
        kind = control.preprocess
        if kind == "none":
            continue
        if cancelled():
            break
        key = (kind, control.sha256)
        if key not in done:
            try:
                done[key] = run_detector(kind, control.image, plan.width, plan.height)
            except PreprocessorError as exc:
                raise PreprocessorError(f"controls[{i}] ({control.type}, detector {kind}): {exc}") from None
        image, settings = done[key]
        name = CONTROL_FILES.get(kind, f"{kind}.png")
        note = {"control": i, "type": control.type, "preprocess": kind, "picture_sha256": control.sha256,
                "file": f"passes/{folder.name}/{name}", "control_sha256": pixels_sha256(image), "settings": settings}
        info = PngImagePlugin.PngInfo()
        info.add_text("archviz_control", json.dumps(note))
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        atomic_write(folder / name, buf.getvalue())
        control.image, control.preprocess = image, "none"  # the families take it as it is
        notes.append(note)
    plan.preprocessed = notes
    atomic_write(folder / "controls.json", (json.dumps({"width": plan.width, "height": plan.height,
                                                        "controls": notes}, indent=2) + "\n").encode())
    log.info("ran %d detector(s) on the picture; controls in %s", len(done), folder)
