"""Sweep planning from the scene: which cameras, their control passes, the jobs.

The first half of a sweep's one-way flow, scene -> passes -> jobs; the client and the
backend it talks to are ``backend``'s, the images in Blender ``results``'.
Shared by the ``archviz.generate`` / ``archviz.sweep`` operators and the ``archviz sweep``
command, so the panel, ``blender -b`` and the terminal run the very same steps.
"""

import os
from dataclasses import replace

import bpy

from ..core import jobs as J
from ..core.sweep import camera_job, check_custom_base
from .capture.render import CaptureOptions, render_controls


def resolve_cameras(scene, spec="scene", selected=()):
    """Camera objects for ``spec``: "scene", "all", "selected", "collection:NAME" or "A,B"."""
    spec = (spec or "scene").strip()
    if spec == "scene":
        if scene.camera is None:
            raise J.JobError("cameras", f"scene {scene.name!r} has no camera")
        return [scene.camera]
    if spec == "all":
        cams = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    elif spec == "selected":
        cams = [o for o in selected if o.type == "CAMERA"]
    elif spec.startswith("collection:"):
        name = spec.split(":", 1)[1]
        coll = bpy.data.collections.get(name)
        if coll is None:
            raise J.JobError("cameras", f"no collection named {name!r}")
        cams = sorted((o for o in coll.all_objects if o.type == "CAMERA"), key=lambda o: o.name)
    else:
        cams = []
        for name in (n.strip() for n in spec.split(",") if n.strip()):
            obj = scene.objects.get(name)
            if obj is None or obj.type != "CAMERA":
                raise J.JobError("cameras", f"no camera named {name!r} in scene {scene.name!r}")
            cams.append(obj)
    if not cams:
        raise J.JobError("cameras", f"no cameras for {spec!r}")
    return cams


def model_spec(model):
    """A family (core/families.py, or an alias) or a local folder or file (an SD 1.5 base)."""
    if model in J.FAMILIES or model in J.FAMILY_ALIASES:
        return {"family": model}
    if os.path.exists(model):
        return {"family": "sd15", "base": os.path.abspath(model)}
    raise J.JobError("model", f"{model!r} is neither a family ({', '.join(J.FAMILIES)}) nor an existing path")


def model_family(model):
    """The model family a job's model runs on (a local base model is an SD 1.5 one)."""
    spec = model_spec(model) if isinstance(model, str) else (model or {})
    family = spec.get("family", "sd15")
    return J.FAMILY_ALIASES.get(family, family)


def _preset_controls(styles):
    """The style presets' control defaults, first style first (presets that do not load
    are left to the backend, which reports them)."""
    from ..core.presets import load_presets_tolerant

    presets, _errors = load_presets_tolerant()
    return [presets[name] for name in styles if name in presets]


def control_choices(units, styles, model, base):
    """(depth range mode, {unit index: line style}) for a sweep.

    The capture options decide when set (the panel always sets a depth range; a line
    style other than 'auto' overrides every line unit); else the first style preset that
    says (``[controls.depth] range``, ``[controls.lines] line_style``); else the view
    mode, and for each line unit the style its model wants (core.passes.MODEL_LINE_STYLES).
    """
    from ..core import passes as core_passes

    presets = _preset_controls(styles)
    depth_range = base.depth_mode() if (base.depth_range or base.near or base.far) else ""
    if not depth_range:
        depth_range = next((p.control("depth").range for p in presets if p.control("depth").range), "") or "view"
    family = model_family(model)
    line_styles = {}
    for i, unit in enumerate(units):
        if unit.type not in J.LINE_TYPES:
            continue
        if unit.model:  # a custom ControlNet reads the lines it was trained on (its card says which)
            line_styles[i] = core_passes.check_line_style(unit.line_style or core_passes.DEFAULT_LINE_STYLE)
            continue
        override = base.line_style
        if override == "auto":
            override = next((p.control(unit.type).line_style for p in presets
                             if p.control(unit.type).line_style), "auto")
        line_styles[i] = core_passes.line_style_for(unit.type, family, override)
    return depth_range, line_styles


