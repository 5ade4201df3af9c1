"""The video engine: Wan 2.1 VACE driven by the per-frame control passes (``archviz video``).

It runs the way the sweep core runs images (:mod:`.runner`), for clips:

* the text embeddings once per style (a cache per job);
* seeds batched: several (style, seed) clips per transformer forward, one
  ``torch.Generator`` per seed (a seed gives the same clip alone or inside a batch), chunked
  by memory and halved on CUDA out-of-memory;
* progress and cancel every denoising step;
* windows: a clip longer than the model's window runs as overlapping windows; each window
  after the first starts from the last ``overlap`` frames already made (VACE's known frames,
  mask 0) and the overlap is cross-faded; the seams' frame-to-frame differences are measured;
* the first frame may be given (a still the architect chose): it is frame 0's known frame.

Each step is the step of diffusers' ``WanVACEPipeline`` over the same warm components and its
own helpers (prompt encoding, control video and mask, VACE conditioning latents, initial
noise), so one window of one seed equals the pipeline to float precision
(tests/test_video.py holds it to 1e-4).

The control video: VACE takes one. ``depth`` or ``lines`` as rendered; ``depth,lines`` the
depth frames with the lines drawn over them in white (core/video.py VIDEO_CONTROLS).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...core import video as V
from .memory import GB, MemoryProfile, by_free_memory
from .memory import NONE as NO_PROFILE
from .runner import Cancelled

log = logging.getLogger("archviz.backend")

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
#: the tiny UMT5 tokenizer is 32 tokens long; the real pipelines read up to 512 (the pipeline's default)
TINY_TEXT_LENGTH = 32
REAL_TEXT_LENGTH = 512

#: Wan2.1 VACE 14B in bf16: transformer with its VACE blocks about 17.3 B parameters (34.6 GB),
#: UMT5-XXL encoder 5.7 B (11.4 GB), VAE 0.13 B (fp32, 0.5 GB); activations of an 81-frame 720p
#: window with CFG about 8 GB. Figures from the parameter counts on the meta device
#: (bench/configs_wan.py), not measured on a GPU.
WAN14B_PROFILES = (
    MemoryProfile("full", "none", False, "", 56.0, "bf16, everything on the GPU (exact)"),
    MemoryProfile("24gb", "8bit", True, "", 28.0,
                  "8-bit weight-only transformer, the UMT5 encoder on the CPU"),
    MemoryProfile("16gb", "8bit", True, "all", 0.0,
                  "8-bit transformer streamed block by block (group offload), the UMT5 encoder on the CPU"),
)


def choose_video_profile(family: V.VideoFamily, device_type: str, free_bytes: int | None) -> MemoryProfile:
    """The memory profile of a video family on a device with ``free_bytes`` free (CUDA only;
    the 1.3B model and the tiny one need none)."""
    profiles = globals()[family.memory_profiles] if family.memory_profiles else ()
    return by_free_memory(profiles, device_type, free_bytes)


@dataclass
class WindowResult:
    frames: list  # per seed: list of uint8 HxWx3 frames of the window
    seconds: float


class VideoEngine:
    """The warm Wan VACE pipelines of one backend process (one per family) and the clip
    runner. Uses the backend :class:`~.runner.Engine` for its device and dtype."""

    def __init__(self, engine):
        self.engine = engine
        self.device = engine.device
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()
        self.profile = NO_PROFILE
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()

    # -- models --------------------------------------------------------------------------
    @property
    def dtype(self):
        """bf16 on CUDA (Wan is published and run in bf16), fp32 on the CPU."""
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    def fetch(self, family: V.VideoFamily, progress=None, cancelled=None) -> dict | None:
        """The family's hub snapshot complete in the Hugging Face cache (None for tiny)."""
        if family.tiny:
            return None
        from ..models import hub

        return hub.ensure([(family.hub_id, COMPONENTS, family.label)], fp16=False, progress=progress,
                          cancelled=cancelled or (lambda: False))

    def folder(self, family: V.VideoFamily) -> str:
        if family.tiny:
            from ..models.tiny import ensure_tiny, tiny_path

            return str(ensure_tiny(tiny_path("wan", "vace")))
        return str(self.fetch(family)["snapshots"][family.hub_id])

    def pipeline(self, family: V.VideoFamily):
        """The family's WanVACEPipeline, loaded once with from_pretrained and kept warm."""
        with self._lock:
            pipe = self._pipes.get(family.name)
            if pipe is not None:
                return pipe
            from diffusers import AutoencoderKLWan, WanVACEPipeline

            folder = self.folder(family)
            # The VAE in fp32 (the model card's advice: bf16 decodes with banding), the rest in bf16 on CUDA.
            vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
            pipe = WanVACEPipeline.from_pretrained(folder, vae=vae, torch_dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
            self.profile = choose_video_profile(family, self.device.type, free)
            self._place(pipe, self.profile)
            self._pipes[family.name] = pipe
            return pipe

    def _place(self, pipe, profile: MemoryProfile) -> None:
        """Modules onto the device as the memory profile says."""
        pipe.vae.to(self.device)
        pipe.text_encoder.to("cpu" if profile.text_encoders_on_cpu else self.device)
        if profile.quantize != "none":
            from .runner import quantize_onto

            fp8 = torch.cuda.get_device_capability(self.device) >= (8, 9)
            quantize_onto(pipe.transformer, "fp8-weight" if fp8 else "int8-weight", self.device)
        if profile.stream == "all":
            pipe.transformer.enable_group_offload(onload_device=self.device, offload_device=torch.device("cpu"),
                                                  offload_type="block_level", num_blocks_per_group=1)
        elif profile.quantize == "none":
            pipe.transformer.to(self.device)

    def unload(self) -> None:
        with self._lock:
            self._pipes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- pieces of the pipeline, in its order ----------------------------------------------
    def text_length(self, family: V.VideoFamily) -> int:
        return TINY_TEXT_LENGTH if family.tiny else REAL_TEXT_LENGTH

    @torch.no_grad()
    def encode_prompt(self, pipe, family, prompt: str, negative: str, cfg: float):
        """One style's (positive, negative or None) embeddings, as the pipeline makes them."""
        device = self.device
        pos, neg = pipe.encode_prompt(prompt=prompt, negative_prompt=negative, do_classifier_free_guidance=cfg > 1.0,
                                      num_videos_per_prompt=1, max_sequence_length=self.text_length(family),
                                      device=device)
        dtype = pipe.transformer.dtype
        self.stats["prompt_encodes"] += 1
        return pos.to(device, dtype), (neg.to(device, dtype) if neg is not None else None)

    @torch.no_grad()
    def conditioning(self, pipe, video: list, mask: list, width: int, height: int):
        """VACE's conditioning latents of one control video (PIL frames) and its mask (PIL,
        white = make, black = keep): the pipeline's own preprocessing, VAE encode and mask
        folding. (1, C, T, h, w)."""
        n = len(video)
        v, m, refs = pipe.preprocess_conditions(video, mask, None, 1, height, width, n, torch.float32, self.device)
        latents = pipe.prepare_video_latents(v, m, refs, None, self.device)
        masks = pipe.prepare_masks(m, refs, None)
        self.stats["vae_encodes"] += 2
        return torch.cat([latents, masks], dim=1).to(pipe.transformer.dtype)

    @torch.no_grad()
    def denoise(self, pipe, cond, pos, neg, generators: list, n_frames: int, width: int, height: int, steps: int,
                cfg: float, on_step: Callable[[int], None] | None, cancelled: Callable[[], bool]):
        """One batch of clips (one generator each; ``cond``: (B, ...) conditioning latents,
        ``pos``/``neg``: (1, L, D) embeddings of their style) through every denoising step."""
        b = len(generators)
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(steps, device=self.device)
        transformer = pipe.transformer
        latents = pipe.prepare_latents(b, transformer.config.in_channels, height, width, n_frames, torch.float32,
                                       self.device, generators, None)
        scale = torch.ones(len(transformer.config.vace_layers), device=self.device, dtype=transformer.dtype)
        pos_b = pos.expand(b, -1, -1)
        neg_b = neg.expand(b, -1, -1) if neg is not None else None
        cond_b = cond if cond.shape[0] == b else cond.expand(b, -1, -1, -1, -1)
        t0 = time.perf_counter()
        for t in scheduler.timesteps:
            if cancelled():
                raise Cancelled()
            x = latents.to(transformer.dtype)
            timestep = t.expand(b)
            noise = transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=pos_b,
                                control_hidden_states=cond_b, control_hidden_states_scale=scale,
                                return_dict=False)[0]
            self.stats["transformer_rows"] += b
            if cfg > 1.0:
                uncond = transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=neg_b,
                                     control_hidden_states=cond_b, control_hidden_states_scale=scale,
                                     return_dict=False)[0]
                self.stats["transformer_rows"] += b
                noise = uncond + cfg * (noise - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            if on_step:
                on_step(1)
        self.timings["denoise"] += time.perf_counter() - t0
        return latents

    @torch.no_grad()
    def decode(self, pipe, latents) -> list[np.ndarray]:
        """Latents (B, C, T, h, w) -> per clip a float32 (T, H, W, 3) array in [0, 1], as the
        pipeline's ``output_type="np"`` gives it (decoded one clip at a time)."""
        t0 = time.perf_counter()
        vae = pipe.vae
        out = []
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
        for one in latents.split(1):
            z = one.to(vae.dtype)
            z = z / std.to(z.device, z.dtype) + mean.to(z.device, z.dtype)
            video = vae.decode(z, return_dict=False)[0]
            out.append(pipe.video_processor.postprocess_video(video, output_type="np")[0])
        self.timings["decode"] += time.perf_counter() - t0
        return out

    # -- a whole job ---------------------------------------------------------------------------
    def batch_limit(self, job: V.VideoJob) -> int:
        if job.max_batch:
            return job.max_batch
        if self.engine.max_batch:
            return self.engine.max_batch
        if self.device.type != "cuda":
            return 4
        free, _ = torch.cuda.mem_get_info(self.device)
        # activations of one 81-frame 480p window with CFG, about 4 GB for the 1.3B model
        per_clip = 4 * GB * (job.width * job.height * job.window_frames) / (832 * 480 * 81)
        return int(max(1, min(8, (free * 0.6) // per_clip)))

    def run_window(self, pipe, family, job: V.VideoJob, style: dict, embeds, seeds: list[int], window, made: dict,
                   controls: list, first_frame, on_step, cancelled) -> list[list[np.ndarray]]:
        """One window of several seeds' clips: their conditioning (each seed its own known
        frames), batched denoising with halving on CUDA out-of-memory, the decode. ``made``:
        seed -> the clip's frames so far (uint8). Returns per seed the window's uint8 frames."""
        start, stop = window
        length = V.clip_length(stop - start)
        conds = []
        for seed in seeds:
            known = {}
            if start > 0:
                for i in range(start, min(start + job.overlap_frames, stop)):
                    known[i - start] = made[seed][i]
            elif first_frame is not None:
                known[0] = first_frame
            conds.append(self.window_conditioning(pipe, controls, start, stop, length, known, job))
        shared = all(c is conds[0] for c in conds)
        steps = style["steps"]

        def run(idx: list[int]) -> list[np.ndarray]:
            try:
                cond = conds[idx[0]] if shared else torch.cat([conds[i] for i in idx])
                gens = [torch.Generator("cpu").manual_seed(seeds[i]) for i in idx]
                latents = self.denoise(pipe, cond, embeds[0], embeds[1], gens, length, job.width, job.height, steps,
                                       style["cfg"], on_step, cancelled)
                return self.decode(pipe, latents)
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise
                torch.cuda.empty_cache()
                half = len(idx) // 2
                log.warning("video: out of memory with %d clips per batch; retrying as %d + %d", len(idx), half,
                            len(idx) - half)
                self.engine.max_batch = half
                return run(idx[:half]) + run(idx[half:])

        limit = self.batch_limit(job)
        decoded = []
        order = list(range(len(seeds)))
        for i in range(0, len(order), limit):
            decoded.extend(run(order[i:i + limit]))
        return [[to_uint8(f) for f in clip[: stop - start]] for clip in decoded]

    def window_conditioning(self, pipe, controls: list, start: int, stop: int, length: int, known: dict, job):
        """The control video of clip frames start..stop (padded to ``length`` with the last
        frame) with the ``known`` frames (window index -> uint8 frame) in place and masked
        as kept. Cached by identity when nothing is known (shared by every seed)."""
        from PIL import Image

        frames = [controls[min(i, stop - 1)] for i in range(start, start + length)]
        video, mask = [], []
        white = Image.new("RGB", (job.width, job.height), (255, 255, 255))
        black = Image.new("RGB", (job.width, job.height), (0, 0, 0))
        for j, frame in enumerate(frames):
            if j in known:
                video.append(Image.fromarray(known[j]))
                mask.append(black)
            else:
                video.append(frame)
                mask.append(white)
        key = (start, stop, length)
        if not known:
            cache = getattr(self, "_cond_cache", None)
            if cache is not None and cache[0] == key and cache[1] is controls:
                return cache[2]
        cond = self.conditioning(pipe, video, mask, job.width, job.height)
        if not known:
            self._cond_cache = (key, controls, cond)
        return cond


def compose_controls(frames: list[dict], types: list[str]):
    """Per clip frame, the one control image VACE takes (PIL RGB): the type given, or for
    depth and lines together the depth image with the lines in white over it."""
    from PIL import Image

    out = []
    for frame in frames:
        arrays = {t: np.asarray(frame[t].convert("RGB")) for t in types}
        if len(types) == 1:
            out.append(Image.fromarray(arrays[types[0]]))
            continue
        base = arrays["depth"].copy()
        lines = arrays["lines"].max(axis=2) > 127
        base[lines] = 255
        out.append(Image.fromarray(base))
    return out


def blend_into(made: list, start: int, window_frames: list, overlap: int) -> None:
    """Put a window's frames into the clip ``made`` (uint8 frames): its first ``overlap``
    frames cross-faded with the frames already there, the rest appended."""
    w = V.blend_weights(overlap)
    for j, frame in enumerate(window_frames):
        i = start + j
        if i < len(made) and j < overlap:
            mixed = (1.0 - w[j]) * made[i].astype(np.float32) + w[j] * frame.astype(np.float32)
            made[i] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        elif i < len(made):
            made[i] = frame
        else:
            made.append(frame)


def seam_figures(made: list, windows: list) -> list[dict]:
    """Per seam (the first frame each later window alone made): the frame-to-frame
    difference there and the clip's mean, so a seam that jumps shows."""
    diffs = V.flicker(made)
    mean = float(np.mean(diffs)) if diffs else 0.0
    out = []
    for (_s0, stop0), (_s1, _stop1) in zip(windows, windows[1:]):
        at = stop0  # the first frame the next window made alone
        if 0 < at < len(made):
            out.append({"frame_index": at, "diff": round(diffs[at - 1], 3), "clip_mean": round(mean, 3)})
    return out


def to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
