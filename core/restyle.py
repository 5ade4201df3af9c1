"""Restyle: img2img from a picture of the scene (its beauty pass, or any PNG), with the
control units still applied.

Strength is how far the result may move away from the init image, as a Precise <->
Creative scale: the denoising starts ``strength`` of the way into the sampler's schedule
(``int(steps * strength)`` of the steps run), from the init image noised to that level.
The named steps below are what the panel and ``archviz sweep --strength`` show and accept.
Stdlib only (the add-on and the backend both use it).
"""

from __future__ import annotations

import math

#: name -> (strength, what the user gets)
STRENGTH_STEPS = {
    "precise": (0.25, "materials and light change a little; every edge and colour area stays"),
    "faithful": (0.45, "new materials and mood on the same layout; colours may change"),
    "balanced": (0.6, "the restyle most people want: the room is recognisable, the look is new"),
    "creative": (0.8, "only the composition of the init image is kept; the controls hold the geometry"),
    "free": (1.0, "the init image is all but ignored (like a sweep without --init)"),
}
DEFAULT_STRENGTH = STRENGTH_STEPS["balanced"][0]
#: ``--init`` values that mean the scene's own render
BEAUTY = "beauty"


def parse_strength(text) -> float:
    """A number from 0 to 1 or a named step (``precise``...) -> the strength; ValueError
    naming the bad value otherwise."""
    key = str(text).strip().lower()
    if key in STRENGTH_STEPS:
        return STRENGTH_STEPS[key][0]
    try:
        value = float(key)
    except ValueError:
        raise ValueError(f"--strength {text!r}: expected a number from 0 to 1 or one of "
                         f"{', '.join(STRENGTH_STEPS)}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"--strength {text!r}: must be from 0 (precise) to 1 (creative)")
    return value


def strength_name(value: float) -> str:
    """The named step nearest to ``value`` (for labels)."""
    return min(STRENGTH_STEPS, key=lambda k: abs(STRENGTH_STEPS[k][0] - value))


def denoising_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` run at ``strength`` (diffusers' img2img rule)."""
    return min(int(steps * strength), steps)


def restyle_problem(args) -> str | None:
    """``archviz sweep``'s ``--init`` / ``--strength`` checked before anything renders: the
    one-line problem, or None. Turns ``args.strength`` into a number."""
    import os

    region = getattr(args, "region", None) is not None or getattr(args, "region_objects", None) is not None
    if region:
        if args.region is not None and args.region_objects is not None:
            return "give --region CLASSES or --region-objects NAMES, not both"
        names = args.region if args.region is not None else args.region_objects
        if not [n for n in names.split(",") if n.strip()]:
            return f"--region{'' if args.region is not None else '-objects'} {names!r}: no names given"
        if args.region is not None:
            from .classes import ClassError, check_class

            for name in (n for n in args.region.split(",") if n.strip()):
                try:
                    check_class(name, "region class")
                except ClassError as exc:
                    return f"--region: {exc}"
        if args.init is None:
            args.init = BEAUTY  # a region edit of the scene's own render
        if args.strength is None:
            args.strength = "1"  # the region is made anew (inpainting)
    if args.init is None:
        return f"--strength {args.strength} needs --init beauty|PATH" if args.strength is not None else None
    if args.init != BEAUTY:
        if not os.path.isfile(args.init):
            return f"--init {args.init!r}: no such file (give beauty or a PNG's path)"
        from .png import png_problem

        problem = png_problem(args.init, "--init")  # whole and within the limits, before any render
        if problem:
            return problem
        args.init = os.path.abspath(args.init)
    try:
        args.strength = parse_strength(args.strength) if args.strength is not None else DEFAULT_STRENGTH
    except ValueError as exc:
        return str(exc)
    return None
