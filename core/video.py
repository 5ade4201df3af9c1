"""Walkthrough videos from the camera path (``archviz video``): what both sides share.

The video families (Wan 2.1 VACE 1.3B and 14B, and their tiny random-weight test family),
the frame range and the windows a clip longer than the model's window is cut into, the
video job as it travels to the backend, its parameters hash (resume), and the flicker
figures. The image families (core/families.py) are not video families: ``archviz video
--model sdxl`` is refused in one line, and ``archviz sweep --model wan`` knows no ``wan``.

Stdlib only (numpy in :func:`flicker` and :func:`blend_weights`, imported there): Blender's
Python and the backend both import it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


class VideoError(ValueError):
    """A bad video request; the message names the bad value in one line."""


@dataclass(frozen=True)
class VideoFamily:
    name: str
    label: str
    hub_id: str  # the diffusers pipeline folder on the Hugging Face hub ('' for tiny)
    tiny: bool = False
    window: int = 81  # frames per window (4k + 1: Wan's VAE packs 4 frames per latent after the first)
    overlap: int = 16  # frames each window shares with the one before
    long_side: int = 832  # the side it renders at by default (480p: 832 x 480)
    multiple: int = 16  # sides a multiple of this (VAE 1/8 and 2x2 patches)
    steps: int = 50  # the model card's defaults
    cfg: float = 5.0
    flow_shift: float = 3.0  # 480p (the card: 5.0 at 720p)
    memory_profiles: str = ""  # table in backend/engine/video.py ('' = none)
    licence: str = "Apache-2.0"


VIDEO_FAMILY_LIST = (
    VideoFamily("wan", "Wan2.1 VACE 1.3B", "Wan-AI/Wan2.1-VACE-1.3B-diffusers"),
    VideoFamily("wan-14b", "Wan2.1 VACE 14B", "Wan-AI/Wan2.1-VACE-14B-diffusers", long_side=1280,
                flow_shift=5.0, memory_profiles="WAN14B_PROFILES"),
    VideoFamily("tiny-wan", "Tiny Wan VACE", "", tiny=True, window=9, overlap=4, long_side=64, steps=2, cfg=5.0),
)
VIDEO_FAMILIES = {f.name: f for f in VIDEO_FAMILY_LIST}
#: the control types a video job takes (one VACE control video: depth, lines, or both composed)
VIDEO_CONTROLS = ("depth", "lines")


def video_family(name: str) -> VideoFamily:
    """The video family ``name``; VideoError in one line for an image family or an unknown name."""
    key = str(name).strip().lower()
    if key in VIDEO_FAMILIES:
        return VIDEO_FAMILIES[key]
    from . import families

    known = ", ".join(VIDEO_FAMILIES)
    image = families.lookup(key)
    if image is not None:
        raise VideoError(f"--model {name!r}: the {image.label} family makes still images, not video; "
                         f"video families: {known}")
    raise VideoError(f"--model {name!r}: unknown video family; choose from {known}")


def parse_frames(text: str, scene_start: int, scene_end: int, *, inside_scene: bool = True,
                 most: int | None = None) -> tuple[int, int]:
    """``A-B`` (or one frame ``A``) as (first, last): inside the scene's frame range unless
    ``inside_scene`` is False (``archviz walkthrough`` renders any frame), at most ``most``
    frames when given."""
    raw = str(text).strip()
    try:
        if "-" in raw[1:]:
            cut = raw.index("-", 1)
            first, last = int(raw[:cut]), int(raw[cut + 1:])
        else:
            first = last = int(raw)
    except ValueError:
        raise VideoError(f"--frames {text!r}: give a range like 1-81") from None
    if last < first:
        raise VideoError(f"--frames {text!r}: the last frame comes before the first")
    if inside_scene and (first < scene_start or last > scene_end):
        raise VideoError(f"--frames {text!r} is outside the scene's frame range {scene_start}-{scene_end}")
    if most is not None and last - first >= most:
        raise VideoError(f"--frames {text!r}: at most {most} frames")
    return first, last


def frame_numbers(first: int, last: int, every: int) -> list[int]:
    """The scene frames a clip takes: every ``every``-th frame from ``first`` to ``last``."""
    if not isinstance(every, int) or every < 1:
        raise VideoError(f"--every {every!r}: give a whole number of frames, 1 or more")
    return list(range(first, last + 1, every))


def check_window(window: int, overlap: int) -> None:
    if window < 5 or (window - 1) % 4:
        raise VideoError(f"--window {window}: a window is 4k + 1 frames (5, 9, ..., 81)")
    if overlap < 1 or overlap >= window:
        raise VideoError(f"--overlap {overlap}: give 1 to {window - 1} frames for a window of {window}")


def clip_length(n: int) -> int:
    """The frames a window of ``n`` frames runs with: ``n`` rounded up to 4k + 1 (the extra
    frames repeat the last control frame and are dropped after)."""
    return n if (n - 1) % 4 == 0 else n + (4 - (n - 1) % 4)


def plan_windows(count: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) clip indices of each window: one window when the clip fits, else
    windows of ``window`` frames that each start ``overlap`` frames before the previous one
    ends (the last one shorter when the clip ends sooner)."""
    check_window(window, overlap)
    if count <= window:
        return [(0, count)]
    out, start = [], 0
    while True:
        stop = min(count, start + window)
        out.append((start, stop))
        if stop == count:
            return out
        start = stop - overlap


