"""Instruction edits: "make it a snowy winter evening" applied to a picture of the scene (its
beauty pass, or any PNG) by FLUX.1 Kontext or Qwen-Image-Edit.

The edit texts become the job's styles: each edit text alone (style ``edit1``, ``edit2``...),
or each edit text with each style preset (``modern-edit1``...: the preset's prompt joins the
instruction as the look to give it). The job carries the picture as ``init_image`` and no
control units: neither model has a ControlNet in diffusers, and the picture itself holds the
geometry. Stdlib only (the add-on and the backend both use it).
"""

from __future__ import annotations

from . import families as _families

#: model family -> the architecture the engine runs (backend/engine/families/edit.py)
EDIT_FAMILIES = {f.name: f.arch for f in _families.FAMILY_LIST if _families.ARCHES[f.arch].edit}
EDIT_ARCHES = _families.arch_names(edit=True)
#: steps and guidance where neither the job nor ``--steps``/``--cfg`` set them (core/families.py:
#: Kontext's distilled guidance 2.5 over 28 steps; Qwen-Image-Edit's true CFG 4 over 50 steps,
#: 40 for -2509 / -2511, the model cards' values)
EDIT_DEFAULTS = {f.name: f.edit_defaults for f in _families.FAMILY_LIST if f.edit_defaults}
#: Qwen-Image-Edit's negative prompt when a style gives none (its model card's " ")
QWEN_EDIT_NEGATIVE = " "
MAX_EDIT_CHARS = 2000


def is_edit_family(family: str) -> bool:
    return family in EDIT_FAMILIES


def compose(edit: str, look: str = "") -> str:
    """What the model reads: the instruction, and a style's prompt as the look to give it."""
    edit = edit.strip()
    if not look:
        return edit
    return f"{edit.rstrip('.')}. Make it look like this: {look.strip()}"


def check_edit(text, field: str = "edit") -> str:
    """The edit text stripped; ValueError naming it when it is empty or not text."""
    if not isinstance(text, str):
        raise ValueError(f"{field}: expected a text, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{field} {text!r}: the edit text is empty; say what to change, e.g. "
                         f"\"make it a snowy winter evening\"")
    if len(text) > MAX_EDIT_CHARS:
        raise ValueError(f"{field}: the edit text is {len(text)} characters long (at most {MAX_EDIT_CHARS})")
    if "\0" in text:
        raise ValueError(f"{field}: the edit text contains a NUL character (at {text.index(chr(0))})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field}: the edit text is not valid Unicode (a lone surrogate {text[exc.start]!r} at "
                         f"{exc.start})") from None
    return text.strip()


def edit_styles(edits, styles=()) -> list[dict]:
    """The job's styles for these edit texts: each alone, or each with each preset name of
    ``styles`` (edit texts x styles). ValueError naming an empty edit text."""
    texts = [check_edit(t, f"edit {i + 1}") for i, t in enumerate(edits)]
    if not texts:
        raise ValueError("edit: no edit text given")
    out = []
    for i, text in enumerate(texts):
        tag = f"edit{i + 1}" if len(texts) > 1 or not styles else "edit"
        if not styles:
            out.append({"name": f"edit{i + 1}", "edit": text})
        for style in styles:
            out.append({"name": f"{style}-{tag}", "preset": style, "edit": text})
    return out


def edit_problem(args) -> str | None:
    """``archviz sweep``'s ``--edit`` checked before anything renders: the one-line problem,
    or None. Sets ``args.init`` to the beauty pass when not given."""
    edits = getattr(args, "edit", None)
    if not edits:
        if is_edit_family(getattr(args, "model", "")):
            return (f"--model {args.model} edits a picture by instruction: give --edit \"TEXT\" "
                    f"(README: Instruction edits)")
        return None
    for i, text in enumerate(edits):
        try:
            check_edit(text, "--edit" if len(edits) == 1 else f"--edit #{i + 1}")
        except ValueError as exc:
            return str(exc)
    if not is_edit_family(args.model):
        return (f"--edit needs an instruction-edit model: --model {args.model!r} makes images from text; "
                f"use --model kontext or qwen-edit (tiny-kontext, tiny-qwen-edit offline)")
    if getattr(args, "controls_given", False):
        return (f"--controls {args.controls!r} cannot be used with --edit: FLUX.1 Kontext and Qwen-Image-Edit "
                f"have no ControlNet (the picture holds the geometry)")
    if getattr(args, "region", None) is not None or getattr(args, "region_objects", None) is not None:
        return "--region/--region-objects cannot be used with --edit (say where in the edit text instead)"
    if getattr(args, "strength", None) is not None:
        return f"--strength {args.strength} cannot be used with --edit: an instruction edit has no strength"
    if getattr(args, "upscale", None):
        return "--upscale cannot be used with --edit (run archviz upscale on the results)"
    if args.init is None:
        from .restyle import BEAUTY

        args.init = BEAUTY
    return None


def edit_values(arch: str, job, style, look: str) -> tuple:
    """(prompt, negative, steps, cfg, scheduler) of one edit style: the edit text with the
    style's look; steps and guidance from the job, else :data:`EDIT_DEFAULTS` (a preset's
    values are tuned for other models and are not used); Kontext takes no negative prompt
    (the caller refuses one), Qwen-Image-Edit the style's own or " "."""
    defaults = EDIT_DEFAULTS.get(job.model.family, EDIT_DEFAULTS[arch])  # -2509/-2511: their cards' 40 steps
    negative = "" if arch == "kontext" else (style.negative or QWEN_EDIT_NEGATIVE)
    steps = job.steps if job.steps is not None else defaults["steps"]
    cfg = job.cfg if job.cfg is not None else defaults["cfg"]
    return compose(style.edit, look), negative, int(steps), float(cfg), "flow_euler"


def instruction_edit(edit_text: str, region_mode: str = "NONE") -> dict:
    """The panel's Edit field as ``prepare_jobs`` keywords: an instruction edit of the beauty
    pass (the Restyle slider does not apply), or {} when the field is empty. Refused when
    a Region is chosen too (ValueError: the caller names the field)."""
    if not (edit_text or "").strip():
        return {}
    if region_mode != "NONE":
        raise ValueError("an instruction edit changes the whole picture: set Region to Whole Image "
                         "(say where in the edit text instead)")
    from .restyle import BEAUTY

    return {"init": BEAUTY, "strength": None, "region": None, "region_objects": None, "edits": [edit_text.strip()]}
