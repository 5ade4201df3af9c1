"""From a validated job to a concrete sweep plan.

The plan fixes everything that determines the pixels of each (style, seed) image: models,
prompts, sampler, size and per-control scale/window/mode after the style presets have been
applied. Its hash (``params_sha256``) goes into every PNG and the manifest; it is what
``skip_existing`` compares to resume a sweep that was cut off.

This runs on the HTTP thread at submit time, so a queued job keeps the presets it was sent
with, and every error is a JobError naming the field (unknown preset, bad PNG...).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

from ...core import families
from ...core import jobs as J
from ...core.presets import Preset
from ...core.edit import EDIT_ARCHES
from ...core.families import ARCHES
from .families.registry import (ENGINES, FLUX_DEFAULTS, QWEN_DEFAULTS, ZIMAGE_DEFAULTS, FlowRules,  # noqa: F401
                                 arches)
from ..models.registry import ModelPlan, resolve_models

#: flow-matching families' rules and defaults (backend/engine/families/registry.py), and the
#: arches that do region edits (core/families.py)
FLOW_FAMILIES = {arch: e.flow for arch, e in ENGINES.items() if e.flow}
REGION_ARCHS = tuple(a.name for a in ARCHES.values() if a.region)
#: the arches that take an init image to restyle (the UNet families, and the flow families whose rules say so)
RESTYLE_ARCHS = tuple(a.name for a in ARCHES.values()
                      if not a.edit and (ENGINES[a.name].flow is None or ENGINES[a.name].flow.restyle))


def _labels(arches) -> str:
    """'SD 1.5, SDXL and FLUX.1' for messages."""
    names = [ARCHES[a].label for a in arches]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
REFERENCE_CONTROL_ARCHES = arches(resolve="references")
FLUX_SCHEDULER = "flow_euler"

ENGINE_VERSION = 2  # bump when the same parameters would give different pixels (2: channels_last on CPU, SD 1.5 VAE dtype)


@dataclass(frozen=True)
class UnitSettings:
    """One control as used for one style."""

    type: str
    image_sha256: str  # sha256 of the control's RGB pixels (after decoding the PNG)
    preprocess: str
    scale: float
    start: float
    end: float
    mode: str
    model: str  # ControlNet reference (with #mode=N for ControlNet-Union)


@dataclass(frozen=True)
class StyleSettings:
    name: str
    preset: str | None
    prompt: str
    negative: str
    steps: int
    cfg: float
    scheduler: str
    units: tuple[UnitSettings, ...]
    edit: str | None = None  # instruction edit: the edit text (the prompt is composed from it)

    def sampling_key(self) -> tuple:
        """Styles with the same key can share a UNet batch."""
        return (self.steps, self.cfg, self.scheduler, self.units)


@dataclass(frozen=True)
class PlannedImage:
    index: int
    style: int  # index into SweepPlan.styles
    seed: int
    file: str
    params_sha256: str


@dataclass
class ControlImage:
    type: str
    image: object  # PIL.Image (RGB)
    sha256: str
    preprocess: str


@dataclass
class InitImage:
    """The picture a restyle starts from (img2img), and how far it may move away."""

    image: object  # PIL.Image (RGB), resized to the job's size by the family's image processor
    sha256: str
    strength: float


@dataclass
class RegionMask:
    """A region edit: the feathered alpha (core/region.py) over the init image."""

    alpha: object  # float32 HxW in [0, 1]
    sha256: str
    coverage: float  # share of pixels with alpha > 0
    source: object  # uint8 HxWx3: the init image's pixels, blended back outside the region


@dataclass
class ReferenceImage:
    """A reference image that acts (scale > 0; core/references.py), decoded once per job."""

    image: object  # PIL.Image (RGB)
    sha256: str
    scale: float


@dataclass
class SweepPlan:
    job: J.Job
    models: ModelPlan
    dtype: str
    width: int
    height: int
    controls: list[ControlImage]
    styles: list[StyleSettings]
    images: list[PlannedImage]
    # The engine options in force that change images (EngineOptions.image_changes): part of
    # the parameters only when set, so the exact engine's hashes stay as they were.
    engine_options: dict = field(default_factory=dict)
    init: InitImage | None = None  # restyle (img2img); None: text-to-image with the controls
    region: RegionMask | None = None  # region edit (inpainting of init); None: the whole image
    fast: dict | None = None  # the family's fast mode (FastMode.record()); None: the exact path
    # A sweep from a picture (backend/server/picture.py): each detector's control file and settings,
    # filled once the detectors ran; metadata only (the picture's hash is in the params).
    preprocessed: list = field(default_factory=list)
    # Reference images (core/references.py) at scale > 0, in the job's order; the family's
    # mechanism encodes them once per job.
    references: list = field(default_factory=list)

    def params(self, image: PlannedImage) -> dict:
        """Everything that determines the pixels of one image (hashed into params_sha256)."""
        style = self.styles[image.style]
        extra = {"engine_options": dict(self.engine_options)} if self.engine_options else {}
        if style.edit is not None:  # instruction edit: the edit text and the picture it edits
            extra["edit"] = {"text": style.edit, "image_sha256": self.init.sha256}
        elif self.init is not None:  # only when set: plain sweeps keep their hashes
            extra["init"] = {"image_sha256": self.init.sha256, "strength": self.init.strength}
        if self.region is not None:
            extra["region"] = {"mask_sha256": self.region.sha256}
        if self.fast is not None:  # fast mode changes the pixels: a resume never mixes the two
            extra["fast"] = dict(self.fast)
        if self.references:  # only when set: sweeps without references keep their hashes
            from ...core.references import MECHANISMS, params_entries

            extra["references"] = params_entries([(r.sha256, r.scale) for r in self.references],
                                                 MECHANISMS[self.models.arch].order_free)
        return {
            "engine": ENGINE_VERSION,
            "model": self.models.ids(),
            "dtype": self.dtype,
            "width": self.width,
            "height": self.height,
            "prompt": style.prompt,
            "negative": style.negative,
            "seed": image.seed,
            "steps": style.steps,
            "cfg": style.cfg,
            "scheduler": style.scheduler,
            "controls": [asdict(u) for u in style.units],
            **extra,
        }


def params_sha256(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def decode_control_image(png: bytes, field: str):
    """PIL RGB image from PNG bytes; JobError naming ``field`` when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as im:
            if im.format != "PNG":
                raise J.JobError(field, f"expected a PNG, got {im.format}")
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                raise J.JobError(field, f"16-bit/float PNG ({im.mode}) is not supported; send 8-bit RGB or gray")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, J.JobError):
            raise
        raise J.JobError(field, f"cannot decode PNG ({exc})") from None