def prepare_jobs(scene, cameras, units, styles, seeds, model, out_dir, capture_options=None, steps=None, cfg=None,
                 scheduler=None, share_disk=True, max_batch=None, render=None, skip_existing=True, init=None,
                 strength=None, region=None, region_objects=None, edits=None, fast=False, preview_every=None,
                 references=None):
    """Render each camera's passes into ``out_dir/passes/<camera>`` and build its job.

    Each line unit gets the line image its model was trained on (``lines_<style>.png``).
    Returns [(camera name, job dict)]. ``share_disk``: the backend writes into ``out_dir``
    itself (a local backend); otherwise the images are downloaded. ``render(scene,
    passes_dir, options)``: how to render (default: here, with render_controls; the
    ``archviz sweep`` command renders in a child process that a renderer crash cannot take
    down). ``skip_existing=False`` remakes images already on disk. ``init``/``strength``:
    restyle from ``"beauty"`` (the beauty pass is rendered too) or a PNG (core/restyle.py);
    ``region``/``region_objects``: edit only those classes/objects (core/region.py; the mask
    is saved as ``<camera>_region_mask.png``); ``edits``: instruction edit texts of ``init``
    (core/edit.py; the job's styles are the edit texts x ``styles``, with no control units).
    ``fast``: the family's fast mode (labelled, changes the pixels); ``preview_every``:
    previews every N steps (None: the backend's 4; 0: none). ``references``: the job's reference
    images (core/references.py entries)."""
    check_custom_base(units, model if isinstance(model, str) else (model or {}).get("family", "sd15"))
    render = render or render_controls
    base = capture_options or CaptureOptions()
    if init == "beauty" and not base.beauty:
        base = replace(base, beauty=True)
    depth_range, line_styles = control_choices(units, styles, model, base)
    units = [replace(u, line_style=line_styles[i]) if i in line_styles else u for i, u in enumerate(units)]
    out = []
    for cam in cameras:
        passes_dir = os.path.join(out_dir, "passes", J.safe_name(cam.name))
        # Every pass the user wants (all four by default: they go into each variant's
        # EXR), plus whatever a control unit needs.
        opts = CaptureOptions(**{**base.__dict__, "camera": cam.name, "depth_range": depth_range,
                                 "line_styles": tuple(sorted(set(base.line_styles) | set(line_styles.values()))),
                                 "passes": tuple(sorted(set(base.passes) | {"lines" if u.type in J.LINE_TYPES
                                                                            else u.type for u in units}))})
        render(scene, passes_dir, opts)
        mask = None
        if region or region_objects:
            from ..core.region import mask_for_job

            mask = mask_for_job(passes_dir, out_dir, cam.name, region, region_objects)
        out.append((cam.name, camera_job(passes_dir, units, styles, seeds, model=model_spec(model),
                                         output_dir=os.path.abspath(out_dir) if share_disk else None,
                                         name_prefix=cam.name, steps=steps, cfg=cfg, scheduler=scheduler,
                                         max_batch=max_batch, skip_existing=skip_existing, init=init,
                                         strength=strength, mask=mask, edits=edits, fast=fast,
                                         preview_every=preview_every, references=references)))
    return out


def model_roots_of(model):
    """Local model files or folders a job's model spec points at (a local backend must be
    allowed to read them)."""
    spec = model_spec(model) if isinstance(model, str) else (model or {})
    refs = [spec.get("base"), spec.get("vae"), *(spec.get("controlnets") or {}).values()]
    return [r for r in refs if r and os.path.isabs(r)]


def job_model_roots(job):
    """Local model folders a job dict names: its model spec and its units' own ControlNets
    (``custom:PATH`` units)."""
    return model_roots_of(job.get("model")) + [c["model"] for c in job.get("controls", [])
                                               if c.get("model") and os.path.isabs(c["model"])]