def blend_weights(overlap: int):
    """Weights of the later window over an overlap of ``overlap`` frames (a linear cross-fade
    strictly between 0 and 1)."""
    import numpy as np

    return (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)


def flicker(frames) -> list[float]:
    """Mean absolute difference (0..255) of each frame to the next; frames are HxWx3 uint8 arrays."""
    import numpy as np

    out = []
    for a, b in zip(frames, frames[1:]):
        out.append(float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))
    return out


@dataclass
class VideoJob:
    """What the CLI sends to the backend (POST /v1/video-jobs). ``controls``: per frame, one
    base64 PNG per control type; ``first_frame``: a base64 PNG the clip starts from, or ''."""

    family: str
    styles: list[str]
    seeds: list[int]
    control_types: list[str]
    frames: list[int]  # the scene frame number of each clip frame
    controls: list[dict] = field(default_factory=list)  # [{type: png_b64}] per frame
    control_sha256: list[str] = field(default_factory=list)  # one per frame, over its control PNGs
    width: int = 64
    height: int = 64
    steps: int | None = None
    cfg: float | None = None
    window: int | None = None
    overlap: int | None = None
    first_frame: str = ""
    first_frame_sha256: str = ""
    output_dir: str = ""
    fps: float = 24.0
    remake: bool = False
    max_batch: int | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_dict(cls, data) -> "VideoJob":
        if not isinstance(data, dict):
            raise VideoError("a video job is a JSON object")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise VideoError(f"unknown field {extra[0]!r} in the video job")
        try:
            job = cls(**data)
        except TypeError as exc:
            raise VideoError(f"video job: {exc}") from None
        job.validate()
        return job

    def validate(self) -> None:
        fam = video_family(self.family)
        if not self.styles or not all(isinstance(s, str) and s for s in self.styles):
            raise VideoError("styles: give at least one style")
        if not self.seeds or not all(isinstance(s, int) and 0 <= s < 2**32 for s in self.seeds):
            raise VideoError(f"seeds: whole numbers 0..2**32-1, got {self.seeds!r}")
        bad = [t for t in self.control_types if t not in VIDEO_CONTROLS]
        if bad or not self.control_types:
            raise VideoError(f"controls: {bad[0] if bad else 'none'!r}; video takes {', '.join(VIDEO_CONTROLS)}")
        if not self.frames or len(self.controls) != len(self.frames) or len(self.control_sha256) != len(self.frames):
            raise VideoError(f"frames: {len(self.frames)} frames, {len(self.controls)} control frames")
        for i, c in enumerate(self.controls):
            if set(c) != set(self.control_types):
                raise VideoError(f"controls[{i}]: has {sorted(c)}, the job names {self.control_types}")
        if self.width % fam.multiple or self.height % fam.multiple or not (16 <= self.width <= 4096) \
                or not (16 <= self.height <= 4096):
            raise VideoError(f"size {self.width}x{self.height}: sides 16..4096, multiples of {fam.multiple}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 200):
            raise VideoError(f"steps: 1..200, got {self.steps!r}")
        if self.cfg is not None and not (isinstance(self.cfg, (int, float)) and 0 <= self.cfg <= 30):
            raise VideoError(f"cfg: 0..30, got {self.cfg!r}")
        check_window(self.window_frames, self.overlap_frames)
        if not (isinstance(self.fps, (int, float)) and 0 < self.fps <= 240):
            raise VideoError(f"fps: 0..240, got {self.fps!r}")

    @property
    def spec(self) -> VideoFamily:
        return video_family(self.family)

    @property
    def window_frames(self) -> int:
        return self.window or self.spec.window

    @property
    def overlap_frames(self) -> int:
        return self.overlap if self.overlap is not None else min(self.spec.overlap, self.window_frames - 1)

    def window_plan(self) -> list[tuple[int, int]]:
        return plan_windows(len(self.frames), self.window_frames, self.overlap_frames)


#: bump when the same parameters would give other pixels
VIDEO_ENGINE_VERSION = 1


def params_sha256(job: VideoJob, style: dict, seed: int, dtype: str, window: tuple[int, int] | None = None) -> str:
    """The hash of everything that sets the pixels of one (style, seed) clip, or of one of
    its windows (the windows before it included: a window starts from their frames)."""
    stop = window[1] if window else len(job.frames)
    record = {
        "engine": VIDEO_ENGINE_VERSION, "family": job.family, "style": style, "seed": seed, "dtype": dtype,
        "controls": job.control_types, "size": [job.width, job.height], "frames": job.frames[:stop],
        "control_sha256": job.control_sha256[:stop], "window": job.window_frames, "overlap": job.overlap_frames,
        "first_frame": job.first_frame_sha256,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def clip_name(style: str, seed: int) -> str:
    """The folder of one (style, seed) clip inside the output folder."""
    from .jobs import safe_name

    return safe_name(f"{style}_s{seed}")
