"""The model families: one record per family name, the one place their facts live.

A *family* is what a user names (``--model sdxl``, the Blender model menu, a job's
``model.family``); an *architecture* (``arch``) is what the engine runs: the real family and
its tiny, random-weight test family share one. Everything the add-on, the CLI and the job
validator know about a family is read from here (core/jobs.py, core/passes.py,
core/presets.py, core/edit.py, blender/preferences.py, blender/runs.py, the CLI help);
what the backend knows about an architecture (its pipeline classes, ControlNets, memory
profiles, tiny builder) lives on its Family class in backend/engine/families/.

Adding a family: an :class:`Arch` in :data:`ARCHES` when it is a new architecture, its
:class:`Family` records (the real one and its ``tiny-`` one) in :data:`FAMILY_LIST`, its
module in backend/engine/families/ and its tiny builder (README, "Adding a family").

Stdlib only: Blender's Python and the backend both import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The line styles the canny-trained ControlNets (SDXL's, FLUX.1's, Qwen-Image's union) want
#: for every line control type.
_CANNY_LINES = {"lines": "canny", "lineart": "canny", "canny": "canny", "mlsd": "canny"}


@dataclass(frozen=True)
class Arch:
    """What one architecture is, as the add-on and the job validator see it."""

    name: str
    label: str  # in messages
    side_multiple: int  # the image sides are multiples of it (16: VAE 1/8 and 2x2 patches)
    long_side: int  # the long side it renders at by default
    #: control type -> line style its ControlNet was trained on (None: it takes no controls)
    line_styles: dict | None = None
    all_unit_types: bool = False  # its default ControlNets take every control type (else depth and lines)
    all_unit_types_with_union: bool = False  # its ControlNet-Union takes every type
    union: bool = True  # a job may ask for its ControlNet-Union (``model.union``)
    #: its section in a preset file (``[sdxl]``) and the keys that section takes
    preset_section: str | None = None
    section_keys: tuple[str, ...] = ()
    preset_from: str | None = None  # the section it reads when it has none of its own
    edit: bool = False  # an instruction-edit model (core/edit.py): no control units
    edit_of: str | None = None  # the architecture whose pictures it edits (same size rules)
    #: its engine inpaints the init image under a mask: region edits, and each later view
    #: of ``archviz texture``
    region: bool = False

    @property
    def controls(self) -> bool:
        """Whether it takes control units."""
        return not self.edit


@dataclass(frozen=True)
class Family:
    """One family name a user can give."""

    name: str
    arch: str
    label: str  # in menus and messages
    tiny: bool = False  # shrunk random-weight test models (backend/models/tiny/__init__.py), no download
    aliases: tuple[str, ...] = ()  # other spellings the job validator accepts
    menu: bool = True  # listed in the Blender model menu and the CLI help
    menu_help: str = ""  # the menu item's tooltip
    download: str = ""  # what the Models box's Download gets ('' = not offered there)
    edit_defaults: dict = field(default_factory=dict)  # an edit family's steps and cfg (model card)

    @property
    def menu_label(self) -> str:
        if self.tiny:
            return f"{self.label} (offline test)"
        return f"{self.label} (edits)" if ARCHES[self.arch].edit else self.label


#: Preset section keys. SDXL takes every sampling key; FLUX.1 and Z-Image-Turbo have no
#: negative prompt and one sampler (flow-matching Euler); Qwen-Image has true CFG with a
#: negative prompt and one sampler.
_SDXL_KEYS = ("cfg", "steps", "scheduler", "controls", "prompt", "negative")
_FLUX_KEYS = ("cfg", "steps", "controls", "prompt")
_QWEN_KEYS = ("cfg", "steps", "controls", "prompt", "negative")
_ZIMAGE_KEYS = ("cfg", "steps", "controls", "prompt")

_ARCH_LIST = (
    Arch("sd15", "SD 1.5", 8, 512, line_styles={"lines": "lineart", "lineart": "lineart", "canny": "canny",
                                                "mlsd": "mlsd"},
         all_unit_types=True, all_unit_types_with_union=True, union=False, region=True),
    Arch("sdxl", "SDXL", 8, 1024, line_styles=_CANNY_LINES, all_unit_types_with_union=True,
         preset_section="sdxl", section_keys=_SDXL_KEYS, region=True),
    # FLUX.1's canny and union nets were trained on canny edges, like SDXL's.
    Arch("flux", "FLUX.1", 16, 1024, line_styles=_CANNY_LINES, preset_section="flux", section_keys=_FLUX_KEYS,
         region=True),
    # Qwen-Image's InstantX union net reads canny edges (and soft edges, depth, pose); its
    # native size is a 1328 square (the union net was trained there).
    Arch("qwen", "Qwen-Image", 16, 1328, line_styles=_CANNY_LINES, preset_section="qwen",
         section_keys=_QWEN_KEYS),
    # The Z-Image union net was trained on canny, HED (soft) and MLSD lines.
    Arch("zimage", "Z-Image-Turbo", 16, 1024,
         line_styles={"lines": "canny", "lineart": "softedge", "canny": "canny", "mlsd": "mlsd"},
         preset_section="zimage", section_keys=_ZIMAGE_KEYS),
    # Instruction edits read the [flux] sections: natural-language prompts.
    Arch("kontext", "FLUX.1 Kontext", 16, 1024, preset_from="flux", edit=True, edit_of="flux"),
    Arch("qwen-edit", "Qwen-Image-Edit", 16, 1024, preset_from="flux", edit=True, edit_of="qwen"),
    # FLUX.2 Klein has no ControlNet: the control passes join the reference images it reads
    # (core/references.py), as they are (any control type; lines as line art).
    Arch("klein", "FLUX.2 Klein", 16, 1024, line_styles={"lines": "lineart", "lineart": "lineart", "canny": "canny",
                                                         "mlsd": "mlsd"},
         all_unit_types=True, union=False, preset_section="klein", section_keys=("cfg", "steps", "controls", "prompt"),
         region=True),
)
#: arch name -> :class:`Arch`
ARCHES = {a.name: a for a in _ARCH_LIST}

_OFFLINE = "Random weights: noise that proves the plumbing"

#: Every family, in the order menus, help texts and error messages list them.
FAMILY_LIST = (
    Family("sd15", "sd15", "SD 1.5", aliases=("sd1.5", "sd-1.5"),
           download="Base model, depth and lineart ControlNets"),
    Family("sdxl", "sdxl", "SDXL", aliases=("sd_xl",),
           download="Base model, fp16-fix VAE, depth and canny ControlNets"),
    Family("flux", "flux", "FLUX.1-dev", aliases=("flux.1", "flux1", "flux-dev"),
           menu_help="Gated, non-commercial licence: accept it on the hub and set the Hugging Face token. "
                     "Depth and lines units, 1024 px",
           download="Gated base model (accept the licence on the hub), depth and canny ControlNets"),
    Family("tiny", "sd15", "Tiny", tiny=True, aliases=("tiny-sd15",), menu_help=_OFFLINE),
    Family("tiny-sdxl", "sdxl", "Tiny SDXL", tiny=True),
    Family("tiny-flux", "flux", "Tiny FLUX", tiny=True),
    Family("qwen", "qwen", "Qwen-Image", aliases=("qwen-image", "qwenimage"),
           menu_help="Apache-2.0, not gated; its union ControlNet takes depth and lines units, true CFG with a "
                     "negative prompt, 1328 px",
           download="Base model and the InstantX union ControlNet (about 61 GB)"),
    Family("tiny-qwen", "qwen", "Tiny Qwen-Image", tiny=True),
    Family("zimage", "zimage", "Z-Image-Turbo", aliases=("z-image", "z-image-turbo", "zimage-turbo"),
           menu_help="Apache-2.0, 8 steps; one union ControlNet for the depth and lines units, 1024 px",
           download="Base model and its union ControlNet 2.1 (one file)"),
    Family("tiny-zimage", "zimage", "Tiny Z-Image", tiny=True),
    # instruction edits (the Restyle box's Edit field; no control units). Steps and guidance:
    # Kontext's distilled guidance 2.5 over 28 steps; Qwen-Image-Edit's true CFG 4 over 50
    # steps, 40 for -2509 / -2511 (the model cards' values).
    Family("kontext", "kontext", "FLUX.1 Kontext", aliases=("flux-kontext", "flux.1-kontext"),
           menu_help="Instruction edits of the beauty pass. Gated, non-commercial licence",
           download="Gated instruction-edit model (accept the licence on the hub)",
           edit_defaults={"steps": 28, "cfg": 2.5}),
    Family("qwen-edit", "qwen-edit", "Qwen-Image-Edit", aliases=("qwen-image-edit",),
           menu_help="Instruction edits of the beauty pass", download="Instruction-edit model",
           edit_defaults={"steps": 50, "cfg": 4.0}),
    Family("qwen-edit-2509", "qwen-edit", "Qwen-Image-Edit-2509", edit_defaults={"steps": 40, "cfg": 4.0}),
    Family("qwen-edit-2511", "qwen-edit", "Qwen-Image-Edit-2511", edit_defaults={"steps": 40, "cfg": 4.0}),
    Family("tiny-kontext", "kontext", "Tiny Kontext", tiny=True),
    Family("tiny-qwen-edit", "qwen-edit", "Tiny Qwen-Image-Edit", tiny=True),
    Family("tiny-qwen-edit-plus", "qwen-edit", "Tiny Qwen-Image-Edit Plus", tiny=True, menu=False),
    # FLUX.2 [klein] 4B: Apache-2.0, step- and guidance-distilled (4 steps, no CFG); its control
    # passes and the user's references are the reference images it reads (core/references.py).
    Family("klein", "klein", "FLUX.2 Klein 4B", aliases=("flux2-klein", "flux.2-klein", "klein-4b"),
           menu_help="Apache-2.0, 4 steps; depth and lines join the reference images (no ControlNet), 1024 px",
           download="Base model (Qwen3-4B encoder, 4B transformer, about 16 GB)"),
    Family("tiny-klein", "klein", "Tiny FLUX.2 Klein", tiny=True),
)
#: family name -> :class:`Family`
FAMILIES = {f.name: f for f in FAMILY_LIST}
#: other spelling -> family name
ALIASES = {alias: f.name for f in FAMILY_LIST for alias in f.aliases}


def _check() -> None:
    names = [f.name for f in FAMILY_LIST]
    assert len(set(names)) == len(names), "a family is listed twice"
    assert not set(ALIASES) & set(names), "an alias is also a family name"
    for f in FAMILY_LIST:
        assert f.arch in ARCHES, f"{f.name}: unknown arch {f.arch}"
        assert f.tiny == f.name.startswith("tiny"), f"{f.name}: tiny families are named tiny-*"


_check()


def lookup(name: str) -> Family | None:
    """The record of a family name or alias (None for anything else, e.g. a model folder)."""
    key = str(name).strip().lower()
    return FAMILIES.get(ALIASES.get(key, key))


def arch_of(name: str, default: str | None = None) -> str | None:
    """The architecture of a family name or alias, else ``default``."""
    family = lookup(name)
    return family.arch if family else default


def names(*, tiny: bool | None = None, edit: bool | None = None, menu: bool | None = None) -> tuple[str, ...]:
    """Family names in list order, filtered by tiny / edit / in-menu (None: either)."""
    return tuple(f.name for f in FAMILY_LIST
                 if (tiny is None or f.tiny == tiny) and (edit is None or ARCHES[f.arch].edit == edit)
                 and (menu is None or f.menu == menu))


def arch_names(*, edit: bool | None = None) -> tuple[str, ...]:
    return tuple(a.name for a in _ARCH_LIST if edit is None or a.edit == edit)


def guess_arch(model: str) -> list[Arch]:
    """The architectures a model folder or hub id is named after (any of their families'
    names or aliases in it); a name with 'edit' in it is an edit model, not its base."""
    model = str(model).lower()
    spellings = {f.name: (f.name, *f.aliases) for f in FAMILY_LIST}
    found = [ARCHES[f.arch] for f in FAMILY_LIST if any(s in model for s in spellings[f.name])]
    if "edit" in model:
        edited = {a.edit_of for a in _ARCH_LIST if a.edit}
        found = [a for a in found if a.name not in edited]
    return found


def side_multiple(model: str) -> int:
    """The multiple a family's image sides must be (a family name, an alias, or a model
    folder named after one; anything else: SD 1.5's)."""
    family = lookup(model)
    if family:
        return ARCHES[family.arch].side_multiple
    model = str(model).lower()
    hits = [f for f in FAMILY_LIST if any(s in model for s in (f.name, *f.aliases))]
    return max((ARCHES[f.arch].side_multiple for f in hits), default=ARCHES["sd15"].side_multiple)


