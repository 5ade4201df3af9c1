"""Model registry: which weights a job needs, loading them, and keeping them warm.

* :func:`resolve_models` turns a job's :class:`~..core.jobs.ModelSpec` and control types into
  concrete references (Hugging Face ids, local folders or single files). Real ids per
  DESIGN.md live here; the ``tiny`` families point at folders built by :mod:`.tiny`.
* :class:`ModelCache` loads base pipelines and ControlNets on demand, shares them between
  jobs, and evicts the least recently used ones when a memory budget would be exceeded.
  Models in use by the running job are pinned and never evicted.

A model named by a Hugging Face id is a whole snapshot in the Hugging Face cache, completed
from the hub when it is missing or incomplete (:mod:`.hub`: only the files the loaders read,
a disk check first, progress per file); ``HF_HUB_OFFLINE`` is honoured. Safetensors are required
unless the server's operator allows pickle checkpoints for a model by name
(``archviz serve --allow-pickle REF`` / ``ARCHVIZ_ALLOW_PICKLE``). A missing real model is
an error that says what is missing and how to get it, and that the ``tiny`` family exists
for offline use: it is never silently replaced.

Model references that come in a request are checked by :func:`check_model_ref`: a Hugging
Face id, or an absolute path inside the allowed model roots (the HF cache, the tiny models'
folder, ``--model-root`` folders). The server never reads weights from anywhere else.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ...core.jobs import JobError, ModelSpec
from ...core import families as _families
from . import hub, tiny
from ..engine.families.registry import ENGINES, arches
from . import preprocess as _pre

log = logging.getLogger("archviz.backend")

# ---------------------------------------------------------------------------------------
# Real model ids (DESIGN.md)
# ---------------------------------------------------------------------------------------

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_CONTROLNETS = {
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "lines": "lllyasviel/control_v11p_sd15_lineart",  # the add-on's line pass: white on black
    "lineart": "lllyasviel/control_v11p_sd15_lineart",
    "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
    "seg": "lllyasviel/control_v11p_sd15_seg",
}
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_VAE = "madebyollin/sdxl-vae-fp16-fix"
SDXL_CONTROLNETS = {
    "depth": "diffusers/controlnet-depth-sdxl-1.0",
    "canny": "diffusers/controlnet-canny-sdxl-1.0",
    "lines": "diffusers/controlnet-canny-sdxl-1.0",
    "lineart": "diffusers/controlnet-canny-sdxl-1.0",
    "mlsd": "diffusers/controlnet-canny-sdxl-1.0",
}
SDXL_UNION = "xinsir/controlnet-union-sdxl-1.0"
#: ControlNet-Union control modes (xinsir): 1 depth, 3 canny/lineart/mlsd, 4 normal, 5 seg.
UNION_MODES = {"depth": 1, "canny": 3, "lines": 3, "lineart": 3, "mlsd": 3, "normal": 4, "seg": 5}

FLUX_BASE = "black-forest-labs/FLUX.1-dev"  # gated, FLUX.1 [dev] non-commercial licence
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"  # Apache-2.0, timestep-distilled (few steps, no guidance)
FLUX_CONTROLNETS = {
    "depth": "Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
    "canny": "InstantX/FLUX.1-dev-Controlnet-Canny",
    "lines": "InstantX/FLUX.1-dev-Controlnet-Canny",
    "lineart": "InstantX/FLUX.1-dev-Controlnet-Canny",
    "mlsd": "InstantX/FLUX.1-dev-Controlnet-Canny",
}
FLUX_UNION = "InstantX/FLUX.1-dev-Controlnet-Union"
#: FLUX.1-dev ControlNet-Union control modes (InstantX; Shakker-Labs' Union-Pro 1.0 alike):
#: 0 canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality. No normal or seg mode.
FLUX_UNION_MODES = {"depth": 2, "canny": 0, "lines": 0, "lineart": 0, "mlsd": 0}
#: Shakker-Labs' Union-Pro 2.0 has no mode embedding (canny, soft edge, depth, pose, gray from
#: the image alone): give it per type with model.controlnets.<type>.
FLUX_UNION_PRO_2 = "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0"

QWEN_BASE = "Qwen/Qwen-Image"  # Apache-2.0, not gated: 20B MMDiT, Qwen2.5-VL-7B text encoder, 16-channel VAE
#: InstantX's union net (Apache-2.0, 5 double blocks, trained at 1328 px): canny, soft edge,
#: depth and pose read from the image alone (no mode embedding); diffusers'
#: QwenImageMultiControlNetModel runs one union net over several control images.
QWEN_UNION = "InstantX/Qwen-Image-ControlNet-Union"
#: The unit types it takes: depth, and every line type as canny edges.
QWEN_CONTROL_TYPES = ("depth", "lines", "canny", "lineart", "mlsd")
#: FLUX.2 [klein] 4B (Apache-2.0, not gated): 4B transformer, Qwen3-4B text encoder, the FLUX.2
#: VAE; step- and guidance-distilled (4 steps). Only its diffusers folders are downloaded, not
#: the single-file checkpoint beside them.
KLEIN_BASE = "black-forest-labs/FLUX.2-klein-4B"
ZIMAGE_BASE = "Tongyi-MAI/Z-Image-Turbo"  # Apache-2.0, not gated: 6B single-stream DiT, Qwen3-4B encoder, 8 steps
#: The Z-Image-Turbo Fun ControlNet-Union (alibaba-pai, Apache-2.0, not gated) ships as ONE
#: checkpoint file per version, not a diffusers folder: repo -> (file, the diffusers config repo
#: that ``ZImageControlNetModel.from_single_file`` reads for it). No control mode: it reads the
#: type (canny, HED, depth, pose, MLSD; 2.1 also scribble, gray) from the image itself.
ZIMAGE_UNION = "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1"
ZIMAGE_UNION_V1 = "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union"
ZIMAGE_UNION_FILES = {
    ZIMAGE_UNION: ("Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", "hlky/Z-Image-Turbo-Fun-Controlnet-Union-2.1"),
    ZIMAGE_UNION_V1: ("Z-Image-Turbo-Fun-Controlnet-Union.safetensors", "hlky/Z-Image-Turbo-Fun-Controlnet-Union"),
}
#: The add-on's unit types the union net was trained on: depth, and lines as canny edges (mlsd
#: and lineart too: straight lines, soft HED-like lines).
ZIMAGE_TYPES = ("depth", "lines", "canny", "mlsd", "lineart")
#: Instruction edits (backend/engine/families/edit.py). FLUX.1 Kontext dev: gated, FLUX.1 [dev]
#: non-commercial licence, FLUX.1-dev's layout. Qwen-Image-Edit: Apache-2.0, not gated;
#: Qwen2.5-VL text encoder with its vision tower and processor.
KONTEXT_BASE = "black-forest-labs/FLUX.1-Kontext-dev"
QWEN_EDIT_BASE = "Qwen/Qwen-Image-Edit"
#: The monthly updates (Apache-2.0, not gated) run through QwenImageEditPlusPipeline (their
#: model_index.json says so): the picture at 384x384 for Qwen2.5-VL, 1024x1024 for the VAE.
QWEN_EDIT_PLUS = {"qwen-edit-2509": "Qwen/Qwen-Image-Edit-2509", "qwen-edit-2511": "Qwen/Qwen-Image-Edit-2511"}

_TINY_SD15_KIND = {"depth": "depth", "lines": "lineart", "lineart": "lineart", "mlsd": "mlsd",
                   "canny": "canny", "normal": "normal", "seg": "seg"}
_TINY_SDXL_KIND = {"depth": "depth", "canny": "canny", "lines": "canny", "lineart": "canny", "mlsd": "canny"}
_TINY_FLUX_KIND = _TINY_SDXL_KIND


@dataclass(frozen=True)
class ControlNetRef:
    ref: str  # HF id, local folder or single file
    union_mode: int | None = None  # set when the model is a ControlNet-Union
    arch: str = "sd15"  # the family's architecture: which ControlNet class loads it


@dataclass(frozen=True)
class ModelPlan:
    """Concrete references for one job."""

    arch: str  # "sd15" | "sdxl" | "flux" | "zimage"
    family: str
    base: str
    vae: str | None
    controlnets: tuple[ControlNetRef, ...]  # one per job control, in order
    lora: str | None = None  # fast mode's LoRA on the denoiser (HF id or tiny folder), else None
    references: str | None = None  # the reference images' model (IP-Adapter, Redux: load_reference_model)

    def ids(self) -> dict:
        ids = {"family": self.family, "base": self.base, "vae": self.vae,
               "controlnets": [c.ref if c.union_mode is None else f"{c.ref}#mode={c.union_mode}"
                               for c in self.controlnets]}
        if self.lora:  # only when set: exact sweeps keep their hashes
            ids["lora"] = self.lora
        if self.references:  # only when set: sweeps without references keep their hashes
            ids["references"] = self.references
        return ids


def resolve_models(spec: ModelSpec, control_types: list[str], control_models: list[str | None]) -> ModelPlan:
    """References for a job; raises JobError naming the field when a control type has no
    ControlNet in the chosen family."""
    arch = spec.arch
    resolve = ENGINES[arch].resolve  # backend/engine/families/registry.py
    if resolve == "nets-or-union-modes":
        return _resolve_flux(spec, control_types, control_models)
    if resolve == "union-only":
        return _resolve_union(spec, control_types, control_models)
    if resolve == "references":  # FLUX.2 Klein: no ControlNet, the controls join its reference images
        base = spec.base or (str(tiny.tiny_path(arch, "base")) if spec.is_tiny else KLEIN_BASE)
        return ModelPlan(arch=arch, family=spec.family, base=base, vae=None, controlnets=())
    if resolve == "none":  # instruction edits: a base only, no ControlNet (core/jobs.py)
        real = KONTEXT_BASE if arch == "kontext" else QWEN_EDIT_PLUS.get(spec.family, QWEN_EDIT_BASE)
        folder = "qwen-edit-plus" if spec.family == "tiny-qwen-edit-plus" else arch
        base = spec.base or (str(tiny.tiny_path(folder, "base")) if spec.is_tiny else real)
        return ModelPlan(arch=arch, family=spec.family, base=base, vae=None, controlnets=())
    sdxl = arch == "sdxl"
    if spec.is_tiny:
        base = spec.base or str(tiny.tiny_path(arch, "base"))
        vae = spec.vae or (str(tiny.tiny_path("sdxl", "vae-fp16-fix")) if sdxl else None)
        union = spec.controlnets.get("union") or str(tiny.tiny_path("sdxl", "controlnet-union"))
        kinds = _TINY_SDXL_KIND if sdxl else _TINY_SD15_KIND
        defaults = {t: str(tiny.tiny_path(arch, f"controlnet-{k}")) for t, k in kinds.items()}
    else:
        base = spec.base or (SDXL_BASE if sdxl else SD15_BASE)
        vae = spec.vae or (SDXL_VAE if sdxl else None)
        union = spec.controlnets.get("union") or SDXL_UNION
        defaults = SDXL_CONTROLNETS if sdxl else SD15_CONTROLNETS
    refs = []
    for i, (ctype, override) in enumerate(zip(control_types, control_models)):
        if override:
            refs.append(ControlNetRef(override))
        elif ctype in spec.controlnets:
            refs.append(ControlNetRef(spec.controlnets[ctype]))
        elif spec.union:
            refs.append(ControlNetRef(union, UNION_MODES[ctype]))
        elif ctype in defaults:
            refs.append(ControlNetRef(defaults[ctype]))
        else:
            raise JobError(f"controls[{i}].type",
                           f"{spec.family} has no {ctype!r} ControlNet; set model.union=true "
                           f"(ControlNet-Union) or give model.controlnets.{ctype}")
    return ModelPlan(arch=arch, family=spec.family, base=base, vae=vae, controlnets=tuple(refs))


def _resolve_flux(spec: ModelSpec, control_types: list[str], control_models: list[str | None]) -> ModelPlan:
    """FLUX.1: the base (dev, or schnell with ``model.base``), one net per control type, or
    the union net with its control mode per type (``model.union``)."""
    if spec.is_tiny:
        base = spec.base or str(tiny.tiny_path("flux", "base"))
        union = spec.controlnets.get("union") or str(tiny.tiny_path("flux", "controlnet-union"))
        defaults = {t: str(tiny.tiny_path("flux", f"controlnet-{k}")) for t, k in _TINY_FLUX_KIND.items()}
    else:
        base, union, defaults = spec.base or FLUX_BASE, spec.controlnets.get("union") or FLUX_UNION, FLUX_CONTROLNETS
    refs = []
    for i, (ctype, override) in enumerate(zip(control_types, control_models)):
        if override or ctype in spec.controlnets:
            refs.append(ControlNetRef(override or spec.controlnets[ctype], arch="flux"))
        elif spec.union:
            if ctype not in FLUX_UNION_MODES:
                raise JobError(f"controls[{i}].type", f"the FLUX.1 ControlNet-Union has no {ctype!r} mode "
                                                      f"(it takes {', '.join(FLUX_UNION_MODES)})")
            refs.append(ControlNetRef(union, FLUX_UNION_MODES[ctype], arch="flux"))
        elif ctype in defaults:
            refs.append(ControlNetRef(defaults[ctype], arch="flux"))
        else:
            raise JobError(f"controls[{i}].type",
                           f"{spec.family} has no {ctype!r} ControlNet (FLUX.1 nets take depth and canny-style "
                           f"lines); give model.controlnets.{ctype}")
    return ModelPlan(arch="flux", family=spec.family, base=base, vae=None, controlnets=tuple(refs))


#: One union net for every unit, with no control mode (it reads the type from the image):
#: arch -> (the family's name, its default base, its default union net, the unit types it was
#: trained on).
UNION_ONLY = {
    "qwen": ("the Qwen-Image union net", QWEN_BASE, QWEN_UNION, QWEN_CONTROL_TYPES),
    "zimage": ("the Z-Image ControlNet-Union", ZIMAGE_BASE, ZIMAGE_UNION, ZIMAGE_TYPES),
}


def _resolve_union(spec: ModelSpec, control_types: list[str], control_models: list[str | None]) -> ModelPlan:
    """Qwen-Image and Z-Image-Turbo: every unit runs the family's one union net, unless a job
    names another net for it (``controls[i].model``, ``model.controlnets.<type>``, or
    ``model.controlnets.union`` for the union net itself)."""
    arch = spec.arch
    label, base_id, union_id, types = UNION_ONLY[arch]
    if spec.is_tiny:
        base = spec.base or str(tiny.tiny_path(arch, "base"))
        union = spec.controlnets.get("union") or str(tiny.tiny_path(arch, "controlnet-union"))
    else:
        base, union = spec.base or base_id, spec.controlnets.get("union") or union_id
    refs = []
    for i, (ctype, override) in enumerate(zip(control_types, control_models)):
        if override or ctype in spec.controlnets:
            refs.append(ControlNetRef(override or spec.controlnets[ctype], arch=arch))
        elif ctype in types:
            refs.append(ControlNetRef(union, arch=arch))
        else:
            raise JobError(f"controls[{i}].type", f"{label} was not trained on {ctype!r} (it takes "
                                                  f"{', '.join(types)}); give model.controlnets.{ctype}")
    return ModelPlan(arch=arch, family=spec.family, base=base, vae=None, controlnets=tuple(refs))


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


class ModelNotFoundError(RuntimeError):
    """A model is not available locally (and cannot be downloaded)."""


_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def pickle_allowed(ref: str | os.PathLike) -> bool:
    """True when the operator allowed pickle (``.bin``/``.ckpt``) weights for this model:
    ``ARCHVIZ_ALLOW_PICKLE`` lists references separated by ``os.pathsep`` (``archviz serve
    --allow-pickle REF`` adds to it); ``1`` or ``all`` allows every model (not advised).
    A request can never allow it: this is server configuration."""
    value = os.environ.get("ARCHVIZ_ALLOW_PICKLE", "").strip()
    if not value:
        return False
    if value.lower() in ("1", "all"):
        return True
    ref = str(ref)
    wanted = {ref, os.path.realpath(os.path.expanduser(ref))}
    for item in filter(None, (v.strip() for v in value.split(os.pathsep))):
        if item in wanted or os.path.realpath(os.path.expanduser(item)) in wanted:
            return True
    return False


def _use_safetensors(ref: str | os.PathLike = "") -> bool | None:
    """``True`` (safetensors required) unless pickle is allowed for ``ref``; then ``None``
    (diffusers/transformers prefer safetensors and fall back to ``.bin``)."""
    return None if pickle_allowed(ref) else True


# ---------------------------------------------------------------------------------------
# Which references a request may name
# ---------------------------------------------------------------------------------------

#: A Hugging Face repo id: ``name`` or ``namespace/name``.
HF_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def model_roots(extra: list[str | os.PathLike] | None = None) -> list[Path]:
    """Folders a request may point at for weights: the Hugging Face cache, the tiny models'
    folder, ``$ARCHVIZ_MODEL_ROOTS`` (``os.pathsep``-separated) and ``extra``."""
    from huggingface_hub import constants

    roots = [Path(constants.HF_HUB_CACHE), tiny.archviz_home() / "tiny"]
    env = os.environ.get("ARCHVIZ_MODEL_ROOTS", "")
    roots += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    roots += [Path(p) for p in (extra or [])]
    return [Path(os.path.realpath(p.expanduser())) for p in roots]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_model_ref(ref: str, field: str, roots: list[Path]) -> str:
    """``ref`` when a request may use it, else JobError naming ``field``: a Hugging Face id
    (read from the HF cache, or downloaded when online), or an absolute path that resolves
    (symlinks followed) inside one of ``roots``."""
    looks_like_id = HF_ID_RE.match(ref) and ".." not in ref and not ref.endswith(_SINGLE_FILE_SUFFIXES)
    if looks_like_id:
        if os.path.lexists(ref):  # diffusers would read a relative folder of the server's cwd
            raise JobError(field, f"{ref!r} is a relative path on the server; give a Hugging Face id "
                                  "or an absolute path inside a model root")
        return ref
    path = Path(ref).expanduser()
    if not path.is_absolute():
        raise JobError(field, f"{ref!r} is neither a Hugging Face id (namespace/name) nor an absolute path")
    real = Path(os.path.realpath(path))
    if not _inside(real, roots):
        raise JobError(field, f"{ref!r} is outside the server's model roots ({', '.join(map(str, roots))}); "
                              "the server operator can add a folder with archviz serve --model-root DIR")
    return ref


def check_job_models(job, roots: list[Path]) -> None:
    """Every model reference a job names (base, VAE, ControlNets, per-control models)."""
    spec = job.model
    if spec.base:
        check_model_ref(spec.base, "model.base", roots)
    if spec.vae:
        check_model_ref(spec.vae, "model.vae", roots)
    for key, value in spec.controlnets.items():
        check_model_ref(value, f"model.controlnets.{key}", roots)
    for i, control in enumerate(job.controls):
        if control.model:
            check_model_ref(control.model, f"controls[{i}].model", roots)


# ---------------------------------------------------------------------------------------
# Names for ``archviz models``: what each family needs from the hub
# ---------------------------------------------------------------------------------------

#: Pipeline folders the loaders read from a base repository (see :func:`load_base`).
#: (backend/engine/families/registry.py)
BASE_COMPONENTS = {arch: e.components for arch, e in ENGINES.items()}


def base_components(arch: str, separate_vae: bool) -> tuple[str, ...]:
    return tuple(c for c in BASE_COMPONENTS[arch] if not (separate_vae and c == "vae"))


#: name -> [(repo id, components or None for a one-model repo, label)]. A family's own name
#: is what a default sweep of it needs (base, VAE, the depth and line ControlNets).
CATALOG: dict[str, list[tuple[str, tuple[str, ...] | None, str]]] = {
    "sd15-base": [(SD15_BASE, base_components("sd15", False), "base model")],
    **{f"sd15-{kind}": [(SD15_CONTROLNETS[kind], None, f"ControlNet ({kind})")]
       for kind in ("depth", "lineart", "normal", "seg", "canny", "mlsd")},
    "sdxl-base": [(SDXL_BASE, base_components("sdxl", True), "base model")],
    "sdxl-vae": [(SDXL_VAE, None, "VAE")],
    "sdxl-depth": [(SDXL_CONTROLNETS["depth"], None, "ControlNet (depth)")],
    "sdxl-canny": [(SDXL_CONTROLNETS["canny"], None, "ControlNet (canny, lines)")],
    "sdxl-union": [(SDXL_UNION, None, "ControlNet-Union")],
    "flux-base": [(FLUX_BASE, base_components("flux", False), "base model (gated)")],
    "flux-schnell": [(FLUX_SCHNELL, base_components("flux", False), "base model (schnell)")],
    "flux-depth": [(FLUX_CONTROLNETS["depth"], None, "ControlNet (depth)")],
    "flux-canny": [(FLUX_CONTROLNETS["canny"], None, "ControlNet (canny, lines)")],
    "flux-union": [(FLUX_UNION, None, "ControlNet-Union (modes)")],
    "flux-union-pro-2": [(FLUX_UNION_PRO_2, None, "ControlNet-Union-Pro 2.0")],
    "qwen-base": [(QWEN_BASE, base_components("qwen", False), "base model")],
    "qwen-union": [(QWEN_UNION, None, "ControlNet-Union")],
    "klein-base": [(KLEIN_BASE, base_components("klein", False), "base model (4B, distilled)")],
    "zimage-base": [(ZIMAGE_BASE, base_components("zimage", False), "base model (Turbo)")],
    **{f"zimage-union{suffix}": [(repo, hub.Files([ZIMAGE_UNION_FILES[repo][0]]), f"ControlNet-Union{version} (one file)"),
                                 (ZIMAGE_UNION_FILES[repo][1], hub.Files(["config.json"]), "its diffusers config")]
       for suffix, version, repo in (("", " 2.1", ZIMAGE_UNION), ("-v1", " 1.0", ZIMAGE_UNION_V1))},
    "kontext": [(KONTEXT_BASE, base_components("kontext", False), "instruction-edit model (gated)")],
    "qwen-edit": [(QWEN_EDIT_BASE, base_components("qwen-edit", False), "instruction-edit model")],
    **{name: [(repo, base_components("qwen-edit", False), "instruction-edit model")]
       for name, repo in QWEN_EDIT_PLUS.items()},
}
# Fast mode (backend/engine/families: FastMode) and previews (backend/engine/previews.py).
CATALOG.update({
    "sd15-lcm-lora": [("latent-consistency/lcm-lora-sdv1-5", None, "LCM-LoRA (fast mode)")],
    "sdxl-lcm-lora": [("latent-consistency/lcm-lora-sdxl", None, "LCM-LoRA (fast mode)")],
    "taesd": [("madebyollin/taesd", None, "tiny autoencoder (previews)")],
    "taesdxl": [("madebyollin/taesdxl", None, "tiny autoencoder (previews)")],
    "taef1": [("madebyollin/taef1", None, "tiny autoencoder (previews)")],
})
CATALOG["sd15"] = CATALOG["sd15-base"] + CATALOG["sd15-depth"] + CATALOG["sd15-lineart"]
CATALOG["sdxl"] = CATALOG["sdxl-base"] + CATALOG["sdxl-vae"] + CATALOG["sdxl-depth"] + CATALOG["sdxl-canny"]
CATALOG["flux"] = CATALOG["flux-base"] + CATALOG["flux-depth"] + CATALOG["flux-canny"]
CATALOG["qwen"] = CATALOG["qwen-base"] + CATALOG["qwen-union"]
CATALOG["zimage"] = CATALOG["zimage-base"] + CATALOG["zimage-union"]
CATALOG["klein"] = CATALOG["klein-base"]  # no ControlNet: the controls join its reference images
# The detectors of sweeps from a photo or a sketch (backend/models/preprocess.py): DPT depth, and the
# MLSD and lineart files of lllyasviel/Annotators (only those, not the whole repository).
CATALOG["preprocessors"] = [
    (_pre.DEPTH_REPO, None, "depth model (DPT)"),
    (_pre.ANNOTATOR_REPO, hub.Files(_pre.WEIGHT_FILES["mlsd"] + _pre.WEIGHT_FILES["lineart"]),
     "annotator weights (MLSD, lineart)")]
#: the text-to-image families (core/families.py): their own CATALOG names list a default sweep's needs
FAMILY_NAMES = _families.names(tiny=False, edit=False)


def catalog_name(repo_id: str) -> str:
    """The ``archviz models download`` name that fetches ``repo_id`` (the repo id itself
    when no name does)."""
    for name, entries in CATALOG.items():
        if name not in FAMILY_NAMES and any(r == repo_id for r, _c, _l in entries):
            return name
    return repo_id


# ---------------------------------------------------------------------------------------
# Local folders: a path as it is, a tiny model built on demand, a hub id as a snapshot
# ---------------------------------------------------------------------------------------


def _fp16(dtype) -> bool:
    return "float16" in str(dtype) and "bfloat16" not in str(dtype)


def is_hub_ref(ref: str) -> bool:
    """True when ``ref`` names a Hugging Face repository (not a local path, not tiny)."""
    path = Path(ref).expanduser()
    return not path.exists() and not tiny.is_tiny_path(path) and bool(HF_ID_RE.match(ref)) and ".." not in ref


def hub_needs(plan: ModelPlan) -> list[tuple[str, tuple[str, ...] | None, str]]:
    """The hub repositories a plan loads, with the folders taken from each."""
    needs = []
    if is_hub_ref(plan.base):
        needs.append((plan.base, base_components(plan.arch, bool(plan.vae)), "base model"))
    if plan.vae and is_hub_ref(plan.vae):
        needs.append((plan.vae, None, "VAE"))
    for ref in plan.controlnets:
        if is_hub_ref(ref.ref) and all(ref.ref != n[0] for n in needs):
            if ref.ref in ZIMAGE_UNION_FILES:  # one checkpoint file, and the config diffusers reads for it
                file, config = ZIMAGE_UNION_FILES[ref.ref]
                needs += [(ref.ref, hub.Files([file]), "ControlNet"), (config, hub.Files(["config.json"]), "ControlNet config")]
            else:
                needs.append((ref.ref, None, "ControlNet"))
    if plan.lora and is_hub_ref(plan.lora):
        needs.append((plan.lora, None, "LoRA (fast mode)"))
    if plan.references and is_hub_ref(plan.references):  # only the files its loaders read
        from ..engine.families.reference_models import REAL

        needs.append((plan.references, hub.Files(list(REAL[plan.arch].files)), "reference model"))
    return needs


def fetch(needs, dtype, progress=None, cancelled=lambda: False) -> dict:
    """:func:`.hub.ensure` for these repositories, its failures as :class:`ModelNotFoundError`
    (missing while offline, or not on the hub) or :class:`.hub.GatedModelError` /
    :class:`.hub.DiskSpaceError` (their own one-line messages)."""
    from huggingface_hub import constants

    try:
        return hub.ensure(needs, _fp16(dtype), progress, allow_bin=pickle_allowed, cancelled=cancelled)
    except hub.ModelOfflineError as exc:
        repo = next((n[0] for n in needs if n[0] in str(exc)), needs[0][0])
        raise ModelNotFoundError(
            f"{exc}. Get it with `archviz models download {catalog_name(repo)}` on this machine while online "
            f"(or copy a Hugging Face cache into {constants.HF_HUB_CACHE}), or point the job at a local folder; "
            "for an offline test run use the model family 'tiny' (random weights, images are noise)") from None
    except (hub.GatedModelError, hub.DiskSpaceError, hub.DownloadCancelled):
        raise
    except hub.HubError as exc:
        raise ModelNotFoundError(str(exc)) from None


def fetch_models(plan: ModelPlan, dtype, progress=None, cancelled=lambda: False) -> dict | None:
    """Make every hub model of ``plan`` a complete snapshot in the cache (downloading what
    is missing, with ``progress``) before anything is loaded. None when nothing is on the hub."""
    needs = hub_needs(plan)
    return fetch(needs, dtype, progress, cancelled) if needs else None


def _ensure_tiny(path: Path) -> Path:
    try:
        return tiny.ensure_tiny(path)
    except tiny.NotATinyModel as exc:
        raise ModelNotFoundError(str(exc)) from None


def local_folder(ref: str, components: tuple[str, ...] | None, what: str, dtype) -> Path:
    """The folder to load ``ref`` from: a local folder as it is (checked), a tiny model
    (built on first use), or the complete hub snapshot of a repository id."""
    path = Path(ref).expanduser()
    if tiny.is_tiny_path(path):
        _ensure_tiny(path)
    if path.is_dir():
        problem = hub.check_loadable(path, components, _fp16(dtype), pickle_allowed(ref))
        if problem:
            raise ModelNotFoundError(f"{what} {ref!r} cannot be loaded: {problem}")
        return path
    if not is_hub_ref(ref):
        raise ModelNotFoundError(f"{what} {ref!r} is missing: not a local folder or file, and not a Hugging Face "
                                 "repository id (namespace/name)")
    return fetch([(ref, components, what)], dtype)["snapshots"][ref]


def local_lora(ref: str, dtype) -> Path:
    """The folder of a LoRA (``pytorch_lora_weights.safetensors``): a tiny one built on first
    use, a local folder, or the hub snapshot of a repository id."""
    folder = local_folder(ref, None, "LoRA", dtype)
    if not (folder / hub.LORA_FILE).is_file():
        raise ModelNotFoundError(f"LoRA {ref!r} has no {hub.LORA_FILE} in {folder}")
    return folder


def _load(cls, folder: Path, sub: str, ref: str, what: str, dtype=None, **kwargs):
    """``cls.from_pretrained`` of one component folder, weights in the variant the folder
    has for ``dtype``; a failure names the model and the folder."""
    target = folder / sub if sub else folder
    if dtype is not None:
        variant = hub.weights_variant(target, _fp16(dtype), pickle_allowed(ref))
        kwargs.update(torch_dtype=dtype, use_safetensors=_use_safetensors(ref))
        if variant:
            kwargs["variant"] = variant
    if "ControlNet" in cls.__name__:  # a custom net's config is checked before it is built
        check_config_fits_weights(cls, target, kwargs.get("variant"), ref, what)
    try:
        return cls.from_pretrained(str(target), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{what} {ref!r}: cannot load {sub or 'the model'} from {target}: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


#: Bounds on a model's config.json, checked before anything is built from it: its size,
#: every whole number in it, the length of every list.
MAX_CONFIG_BYTES = 1 * 2**20
MAX_CONFIG_INT = 65536
MAX_CONFIG_LIST = 64
#: config field -> (regex over the weights' tensor names whose groups count it, per-block or not)
_COUNTED_FIELDS = {
    "layers_per_block": (re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\."), True),
    "num_layers": (re.compile(r"^()transformer_blocks\.(\d+)\."), False),
    "num_single_layers": (re.compile(r"^()single_transformer_blocks\.(\d+)\."), False),
}


def _weights_header(folder: Path, variant: str | None) -> dict[str, list[int]] | None:
    """{tensor name: shape} from the safetensors header(s) of a model folder (sharded or
    not), read without loading a tensor; None when the folder has no safetensors weights."""
    from safetensors import safe_open

    stem = "diffusion_pytorch_model"
    suffix = f".{variant}" if variant else ""
    single = folder / f"{stem}{suffix}.safetensors"
    index = folder / f"{stem}.safetensors.index{suffix}.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text()).get("weight_map", {}).values()})
    else:
        return None
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = list(fh.get_slice(key).get_shape())
    return shapes


def _config_ints(config, path=""):
    """(field, value) of every whole number and list in a config, nested lists included."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield from _config_ints(value, f"{path}.{key}" if path else key)
    elif isinstance(config, list):
        yield path, config
        for i, value in enumerate(config):
            yield from _config_ints(value, f"{path}[{i}]")
    elif isinstance(config, int) and not isinstance(config, bool):
        yield path, config


