"""Region edits: masks from the object and class passes of the camera, and the seam blend.

A region is a set of ADE20K classes (``--region floor,rug``) or of objects
(``--region-objects Sofa,Rug``). Its mask comes from the ids the capture saved beside the
control images (``class_ids.npy``, ``object_ids.npy``, names in ``passes.json``), so it is
exact: no brush, no segmentation guess.

From the exact mask ``M`` (True where the region's own pixels are):

1. ``dilate`` pixels (square rings, Chebyshev distance) cover its anti-aliased edges and
   contact shadows: ``D``;
2. a feather of ``feather`` pixels outside ``D``: ring ``k`` (1..feather) gets alpha
   ``1 - k / (feather + 1)``; ``D`` gets 1, everything farther 0.

The generator regenerates where alpha > 0 (rounded out to whole latent cells for the
inpainting); the result is ``source * (1 - alpha) + generated * alpha``: outside the feather
band the source's pixels exactly, inside ``D`` the generated ones, a linear seam between.
Stdlib + numpy only.
"""

from __future__ import annotations

import json
import os

import numpy as np

DEFAULT_DILATE = 2
DEFAULT_FEATHER = 4


class RegionError(ValueError):
    """A region that cannot be made; the message names the bad value."""


def _grow(mask: np.ndarray) -> np.ndarray:
    """One ring: 3x3 maximum (8-neighbourhood)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = np.asarray(mask, bool).copy()
    for _ in range(max(0, int(pixels))):
        out = _grow(out)
    return out


def feathered_alpha(mask: np.ndarray, dilate_px: int = DEFAULT_DILATE, feather_px: int = DEFAULT_FEATHER) -> np.ndarray:
    """float32 alpha in [0, 1] from an exact region mask (see the module's doc)."""
    if dilate_px < 0 or feather_px < 0:
        raise RegionError(f"dilate and feather must be >= 0 pixels, got {dilate_px} and {feather_px}")
    core = dilate(mask, dilate_px)
    alpha = core.astype(np.float32)
    ring = core
    for k in range(1, feather_px + 1):
        grown = _grow(ring)
        alpha[grown & ~ring] = 1.0 - k / (feather_px + 1)
        ring = grown
    return alpha


def latent_cover(mask: np.ndarray, factor: int) -> np.ndarray:
    """``mask`` rounded out to whole ``factor`` x ``factor`` cells (any pixel -> the cell):
    the inpainting mask, so a thin region never falls between latent cells."""
    h, w = mask.shape
    if h % factor or w % factor:
        raise RegionError(f"a {w}x{h} mask does not split into {factor} px latent cells")
    cells = np.asarray(mask, bool).reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, factor, axis=0), factor, axis=1)


def blend(source: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``source`` (uint8 HxWx3) and ``generated`` (float HxWx3 in [0, 1]) blended by
    ``alpha``: float32 in [0, 1]; where alpha is 0 exactly the source's values."""
    src = np.asarray(source, np.float32) / 255.0
    a = np.asarray(alpha, np.float32)[..., None]
    out = src * (1.0 - a) + np.asarray(generated, np.float32) * a
    return np.where(a > 0, out, src).astype(np.float32)


def alpha_png(alpha: np.ndarray) -> np.ndarray:
    """The alpha as the 8-bit gray mask saved beside the images (and sent in the job)."""
    return np.clip(np.rint(np.asarray(alpha, np.float32) * 255), 0, 255).astype(np.uint8)


def coverage(alpha: np.ndarray) -> float:
    """Share of the image's pixels the edit may change (alpha > 0)."""
    return round(float((np.asarray(alpha) > 0).mean()), 5)


def _split(names) -> list[str]:
    items = names.split(",") if isinstance(names, str) else list(names)
    return [n.strip() for n in items if n.strip()]


def region_mask(passes_dir: str, classes=None, objects=None) -> np.ndarray:
    """The exact mask (bool HxW) of ``classes`` (ADE20K names) or ``objects`` (names) in
    the passes folder of one camera; RegionError naming the value when a class is unknown,
    an object does not exist or is not in view, or the mask is empty."""
    from .classes import ADE20K, ClassError, check_class

    if bool(classes) == bool(objects):
        raise RegionError("give either region classes or region objects")
    try:
        with open(os.path.join(passes_dir, "passes.json"), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RegionError(f"cannot read the passes of {passes_dir}: {exc}") from None
    camera = info.get("camera", "?")
    if classes:
        wanted = []
        for name in _split(classes):
            try:
                wanted.append(ADE20K[check_class(name, "region class")][0])
            except ClassError as exc:
                raise RegionError(str(exc)) from None
        ids = np.load(os.path.join(passes_dir, "class_ids.npy"))
        mask = np.isin(ids, wanted)
        if not mask.any():
            raise RegionError(f"{','.join(_split(classes))!r}: no pixel of that class in view of camera "
                              f"{camera!r} (empty mask)")
        return mask
    index = info.get("object_index", {})
    ids = np.load(os.path.join(passes_dir, "object_ids.npy"))
    mask = np.zeros(ids.shape, bool)
    for name in _split(objects):
        if name not in index:
            raise RegionError(f"{name!r}: no such renderable object in the scene")
        one = ids == index[name]
        if not one.any():
            raise RegionError(f"{name!r} is not in view of camera {camera!r} (empty mask)")
        mask |= one
    return mask


def camera_region(passes_dir: str, classes=None, objects=None, dilate_px: int = DEFAULT_DILATE,
                  feather_px: int = DEFAULT_FEATHER) -> np.ndarray:
    """The feathered alpha of one camera's region (see :func:`region_mask`)."""
    return feathered_alpha(region_mask(passes_dir, classes, objects), dilate_px, feather_px)


def mask_for_job(passes_dir: str, out_dir: str, camera: str, classes=None, objects=None) -> np.ndarray:
    """One camera's region alpha as the job's 8-bit mask, saved beside the images as
    ``<camera>_region_mask.png``; a RegionError becomes a JobError naming the region."""
    from . import jobs as J
    from .png import write_png

    try:
        mask = alpha_png(camera_region(passes_dir, classes, objects))
    except RegionError as exc:
        raise J.JobError("region-objects" if objects else "region", str(exc)) from None
    write_png(os.path.join(out_dir, f"{J.safe_name(camera)}_region_mask.png"), mask)
    return mask


def edit_options(use_restyle: bool, strength: float, region_mode: str = "NONE", region_classes: str = "",
                 selected=()) -> dict:
    """The panel's Restyle box as ``prepare_jobs`` keywords (init, strength, region,
    region_objects): a region edit starts from the beauty pass at strength 1 unless Restyle
    sets the strength; JobError naming the value when the region is empty."""
    from . import jobs as J

    out = {"init": None, "strength": None, "region": None, "region_objects": None}
    if use_restyle:
        out.update(init="beauty", strength=round(float(strength), 3))  # float32 slider
    if region_mode == "SELECTED":
        names = [n for n in selected]
        if not names:
            raise J.JobError("region-objects", "Selected Objects: no objects are selected")
        out["region_objects"] = names
    elif region_mode == "CLASSES":
        if not _split(region_classes or ""):
            raise J.JobError("region", "Classes: no class names given (e.g. floor,rug)")
        out["region"] = region_classes
    if region_mode in ("SELECTED", "CLASSES") and not use_restyle:
        out.update(init="beauty", strength=1.0)
    return out
