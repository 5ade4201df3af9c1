"""The generation engine: the sweep core every model family shares.

A job's images are (style, seed) pairs. The core runs them the same way for every family
(:mod:`.families`; SD 1.5 / SDXL in :mod:`.families.sd`):

* batching: several (style, seed) images per forward, grouped by the styles' sampling
  (steps, sampler, guidance) and chunked by memory; on CUDA out-of-memory a batch is halved
  and retried;
* one ``torch.Generator`` per seed, so an image is the same alone or inside a sweep;
* text embeddings once per style (a cache per job);
* each control image made ready for its net once per job;
* a unit outside its guidance window, or at scale 0, is not run at all (diffusers runs it
  and multiplies by 0: skipping is exact);
* progress and cancel every denoising step; the VAE decode in chunks; forward counts and
  seconds per phase in :attr:`Engine.stats` / :attr:`Engine.timings`;
* previews every few steps (:mod:`.previews`: a TAESD-class tiny autoencoder from the local
  cache, else a projection fitted to the family's VAE), read-only on the latents;
* the family's fast mode (a job's ``fast``: the plan carries its LoRA or base; the family
  switches a loaded LoRA on for fast jobs and off for exact ones).

The family does the rest in its diffusers pipeline's order: encode prompt -> prepare
controls -> prepare latents -> one denoising step with the control residuals -> decode.

Speed options that do not change the images (channels_last, SDPA backend, fused QKV,
torch.compile, CUDA graphs, VAE decode batch) are :class:`EngineOptions`; each was measured
on its own with ``archviz bench`` and only the ones that paid are on by default
(BENCHMARKS.md). Options that change images (``guess_mode``, ``quantize`` with torchao,
``token_merging`` with tomesd) are off by default and labelled wherever they are reported.

fp16 on CUDA and MPS, fp32 on CPU. Models come from :class:`.models.ModelCache` (warm between jobs).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import platform
import threading
import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterable

import numpy as np
import torch

from ...core.devices import NvidiaSmi, choose_device, cpu_warning, query_nvidia_smi
from ..models.registry import ModelCache, ModelPlan, default_budget_bytes
from .families import family_for
from .families.base import Family, Unit
from .previews import PreviewCache, Previewer
from .memory import NONE as NO_PROFILE
from .memory import MemoryProfile, choose_profile, quantize_mode
from .families.sd import PROMPT_MODE_BASE, accept_precomputed_cond, make_scheduler  # noqa: F401 (re-exported)
from .sweep import PlannedImage, SweepPlan

log = logging.getLogger("archviz.backend")


class Cancelled(Exception):
    """The job was cancelled; raised between two denoising steps."""


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu (:func:`..core.devices.choose_device` with torch's view).
    ``meta`` (shapes only, no memory) is for the bench's full-size FLOP counts."""
    if name == "meta":
        return torch.device("meta")
    try:
        device, _dtype = choose_device(name, torch.cuda.is_available(), mps_available())
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    return torch.device(device)