def check_config_fits_weights(cls, folder: Path, variant: str | None, ref: str, what: str) -> None:
    """Refuse a model folder whose ``config.json`` the weights do not bear out, before
    anything is built from it (a custom ControlNet with ``layers_per_block = 100000`` would
    allocate gigabytes before its weights are read): the config's size, every number and
    list against bounds, the layer counts against the tensor names of the safetensors
    header, then the model built on the ``meta`` device (no memory) against the header's
    shapes. Raises :class:`ModelNotFoundError` naming the model and the field."""
    import torch

    config_path = folder / "config.json"
    try:
        size = config_path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelNotFoundError(f"{what} {ref!r}: config.json is {size} bytes; at most {MAX_CONFIG_BYTES} are "
                                     "accepted")
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{what} {ref!r}: config.json cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"{what} {ref!r}: config.json is not a JSON object")
    for field, value in _config_ints(config):
        if isinstance(value, list) and len(value) > MAX_CONFIG_LIST:
            raise ModelNotFoundError(f"{what} {ref!r}: config.json's {field} has {len(value)} entries; at most "
                                     f"{MAX_CONFIG_LIST} are accepted")
        if isinstance(value, int) and not -MAX_CONFIG_INT <= value <= MAX_CONFIG_INT:
            raise ModelNotFoundError(f"{what} {ref!r}: config.json's {field} is {value}; at most {MAX_CONFIG_INT} "
                                     "is accepted")
    header = _weights_header(folder, variant)
    if header is None:
        return
    for field, (regex, per_block) in _COUNTED_FIELDS.items():
        if field not in config or config[field] is None:
            continue
        counts: dict[str, int] = {}
        for key in header:
            m = regex.match(key)
            if m:
                counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
        if not counts:
            continue
        wanted = config[field]
        found = max(counts.values())
        if isinstance(wanted, list):
            ok = all(counts.get(str(i), 0) in (0, w) for i, w in enumerate(wanted) if isinstance(w, int))
            bad = next((w for i, w in enumerate(wanted) if counts.get(str(i), 0) not in (0, w)), wanted)
        else:
            ok = isinstance(wanted, int) and (found == wanted if not per_block else
                                              all(c in (wanted, wanted + 1) for c in counts.values()))
            bad = wanted
        if not ok:
            raise ModelNotFoundError(f"{what} {ref!r}: config.json's {field} is {bad}, but its weights have {found} "
                                     "per block" if per_block else
                                     f"{what} {ref!r}: config.json's {field} is {bad}, but its weights have {found}")
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as exc:  # noqa: BLE001 - from_pretrained below says what is wrong in its own words
        log.debug("%s %s: no shape check (the config does not build on the meta device: %s)", what, ref, exc)
        return
    for name, tensor in model.state_dict().items():
        shape = header.get(name)
        if shape is None or shape == list(tensor.shape):
            continue
        built = list(tensor.shape)
        field = _field_of(cls, config, name, built, shape)
        named = f"config.json's {field}" if field else "config.json"
        raise ModelNotFoundError(f"{what} {ref!r}: {named} does not match the weights: {name} is {shape} in the "
                                 f"weights, {built} from the config")