def pixels_sha256(image) -> str:
    h = hashlib.sha256(f"{image.width}x{image.height}:RGB:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def resolve_style(style: J.Style, index: int, job: J.Job, presets: dict[str, Preset]) -> tuple[Preset | None, str, str]:
    preset = None
    if style.preset is not None:
        preset = presets.get(style.preset)
        if preset is None:
            known = ", ".join(sorted(presets)) or "none"
            raise J.JobError(f"styles[{index}].preset", f"unknown preset {style.preset!r} (known: {known})")
        preset = preset.for_family(families.preset_section(job.model.arch))  # edits: [flux], natural language
    prompt = style.prompt if style.prompt else (preset.prompt if preset else "")  # "": an edit text alone
    negative = style.negative if style.negative is not None else (preset.negative if preset else "")
    return preset, prompt, negative


def fast_mode(job: J.Job):
    """The fast mode (:class:`.families.base.FastMode`) of the job's family, or a one-line
    JobError on ``fast`` naming the family that has none (or what fast mode cannot do)."""
    from .families import family_for

    family = family_for(job.model.arch)
    if family.fast is None:
        raise J.JobError("fast", f"the {job.model.family} family has no fast mode; run it without --fast")
    if job.init_image is not None:
        raise J.JobError("fast", "fast mode makes new images from the controls; restyle and region edits "
                                 "(init_image) run in the exact mode only")
    if job.scheduler is not None and job.scheduler != family.fast.scheduler:
        raise J.JobError("scheduler", f"{job.scheduler!r}: fast mode ({family.fast.label}) samples with "
                                      f"{family.fast.scheduler}; leave scheduler unset")
    return family.fast


def fast_models(job: J.Job, models: ModelPlan, fast) -> ModelPlan:
    """The models of a fast job: the fast base in place of the family's default base, and
    the fast LoRA (the tiny families' own tiny versions, backend/models/tiny/fast.py)."""
    from dataclasses import replace

    from ..models import tiny

    changes = {}
    if fast.base is not None:
        if job.model.base is not None:
            raise J.JobError("model.base", f"fast mode for {job.model.family} runs on {fast.base}; "
                                           f"leave model.base unset with fast")
        changes["base"] = str(tiny.tiny_path(models.arch, fast.tiny_base)) if job.model.is_tiny else fast.base
    if fast.lora is not None:
        changes["lora"] = str(tiny.tiny_path(models.arch, fast.tiny_lora)) if job.model.is_tiny else fast.lora
    return replace(models, **changes)


def build_plan(job: J.Job, presets: dict[str, Preset], dtype: str = "float32",
               engine_options: dict | None = None) -> SweepPlan:
    """Resolve presets and models, decode control images, hash every image's parameters
    (``engine_options``: the engine's image-changing options, EngineOptions.image_changes)."""
    models = resolve_models(job.model, [c.type for c in job.controls], [c.model for c in job.controls])
    fast = fast_mode(job) if job.fast else None
    if fast is not None:
        models = fast_models(job, models, fast)
    flow = FLOW_FAMILIES.get(models.arch)
    if flow or models.arch in EDIT_ARCHES:
        label = flow.label if flow else job.model.family
        if job.scheduler is not None:
            raise J.JobError("scheduler", f"{job.scheduler!r}: {label} samples with its flow-matching Euler "
                                          f"scheduler only; leave scheduler unset")
        for name in ("width", "height"):
            if getattr(job, name) % 16:
                raise J.JobError(name, f"{getattr(job, name)} px: {label} needs a multiple of 16")
    init = None
    if job.init_image is not None and flow and not flow.restyle:
        raise J.JobError("init_image", f"restyle (an init image) runs with the {_labels(RESTYLE_ARCHS)} families; "
                                       f"{job.model.family} does not take one yet")
    if job.init_image is not None:
        image = decode_control_image(J.decode_png(job.init_image, "init_image"), "init_image")
        strength = float(job.strength) if job.strength is not None else None  # None: an instruction edit
        init = InitImage(image=image, sha256=pixels_sha256(image), strength=strength)
    region = None
    if job.mask_image is not None:
        import numpy as np

        from ...core import region as R

        if models.arch not in REGION_ARCHS:
            raise J.JobError("mask_image", f"region edits (inpainting) run with the {_labels(REGION_ARCHS)} "
                                           f"families; {job.model.family} does not take a mask yet")
        mask = decode_control_image(J.decode_png(job.mask_image, "mask_image"), "mask_image")
        alpha = np.asarray(mask.convert("L"), np.float32) / 255.0
        if not (alpha > 0).any():
            raise J.JobError("mask_image", "the mask is empty (no pixel above 0): nothing to edit")
        region = RegionMask(alpha=alpha, sha256=pixels_sha256(mask), coverage=R.coverage(alpha),
                            source=np.asarray(init.image, np.uint8))
    controls = []
    for i, c in enumerate(job.controls):
        image = decode_control_image(c.png_bytes(), f"controls[{i}].image")
        controls.append(ControlImage(type=c.type, image=image, sha256=pixels_sha256(image), preprocess=c.preprocess))

    styles = []
    for si, style in enumerate(job.styles):
        preset, prompt, negative = resolve_style(style, si, job, presets)

        def pick(job_value, preset_value, default):
            if job_value is not None:
                return job_value
            return preset_value if preset_value is not None else default

        units = []
        # FLUX.2 Klein has no ControlNet: its control images join its reference images
        refs = models.controlnets or [None] * len(job.controls) if models.arch in REFERENCE_CONTROL_ARCHES \
            else models.controlnets
        for ci, (c, img, ref) in enumerate(zip(job.controls, controls, refs)):
            d = preset.control(c.type) if preset else None
            start = pick(c.start, d.start if d else None, J.DEFAULT_START)
            end = pick(c.end, d.end if d else None, J.DEFAULT_END)
            if not start < end:
                raise J.JobError(f"controls[{ci}].start",
                                 f"with style {style.name!r} the window is start {start:g} >= end {end:g}")
            units.append(UnitSettings(
                type=c.type, image_sha256=img.sha256, preprocess=c.preprocess,
                scale=float(pick(c.scale, d.scale if d else None, J.DEFAULT_SCALE)),
                start=float(start), end=float(end),
                mode=pick(c.mode, d.mode if d else None, J.DEFAULT_MODE),
                model="reference image" if ref is None
                else ref.ref if ref.union_mode is None else f"{ref.ref}#mode={ref.union_mode}",
            ))
        if models.arch in EDIT_ARCHES:  # instruction edit (core/edit.py): the edit text, the look of the style
            from ...core.edit import edit_values

            if models.arch == "kontext" and style.negative:
                raise J.JobError(f"styles[{si}].negative", "FLUX.1 Kontext has no negative prompt "
                                                           "(guidance-distilled); say what you want in the edit text")
            prompt, negative, steps, cfg, scheduler = edit_values(models.arch, job, style, prompt)
        elif flow or fast is not None:
            # the flow families: cfg/steps from the family's own preset section only, one sampler;
            # fast mode: its steps, cfg and sampler where the job sets none
            values = getattr(presets[style.preset], models.arch) if flow and style.preset is not None else {}
            if flow and style.negative and flow.no_negative:
                raise J.JobError(f"styles[{si}].negative", f"{flow.label} has no negative prompt "
                                                           f"({flow.no_negative}); describe what you want instead")
            if fast is not None:
                steps = int(pick(job.steps, fast.steps, J.DEFAULT_STEPS))
                own_cfg = values.get("cfg") if flow else (preset.cfg if preset else None)
                cfg = float(pick(job.cfg, fast.cfg if fast.cfg is not None else own_cfg,
                                 flow.defaults["cfg"] if flow else J.DEFAULT_CFG))
                scheduler = fast.scheduler
            else:
                steps = int(pick(job.steps, values.get("steps"), flow.defaults["steps"]))
                cfg = float(pick(job.cfg, values.get("cfg"), flow.defaults["cfg"]))
                if flow.fixed_cfg is not None and cfg != flow.fixed_cfg:
                    raise J.JobError("cfg", f"{cfg:g}: {flow.label} samples with cfg {flow.fixed_cfg:g} only "
                                            f"(no classifier-free guidance); leave it unset")
                scheduler = FLUX_SCHEDULER
            if flow and flow.no_negative:
                negative = ""
        else:
            steps = int(pick(job.steps, preset.steps if preset else None, J.DEFAULT_STEPS))
            cfg = float(pick(job.cfg, preset.cfg if preset else None, J.DEFAULT_CFG))
            scheduler = pick(job.scheduler, preset.scheduler if preset else None, J.DEFAULT_SCHEDULER)
        styles.append(StyleSettings(
            name=style.name, preset=style.preset, prompt=prompt, negative=negative,
            steps=steps, cfg=cfg, scheduler=scheduler, units=tuple(units), edit=style.edit,
        ))

    references = plan_references(job)
    from .families.reference_models import REAL as _REFERENCE_MODELS

    if references and models.arch in _REFERENCE_MODELS:  # FLUX.2 Klein needs no reference model
        from dataclasses import replace

        from ..models.registry import reference_model

        models = replace(models, references=reference_model(models.arch, job.model.is_tiny))
    plan = SweepPlan(job=job, models=models, dtype=dtype, width=job.width, height=job.height,
                     controls=controls, styles=styles, images=[], engine_options=dict(engine_options or {}), init=init,
                     region=region, fast=fast.record() if fast is not None else None, references=references)
    for item in job.items():
        si = next(i for i, s in enumerate(styles) if s.name == item.style)
        draft = PlannedImage(item.index, si, item.seed, item.file, "")
        plan.images.append(PlannedImage(item.index, si, item.seed, item.file, params_sha256(plan.params(draft))))
    return plan


def plan_references(job: J.Job) -> list[ReferenceImage]:
    """The job's reference images that act (scale > 0), decoded (any format the picture
    route reads; a JobError naming ``references[i].image`` when one is bad or too small)."""
    import base64

    from .pictures import decode_picture

    out = []
    for i, ref in enumerate(job.references or []):
        if ref.scale <= 0:  # scale 0: left out entirely (the very pixels of no reference)
            continue
        image, _fmt, _seen = decode_picture(base64.b64decode(ref.image), f"references[{i}].image", long_side=1024)
        out.append(ReferenceImage(image=image, sha256=pixels_sha256(image), scale=float(ref.scale)))
    return out
