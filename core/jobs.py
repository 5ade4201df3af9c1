"""The generation job: what the add-on (or any script) sends to the backend.

Plain dataclasses, stdlib only: Blender's Python builds jobs with this module and sends
them with a stdlib HTTP client, and the backend validates every incoming job with the very
same code (one source of truth). Every validation error is a :class:`JobError` whose
``field`` names the bad value the way a user would write it, e.g. ``controls[1].scale``.

Wire format (JSON)::

    {
      "model": {"family": "tiny"},                       # sd15 | sdxl | flux | qwen | zimage | tiny | tiny-sdxl | ...
      "controls": [
        {"type": "depth", "image": "<base64 PNG>", "scale": 0.9, "start": 0.0, "end": 1.0,
         "mode": "balanced"},
        {"type": "lines", "image": "<base64 PNG>", "scale": 0.6, "start": 0.2, "end": 1.0}
      ],
      "styles": ["modern", {"name": "mine", "prompt": "a loft", "negative": "blurry"}],
      "seeds": [0, 1, 2],
      "width": 512, "height": 512, "steps": 30, "cfg": 7.0, "scheduler": "unipc",
      "output_dir": "/abs/out", "name_prefix": "Camera", "skip_existing": true,
      "init_image": "<base64 PNG>", "strength": 0.6,          # restyle (optional, core/restyle.py)
      "mask_image": "<base64 gray PNG>",                      # region edit of init_image (core/region.py)
      "fast": false,                                          # the family's fast mode (changes pixels)
      "preview_every": 4                                      # a preview every N steps (0: none)
    }

An instruction edit (core/edit.py) has ``"model": "kontext"`` or ``"qwen-edit"``, an
``init_image``, no controls (``[]``), and an ``"edit": "make it snowy"`` in every style.

Fields left out (or ``null``) take the style preset's value, then the built-in default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from . import families as _families

# ---------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------

#: Model families (core/families.py), in the order messages list them. The ``tiny-*`` ones
#: are the shrunk, random-weight test families; the edit ones (core/edit.py) edit the job's
#: init_image by each style's edit text.
FAMILIES = tuple(_families.FAMILIES)
#: other spellings -> family
FAMILY_ALIASES = dict(_families.ALIASES)
#: family -> the architecture the engine runs
FAMILY_ARCH = {f.name: f.arch for f in _families.FAMILY_LIST}

#: Control image types. ``lines`` is the add-on's own line pass (white lines on black).
CONTROL_TYPES = ("depth", "normal", "seg", "lines", "canny", "mlsd", "lineart")
#: Types that share the ``lines`` preset defaults when a preset does not name them.
LINE_TYPES = ("lines", "canny", "mlsd", "lineart")


def control_types_for(family: str, union: bool = False) -> tuple[str, ...]:
    """The unit types a family's default ControlNets take (docs/models.md): SD 1.5 all of
    them; SDXL depth and lines (normal and seg with its ControlNet-Union); FLUX.1 and Z-Image
    depth and lines (canny-style edges; their union nets have no normal or seg). A family name may
    be an alias; an unknown one (a local model folder: SD 1.5) gets SD 1.5's."""
    arch = _families.ARCHES[FAMILY_ARCH.get(FAMILY_ALIASES.get(family, family), "sd15")]
    if arch.all_unit_types or (union and arch.all_unit_types_with_union):
        return CONTROL_TYPES
    return ("depth",) + LINE_TYPES

#: balanced | prompt ("my prompt is more important") | controlnet ("ControlNet is more
#: important"), see CONVENTIONS.md.
CONTROL_MODES = ("balanced", "prompt", "controlnet")

#: Detectors the backend can run on a photo or sketch before using it as a control.
PREPROCESSORS = ("none", "canny", "mlsd", "lineart", "depth", "normal")

SCHEDULERS = ("unipc", "dpmpp_2m_karras", "euler_a", "ddim")
SCHEDULER_ALIASES = {
    "uni_pc": "unipc",
    "unipcmultistep": "unipc",
    "dpm++ 2m karras": "dpmpp_2m_karras",
    "dpmpp-2m-karras": "dpmpp_2m_karras",
    "dpm++_2m_karras": "dpmpp_2m_karras",
    "euler a": "euler_a",
    "euler-a": "euler_a",
    "euler_ancestral": "euler_a",
}