def device_warning(device: torch.device, requested: str = "auto", nvidia: NvidiaSmi | None = None) -> str:
    """The warning for a backend on the CPU while the machine has a GPU ("" otherwise): the
    GPUs ``nvidia-smi`` lists (or an Apple Silicon Mac) against torch's own build."""
    if device.type != "cpu":
        return ""
    nvidia = nvidia if nvidia is not None else query_nvidia_smi()
    return cpu_warning("cpu", requested, platform.system(), platform.machine(), nvidia.gpus, torch.version.cuda,
                       torch.__version__)


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs. Every field but ``guess_mode`` keeps the images (up to float
    rounding); ``archviz bench`` measures each one on its own (``--rows``)."""

    skip_inactive: bool = True  # do not run a ControlNet outside its window / at scale 0 (exact)
    batch: bool = True  # several (style, seed) images per UNet batch; False: one image per batch
    embeds_once: bool = True  # text embeddings once per style (False: once per image)
    cond_once: bool = True  # ControlNet conditioning embedding of each control image once per job
    channels_last: bool = False  # NHWC weights and activations for the convolutions
    sdpa_backend: str = "auto"  # auto | flash | efficient | cudnn | math
    fused_qkv: bool = False  # one projection matmul for q, k, v (diffusers' fuse_qkv_projections)
    compile: bool = False  # torch.compile the UNet and the ControlNets (scales/windows never recompile)
    cuda_graphs: bool = False  # with compile: mode="reduce-overhead" (CUDA graph replay)
    vae_batch: int = 0  # images per VAE decode call; 0 = 4 on CUDA, the whole batch on CPU
    # These change the images, so they are never on by default and the benchmark labels them.
    # guess_mode: ControlNets on the conditional half of CFG only, residuals scaled 0.1 -> 1.0
    # over the blocks (diffusers' guess mode).
    guess_mode: bool = False
    # quantize: the Linear layers of the UNet and ControlNets in a quantized copy (torchao):
    # int8 (dynamic int8 activations and weights), int8-weight, fp8 (dynamic fp8 activations
    # and weights; CUDA compute capability >= 8.9), fp8-weight. The loaded models stay as they are.
    quantize: str = "none"
    # token_merging: fraction of the self-attention tokens merged in the highest-resolution
    # attention blocks of the UNet and ControlNets (ToMe for SD, the tomesd package; 0 = off,
    # at most 0.75).
    token_merging: float = 0.0

    SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
    QUANTIZE = ("none", "int8", "int8-weight", "fp8", "fp8-weight")

    def __post_init__(self):
        if self.sdpa_backend not in self.SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend: unknown {self.sdpa_backend!r} (choose from {', '.join(self.SDPA_BACKENDS)})")
        if self.vae_batch < 0:
            raise ValueError(f"vae_batch: must be >= 0, got {self.vae_batch}")
        if self.quantize not in self.QUANTIZE:
            raise ValueError(f"quantize: unknown {self.quantize!r} (choose from {', '.join(self.QUANTIZE)})")
        if not 0.0 <= self.token_merging <= 0.75:  # also refuses NaN
            raise ValueError(f"token_merging: must be a fraction from 0 to 0.75, got {self.token_merging!r}")

    def image_changes(self) -> dict:
        """The options set here that make other images than the plain diffusers pipeline
        (recorded in every image's parameters, so a resumed sweep never mixes the two)."""
        return {name: getattr(self, name) for name, on in (
            ("guess_mode", self.guess_mode), ("quantize", self.quantize != "none"),
            ("token_merging", self.token_merging > 0)) if on}

    @classmethod
    def parse(cls, items: Iterable[str]) -> dict:
        """``NAME=VALUE`` texts (``archviz serve --option``) -> changes for :meth:`replace`,
        each value read as its field's type; errors name the bad item."""
        known = {f.name: f for f in fields(cls)}
        changes = {}
        for item in items:
            name, sep, text = item.partition("=")
            name, text = name.strip().replace("-", "_"), text.strip()
            if not sep or name not in known:
                raise ValueError(f"engine option {item!r}: expected NAME=VALUE with NAME one of {', '.join(known)}")
            kind = type(known[name].default)
            try:
                if kind is bool:
                    if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                        raise ValueError("not a boolean")
                    changes[name] = text.lower() in ("1", "true", "yes", "on")
                else:
                    changes[name] = kind(text)
            except ValueError:
                raise ValueError(f"engine option {item!r}: {name} takes a {kind.__name__}, got {text!r}") from None
        cls().replace(**changes)  # range and choice checks, naming the field
        return changes

    @classmethod
    def resolve(cls, options: "EngineOptions | dict | None", device: torch.device | str) -> "EngineOptions":
        """``options`` as given, the device's defaults (None) or those with changes (a dict)."""
        if isinstance(options, cls):
            return options
        return cls.defaults(device).replace(**(options or {}))

    @classmethod
    def defaults(cls, device: torch.device | str) -> "EngineOptions":
        """What measured faster on that kind of device (BENCHMARKS.md)."""
        kind = torch.device(device).type
        return cls(**(CPU_DEFAULTS if kind == "cpu" else CUDA_DEFAULTS))

    def replace(self, **changes) -> "EngineOptions":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


#: Options on by default per device beyond the dataclass defaults, from the side-by-side rows
#: of ``archviz bench`` (BENCHMARKS.md). CPU: channels_last paid 1.07-1.09x in three runs of
#: the tiny sweep. CUDA: nothing yet; no GPU run has measured the rows, so the options stay
#: off there until one does.
CPU_DEFAULTS: dict = {"channels_last": True}
CUDA_DEFAULTS: dict = {}


def optional_package(name: str, option: str):
    """Import a package that only an image-changing option needs, or say which option needs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"{option}: needs the {name} package, which is not installed in this backend's "
                           f"environment (pip install {name})") from exc


def first_attention_downsample(model: torch.nn.Module) -> int:
    """How far down the highest-resolution attention blocks sit (1 for SD 1.5, 2 for SDXL,
    whose first down block has no attention): where token merging saves the most."""
    for i, kind in enumerate(model.config.down_block_types):
        if "CrossAttn" in kind:
            return 2 ** i
    return 1


def quantize_linear(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """Quantize the Linear layers of ``module`` in place with torchao (see EngineOptions.quantize)."""
    if mode == "fp8":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < (8, 9):
            where = f"compute capability {capability[0]}.{capability[1]}" if capability else device.type
            raise RuntimeError(f"quantize: 'fp8' needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); "
                               f"this engine runs on {where} ('fp8-weight' and 'int8' run anywhere)")
    optional_package("torchao", f"quantize {mode!r}")
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig,
                                      Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_)

    config = {"int8": Int8DynamicActivationInt8WeightConfig, "int8-weight": Int8WeightOnlyConfig,
              "fp8": Float8DynamicActivationFloat8WeightConfig, "fp8-weight": Float8WeightOnlyConfig}[mode]()
    quantize_(module, config)
    return module


def quantize_onto(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """Move ``module`` to ``device`` one piece at a time (its children, the items of its
    block lists), quantizing each piece's Linear layers there: the device holds the
    quantized pieces so far plus one piece in full precision."""
    pieces = []
    for child in module.children():
        pieces.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    for piece in pieces:
        piece.to(device)
        quantize_linear(piece, mode, device)
    return module.to(device)  # parameters and buffers of the module itself


class Engine:
    """Owns the device, the warm model cache and the sweep. One worker thread calls
    :meth:`generate`; :meth:`unload` may be called from any thread."""

    def __init__(self, device: str = "auto", budget_bytes: int | None = None, max_batch: int | None = None,
                 options: EngineOptions | dict | None = None, memory_profile: str | None = None):
        self.device = pick_device(device)
        self.options = EngineOptions.resolve(options, self.device)
        # FLUX.1's memory profile (backend/engine/memory.py): auto = by free GPU memory, chosen once per
        # family before its models load; ARCHVIZ_MEMORY_PROFILE / serve --memory-profile set one.
        self.memory_profile = memory_profile or os.environ.get("ARCHVIZ_MEMORY_PROFILE") or "auto"
        choose_profile("flux", "cpu", None, self.memory_profile)  # refuses an unknown name now
        self._profiles: dict[str, MemoryProfile] = {}
        self._stream_ids: set[int] = set()
        self.dtype = torch.float16 if self.device.type in ("cuda", "mps") else torch.float32
        # Running on the CPU while the machine has a GPU is never silent: the log, /v1/health,
        # ``archviz serve`` / ``sweep`` and the panel show this.
        self.device_warning = device_warning(self.device, device)
        if self.device_warning:
            log.warning("%s", self.device_warning)
        self.cache = ModelCache(self.device, self.dtype, budget_bytes or default_budget_bytes(self.device))
        env_batch = os.environ.get("ARCHVIZ_MAX_BATCH")
        self.max_batch = max_batch or (int(env_batch) if env_batch else None)
        self._lock = threading.Lock()
        # id(model) -> (weak reference to the model, its compiled form / its quantized copy),
        # made for the options in _variants_key
        self._compiled: dict[int, tuple] = {}
        self._quantized: dict[int, tuple] = {}
        self._variants_key: tuple | None = None  # the options the two were made for
        # What the last generate() did: forward passes per model (in images x CFG rows) and
        # seconds per phase (CUDA synchronised at phase ends), for the benchmark's FLOP rate.
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()
        self._init = None  # the running job's encoded init image (restyle), see Family.prepare_init
        self._refs = None  # the running job's encoded reference images, see Family.prepare_references
        # Previews while denoising (backend/engine/previews.py): tiny autoencoders and fitted
        # projections kept between jobs; the running job's previewer and where its PNGs go.
        self.previews = PreviewCache()
        self._preview: tuple | None = None  # (Previewer, on_preview) while a job makes previews
        self._last_preview_method: str | None = None  # taesd | projection: how the last job's previews were made
        # Why the last job made no more previews, when they failed ("" otherwise): previews are
        # a view, so a failure stops them and the job goes on; the worker shows this line.
        self.preview_warning = ""
        self._adopted: set[str] = set()  # model references put in the cache by adopt() (never fetched)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def image_changes(self) -> dict:
        return self.options.image_changes()

    def profile_for(self, arch: str) -> MemoryProfile:
        """The memory profile for a family's jobs on this engine (chosen once per family)."""
        if arch not in self._profiles:
            free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
            profile = choose_profile(arch, self.device.type, free, self.memory_profile)
            self._profiles[arch] = profile
            if profile.quantize != "none" or profile.stream:
                # The family's models load into CPU memory; what runs goes to the GPU in 8 bits
                # (_quantized_copy) or block by block (streaming), the VAE as it is.
                self.cache.host_arches.add(arch)
        return self._profiles[arch]

    def _fp8_capable(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.get_device_capability(self.device) >= (8, 9)

    def image_changes_for(self, arch: str) -> dict:
        """:attr:`image_changes` plus what the family's memory profile changes (recorded in
        every image's parameters): the profile's name, and its 8-bit weights when the
        ``quantize`` option does not already set them."""
        changes = dict(self.options.image_changes())
        profile = self.profile_for(arch)
        if profile is not NO_PROFILE:
            changes["memory_profile"] = profile.name
            if profile.quantize != "none" and self.options.quantize == "none":
                changes["quantize"] = quantize_mode(profile, self._fp8_capable())
        return changes

    # -- models ------------------------------------------------------------------------
    def load(self, models: ModelPlan):
        """Base components and the ControlNets of a plan (cache entries, to pin)."""
        base = self.cache.base(models)
        nets = [self.cache.controlnet(ref) for ref in models.controlnets]
        return base, nets

    def fetch_models(self, models: ModelPlan, progress=None, cancelled=None) -> dict | None:
        """Complete the hub snapshots of ``models`` in the Hugging Face cache (fp16 variants
        on an fp16 device) before anything is loaded; ``progress`` gets bytes per file and
        overall. None when every model is local."""
        from ..models.registry import fetch_models

        if self._adopted and _model_refs(models) <= self._adopted:  # built in memory (adopt): nothing to fetch
            return None
        return fetch_models(models, self.dtype, progress, cancelled or (lambda: False))

    def unload(self) -> dict:
        with self._lock:
            self._compiled.clear()
            self._quantized.clear()
        return self.cache.unload()

    def adopt(self, models: ModelPlan, base: dict, controlnets: list) -> None:
        """Put already built models into the warm cache under ``models``' references, as if
        they had been loaded (the benchmark's random-weight models from the real configs)."""
        # The cache's own get-or-load with a loader that hands the built models over (the
        # keys are those of ModelCache.base / .controlnet).
        keys = [("base", models.base, models.vae, models.arch)]
        self.cache._get(keys[0], "base", models.base, lambda: base)
        for ref, net in zip(models.controlnets, controlnets):
            keys.append(("controlnet", ref.ref, ref.union_mode is not None))
            self.cache._get(keys[-1], "controlnet", ref.ref, lambda n=net: n)
        self._adopted |= _model_refs(models)
        if any(key not in self.cache.entries for key in keys):  # evicted: they could never be loaded back
            raise RuntimeError(f"the adopted models do not all fit the model cache's budget of "
                               f"{self.cache.budget_bytes / 2**30:.1f} GB; raise it with ARCHVIZ_MEMORY_BUDGET_GB")

    def helper_pipeline(self, arch: str, comps: dict, controlnet):
        """The family's diffusers pipeline over the warm components, used for its helpers
        (prompt encoding, control image processing, SDXL time ids) and, in tests and the
        benchmark, as the plain diffusers reference."""
        return family_for(arch).pipeline(comps, controlnet)

    # -- sizing ------------------------------------------------------------------------
    def batch_limit(self, plan: SweepPlan) -> int:
        """Images per batch: the job's cap, else ARCHVIZ_MAX_BATCH, else by memory."""
        if not self.options.batch:
            return 1
        if plan.job.max_batch:
            return plan.job.max_batch
        if self.max_batch:
            return self.max_batch
        if self.device.type != "cuda":
            return 8
        free, _ = torch.cuda.mem_get_info(self.device)
        per_image = family_for(plan.models.arch).bytes_per_image_512 * (plan.width * plan.height) / 512**2
        return int(max(1, min(16, (free * 0.7) // per_image)))

    # -- the sweep ---------------------------------------------------------------------
    def generate(self, plan: SweepPlan, images: list[PlannedImage], *,
                 on_step: Callable[[int], None] | None = None,
                 on_image: Callable[[PlannedImage, np.ndarray], None] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 on_preview: Callable[[PlannedImage, int, int, bytes], None] | None = None,
                 preview_every: int | None = None) -> dict[int, np.ndarray]:
        """Make ``images`` (a subset of ``plan.images``). Calls ``on_image`` as each batch is
        decoded with a float32 HxWx3 array in [0, 1]; returns {index: array}. With
        ``on_preview``: every ``preview_every`` steps (default the job's ``preview_every``,
        else 4; 0 = none) ``on_preview(image, step, steps, png)`` for each image of the
        batch (backend/engine/previews.py); previews never change the images."""
        profile = self.profile_for(plan.models.arch)
        saved = self.options
        if profile.quantize != "none" and saved.quantize == "none":
            self.options = saved.replace(quantize=quantize_mode(profile, self._fp8_capable()))
        if preview_every is None:
            preview_every = plan.job.preview_every
        if preview_every is None:
            from .previews import DEFAULT_EVERY

            preview_every = DEFAULT_EVERY
        try:
            return self._generate(plan, images, profile, on_step, on_image, cancelled or (lambda: False),
                                  on_preview if preview_every else None, preview_every)
        finally:
            self.options = saved
            self._init = None
            self._refs = None
            self._preview = None

    def _generate(self, plan, images, profile: MemoryProfile, on_step, on_image, cancelled, on_preview=None,
                  preview_every=0):
        opts = self.options
        family = family_for(plan.models.arch)
        self.stats, self.timings = Counter(), Counter()
        base_entry, net_entries = self.load(plan.models)
        # Reference images (core/references.py): the family's reference model, warm like the rest.
        ref_entry = self.cache.reference_model(plan.models) if plan.models.references else None
        results: dict[int, np.ndarray] = {}
        with self.cache.pinned([base_entry, *net_entries, *([ref_entry] if ref_entry else [])]):
            comps = base_entry.value
            nets = [e.value for e in net_entries]
            self._prepare_models(family.modules(comps, nets))
            self._apply_profile(profile, family, comps, nets)
            pipe = family.pipeline(comps, nets[0] if nets else None)  # instruction edits have no nets
            family.use_lora(self, plan, pipe, comps)  # fast mode's LoRA on, or any loaded one off
            # Reference images: the mechanism in the denoiser (or a former job's taken out), and
            # the references encoded once per job.
            family.use_references(self, plan, pipe, comps, ref_entry.value if ref_entry else None)
            t0 = self._clock()
            self._refs = family.prepare_references(self, plan, pipe, comps, ref_entry.value if ref_entry else None) \
                if plan.references else None  # FLUX.2 Klein reads its references itself: no reference model
            self.timings["references"] += self._clock() - t0
            controls = family.prepare_controls(self, plan, pipe, nets)  # once per job
            # Restyle: the init image through the VAE encoder once per job (each seed then
            # samples its own latent from it and noises it with its own generator).
            self._init = family.prepare_init(self, plan, pipe, comps) if plan.init is not None else None
            self.preview_warning = ""
            if on_preview is not None:
                t0 = self._clock()
                try:
                    self._preview = (Previewer(self, family, plan, pipe, comps, preview_every), on_preview)
                    self._last_preview_method = self._preview[0].method
                    self.preview_warning = self._preview[0].problem
                except Exception as exc:  # noqa: BLE001 - previews only: the images go on without them
                    self._previews_failed(exc)
                self.timings["preview"] += self._clock() - t0
            embeds: dict[int, object] = {}
            for batch in self.batches(plan, images):
                style = plan.styles[batch[0].style]
                t0 = self._clock()
                if not opts.embeds_once:
                    embeds.clear()
                for item in batch:
                    if item.style not in embeds or not opts.embeds_once:  # once per style (option)
                        embeds[item.style] = family.encode_prompt(self, pipe, comps, plan.styles[item.style])
                        self.stats["prompt_encodes"] += 1
                self.timings["encode"] += self._clock() - t0
                units = [Unit(u, nets[ci], controls[ci], plan.models.controlnets[ci].union_mode,
                              fn=self._runtime(nets[ci])) if nets
                         else Unit(u, None, controls[ci])  # FLUX.2 Klein: the control joins its references
                         for ci, u in enumerate(style.units)]
                out = self._run_batch_with_retry(plan, pipe, comps, style, units, batch, embeds,
                                                 on_step, cancelled)
                for item, array in zip(batch, out):
                    if plan.region is not None:  # the source's own pixels outside the feather band
                        from ...core.region import blend

                        array = blend(plan.region.source, array, plan.region.alpha)
                    results[item.index] = array
                    if on_image:
                        on_image(item, array)
        return results

    def _apply_profile(self, profile: MemoryProfile, family: Family, comps: dict, nets: list) -> None:
        """Text encoders to the CPU, and which modules stream their blocks (see memory.py)."""
        if profile.text_encoders_on_cpu:
            for name in family.text_encoders:
                if comps[name].device.type != "cpu":
                    comps[name].to("cpu")
        if profile is not NO_PROFILE and comps["vae"].device != self.device:
            comps["vae"].to(self.device)  # loaded into CPU memory with the rest: small, decodes on the GPU
        streamed = list(nets) if profile.stream in ("controlnets", "all") else []
        if profile.stream == "all":
            streamed.append(comps[family.denoiser])
        self._stream_ids = {id(m) for m in streamed}

    def batches(self, plan: SweepPlan, images: Iterable[PlannedImage]) -> list[list[PlannedImage]]:
        """Group images whose styles sample the same way, in sweep order, chunked by memory."""
        limit = self.batch_limit(plan)
        groups: dict[tuple, list[PlannedImage]] = {}
        for item in images:
            groups.setdefault(plan.styles[item.style].sampling_key(), []).append(item)
        out = []
        for group in groups.values():
            out.extend(group[i:i + limit] for i in range(0, len(group), limit))
        return out

    def _run_batch_with_retry(self, plan, pipe, comps, style, units, batch, embeds, on_step, cancelled):
        try:
            return self.denoise(plan, pipe, comps, style, units, batch, embeds, on_step, cancelled)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory with %d images per batch; retrying as %d + %d", len(batch), half,
                        len(batch) - half)
            self.max_batch = half
            return (self._run_batch_with_retry(plan, pipe, comps, style, units, batch[:half], embeds, on_step,
                                               cancelled)
                    + self._run_batch_with_retry(plan, pipe, comps, style, units, batch[half:], embeds, on_step,
                                                 cancelled))

    @torch.no_grad()
    def denoise(self, plan: SweepPlan, pipe, comps: dict, style, units: list[Unit],
                batch: list[PlannedImage], embeds: dict, on_step: Callable[[int], None] | None,
                cancelled: Callable[[], bool]) -> list[np.ndarray]:
        """One batch: the family's latents (one generator per seed), its step for every
        timestep with the units that run, then the decode in chunks."""
        family = family_for(plan.models.arch)
        opts = self.options
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        init = {"init": self._init} if plan.init is not None else {}
        if self._refs is not None:
            init["refs"] = self._refs
        state = family.prepare_latents(self, plan, pipe, comps, style, batch,
                                       [embeds[item.style] for item in batch], generators, units, **init)
        n = len(state.timesteps)
        t0 = self._clock()
        with self._sdpa():
            for i, t in enumerate(state.timesteps):
                if cancelled():
                    raise Cancelled()
                if opts.compile and opts.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                run = [(ci, unit, active) for ci, unit in enumerate(units)
                       for active in (unit.active(i, n),)
                       if active or not opts.skip_inactive]  # outside its window or at scale 0: not run at all
                family.step(self, state, i, t, run)
                if on_step:
                    on_step(1)
                if self._preview is not None and self._preview[0].due(i + 1, n):
                    self._emit_previews(batch, state, i + 1, n)
        self.timings["denoise"] += self._clock() - t0

        t0 = self._clock()
        out = self._decode(family, pipe, comps, state)
        self.timings["decode"] += self._clock() - t0
        return out

    def _emit_previews(self, batch: list[PlannedImage], state, step: int, steps: int) -> None:
        """Each image's preview PNG after ``step`` of ``steps`` (read-only on the latents)."""
        previewer, on_preview = self._preview
        t0 = self._clock()
        try:
            pngs = previewer.pngs(state)
        except Exception as exc:  # noqa: BLE001 - previews only: the images go on without them
            self._previews_failed(exc)
            return
        finally:
            self.timings["preview"] += self._clock() - t0
        self.stats["previews"] += len(pngs)
        for item, png in zip(batch, pngs):
            on_preview(item, step, steps, png)

    def _previews_failed(self, exc: Exception) -> None:
        """No more previews for this job, said in one line (the job status' warnings)."""
        self._preview = None
        first = str(exc).splitlines()[0] if str(exc) else ""
        self.preview_warning = f"previews stopped for this job: {type(exc).__name__}: {first}"[:300]
        log.warning("%s", self.preview_warning)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _decode(self, family: Family, pipe, comps: dict, state) -> list[np.ndarray]:
        """The family's decode in chunks (bounds VAE memory on the GPU)."""
        latents = state.latents
        chunk = self.options.vae_batch or (4 if self.device.type == "cuda" else len(latents))
        out = []
        with family.decoding(comps):
            for s in range(0, len(latents), chunk):
                out.extend(family.decode_latents(self, pipe, comps, state, latents[s:s + chunk]))
        return [np.asarray(a, dtype=np.float32) for a in out]

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- speed options ---------------------------------------------------------------------
    def _prepare_models(self, modules) -> None:
        """Bring the warm models to the options' memory format, QKV fusion and token merging
        (both ways, so models shared with a plain diffusers pipeline can be put back)."""
        opts = self.options
        key = (opts.channels_last, opts.fused_qkv, opts.sdpa_backend, opts.compile, opts.cuda_graphs,
               opts.quantize, opts.token_merging)
        if key != self._variants_key:
            # A compiled graph keeps the attention kernel and layouts it was traced with, and a
            # quantized copy the layout and patches of the model it was copied from.
            if opts.compile:
                torch._dynamo.reset()
            self._compiled.clear()
            self._quantized.clear()
            self._variants_key = key
        for module in modules:
            cl = bool(getattr(module, "_archviz_channels_last", False))
            if cl != opts.channels_last:
                module.to(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
                module._archviz_channels_last = opts.channels_last
            fused = bool(getattr(module, "_archviz_fused_qkv", False))
            if fused != opts.fused_qkv and hasattr(module, "fuse_qkv_projections"):
                if opts.fused_qkv:
                    module.fuse_qkv_projections()
                else:
                    module.unfuse_qkv_projections()
                module._archviz_fused_qkv = opts.fused_qkv
            merging = float(getattr(module, "_archviz_token_merging", 0.0))
            if merging != opts.token_merging:
                tomesd = optional_package("tomesd", "token_merging")
                if opts.token_merging:
                    # No random choice of merge targets: an image stays the same alone or in a batch.
                    tomesd.apply_patch(module, ratio=opts.token_merging, use_rand=False,
                                       max_downsample=first_attention_downsample(module))
                else:
                    tomesd.remove_patch(module)
                module._archviz_token_merging = opts.token_merging

    def restore_models(self, modules) -> None:
        """Put models back to what diffusers loads: contiguous, unfused QKV, no token merging."""
        saved = self.options
        self.options = saved.replace(channels_last=False, fused_qkv=False, compile=False, token_merging=0.0)
        try:
            self._prepare_models(modules)
        finally:
            self.options = saved

    def _runtime(self, module):
        """The callable the loop runs for ``module``: itself, its quantized copy, or the
        compiled form of either."""
        fn = self._quantized_copy(module) if self.options.quantize != "none" else module
        if id(module) in self._stream_ids and not getattr(fn, "_archviz_streamed", False):
            # The memory profile streams this model's blocks from CPU memory (diffusers' group
            # offloading, which needs accelerate), applied to what runs: the model or its
            # quantized copy.
            streaming = next((p.name for p in self._profiles.values() if p.stream), "?")
            optional_package("accelerate", f"memory profile {streaming!r} (streamed blocks)")
            from diffusers.hooks import apply_group_offloading

            apply_group_offloading(fn, onload_device=self.device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1)
            fn._archviz_streamed = True
        if not self.options.compile:
            return fn
        source, compiled = self._compiled.get(id(module), (None, None))
        if source is None or source() is not module:  # none yet, or made for a model since let go
            mode = "reduce-overhead" if self.options.cuda_graphs else None
            compiled = torch.compile(fn, mode=mode, dynamic=False)
            self._compiled[id(module)] = (weakref.ref(module), compiled)
        return compiled

    def _quantized_copy(self, module):
        """A copy of ``module`` with its Linear layers quantized (kept until the options change)."""
        source, quantized = self._quantized.get(id(module), (None, None))
        if source is None or source() is not module:
            quantized = copy.deepcopy(module)
            on_host = next(module.parameters()).device.type == "cpu" and self.device.type != "cpu"
            if on_host and id(module) not in self._stream_ids:
                # A model a memory profile kept in CPU memory: quantized piece by piece on its
                # way to the GPU, so the GPU never holds it in full precision.
                quantize_onto(quantized, self.options.quantize, self.device)
            else:
                quantized = quantize_linear(quantized, self.options.quantize, self.device)
            self._quantized[id(module)] = (weakref.ref(module), quantized)
        return quantized

    def _sdpa(self):
        name = self.options.sdpa_backend
        if name == "auto":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
        return sdpa_kernel([backend])


def _model_refs(models: ModelPlan) -> set[str]:
    return {r for r in (models.base, models.vae, models.lora, *(c.ref for c in models.controlnets)) if r}


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 exactly as diffusers' numpy_to_pil rounds."""
    return (array * 255).round().astype(np.uint8)

