"""Model registry: which weights a job needs, loading them, and keeping them warm.

* :func:`resolve_models` turns a job's :class:`~..core.jobs.ModelSpec` and control types into
  concrete references (Hugging Face ids, local folders or single files). Real ids per
  DESIGN.md live here; the ``tiny`` families point at folders built by :mod:`.tiny`.
* :class:`ModelCache` loads base pipelines and ControlNets on demand, shares them between
  jobs, and evicts the least recently used ones when a memory budget would be exceeded.
  Models in use by the running job are pinned and never evicted.

Loading honours the Hugging Face cache and ``HF_HUB_OFFLINE``; safetensors are required
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
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..core.jobs import JobError, ModelSpec
from . import tiny

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

_TINY_SD15_KIND = {"depth": "depth", "lines": "lineart", "lineart": "lineart", "mlsd": "mlsd",
                   "canny": "canny", "normal": "normal", "seg": "seg"}
_TINY_SDXL_KIND = {"depth": "depth", "canny": "canny", "lines": "canny", "lineart": "canny", "mlsd": "canny"}


@dataclass(frozen=True)
class ControlNetRef:
    ref: str  # HF id, local folder or single file
    union_mode: int | None = None  # set when the model is a ControlNet-Union


@dataclass(frozen=True)
class ModelPlan:
    """Concrete references for one job."""

    arch: str  # "sd15" | "sdxl"
    family: str
    base: str
    vae: str | None
    controlnets: tuple[ControlNetRef, ...]  # one per job control, in order

    def ids(self) -> dict:
        return {"family": self.family, "base": self.base, "vae": self.vae,
                "controlnets": [c.ref if c.union_mode is None else f"{c.ref}#mode={c.union_mode}"
                                for c in self.controlnets]}


def resolve_models(spec: ModelSpec, control_types: list[str], control_models: list[str | None]) -> ModelPlan:
    """References for a job; raises JobError naming the field when a control type has no
    ControlNet in the chosen family."""
    sdxl = spec.is_sdxl
    arch = "sdxl" if sdxl else "sd15"
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


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


class ModelNotFoundError(RuntimeError):
    """A model is not available locally (and cannot be downloaded)."""


_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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


def _missing(what: str, ref: str, exc: Exception) -> ModelNotFoundError:
    from huggingface_hub import constants

    where = (f"not a local folder or file, and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
             + (" with HF_HUB_OFFLINE=1" if _offline() else " and it could not be downloaded"))
    return ModelNotFoundError(
        f"{what} {ref!r} is missing: {where}. Download it once on a machine with internet "
        f"(`huggingface-cli download {ref}`), copy the Hugging Face cache here, or point the job "
        f"at a local folder or .safetensors file. For an offline test run use the model family "
        f"'tiny' (random weights, images are noise). Loader said: {type(exc).__name__}: {exc}"
    )


def _from_pretrained(cls, ref: str, what: str, subfolder: str | None = None, **kwargs):
    """``cls.from_pretrained`` for a folder or HF id, ``cls.from_single_file`` for a file.

    Local first (``local_files_only``); the hub is asked only when online. Every way of
    not finding the weights becomes a :class:`ModelNotFoundError` with instructions."""
    path = Path(ref).expanduser()
    if tiny.is_tiny_path(path):
        tiny.ensure_tiny(path)
    is_local = path.exists()
    if is_local and path.is_file():
        if path.suffix not in _SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(f"{what} {ref!r}: unsupported single-file type {path.suffix!r}")
        if path.suffix != ".safetensors" and _use_safetensors(ref):
            raise ModelNotFoundError(f"{what} {ref!r} is a pickle checkpoint; convert it to .safetensors, "
                                     "or, if you trust it, allow it for this model only: archviz serve "
                                     f"--allow-pickle {ref}")
        kwargs.pop("use_safetensors", None)
        return cls.from_single_file(str(path), **kwargs)
    if is_local and subfolder and not (path / subfolder).is_dir():
        raise ModelNotFoundError(f"{what} {ref!r} has no {subfolder!r} folder")
    if subfolder:
        kwargs["subfolder"] = subfolder
    target = str(path) if is_local else ref
    try:
        try:
            return cls.from_pretrained(target, local_files_only=True, **kwargs)
        except OSError:
            if is_local or _offline():
                raise
            return cls.from_pretrained(target, **kwargs)  # may download when online
    except OSError as exc:
        raise _missing(what, ref, exc) from exc


def _weights(dtype, ref: str) -> dict:
    return {"torch_dtype": dtype, "use_safetensors": _use_safetensors(ref)}


def load_base(ref: str, vae_ref: str | None, arch: str, dtype, device) -> dict:
    """UNet, VAE, text encoder(s), tokenizer(s) and scheduler config of a base model.

    Components are loaded one by one (no safety checker, no feature extractor), so a real
    SD 1.5 / SDXL repo, a local copy of it and a tiny folder all go through this code."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(ref).expanduser()
    if path.is_file():  # one .safetensors checkpoint with everything inside
        cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
        pipe = _from_pretrained(cls, ref, "base model", torch_dtype=dtype)
        comps = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer")}
        if arch == "sdxl":
            comps.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
        comps["scheduler_config"] = dict(pipe.scheduler.config)
    else:
        w = _weights(dtype, ref)
        comps = {
            "unet": _from_pretrained(UNet2DConditionModel, ref, "base model", "unet", **w),
            "vae": _from_pretrained(AutoencoderKL, ref, "base model", "vae", **w),
            "text_encoder": _from_pretrained(CLIPTextModel, ref, "base model", "text_encoder", **w),
            "tokenizer": _from_pretrained(CLIPTokenizer, ref, "base model", "tokenizer"),
        }
        if arch == "sdxl":
            comps["text_encoder_2"] = _from_pretrained(CLIPTextModelWithProjection, ref, "base model",
                                                       "text_encoder_2", **w)
            comps["tokenizer_2"] = _from_pretrained(CLIPTokenizer, ref, "base model", "tokenizer_2")
        comps["scheduler_config"] = _scheduler_config(ref, path)
    if vae_ref:
        comps["vae"] = _from_pretrained(AutoencoderKL, vae_ref, "VAE", **_weights(dtype, vae_ref))
    for name, module in comps.items():
        if hasattr(module, "eval"):
            module.eval().requires_grad_(False)
            module.to(device)
    return comps


def _scheduler_config(ref: str, path: Path) -> dict:
    from diffusers import DDIMScheduler

    class _Config:  # load_config has the from_pretrained shape _from_pretrained expects
        from_pretrained = staticmethod(DDIMScheduler.load_config)

    return dict(_from_pretrained(_Config, ref, "base model", "scheduler"))


def load_controlnet(ref: ControlNetRef, dtype, device):
    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if ref.union_mode is not None else ControlNetModel
    model = _from_pretrained(cls, ref.ref, "ControlNet", **_weights(dtype, ref.ref))
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

    def base(self, plan: ModelPlan) -> _Entry:
        key = ("base", plan.base, plan.vae, plan.arch)
        return self._get(key, "base", plan.base,
                         lambda: load_base(plan.base, plan.vae, plan.arch, self.dtype, self.device))

    def controlnet(self, ref: ControlNetRef) -> _Entry:
        key = ("controlnet", ref.ref, ref.union_mode is not None)
        return self._get(key, "controlnet", ref.ref, lambda: load_controlnet(ref, self.dtype, self.device))

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