# Defaults used when neither the job nor the style preset sets a value.
DEFAULT_STEPS = 30
DEFAULT_CFG = 7.0
DEFAULT_SCHEDULER = "unipc"
DEFAULT_SCALE = 1.0
DEFAULT_START = 0.0
DEFAULT_END = 1.0
DEFAULT_MODE = "balanced"

# Limits.
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 32, 4096, 8
MAX_STEPS = 500
MAX_CFG = 50.0
MAX_SCALE = 2.0
#: Seeds are what a ``torch.Generator`` seed round-trips as in metadata (and what users
#: type): unsigned 32-bit.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 1024
MAX_STYLES = 64
MAX_CONTROLS = 8
MAX_BATCH = 64
#: A control image (or a photo to preprocess): see core/limits.py.
from .limits import FORMATS_TEXT, MAX_PNG_BYTES, MAX_PNG_PIXELS, sniff  # noqa: E402 - MAX_PNG_* re-exported as J.MAX_PNG_*
#: Prompts are cut to the text encoder's window (77 CLIP tokens) by the backend, which
#: says so in a warning; this is only a bound on what is worth sending at all.
MAX_PROMPT_CHARS = 4000

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class JobError(ValueError):
    """A job field is invalid. ``field`` is its path (``controls[0].image``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")

    def as_dict(self) -> dict:
        return {"type": "ValidationError", "field": self.field, "message": str(self)}


# ---------------------------------------------------------------------------------------
# Small checked readers
# ---------------------------------------------------------------------------------------


def _check_keys(data: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(data, dict):
        raise JobError(where or "job", f"expected a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise JobError(name, f"unknown field (known: {', '.join(allowed)})")
    return data


def _int(value: Any, name: str, lo: int, hi: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(name, f"expected an integer, got {_short(value)}")
    if not lo <= value <= hi:
        raise JobError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(value: Any, name: str, lo: float, hi: float, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobError(name, f"expected a number, got {_short(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise JobError(name, f"must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise JobError(name, f"must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _str(value: Any, name: str, optional: bool = False, max_len: int = MAX_PROMPT_CHARS) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise JobError(name, f"expected a string, got {_short(value)}")
    if len(value) > max_len:
        raise JobError(name, f"longer than {max_len} characters ({len(value)})")
    if "\0" in value:
        raise JobError(name, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise JobError(name, "is not valid Unicode text (a lone surrogate escape)") from None
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a bad value, cut so an error message never echoes a huge payload."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise JobError(name, f"expected true or false, got {_short(value)}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...], aliases: dict | None = None,
            optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise JobError(name, f"expected one of {', '.join(choices)}, got {_short(value)}")
    key = value.strip().lower()
    key = (aliases or {}).get(key, key)
    if key not in choices:
        raise JobError(name, f"unknown value {_short(value)} (expected one of {', '.join(choices)})")
    return key


def normalize_scheduler(value: str, name: str = "scheduler") -> str:
    return _choice(value, name, SCHEDULERS, SCHEDULER_ALIASES)


# ---------------------------------------------------------------------------------------
# PNG helpers (stdlib only: Blender has no PIL)
# ---------------------------------------------------------------------------------------


def encode_png(png_bytes: bytes) -> str:
    """Base64 text for a PNG file's bytes, as the ``image`` field of a control wants it."""
    return base64.b64encode(png_bytes).decode("ascii")


