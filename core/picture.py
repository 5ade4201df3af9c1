"""Sweeps from a photo or a sketch (``archviz sweep --image PATH``), the client side.

Stdlib only: the picture is checked here as far as that is possible without decoding it
(there, a file, not empty, an image format by its first bytes); the backend decodes it,
refuses a damaged or too small one, and fits it to the model's size (``POST /v1/picture``,
backend/server/picture.py). Each control unit then names the detector the backend runs on the
picture: depth -> DPT depth; lines -> the line style its model was trained on (SD 1.5
lineart, SDXL and FLUX.1 canny; ``--line-style`` overrides), as for passes from a scene.
"""

from __future__ import annotations

import json

from . import jobs as J
from .limits import image_file_problem

#: Line styles with a detector for pictures (softedge has none here).
PICTURE_LINE_STYLES = ("canny", "mlsd", "lineart")
#: Unit type -> detector, for the types that do not depend on a line style.
DETECTORS = {"depth": "depth", "normal": "normal"}


def picture_problem(path):
    """Why ``path`` cannot be a picture to sweep from (one line), or None."""
    problem, kind, _head = image_file_problem(path, "--image", "a picture", thing="a picture")
    if problem is None and kind == "PNG":
        from .png import png_problem

        return png_problem(path, "--image")  # a bomb header or a cut file, before any backend starts
    return problem


def unit_detectors(units, line_styles):
    """The detector each unit runs on the picture. ``line_styles``: {unit index: style}, as
    blender.sweeping.control_choices chooses them per model. Raises JobError naming a unit
    or a line style that has no detector."""
    out = []
    for i, unit in enumerate(units):
        if unit.type in J.LINE_TYPES:
            style = line_styles.get(i, "lineart")
            if style not in PICTURE_LINE_STYLES:
                raise J.JobError("line-style", f"{style!r} has no detector for a picture (choose "
                                               f"{', '.join(PICTURE_LINE_STYLES)})")
            out.append(style)
        elif unit.type in DETECTORS:
            out.append(DETECTORS[unit.type])
        else:
            raise J.JobError("controls", f"{unit.type!r}: a picture has no {unit.type} detector (a scene's "
                                         "passes have it); use depth and lines")
    return out


def picture_job(picture, width, height, units, detectors, styles, seeds, model, output_dir=None, name_prefix="",
                steps=None, cfg=None, scheduler=None, skip_existing=True, max_batch=None, fast=False,
                preview_every=None):
    """The backend job (a JSON-ready dict) of a sweep from a picture: every unit sends the
    fitted picture (base64 PNG from POST /v1/picture) with its detector. Validated here."""
    controls = []
    for unit, detector in zip(units, detectors):
        control = {"type": unit.type, "image": picture, "preprocess": detector}
        for key in ("scale", "start", "end", "mode", "model"):
            if getattr(unit, key, None) is not None:
                control[key] = getattr(unit, key)
        controls.append(control)
    job = {"model": model if isinstance(model, dict) else {"family": model}, "controls": controls,
           "styles": list(styles), "seeds": list(seeds), "width": width, "height": height,
           "name_prefix": name_prefix, "skip_existing": skip_existing}
    if fast:  # the family's labelled fast mode (changes the pixels)
        job["fast"] = True
    for key, value in (("output_dir", output_dir), ("steps", steps), ("cfg", cfg), ("scheduler", scheduler),
                       ("max_batch", max_batch), ("preview_every", preview_every)):
        if value is not None:
            job[key] = value
    J.Job.from_dict(json.loads(json.dumps(job)))  # raises JobError naming the field
    return job
