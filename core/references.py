"""Reference images ("make it look like this"): a photo of a brick, a reference interior,
a client's mood board, steering the look while the controls keep the geometry.

Stdlib only: Blender's Python builds the job's ``references`` with this module and the
backend validates them with the same code. A job carries them as::

    "references": [{"image": "<base64 PNG, JPEG, WebP, BMP or TIFF>", "scale": 0.8}, ...]

Each family has its own mechanism (:data:`MECHANISMS`), the one its ecosystem uses:

* SD 1.5 / SDXL: IP-Adapter (h94/IP-Adapter). Each reference's CLIP image embedding is
  projected to a few extra cross-attention tokens; each reference is attended on its own
  and added at its scale (diffusers' per-image IP-Adapter scales). A sum: **order-free**.
* FLUX.1: the Redux prior (FLUX.1-Redux-dev). Each reference's SigLIP tokens are appended
  to the prompt's T5 tokens, and the (prompt, reference) pairs are summed weighted by
  their scales (``FluxPriorReduxPipeline``'s weighted sum). A sum: **order-free**.
* FLUX.2 Klein: its own reference images (``Flux2KleinPipeline``'s ``image``). Each is
  VAE-encoded and its tokens sit next to the noise's at a time position of its own (10, 20,
  30, ... in list order), so **the order matters** and the parameters keep it. No per-image
  strength: a reference's scale is 1, or 0 (left out). The job's control passes (depth,
  lines, ...) are reference images to it as well (BFL's FLUX.2 structural guidance: a
  depth map or an edge image given as a reference): the user's references first, then
  the control images in control order, all counted against its limit.

A reference at scale 0 is left out entirely (not encoded, not in the parameters): scale 0
gives the very pixels of no reference. The parameters (hence the resume hash) hold each
reference's pixel hash and scale, sorted for the order-free mechanisms.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from . import families as _families
from .limits import image_file_problem

#: references a job may carry at all (a family may take fewer: :data:`MECHANISMS`)
MAX_REFERENCES = 10
MAX_REFERENCE_SCALE = 2.0
DEFAULT_REFERENCE_SCALE = 1.0
#: the shortest side a reference may have (the backend's picture rule, backend/server/picture.py)
MIN_REFERENCE_SIDE = 64


@dataclass(frozen=True)
class Mechanism:
    """How one architecture takes reference images."""

    label: str  # in messages and docs
    max_images: int  # references per job
    order_free: bool  # the same images in another order give the same pixels (up to float rounding)
    scaled: bool = True  # each reference has a scale (False: 1, or 0 = left out)
    controls_join: bool = False  # the job's control passes are images of the same kind, counted in max_images


#: arch -> its reference mechanism (core/families.py REFERENCES); an arch not here takes none.
MECHANISMS = {arch: Mechanism(*facts) for arch, facts in _families.REFERENCES.items()}


class ReferenceError(ValueError):
    """A bad reference, said in one line."""


@dataclass
class Reference:
    image: str  # base64 of the image file's bytes
    scale: float = DEFAULT_REFERENCE_SCALE

    FIELDS = ("image", "scale")


def reference_family_problem(arch: str, count: int, controls: int = 0, family: str | None = None,
                             init: bool = False) -> str | None:
    """Why a family cannot take ``count`` references (one line), or None. (``controls``:
    the job's control units, and ``init``: whether it restyles an init image, for a mechanism
    that would count them among its images.)"""
    from . import families

    label = family or families.ARCHES[arch].label if arch in families.ARCHES else (family or arch)
    mech = MECHANISMS.get(arch)
    if mech is None:
        takes = ", ".join(sorted({families.ARCHES[a].label for a in MECHANISMS if a in families.ARCHES}))
        return f"{label} takes no reference images (the families that do: {takes})"
    if mech.controls_join and init and count + controls + 1 > mech.max_images:
        return (f"{count} references, {controls} control images and the init image: {label} takes at most "
                f"{mech.max_images} images in all (the control passes and the init image join the references)")
    if mech.controls_join and count + controls > mech.max_images:
        return (f"{count} references and {controls} control images: {label} takes at most {mech.max_images} "
                f"images in all (the control passes join the references)")
    if count > mech.max_images:
        return f"{count} references: {label} ({mech.label}) takes at most {mech.max_images}"
    return None


def reference_scale_problem(arch: str, scales, family: str | None = None) -> str | None:
    """Why a family cannot take these reference scales (one line), or None: a mechanism
    without a per-reference strength takes 1 (or 0: left out)."""
    from . import families

    mech = MECHANISMS.get(arch)
    if mech is None or mech.scaled:
        return None
    for scale in scales:
        if float(scale) not in (0.0, 1.0):
            label = family or families.ARCHES[arch].label
            return (f"reference scale {float(scale):g}: {label} has no per-reference strength; "
                    "use 1 (or 0 to leave a reference out)")
    return None


def reference_problem(path: str, flag: str = "--reference") -> str | None:
    """Why the file at ``path`` cannot be a reference image (one line), or None: missing,
    a folder, empty, not an image, too large, a damaged or too small PNG."""
    problem, kind, head = image_file_problem(path, flag, "a reference")
    if problem is None and kind == "PNG":
        from .png import png_problem, png_size

        problem = png_problem(path, flag)
        if problem:
            return problem
        w, h = png_size(head[:24]) or (0, 0)
        if min(w, h) < MIN_REFERENCE_SIDE:
            return f"{flag} {path} is {w}x{h} px, too small: a reference needs at least {MIN_REFERENCE_SIDE} px " \
                   "on its short side"
    return problem


def reference_entry(path: str, scale: float = DEFAULT_REFERENCE_SCALE, flag: str = "--reference") -> dict:
    """The job's entry for an image file (ReferenceError with one line when it is bad)."""
    problem = reference_problem(path, flag)
    if problem:
        raise ReferenceError(problem)
    if not 0.0 <= float(scale) <= MAX_REFERENCE_SCALE:
        raise ReferenceError(f"{flag} {path}: scale {scale:g} is outside 0..{MAX_REFERENCE_SCALE:g}")
    with open(path, "rb") as fh:
        data = fh.read()
    return {"image": base64.b64encode(data).decode("ascii"), "scale": float(scale)}


def params_entries(hashed: list[tuple[str, float]], order_free: bool) -> list[dict]:
    """What goes into each image's parameters: ``(pixel sha256, scale)`` of every
    reference that acts (scale > 0), sorted when the mechanism is order-free."""
    entries = [{"image_sha256": sha, "scale": float(scale)} for sha, scale in hashed if scale > 0]
    if order_free:
        entries.sort(key=lambda e: (e["image_sha256"], e["scale"]))
    return entries


def preset_references(presets: dict, names) -> tuple[list[str], float | None, str]:
    """The reference images the named styles' presets give (``[reference]``), for a sweep
    that names none itself: (paths, scale, the preset that gives them). The references are
    the job's, so the styles of one sweep must agree: one with images and one without, or
    two with other images, is a ReferenceError (one line)."""
    names = [n for n in names if n in presets]
    found = {n: (tuple(presets[n].references), presets[n].reference_scale) for n in names}
    with_refs = [n for n in names if found[n][0]]
    if not with_refs:
        return [], None, ""
    first = with_refs[0]
    for n in names:
        if found[n] != found[first]:
            what = "other [reference] images" if found[n][0] else "no [reference] images"
            raise ReferenceError(f"style {first!r} has [reference] images in its preset and {n!r} has {what}; "
                                 "sweep them separately, or give --reference for all")
    return list(found[first][0]), found[first][1], first