def _field_of(cls, config: dict, name: str, built: list[int], shape: list[int]) -> str:
    """The config field that gives tensor ``name`` its wrong shape: of the fields whose value
    is one of the wrong dimensions, the first that, set to the weights' dimension, builds
    the tensor right (on the meta device)."""
    import torch

    pairs = [(b, h) for b, h in zip(built, shape) if b != h]
    candidates = []
    for key, value in config.items():
        if isinstance(value, int) and not isinstance(value, bool) and any(value == b for b, _h in pairs):
            candidates.append((key, None, next(h for b, h in pairs if b == value)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, int) and any(item == b for b, _h in pairs):
                    candidates.append((key, i, next(h for b, h in pairs if b == item)))
    for key, index, right in candidates[:12]:
        trial = dict(config)
        if index is None:
            trial[key] = right
        else:
            trial[key] = [right if j == index else v for j, v in enumerate(config[key])]
        try:
            with torch.device("meta"):
                fixed = cls.from_config(trial).state_dict().get(name)
        except Exception:  # noqa: BLE001 - a trial config that does not build names nothing
            continue
        if fixed is not None and list(fixed.shape) == shape:
            return key
    return candidates[0][0] if candidates else ""


def _from_single_file(cls, ref: str, what: str, **kwargs):
    """``cls.from_single_file`` for one checkpoint file (safetensors unless pickle is allowed)."""
    path = Path(ref).expanduser()
    if path.suffix not in _SINGLE_FILE_SUFFIXES:
        raise ModelNotFoundError(f"{what} {ref!r}: unsupported single-file type {path.suffix!r}")
    if path.suffix != ".safetensors" and _use_safetensors(ref):
        raise ModelNotFoundError(f"{what} {ref!r} is a pickle checkpoint; convert it to .safetensors, "
                                 "or, if you trust it, allow it for this model only: archviz serve "
                                 f"--allow-pickle {ref}")
    try:
        return cls.from_single_file(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{what} {ref!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def reference_model(arch: str, is_tiny: bool) -> str:
    """The reference (hub id or tiny folder) of an arch's model for reference images."""
    from ..engine.families.reference_models import REAL, TINY_NAMES

    return str(tiny.tiny_path(arch, TINY_NAMES[arch])) if is_tiny else REAL[arch].repo


def load_reference_model(arch: str, ref: str, dtype, device) -> dict:
    """The modules of the model that reads reference images (core/references.py):
    ``{"folder", "image_encoder", "feature_extractor"}`` (+ ``"image_embedder"`` for
    Redux), eval mode on ``device``. ``ref``: a tiny folder built on first use, a local copy,
    or the hub snapshot with only the files its entry in
    backend/engine/families/reference_models.py lists.

    SD 1.5 / SDXL take IP-Adapter (``h94/IP-Adapter``): diffusers' ``load_ip_adapter`` reads
    its weights file into the UNet; the CLIP image encoder it names is loaded here with the
    image processor diffusers builds for it. FLUX.1 takes the Redux prior
    (``black-forest-labs/FLUX.1-Redux-dev``): SigLIP encoder, its processor and the Redux
    image embedder, ``FluxPriorReduxPipeline``'s components."""
    from ..engine.families.reference_models import REAL

    m = REAL[arch]
    folder = local_folder(ref, hub.Files(list(m.files)), "reference model", dtype)
    out = {"folder": folder, "kind": m.kind}
    if m.kind == "ip-adapter":
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        encoder = _load(CLIPVisionModelWithProjection, folder, m.encoder, ref, "IP-Adapter image encoder", dtype)
        size = encoder.config.image_size  # what diffusers' load_ip_adapter builds for its encoder
        out.update(image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
                   subfolder=m.subfolder, weight_name=m.weight_name)
    else:
        from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
        from transformers import SiglipImageProcessor, SiglipVisionModel

        out.update(image_encoder=_load(SiglipVisionModel, folder, "image_encoder", ref, "Redux image encoder", dtype),
                   feature_extractor=_load(SiglipImageProcessor, folder, "feature_extractor", ref, "Redux processor"),
                   image_embedder=_load(ReduxImageEncoder, folder, "image_embedder", ref, "Redux embedder", dtype))
    for value in out.values():
        if hasattr(value, "eval"):
            value.eval().requires_grad_(False).to(device)
    return out


def load_base(ref: str, vae_ref: str | None, arch: str, dtype, device) -> dict:
    """UNet, VAE, text encoder(s), tokenizer(s) and scheduler config of a base model.

    Components are loaded one by one (no safety checker, no feature extractor) from one
    folder: a local copy, a tiny model, or the hub snapshot (:func:`local_folder`), so a
    real SD 1.5 / SDXL repo, a local copy of it and a tiny folder all go through this code.
    With a separate VAE the base's own VAE is neither downloaded nor loaded."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if arch in DIT_BASES:
        return _load_dit_base(arch, ref, dtype, device)
    path = Path(ref).expanduser()
    if path.is_file():  # one .safetensors checkpoint with everything inside
        cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
        pipe = _from_single_file(cls, ref, "base model", torch_dtype=dtype)
        comps = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer")}
        if arch == "sdxl":
            comps.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
        comps["scheduler_config"] = dict(pipe.scheduler.config)
    else:
        from diffusers import DDIMScheduler

        folder = local_folder(ref, base_components(arch, bool(vae_ref)), "base model", dtype)
        comps = {
            "unet": _load(UNet2DConditionModel, folder, "unet", ref, "base model", dtype),
            "text_encoder": _load(CLIPTextModel, folder, "text_encoder", ref, "base model", dtype),
            "tokenizer": _load(CLIPTokenizer, folder, "tokenizer", ref, "base model"),
        }
        if not vae_ref:
            comps["vae"] = _load(AutoencoderKL, folder, "vae", ref, "base model", dtype)
        if arch == "sdxl":
            comps["text_encoder_2"] = _load(CLIPTextModelWithProjection, folder, "text_encoder_2", ref,
                                            "base model", dtype)
            comps["tokenizer_2"] = _load(CLIPTokenizer, folder, "tokenizer_2", ref, "base model")
        comps["scheduler_config"] = dict(DDIMScheduler.load_config(str(folder / "scheduler")))
    if vae_ref:
        if Path(vae_ref).expanduser().is_file():
            comps["vae"] = _from_single_file(AutoencoderKL, vae_ref, "VAE", torch_dtype=dtype)
        else:
            comps["vae"] = _load(AutoencoderKL, local_folder(vae_ref, None, "VAE", dtype), "", vae_ref, "VAE", dtype)
    for name, module in comps.items():
        if hasattr(module, "eval"):
            module.eval().requires_grad_(False)
            module.to(device)
    return comps


#: The families published and run in bf16: their text encoders and transformers overflow fp16
#: (backend/engine/families/registry.py).
BF16_ARCHES = arches(bf16=True)
#: The transformer families' base models, loaded component by component from a diffusers
#: folder: arch -> (the family's name, {component: (library, class)}).
DIT_BASES = {arch: e.loaders for arch, e in ENGINES.items() if e.loaders}


def _load_dit_base(arch: str, ref: str, dtype, device) -> dict:
    """A transformer family's components (:data:`DIT_BASES`) and its scheduler config;
    Qwen-Image-Edit's ``edit_plus`` when its pipeline is QwenImageEditPlusPipeline."""
    import importlib
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    label, classes = DIT_BASES[arch]
    if Path(ref).expanduser().is_file():
        raise ModelNotFoundError(f"base model {ref}: {label} loads from a folder or hub id (diffusers layout), "
                                 f"not from one checkpoint file")
    folder = local_folder(ref, base_components(arch, False), "base model", dtype)
    comps = {}
    for name, (library, cls) in classes.items():
        if name == "processor":  # Qwen2-VL's processor for pictures only
            cls = importlib.import_module(library, __package__).image_processor_class()
        else:
            cls = getattr(importlib.import_module(library), cls)
        weights = () if name.startswith(("tokenizer", "processor")) else (dtype,)
        comps[name] = _load(cls, folder, name, ref, "base model", *weights)
    comps["scheduler_config"] = dict(FlowMatchEulerDiscreteScheduler.load_config(str(folder / "scheduler")))
    if arch == "klein":  # the distilled models sample without CFG; the base ones are not built
        try:
            distilled = bool(json.loads((folder / "model_index.json").read_text()).get("is_distilled", False))
        except (OSError, ValueError):
            distilled = False
        if not distilled:
            raise ModelNotFoundError(f"base model {ref}: not a distilled FLUX.2 Klein (model_index.json has no "
                                     f"is_distilled true); the undistilled Klein base models are not supported yet")
    if arch == "qwen-edit":  # -2509 / -2511: the folder's model_index.json names QwenImageEditPlusPipeline
        try:
            pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
        except (OSError, ValueError):
            pipeline_class = ""
        comps["edit_plus"] = pipeline_class == "QwenImageEditPlusPipeline"
    for module in comps.values():
        if hasattr(module, "eval"):
            module.eval().requires_grad_(False)
            module.to(device)
    return comps


def _load_zimage_controlnet(ref: str, dtype):
    """The Z-Image union ControlNet as diffusers supports it: ``from_single_file`` of its one
    checkpoint (diffusers' own conversion), with the config from the folder beside it or
    from the config repo diffusers names for the hub checkpoint; a diffusers folder with
    ``from_pretrained``."""
    from diffusers import ZImageControlNetModel

    path = Path(ref).expanduser()
    if tiny.is_tiny_path(path):  # the tiny net's folder, or its checkpoint file
        _ensure_tiny(path.parent if path.suffix == ".safetensors" else path)
    if path.is_file():
        config = {"config": str(path.parent)} if (path.parent / "config.json").is_file() else {}
        return _from_single_file(ZImageControlNetModel, ref, "ControlNet", torch_dtype=dtype, **config)
    if path.is_dir():
        if any(path.glob("diffusion_pytorch_model*.safetensors")):  # a diffusers folder
            return _load(ZImageControlNetModel, local_folder(ref, None, "ControlNet", dtype), "", ref, "ControlNet",
                         dtype)
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1 or not (path / "config.json").is_file():
            raise ModelNotFoundError(f"ControlNet {ref!r}: expected one .safetensors checkpoint and its config.json "
                                     f"(or a diffusers folder), found {', '.join(p.name for p in files) or 'none'}")
        return _from_single_file(ZImageControlNetModel, str(files[0]), "ControlNet", torch_dtype=dtype,
                                 config=str(path))
    if ref in ZIMAGE_UNION_FILES:
        file, config = ZIMAGE_UNION_FILES[ref]
        snaps = fetch([(ref, hub.Files([file]), "ControlNet"), (config, hub.Files(["config.json"]), "ControlNet config")],
                      dtype)["snapshots"]
        return _from_single_file(ZImageControlNetModel, str(snaps[ref] / file), "ControlNet", torch_dtype=dtype,
                                 config=str(snaps[config]))
    return _load(ZImageControlNetModel, local_folder(ref, None, "ControlNet", dtype), "", ref, "ControlNet", dtype)


def load_controlnet(ref: ControlNetRef, dtype, device):
    from diffusers import ControlNetModel, ControlNetUnionModel, FluxControlNetModel, QwenImageControlNetModel

    if ref.arch == "zimage":
        return _load_zimage_controlnet(ref.ref, dtype).eval().requires_grad_(False).to(device)
    if ref.arch == "flux":
        cls = FluxControlNetModel  # single-purpose and union nets alike (a union one has num_mode)
    elif ref.arch == "qwen":
        cls = QwenImageControlNetModel
    else:
        cls = ControlNetUnionModel if ref.union_mode is not None else ControlNetModel
    if Path(ref.ref).expanduser().is_file():
        model = _from_single_file(cls, ref.ref, "ControlNet", torch_dtype=dtype)
    else:
        model = _load(cls, local_folder(ref.ref, None, "ControlNet", dtype), "", ref.ref, "ControlNet", dtype)
    return model.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------------------------------
# Warm cache with LRU eviction under a memory budget
# ---------------------------------------------------------------------------------------


def module_bytes(obj) -> int:
    import torch

    modules = obj.values() if isinstance(obj, dict) else [obj]
    total = 0
    for m in modules:
        if isinstance(m, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in m.parameters())
            total += sum(t.numel() * t.element_size() for t in m.buffers())
    return total


@dataclass
class _Entry:
    kind: str
    ref: str
    value: object
    nbytes: int
    loaded_at: float
    last_used: float
    pins: int = 0
    hits: int = 0


@dataclass
class ModelCache:
    """Loaded models keyed by what they are; LRU-evicted beyond ``budget_bytes``."""

    device: object
    dtype: object
    budget_bytes: int
    entries: "OrderedDict[tuple, _Entry]" = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    loads: int = 0
    evictions: int = 0
    # arches whose models load into CPU memory (a memory profile moves what runs to the device)
    host_arches: set = field(default_factory=set)

    def _get(self, key: tuple, kind: str, ref: str, loader):
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                entry.last_used = time.time()
                entry.hits += 1
                self.entries.move_to_end(key)
                return entry
        t0 = time.perf_counter()
        value = loader()
        nbytes = module_bytes(value)
        with self.lock:
            self.loads += 1
            entry = _Entry(kind, ref, value, nbytes, time.time(), time.time())
            self.entries[key] = entry
            self._evict_to_fit(keep=key)
        log.info("loaded %s %s (%.1f MB) in %.2fs", kind, ref, nbytes / 2**20, time.perf_counter() - t0)
        return entry

    def dtype_for(self, arch: str):
        """The :data:`BF16_ARCHES` run in bf16 where the engine runs fp16; everything else in
        the cache's dtype."""
        import torch

        if arch in BF16_ARCHES and self.dtype == torch.float16:
            return torch.bfloat16
        return self.dtype

    def base(self, plan: ModelPlan) -> _Entry:
        key = ("base", plan.base, plan.vae, plan.arch)
        return self._get(key, "base", plan.base,
                         lambda: load_base(plan.base, plan.vae, plan.arch, self.dtype_for(plan.arch),
                                           self.device_for(plan.arch)))

    def reference_model(self, plan: ModelPlan) -> _Entry:
        """The reference images' model of ``plan`` (:func:`load_reference_model`)."""
        key = ("references", plan.references, plan.arch)
        return self._get(key, "references", plan.references,
                         lambda: load_reference_model(plan.arch, plan.references, self.dtype_for(plan.arch),
                                      self.device_for(plan.arch)))

    def controlnet(self, ref: ControlNetRef) -> _Entry:
        key = ("controlnet", ref.ref, ref.union_mode is not None)
        return self._get(key, "controlnet", ref.ref,
                         lambda: load_controlnet(ref, self.dtype_for(ref.arch), self.device_for(ref.arch)))

    def device_for(self, arch: str):
        return "cpu" if arch in self.host_arches else self.device

    @contextmanager
    def pinned(self, entries: list[_Entry]):
        with self.lock:
            for e in entries:
                e.pins += 1
        try:
            yield
        finally:
            with self.lock:
                for e in entries:
                    e.pins -= 1

    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _evict_to_fit(self, keep: tuple | None = None) -> None:
        for key in list(self.entries):  # oldest first
            if self.used_bytes() <= self.budget_bytes:
                break
            entry = self.entries[key]
            if key == keep or entry.pins:
                continue
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        entry = self.entries.pop(key)
        self.evictions += 1
        log.info("evicted %s %s (%.1f MB)", entry.kind, entry.ref, entry.nbytes / 2**20)
        del entry
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a backend requirement
            pass

    def unload(self) -> dict:
        """Drop every model not in use. Returns what was dropped and what stayed pinned."""
        with self.lock:
            dropped, kept = [], []
            for key in list(self.entries):
                entry = self.entries[key]
                if entry.pins:
                    kept.append(entry.ref)
                else:
                    dropped.append(entry.ref)
                    self._drop(key)
            return {"unloaded": dropped, "in_use": kept}

    def describe(self) -> list[dict]:
        with self.lock:
            return [{"kind": e.kind, "id": e.ref, "mb": round(e.nbytes / 2**20, 2), "in_use": bool(e.pins),
                     "hits": e.hits, "last_used": e.last_used} for e in self.entries.values()]


def default_budget_bytes(device) -> int:
    env = os.environ.get("ARCHVIZ_MEMORY_BUDGET_GB")
    if env:
        return int(float(env) * 2**30)
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.75)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 16 * 2**30
    return int(total * 0.5)
