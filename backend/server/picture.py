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
from ..engine.pictures import FORMATS, MIN_SIDE, decode_picture, open_picture, pixel_limit_error  # noqa: F401
from ..models.preprocess import PreprocessorError, ensure_weights, run_detector

log = logging.getLogger("archviz.backend")

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
