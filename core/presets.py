"""Style presets: TOML files with a prompt, a negative prompt and the sampling and control
settings that suit the style. Stdlib only (tomllib), so Blender lists presets too.

A preset file ``<name>.toml`` (the file name is the preset name)::

    label = "Modern"
    description = "Clean lines, large glazing, daylight."
    tags = ["interior", "exterior"]
    prompt = "modern interior design, clean lines, natural light"
    negative = "blurry, lowres, distorted perspective"
    cfg = 7.0
    steps = 30
    scheduler = "unipc"            # unipc | dpmpp_2m_karras | euler_a | ddim

    [controls.depth]               # per control type: scale, start, end, mode
    scale = 0.9
    range = "view"                 # depth only: view | sequence | scene | manual
    [controls.lines]               # canny/mlsd/lineart fall back to "lines"
    scale = 0.6
    start = 0.0
    end = 1.0
    line_style = "lineart"         # line types only: auto | canny | lineart | mlsd | softedge

    [sdxl]                         # optional overrides for the SDXL families
    cfg = 6.0
    [sdxl.controls.depth]
    scale = 0.5

    [flux]                         # overrides for the FLUX.1 families: a natural-language
    prompt = "A modern interior ..."   # prompt, cfg = FLUX.1-dev's distilled guidance (~3.5),
    cfg = 3.5                      # no negative prompt and no scheduler (flow matching)
    steps = 28
    [flux.controls.depth]
    scale = 0.6

    [qwen]                         # overrides for the Qwen-Image families: a natural-language
    prompt = "A modern interior ..."   # prompt and negative, cfg = true CFG (~4, two transformer
    negative = "blurry, ..."       # passes per step), no scheduler (flow matching)
    cfg = 4.0
    steps = 40
    [qwen.controls.depth]
    scale = 0.8
    [zimage]                       # overrides for the Z-Image families (Z-Image-Turbo): a
    prompt = "A modern interior ..."   # natural-language prompt, about 8 steps, cfg 1 (no
    cfg = 1.0                      # CFG, no negative prompt), flow matching
    steps = 8

Built-in presets live in ``presets/`` at the repository root. A user folder
(``$ARCHVIZ_PRESET_DIR``, else ``$XDG_CONFIG_HOME/archviz/presets`` or
``~/.config/archviz/presets``) adds presets or overrides built-in ones of the same name.
Every problem raises :class:`PresetError` naming the file and the key.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import families
from .jobs import (CONTROL_MODES, CONTROL_TYPES, LINE_TYPES, MAX_CFG, MAX_PROMPT_CHARS, MAX_SCALE, MAX_STEPS,
                   SCHEDULER_ALIASES, SCHEDULERS)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

#: family section -> its keys (core/families.py: ``[sdxl]`` takes every sampling key; FLUX.1
#: and Z-Image-Turbo have no negative prompt and one sampler, flow-matching Euler; Qwen-Image
#: has true CFG with a negative prompt and one sampler)
FAMILY_SECTIONS = families.section_keys()
TOP_KEYS = ("label", "description", "tags", "prompt", "negative", "cfg", "steps", "scheduler",
            "controls") + tuple(FAMILY_SECTIONS) + ("reference",)
#: ``[reference]``: the style's reference images (core/references.py), paths relative to the
#: preset file, and their scale
REFERENCE_KEYS = ("images", "scale")
SDXL_KEYS = FAMILY_SECTIONS["sdxl"]
FLUX_KEYS = FAMILY_SECTIONS["flux"]
QWEN_KEYS = FAMILY_SECTIONS["qwen"]
ZIMAGE_KEYS = FAMILY_SECTIONS["zimage"]
CONTROL_KEYS = ("scale", "start", "end", "mode", "range", "line_style")
DEPTH_RANGES = ("view", "sequence", "scene", "manual")  # core.passes.DEPTH_MODES
LINE_STYLE_CHOICES = ("auto", "canny", "lineart", "mlsd", "softedge")  # core.passes.LINE_STYLES + auto

#: Limits on one preset file (a preset is a few KB; the built-in ones are under 3 KB).
MAX_PRESET_BYTES = 64 * 1024
#: Nesting of tables and arrays (``[flux.controls.depth]`` is 3 deep).
MAX_PRESET_DEPTH = 8
#: label, description and each tag; prompts follow the jobs' 4000-character rule.
MAX_LABEL_CHARS = 500
MAX_TAGS = 32


class PresetError(ValueError):
    """A preset file is wrong. ``file`` and ``key`` say where."""

    def __init__(self, file: str | os.PathLike, key: str, message: str):
        self.file = str(file)
        self.key = key
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


@dataclass(frozen=True)
class ControlDefaults:
    scale: float | None = None
    start: float | None = None
    end: float | None = None
    mode: str | None = None
    range: str | None = None  # depth: how the depth image's near/far are chosen
    line_style: str | None = None  # line types: the line image's style

    def to_dict(self) -> dict:
        return {k: v for k, v in (("scale", self.scale), ("start", self.start), ("end", self.end),
                                  ("mode", self.mode), ("range", self.range), ("line_style", self.line_style))
                if v is not None}


@dataclass(frozen=True)
class Preset:
    name: str
    prompt: str
    negative: str = ""
    label: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    cfg: float | None = None
    steps: int | None = None
    scheduler: str | None = None
    controls: dict[str, ControlDefaults] = field(default_factory=dict)
    source: str = ""  # file it came from
    #: family section (FAMILY_SECTIONS) -> its overrides (cfg/steps/prompt/controls... as the
    #: section's keys allow); ``preset.sdxl``, ``preset.flux``... read them
    sections: dict = field(default_factory=dict)
    #: ``[reference]``: absolute paths of the style's reference images, and their scale (None: 1)
    references: tuple[str, ...] = ()
    reference_scale: float | None = None

    def __getattr__(self, name: str):
        if name in FAMILY_SECTIONS:
            return self.__dict__.get("sections", {}).get(name, {})
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def for_family(self, arch: "str | bool") -> "Preset":
        """This preset with the overrides of the architecture's section applied: ``sdxl``
        (or True) the ``[sdxl]`` section, ``flux``, ``qwen`` and ``zimage`` their own sections,
        ``sd15`` none."""
        arch = {True: "sdxl", False: "sd15"}.get(arch, arch)
        over = dict(self.sections.get(arch) or {}) if arch in FAMILY_SECTIONS else {}
        if not over:
            return self
        controls = dict(self.controls)
        controls.update(over.pop("controls", {}))
        values = {k: getattr(self, k) for k in ("name", "prompt", "negative", "label", "description", "tags",
                                                "cfg", "steps", "scheduler", "source")}
        values.update(over)
        return Preset(controls=controls, **values)

    def control(self, control_type: str) -> ControlDefaults:
        """The defaults for one control type (canny/mlsd/lineart fall back to ``lines``)."""
        if control_type in self.controls:
            return self.controls[control_type]
        if control_type in LINE_TYPES and "lines" in self.controls:
            return self.controls["lines"]
        return ControlDefaults()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "description": self.description,
            "tags": list(self.tags),
            "prompt": self.prompt,
            "negative": self.negative,
            "cfg": self.cfg,
            "steps": self.steps,
            "scheduler": self.scheduler,
            "controls": {k: v.to_dict() for k, v in self.controls.items()},
            **{section: {k: ({c: d.to_dict() for c, d in v.items()} if k == "controls" else v)
                         for k, v in self.sections.get(section, {}).items()} for section in FAMILY_SECTIONS},
            "source": self.source,
            **({"reference": {"images": list(self.references), "scale": self.reference_scale}}
               if self.references else {}),
        }


# ---------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------


def builtin_dir() -> Path:
    """``presets/`` at the repository (= package) root."""
    return Path(__file__).resolve().parent.parent / "presets"


def user_dir() -> Path:
    env = os.environ.get("ARCHVIZ_PRESET_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "archviz" / "presets"


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def _number(value, path, key, lo, hi, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise PresetError(path, key, f"expected {kind}, got {_short(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise PresetError(path, key, f"must be between {lo} and {hi}, got {value!r}")
    return int(value) if integer else float(value)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _text(value, path, key, max_len: int = MAX_PROMPT_CHARS):
    """A string of at most ``max_len`` characters with no NUL (the jobs' prompt rule)."""
    if not isinstance(value, str):
        raise PresetError(path, key, f"expected a string, got {_short(value)}")
    if len(value) > max_len:
        raise PresetError(path, key, f"is {len(value)} characters long; at most {max_len} are accepted")
    if "\0" in value:
        raise PresetError(path, key, "contains a NUL character")
    return value


def _scheduler(value, path, key):
    text = _text(value, path, key).strip().lower()
    text = SCHEDULER_ALIASES.get(text, text)
    if text not in SCHEDULERS:
        raise PresetError(path, key, f"unknown scheduler {value!r} (expected one of {', '.join(SCHEDULERS)})")
    return text


def _controls(table, path, prefix) -> dict[str, ControlDefaults]:
    if not isinstance(table, dict):
        raise PresetError(path, prefix, "expected a table of control types")
    out = {}
    for ctype, values in table.items():
        key = f"{prefix}.{ctype}"
        if ctype not in CONTROL_TYPES:
            raise PresetError(path, key, f"unknown control type (expected one of {', '.join(CONTROL_TYPES)})")
        if not isinstance(values, dict):
            raise PresetError(path, key, "expected a table with scale/start/end/mode")
        for k in values:
            if k not in CONTROL_KEYS:
                raise PresetError(path, f"{key}.{k}", f"unknown key (known: {', '.join(CONTROL_KEYS)})")
        scale = _number(values["scale"], path, f"{key}.scale", 0.0, MAX_SCALE) if "scale" in values else None
        start = _number(values["start"], path, f"{key}.start", 0.0, 1.0) if "start" in values else None
        end = _number(values["end"], path, f"{key}.end", 0.0, 1.0) if "end" in values else None
        if (start if start is not None else 0.0) >= (end if end is not None else 1.0):
            raise PresetError(path, f"{key}.end" if end is not None else f"{key}.start",
                              f"start ({start}) must be below end ({end})")
        mode = None
        if "mode" in values:
            mode = _text(values["mode"], path, f"{key}.mode")
            if mode not in CONTROL_MODES:
                raise PresetError(path, f"{key}.mode", f"unknown mode {mode!r} (expected one of {', '.join(CONTROL_MODES)})")
        depth_range = line_style = None
        if "range" in values:
            if ctype != "depth":
                raise PresetError(path, f"{key}.range", "only the depth control has a range")
            depth_range = _text(values["range"], path, f"{key}.range")
            if depth_range not in DEPTH_RANGES:
                raise PresetError(path, f"{key}.range",
                                  f"unknown depth range {depth_range!r} (expected one of {', '.join(DEPTH_RANGES)})")
        if "line_style" in values:
            if ctype not in LINE_TYPES:
                raise PresetError(path, f"{key}.line_style", f"only line controls ({', '.join(LINE_TYPES)}) have a style")
            line_style = _text(values["line_style"], path, f"{key}.line_style")
            if line_style not in LINE_STYLE_CHOICES:
                raise PresetError(path, f"{key}.line_style", f"unknown line style {line_style!r} "
                                                             f"(expected one of {', '.join(LINE_STYLE_CHOICES)})")
        out[ctype] = ControlDefaults(scale=scale, start=start, end=end, mode=mode, range=depth_range,
                                     line_style=line_style)
    return out


def _family_section(data: dict, section: str, path) -> dict:
    """The ``[sdxl]`` / ``[flux]``... (FAMILY_SECTIONS) overrides of one preset file (empty when absent)."""
    out: dict = {}
    if section not in data:
        return out
    table, keys = data[section], FAMILY_SECTIONS[section]
    if not isinstance(table, dict):
        raise PresetError(path, section, "expected a table")
    for key, value in table.items():
        full = f"{section}.{key}"
        if key not in keys:
            raise PresetError(path, full, f"unknown key (known: {', '.join(keys)})")
        if key == "cfg":
            out[key] = _number(value, path, full, 0.0, MAX_CFG)
        elif key == "steps":
            out[key] = _number(value, path, full, 1, MAX_STEPS, integer=True)
        elif key == "scheduler":
            out[key] = _scheduler(value, path, full)
        elif key == "controls":
            out[key] = _controls(value, path, full)
        else:
            out[key] = _text(value, path, full)
    return out


def parse_preset(data: dict, path: str | os.PathLike, name: str) -> Preset:
    """Validate one decoded TOML document."""
    if not _NAME_RE.match(name):
        raise PresetError(path, "", f"preset name {name!r} (the file name) must be lowercase letters, digits, '-' or '_'")
    for key in data:
        if key not in TOP_KEYS:
            raise PresetError(path, key, f"unknown key (known: {', '.join(TOP_KEYS)})")
    if "prompt" not in data:
        raise PresetError(path, "prompt", "required")
    prompt = _text(data["prompt"], path, "prompt")
    if not prompt.strip():
        raise PresetError(path, "prompt", "must not be empty")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise PresetError(path, "tags", "expected a list of strings")
    if len(tags) > MAX_TAGS:
        raise PresetError(path, "tags", f"has {len(tags)} tags; at most {MAX_TAGS} are accepted")
    for i, tag in enumerate(tags):
        _text(tag, path, f"tags[{i}]", MAX_LABEL_CHARS)
    sections = {section: _family_section(data, section, path) for section in FAMILY_SECTIONS}
    references, reference_scale = _reference_section(data, path)
    return Preset(
        name=name,
        prompt=prompt,
        negative=_text(data.get("negative", ""), path, "negative"),
        label=_text(data.get("label", ""), path, "label", MAX_LABEL_CHARS),
        description=_text(data.get("description", ""), path, "description", MAX_LABEL_CHARS),
        tags=tuple(tags),
        cfg=_number(data["cfg"], path, "cfg", 0.0, MAX_CFG) if "cfg" in data else None,
        steps=_number(data["steps"], path, "steps", 1, MAX_STEPS, integer=True) if "steps" in data else None,
        scheduler=_scheduler(data["scheduler"], path, "scheduler") if "scheduler" in data else None,
        controls=_controls(data.get("controls", {}), path, "controls"),
        sections=sections,
        source=str(path),
        references=references,
        reference_scale=reference_scale,
    )


def _reference_section(data: dict, path) -> tuple[tuple[str, ...], float | None]:
    """``[reference] images = [...]`` (paths relative to the preset file) and ``scale``.
    The files are checked where the preset is used (core/references.py), not here."""
    if "reference" not in data:
        return (), None
    table = data["reference"]
    if not isinstance(table, dict):
        raise PresetError(path, "reference", "expected a table with images = [...] and scale")
    for key in table:
        if key not in REFERENCE_KEYS:
            raise PresetError(path, f"reference.{key}", f"unknown key (known: {', '.join(REFERENCE_KEYS)})")
    from .references import MAX_REFERENCE_SCALE, MAX_REFERENCES

    images = table.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise PresetError(path, "reference.images", "expected a list of image paths")
    if len(images) > MAX_REFERENCES:
        raise PresetError(path, "reference.images", f"has {len(images)} images; at most {MAX_REFERENCES} are taken")
    folder = Path(path).parent
    paths = tuple(str((folder / _text(i, path, "reference.images")).resolve()) for i in images)
    scale = _number(table["scale"], path, "reference.scale", 0.0, MAX_REFERENCE_SCALE) if "scale" in table else None
    return paths, scale


def nesting_depth(text: str) -> int:
    """How deep the TOML ``text`` nests arrays and inline tables (``[``/``{`` outside strings
    and comments), plus the dotted depth of its table headers: measured before tomllib
    parses it, since tomllib recurses once per level."""
    deepest = depth = i = 0
    n = len(text)
    line_start = True
    while i < n:
        c = text[i]
        if c in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if (c == '"' and text[i] == "\\") else 1
            i += len(quote)
            line_start = False
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == "\n":
            line_start = True
        elif c == "[" and line_start and depth == 0:  # a table header: [a.b.c] or [[a.b]]
            end = text.find("]", i)
            header = text[i:end if end >= 0 else n].strip("[ ")
            deepest = max(deepest, header.count(".") + 1)
            i = end + 1 if end >= 0 else n
            while i < n and text[i] == "]":
                i += 1
            line_start = False
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        if not c.isspace():
            line_start = False
        i += 1
    return deepest


def load_preset_file(path: str | os.PathLike) -> Preset:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PRESET_BYTES + 1)
        if len(raw) > MAX_PRESET_BYTES:
            size = os.path.getsize(path)
            raise PresetError(path, "", f"the file is {size} bytes; a preset may be at most {MAX_PRESET_BYTES} "
                                        f"bytes ({MAX_PRESET_BYTES // 1024} KiB)")
        text = raw.decode("utf-8")
        depth = nesting_depth(text)
        if depth > MAX_PRESET_DEPTH:
            raise PresetError(path, "", f"tables and arrays nested {depth} levels deep; at most "
                                        f"{MAX_PRESET_DEPTH} are accepted")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(path, "", f"not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; a file saved as Latin-1 must not stop the rest
        raise PresetError(path, "", f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise PresetError(path, "", f"cannot read ({exc.strerror})") from None
    return parse_preset(data, path, path.stem)


def preset_folders(directories: list[str | os.PathLike] | None = None, include_user: bool = True) -> list[Path]:
    """The folders searched, in override order (built-in first, user folder last)."""
    folders = [Path(d) for d in (directories if directories is not None else [builtin_dir()])]
    if include_user:
        user = user_dir()
        if user.is_dir() and user not in folders:
            folders.append(user)
    return folders


def load_presets_tolerant(directories: list[str | os.PathLike] | None = None, *,
                          include_user: bool = True) -> tuple[dict[str, Preset], list[PresetError]]:
    """Like :func:`load_presets` but a bad file is reported instead of stopping the rest
    (a server keeps serving the good presets and shows the errors)."""
    presets: dict[str, Preset] = {}
    errors: list[PresetError] = []
    for folder in preset_folders(directories, include_user):
        if not folder.is_dir():
            errors.append(PresetError(folder, "", "preset folder does not exist"))
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                preset = load_preset_file(path)
            except PresetError as exc:
                errors.append(exc)
                continue
            presets[preset.name] = preset
    return presets, errors


def style_names_problem(names, known=None) -> str | None:
    """Why these ``--styles`` names cannot be presets (one line), or None: each must be a
    preset's name (lowercase letters, digits, '-', '_'), and one of ``known`` when given
    (the presets a local backend has)."""
    for name in names:
        if not _NAME_RE.match(name):
            return (f"--styles: {_short(name)} is not a preset name (lowercase letters, digits, '-' or '_'; "
                    "archviz presets lists them)")
        if known is not None and name not in known:
            return f"--styles: unknown preset {name!r} (known: {', '.join(sorted(known))})"
    return None


class PresetCache:
    """:func:`load_presets_tolerant` parsed once per change: each call stats the folders'
    ``*.toml`` files and parses again only when one was added, removed or changed (a server
    asks on every request)."""

    def __init__(self, directories: list[str | os.PathLike] | None = None, *, include_user: bool = True):
        import threading

        self.directories, self.include_user = directories, include_user
        self._key: tuple | None = None
        self._value: tuple[dict[str, Preset], list[PresetError]] = ({}, [])
        self._lock = threading.Lock()
        self.parses = 0

    def _stamp(self) -> tuple:
        stamp = []
        for folder in preset_folders(self.directories, self.include_user):
            stamp.append(str(folder))
            for path in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
                try:
                    st = path.stat()
                except OSError:
                    continue
                stamp.append((path.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamp)

    def get(self) -> tuple[dict[str, Preset], list[PresetError]]:
        with self._lock:
            stamp = self._stamp()
            if stamp != self._key:
                self._value = load_presets_tolerant(self.directories, include_user=self.include_user)
                self._key = stamp
                self.parses += 1
            return self._value


def load_presets(directories: list[str | os.PathLike] | None = None, *, include_user: bool = True) -> dict[str, Preset]:
    """All presets, later folders overriding earlier ones by name.

    ``directories`` defaults to the built-in folder; the user folder (see :func:`user_dir`)
    is appended when ``include_user`` is true and it exists. Raises PresetError on the
    first bad file.
    """
    presets: dict[str, Preset] = {}
    for folder in preset_folders(directories, include_user):
        if not folder.is_dir():
            raise PresetError(folder, "", "preset folder does not exist")
        for path in sorted(folder.glob("*.toml")):
            preset = load_preset_file(path)
            presets[preset.name] = preset
    return presets