def long_side(model: str) -> int:
    """The long side a family renders at by default (same names as :func:`side_multiple`)."""
    family = lookup(model)
    if family:
        return ARCHES[family.arch].long_side
    transformer = ARCHES["flux"].long_side if side_multiple(model) == 16 else ARCHES["sd15"].long_side
    return max([a.long_side for a in guess_arch(model)] + [transformer])


def section_keys() -> dict[str, tuple[str, ...]]:
    """preset section -> its keys, in arch order."""
    return {a.preset_section: a.section_keys for a in _ARCH_LIST if a.preset_section}


def preset_section(arch: str) -> str:
    """The preset section an architecture reads (its own, the one it borrows, or its name:
    a name without a section means the preset as it is)."""
    a = ARCHES.get(arch)
    if a is None:
        return arch
    return a.preset_section or a.preset_from or arch


def menu_items() -> list[tuple[str, str, str]]:
    """(name, label, tooltip) of every family in the Blender model menu."""
    return [(f.name, f.menu_label, f.menu_help) for f in FAMILY_LIST if f.menu]


def download_items() -> list[tuple[str, str, str]]:
    """(name, label, what it downloads) of every family the Models box offers."""
    return [(f.name, f.label, f.download) for f in FAMILY_LIST if f.download]


def model_help() -> str:
    """The ``--model`` help of ``archviz sweep``."""
    text = names(tiny=False, edit=False, menu=True) + names(tiny=True, edit=False, menu=True)
    edits = names(edit=True, menu=True)
    return (f"{text[0]} (default), {', '.join(text[1:])}, or a local model folder; "
            f"with --edit: {', '.join(edits)}")


#: How each architecture takes reference images (core/references.py): arch -> (mechanism,
#: most references per job, whether their order is free). An arch not here takes none.
#: SD 1.5 / SDXL: IP-Adapter (each reference attended on its own, added at its scale: a sum);
#: FLUX.1: Redux (the (prompt, reference) pairs summed weighted by scale, FluxPriorReduxPipeline);
#: optional 4th and 5th facts: whether a reference has a scale (False: 1, or 0 = left out), and
#: whether the job's control passes join the references (counted among its images).
REFERENCES = {
    "sd15": ("IP-Adapter", 4, True),
    "sdxl": ("IP-Adapter", 4, True),
    "flux": ("FLUX.1 Redux", 4, True),
    # FLUX.2 Klein reads up to 10 images next to the noise, each at its own time position (the
    # order matters), with no per-image strength; the job's control passes count among them.
    "klein": ("Klein images", 10, False, False, True),
}