def decode_png(text: str, name: str = "image") -> bytes:
    """Bytes of a base64 PNG (a ``data:image/png;base64,`` prefix is accepted)."""
    if not isinstance(text, str) or not text:
        raise JobError(name, "expected a base64-encoded PNG string")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if "base64" not in head:
            raise JobError(name, "data URL is not base64")
    if len(text) > (MAX_PNG_BYTES + 2) // 3 * 4:
        raise JobError(name, f"PNG is larger than the limit of {MAX_PNG_BYTES // 2**20} MiB "
                             f"(about {len(text) * 3 // 4 / 2**20:.1f} MiB sent)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobError(name, f"not valid base64 ({exc})") from None
    png_size(data, name)
    return data


def png_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises JobError when it is not a PNG."""
    if data[:8] != _PNG_SIGNATURE:
        raise JobError(name, "not a PNG file (bad signature)")
    if len(data) < 33:
        raise JobError(name, f"truncated PNG ({len(data)} bytes, not even a complete header)")
    if len(data) > MAX_PNG_BYTES:
        raise JobError(name, f"PNG is larger than the limit of {MAX_PNG_BYTES // 2**20} MiB")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise JobError(name, "not a PNG file (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise JobError(name, f"PNG has zero size ({width}x{height})")
    if width * height > MAX_PNG_PIXELS:
        raise JobError(name, f"PNG is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit "
                             f"of {MAX_PNG_PIXELS / 1e6:.0f} megapixels")
    return int(width), int(height)


# ---------------------------------------------------------------------------------------
# Job pieces
# ---------------------------------------------------------------------------------------


@dataclass
class Control:
    """One control image and how strongly / when it steers the denoising."""

    type: str
    image: str  # base64 PNG
    scale: float | None = None  # 0..2, None = preset / 1.0
    start: float | None = None  # fraction of the steps, None = preset / 0.0
    end: float | None = None  # fraction of the steps, None = preset / 1.0
    mode: str | None = None  # balanced | prompt | controlnet, None = preset / balanced
    model: str | None = None  # ControlNet id, local folder or file (overrides the family's)
    preprocess: str = "none"  # run a detector on a photo/sketch first (PREPROCESSORS)

    FIELDS = ("type", "image", "scale", "start", "end", "mode", "model", "preprocess")

    @classmethod
    def from_dict(cls, data: Any, where: str = "control") -> "Control":
        _check_keys(data, cls.FIELDS, where)
        if "type" not in data:
            raise JobError(f"{where}.type", "required")
        if "image" not in data:
            raise JobError(f"{where}.image", "required")
        return cls(**{k: data[k] for k in cls.FIELDS if k in data})

    def validate(self, where: str = "control") -> None:
        self.type = _choice(self.type, f"{where}.type", CONTROL_TYPES)
        self.scale = _float(self.scale, f"{where}.scale", 0.0, MAX_SCALE, optional=True)
        self.start = _float(self.start, f"{where}.start", 0.0, 1.0, optional=True)
        self.end = _float(self.end, f"{where}.end", 0.0, 1.0, optional=True)
        start = DEFAULT_START if self.start is None else self.start
        end = DEFAULT_END if self.end is None else self.end
        if self.start is not None or self.end is not None:
            if not start < end:
                bad = "end" if self.end is not None else "start"
                raise JobError(f"{where}.{bad}", f"start ({start:g}) must be below end ({end:g})")
        self.mode = _choice(self.mode, f"{where}.mode", CONTROL_MODES, optional=True)
        self.model = _str(self.model, f"{where}.model", optional=True, max_len=1000)
        self.preprocess = _choice(self.preprocess, f"{where}.preprocess", PREPROCESSORS)
        decode_png(self.image, f"{where}.image")

    def png_bytes(self) -> bytes:
        return decode_png(self.image)


@dataclass
class Style:
    """A style: a preset name, or an inline prompt (optionally on top of a preset)."""

    name: str | None = None
    preset: str | None = None
    prompt: str | None = None
    negative: str | None = None
    edit: str | None = None  # instruction edit (core/edit.py): what to change in the job's init_image

    FIELDS = ("name", "preset", "prompt", "negative", "edit")

    @classmethod
    def from_dict(cls, data: Any, where: str = "style") -> "Style":
        if isinstance(data, str):  # shorthand: a preset name
            return cls(name=data, preset=data)
        _check_keys(data, cls.FIELDS, where)
        return cls(**{k: data[k] for k in cls.FIELDS if k in data})

    def validate(self, where: str = "style", index: int = 0) -> None:
        self.preset = _str(self.preset, f"{where}.preset", optional=True, max_len=64)
        self.prompt = _str(self.prompt, f"{where}.prompt", optional=True)
        self.negative = _str(self.negative, f"{where}.negative", optional=True)
        if self.edit is not None:
            from .edit import check_edit

            try:
                self.edit = check_edit(self.edit, f"{where}.edit")
            except ValueError as exc:
                raise JobError(f"{where}.edit", str(exc).split(": ", 1)[-1]) from None
        if self.preset is None and not self.prompt and self.edit is None:
            raise JobError(f"{where}.prompt", "a style needs a preset name or a prompt")
        if self.name is None:
            self.name = self.preset if self.preset is not None else f"style{index + 1}"
        self.name = _str(self.name, f"{where}.name", max_len=64)
        if not _NAME_RE.match(self.name):
            raise JobError(f"{where}.name", f"{self.name!r} must be letters, digits, '-', '_' or '.'")


@dataclass
class ModelSpec:
    """Which models: a family plus optional overrides (HF ids, local folders or files)."""

    family: str = "sd15"
    base: str | None = None  # base pipeline folder / id / single file
    vae: str | None = None  # VAE override (SDXL default: the fp16-fix VAE)
    controlnets: dict[str, str] = field(default_factory=dict)  # control type -> model
    union: bool = False  # SDXL: one ControlNet-Union for every control

    FIELDS = ("family", "base", "vae", "controlnets", "union")

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> "ModelSpec":
        if isinstance(data, str):  # shorthand: a family name
            return cls(family=data)
        _check_keys(data, cls.FIELDS, where)
        return cls(**{k: data[k] for k in cls.FIELDS if k in data})

    def validate(self, where: str = "model") -> None:
        self.family = _choice(self.family, f"{where}.family", FAMILIES, FAMILY_ALIASES)
        self.base = _str(self.base, f"{where}.base", optional=True, max_len=1000)
        self.vae = _str(self.vae, f"{where}.vae", optional=True, max_len=1000)
        if not isinstance(self.controlnets, dict):
            raise JobError(f"{where}.controlnets", "expected an object {control type: model}")
        for key, value in self.controlnets.items():
            if key not in CONTROL_TYPES and key != "union":
                raise JobError(f"{where}.controlnets.{key}", f"unknown control type {key!r}")
            _str(value, f"{where}.controlnets.{key}", max_len=1000)
        self.union = _bool(self.union, f"{where}.union")
        if self.union and not _families.ARCHES[self.arch].union:
            raise JobError(f"{where}.union", "ControlNet-Union exists for the SDXL and FLUX families only")

    @property
    def is_sdxl(self) -> bool:
        return self.family in FAMILY_ARCH and self.arch == "sdxl"

    @property
    def is_tiny(self) -> bool:
        return self.family.startswith("tiny")  # core/families.py names every tiny family tiny-*

    @property
    def arch(self) -> str:
        return FAMILY_ARCH[self.family]


@dataclass
class Job:
    """A sweep: every style x every seed over the same control images."""

    controls: list[Control]
    styles: list[Style]
    seeds: list[int]
    model: ModelSpec = field(default_factory=ModelSpec)
    width: int | None = None  # None: the control images' width
    height: int | None = None
    steps: int | None = None  # None: the style preset's, then DEFAULT_STEPS
    cfg: float | None = None
    scheduler: str | None = None
    output_dir: str | None = None  # None: the backend's own output folder
    name_prefix: str = ""  # e.g. the camera name: <prefix>_<style>_s<seed>.png
    skip_existing: bool = True  # resume: keep PNGs already made with the same parameters (False: remake all)
    max_batch: int | None = None  # cap on images per UNet batch (None: by memory)
    contact_sheet: bool = True
    # Restyle (img2img, core/restyle.py): the picture to start from (base64 PNG, resized to
    # the job's size by the backend) and how far to move away from it (0 precise .. 1 creative).
    init_image: str | None = None
    strength: float | None = None  # None: DEFAULT_STRENGTH when init_image is set (1 with a mask_image)
    # Region edit (core/region.py): the feathered alpha as an 8-bit gray PNG of the job's size;
    # only where it is > 0 is init_image regenerated, and blended back by it.
    mask_image: str | None = None
    # Fast mode (labelled, changes the pixels): the family's few-step variant (SD 1.5 / SDXL:
    # LCM-LoRA and the LCM sampler; FLUX.1: FLUX.1-schnell). Recorded in every image's parameters.
    fast: bool = False
    # Previews while denoising: a small PNG of each image every this many steps (None: the
    # backend's default, 4; 0: none). Never changes the images.
    preview_every: int | None = None
    # Reference images (core/references.py): [{"image": base64, "scale": 0..2}], the look to
    # steer towards (IP-Adapter, FLUX.1 Redux or FLUX.2 Klein's own reference images).
    references: list | None = None

    FIELDS = ("controls", "styles", "seeds", "model", "width", "height", "steps", "cfg",
              "scheduler", "output_dir", "name_prefix", "skip_existing", "max_batch",
              "contact_sheet", "init_image", "strength", "mask_image", "fast", "preview_every",
              "references")

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> "Job":
        """Build and validate a job from decoded JSON. Raises JobError."""
        _check_keys(data, cls.FIELDS, "")
        for required in ("controls", "styles", "seeds"):
            if required not in data:
                raise JobError(required, "required")
        for name in ("controls", "styles", "seeds"):
            if not isinstance(data[name], list):
                raise JobError(name, f"expected a list, got {type(data[name]).__name__}")
        kwargs = {k: data[k] for k in cls.FIELDS if k in data}
        kwargs["controls"] = [Control.from_dict(c, f"controls[{i}]") for i, c in enumerate(data["controls"])]
        kwargs["styles"] = [Style.from_dict(s, f"styles[{i}]") for i, s in enumerate(data["styles"])]
        if "model" in data:
            kwargs["model"] = ModelSpec.from_dict(data["model"] if data["model"] is not None else {}, "model")
        job = cls(**kwargs)
        job.validate()
        return job

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        try:
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            raise JobError("body", f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        except ValueError as exc:
            raise JobError("body", f"not valid JSON ({exc})") from None
        except RecursionError:
            raise JobError("body", "JSON nested too deeply") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- validation ------------------------------------------------------------------
    def validate(self) -> "Job":
        """Check every field (normalising aliases in place). Raises JobError."""
        if not isinstance(self.model, ModelSpec):
            raise JobError("model", "expected a model object")
        self.model.validate("model")

        edit = self._check_edit()
        if not (0 if edit else 1) <= len(self.controls) <= MAX_CONTROLS:
            raise JobError("controls", f"between 1 and {MAX_CONTROLS} controls are needed, got {len(self.controls)}")
        for i, control in enumerate(self.controls):
            control.validate(f"controls[{i}]")

        if not 1 <= len(self.styles) <= MAX_STYLES:
            raise JobError("styles", f"between 1 and {MAX_STYLES} styles are needed, got {len(self.styles)}")
        seen: dict[str, int] = {}
        for i, style in enumerate(self.styles):
            style.validate(f"styles[{i}]", i)
            if style.name in seen:
                raise JobError(f"styles[{i}].name", f"{style.name!r} already used by styles[{seen[style.name]}]")
            seen[style.name] = i

        if not 1 <= len(self.seeds) <= MAX_SEEDS:
            raise JobError("seeds", f"between 1 and {MAX_SEEDS} seeds are needed, got {len(self.seeds)}")
        for i, seed in enumerate(self.seeds):
            _int(seed, f"seeds[{i}]", 0, MAX_SEED)
        if len(set(self.seeds)) != len(self.seeds):
            dup = next(s for s in self.seeds if self.seeds.count(s) > 1)
            raise JobError("seeds", f"seed {dup} appears twice")

        self.width = _int(self.width, "width", MIN_SIZE, MAX_SIZE, optional=True)
        self.height = _int(self.height, "height", MIN_SIZE, MAX_SIZE, optional=True)
        self._check_sizes()

        self.steps = _int(self.steps, "steps", 1, MAX_STEPS, optional=True)
        self.cfg = _float(self.cfg, "cfg", 0.0, MAX_CFG, optional=True)
        self.scheduler = _choice(self.scheduler, "scheduler", SCHEDULERS, SCHEDULER_ALIASES, optional=True)
        self.output_dir = _str(self.output_dir, "output_dir", optional=True, max_len=4096)
        self.name_prefix = _str(self.name_prefix if self.name_prefix is not None else "", "name_prefix", max_len=128)
        if any(c in self.name_prefix for c in "/\\\0") or self.name_prefix.startswith("."):
            raise JobError("name_prefix", "must not contain path separators or start with '.'")
        self.skip_existing = _bool(self.skip_existing, "skip_existing")
        self.max_batch = _int(self.max_batch, "max_batch", 1, MAX_BATCH, optional=True)
        self.contact_sheet = _bool(self.contact_sheet, "contact_sheet")
        self.fast = _bool(self.fast, "fast")
        self.preview_every = _int(self.preview_every, "preview_every", 0, MAX_STEPS, optional=True)
        self.strength = _float(self.strength, "strength", 0.0, 1.0, optional=True)
        if self.mask_image is not None:
            if self.init_image is None:
                raise JobError("mask_image", "a region edit needs the init_image it edits")
            for name in ("mask_image", "init_image"):
                size = png_size(decode_png(getattr(self, name), name), name)
                if size != (self.width, self.height):
                    raise JobError(name, f"is {size[0]}x{size[1]}; a region edit needs the job's size "
                                         f"{self.width}x{self.height}")
            if self.strength is None:
                self.strength = 1.0
        if self.init_image is not None:
            decode_png(self.init_image, "init_image")
            if self.strength is None:
                from .restyle import DEFAULT_STRENGTH

                self.strength = DEFAULT_STRENGTH
        elif self.strength is not None:
            raise JobError("strength", f"{self.strength:g} given without an init_image to restyle")
        if edit:
            self.strength = None  # an instruction edit has none (refused above when given)
        if self.references:
            from .references import reference_family_problem, reference_scale_problem

            self.references = check_references(self.references)
            problem = reference_family_problem(self.model.arch, len(self.references), len(self.controls),
                                               self.model.family, init=self.init_image is not None) \
                or reference_scale_problem(self.model.arch, [r.scale for r in self.references], self.model.family)
            if problem:
                raise JobError("references", problem)
        else:
            self.references = None
        return self

    def _check_edit(self) -> bool:
        """Instruction edits (core/edit.py): every style has an edit text, the model is an
        edit family, there is an init_image to edit and no control unit, mask or strength.
        True for an edit job."""
        from .edit import is_edit_family

        edits = [isinstance(s, Style) and s.edit is not None for s in self.styles]
        family = FAMILY_ALIASES.get(self.model.family, self.model.family) if isinstance(self.model, ModelSpec) else ""
        if not any(edits):
            if is_edit_family(family):
                raise JobError("styles", f"model {family} edits the init_image by instruction: give each style "
                                         f"an edit text")
            return False
        if not all(edits):
            bad = edits.index(False)
            raise JobError(f"styles[{bad}].edit", "required: in an edit job every style has an edit text")
        if not is_edit_family(family):
            raise JobError("model.family", f"{family!r} makes images from text; instruction edits need kontext or "
                                           f"qwen-edit (tiny-kontext, tiny-qwen-edit offline)")
        if self.init_image is None:
            raise JobError("init_image", "an instruction edit needs the picture it edits (the beauty pass or a PNG)")
        if self.controls:
            raise JobError("controls", f"{len(self.controls)} control unit(s) given: FLUX.1 Kontext and "
                                       f"Qwen-Image-Edit have no ControlNet (the picture holds the geometry)")
        if self.mask_image is not None:
            raise JobError("mask_image", "an instruction edit takes no mask (say where in the edit text)")
        if self.strength is not None:
            raise JobError("strength", f"{self.strength} given: an instruction edit has no strength")
        return True

    def _check_sizes(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value % SIZE_MULTIPLE:
                raise JobError(name, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
        size = None  # (w, h) of the controls used as they are
        for i, control in enumerate(self.controls):
            if control.preprocess != "none":
                continue  # a photo: the detector resizes and pads it to the job size
            w, h = png_size(control.png_bytes(), f"controls[{i}].image")
            if size is None:
                size = (w, h)
                first = i
            elif (w, h) != size:
                raise JobError(f"controls[{i}].image",
                               f"is {w}x{h} but controls[{first}].image is {size[0]}x{size[1]}")
            if self.width is not None and w != self.width:
                raise JobError(f"controls[{i}].image", f"is {w} px wide but width is {self.width}")
            if self.height is not None and h != self.height:
                raise JobError(f"controls[{i}].image", f"is {h} px high but height is {self.height}")
        if size is None and not self.controls and self.init_image is not None:  # an instruction edit
            size = png_size(decode_png(self.init_image, "init_image"), "init_image")
            for name, value in zip(("width", "height"), size):
                if getattr(self, name) is not None and getattr(self, name) != value:
                    raise JobError("init_image", f"is {size[0]}x{size[1]} but {name} is {getattr(self, name)}")
            for name, value in zip(("width", "height"), size):
                if value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
                    raise JobError("init_image", f"{name} {value} must be a multiple of {SIZE_MULTIPLE} from "
                                                 f"{MIN_SIZE} to {MAX_SIZE}")
            self.width, self.height = size
            return
        if size is None and (self.width is None or self.height is None):
            raise JobError("width", "width and height are required when every control is preprocessed")
        if size is not None:
            for name, value in zip(("width", "height"), size):
                if value % SIZE_MULTIPLE:
                    raise JobError(f"controls[{first}].image",
                                   f"{name} {value} is not a multiple of {SIZE_MULTIPLE}")
                if not MIN_SIZE <= value <= MAX_SIZE:
                    raise JobError(f"controls[{first}].image",
                                   f"{name} {value} is outside {MIN_SIZE}..{MAX_SIZE}")
            self.width, self.height = size

    # -- sweep plan --------------------------------------------------------------------
    def items(self) -> list["SweepItem"]:
        """Every (style, seed) image of the sweep in row-major order (rows = styles)."""
        out = []
        for si, style in enumerate(self.styles):
            for ki, seed in enumerate(self.seeds):
                out.append(SweepItem(index=si * len(self.seeds) + ki, style=style.name, seed=seed,
                                     file=image_filename(self.name_prefix, style.name, seed)))
        return out


@dataclass(frozen=True)
class SweepItem:
    index: int  # position in the sweep: style_index * len(seeds) + seed_index
    style: str
    seed: int
    file: str  # file name inside the output folder


def safe_name(text: str) -> str:
    """A file-name-safe version of a camera or style name (spaces and odd chars -> '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def image_filename(prefix: str, style: str, seed: int) -> str:
    """``<prefix>_<style>_s<seed>.png``, or ``<style>_s<seed>.png`` without a prefix."""
    stem = f"{safe_name(style)}_s{seed}"
    return f"{safe_name(prefix)}_{stem}.png" if prefix else f"{stem}.png"


def sidecar_filename(prefix: str, name: str) -> str:
    """``manifest.json`` / ``contact_sheet.png``, prefixed like the images when a prefix is set."""
    return f"{safe_name(prefix)}_{name}" if prefix else name


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7,10-11"`` -> ``[0, 1, 2, 3, 7, 10, 11]`` (for command lines and UI fields)."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise JobError("seeds", f"{part!r} is not a seed or a range like 0-7") from None
        if b < a:
            raise JobError("seeds", f"range {part!r} runs backwards")
        if a < 0 or b > MAX_SEED:
            raise JobError("seeds", f"{part!r}: seeds are 0..{MAX_SEED}")
        if b - a >= MAX_SEEDS:
            raise JobError("seeds", f"more than {MAX_SEEDS} seeds")
        seeds.extend(range(a, b + 1))
    if not seeds:
        raise JobError("seeds", "no seeds given")
    out = list(dict.fromkeys(seeds))
    if len(out) > MAX_SEEDS:
        raise JobError("seeds", f"more than {MAX_SEEDS} seeds")
    return out


def check_references(items, arch: str | None = None) -> list:
    """The job's ``references`` field checked (JobError naming the bad one): a list of
    ``{"image": base64, "scale": 0..2}`` (core/references.py), at most ``MAX_REFERENCES``,
    and for a known ``arch`` only a family that takes references, no more than it takes."""
    from . import references as R

    if items is None:
        return []
    if not isinstance(items, list):
        raise JobError("references", f"expected a list, got {type(items).__name__}")
    if len(items) > R.MAX_REFERENCES:
        raise JobError("references", f"{len(items)} references; at most {R.MAX_REFERENCES} are taken")
    out = []
    for i, item in enumerate(items):
        where = f"references[{i}]"
        if isinstance(item, R.Reference):
            item = {"image": item.image, "scale": item.scale}
        _check_keys(item, R.Reference.FIELDS, where)
        if "image" not in item:
            raise JobError(f"{where}.image", "required")
        scale = _float(item.get("scale", R.DEFAULT_REFERENCE_SCALE), f"{where}.scale", 0.0, R.MAX_REFERENCE_SCALE)
        image = item["image"]
        if not isinstance(image, str) or not image:
            raise JobError(f"{where}.image", "expected a base64-encoded image")
        if len(image) > (MAX_PNG_BYTES + 2) // 3 * 4:
            raise JobError(f"{where}.image", f"larger than the limit of {MAX_PNG_BYTES // 2**20} MiB")
        try:
            head = base64.b64decode(image[:64], validate=True)
        except (binascii.Error, ValueError):
            raise JobError(f"{where}.image", "not valid base64") from None
        if sniff(head) is None:
            raise JobError(f"{where}.image", f"not an image ({FORMATS_TEXT} are read)")
        out.append(R.Reference(image, scale))
    if arch is not None and out:
        family_problem = R.reference_family_problem(arch, len(out))
        if family_problem:
            raise JobError("references", family_problem)
    return out
