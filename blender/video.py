"""Walkthrough videos on the Blender side (``archviz video`` and the panel's Video box): the
camera's passes for every frame of the clip under one depth range, the video job for the
backend, and the clips' MP4s (blender/movie.py) with the figures of the run.

Per frame ``<out>/passes/<frame>/`` holds depth.png, lines.png, beauty.png and passes.json
as ``archviz passes`` writes them, and ``video_capture.json``: the key of what was rendered
(scene file, camera, frame, size, depth range). A rerun renders only the frames whose key
changed."""

import base64
import hashlib
import json
import os
import time

import numpy as np

from ..core import passes as core_passes
from ..core import video as V
from ..core.png import atomic_write

CAPTURE_PASSES = ("depth", "lines")
CAPTURE_KEY = "video_capture.json"


def camera_animated(scene, camera) -> bool:
    """Whether the camera's view changes over the scene's frames (its own animation, a
    parent's, constraints or lens keys): the camera's world matrix and lens at a few frames."""
    first, last = scene.frame_start, scene.frame_end
    current = scene.frame_current
    seen = set()
    try:
        for f in sorted({first, (first + last) // 2, last}):
            scene.frame_set(f)
            m = camera.matrix_world
            seen.add(tuple(round(v, 6) for row in m for v in row) + (round(camera.data.lens, 6),))
    finally:
        scene.frame_set(current)
    return len(seen) > 1


def still_camera_note(camera_name: str) -> str:
    return (f"camera {camera_name!r} has no animation: a still camera gives a still video (the same view "
            "in every frame; only what the model changes from frame to frame moves)")


def sequence_depth_range(scene, view_layer, camera, frames, percentiles=core_passes.VIEW_PERCENTILES):
    """One depth range for the whole clip: the view mode's percentiles over ray-cast depths of
    up to 24 of its frames (so a frame's depth image does not change its scale as the camera
    moves)."""
    from .capture.render import frames_depth_range

    picks = sorted({frames[int(round(i))] for i in np.linspace(0, len(frames) - 1, min(24, len(frames)))})
    return frames_depth_range(scene, view_layer, camera, picks, percentiles, (frames[0], frames[-1]))


def capture_frames(scene, camera, frames, out_dir, long_side, multiple, scene_file="", beauty=True,
                   on_frame=None, cancelled=lambda: False):
    """Render depth, lines (and beauty) of every frame into ``out_dir/passes/<frame>/`` under
    one depth range. ``on_frame(i, n, frame, reused)`` after each. Returns a dict of figures:
    per-frame folders, reused count, seconds per rendered frame, the depth range, peak memory."""
    steps = capture_steps(scene, camera, frames, out_dir, long_side, multiple, scene_file, beauty)
    for i, frame, reused in steps:
        if on_frame:
            on_frame(i, len(frames), frame, reused)
        if cancelled() and i + 1 < len(frames):
            raise KeyboardInterrupt
    return steps.figures


class capture_steps:
    """:func:`capture_frames` one frame at a time: iterating renders (or keeps) the next frame
    and yields (index, frame, reused); ``figures`` is the result once the last one is done.
    The operator renders one frame per timer tick, so Blender stays responsive and Cancel
    takes effect between frames."""

    def __init__(self, scene, camera, frames, out_dir, long_side, multiple, scene_file="", beauty=True):
        self.figures = None
        self._gen = self._run(scene, camera, frames, out_dir, long_side, multiple, scene_file, beauty)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def _run(self, scene, camera, frames, out_dir, long_side, multiple, scene_file, beauty):
        self.figures = yield from _capture(scene, camera, frames, out_dir, long_side, multiple, scene_file, beauty)


def _capture(scene, camera, frames, out_dir, long_side, multiple, scene_file, beauty):
    import bpy

    from .capture.render import CaptureOptions, render_controls

    view_layer = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
    t0 = time.perf_counter()
    rng = sequence_depth_range(scene, view_layer, camera, frames)
    range_seconds = time.perf_counter() - t0
    stat = os.stat(scene_file) if scene_file and os.path.isfile(scene_file) else None
    folders, rendered, reused = [], [], 0
    for i, frame in enumerate(frames):
        folder = os.path.join(out_dir, "passes", f"{frame:04d}")
        key = {"scene_file": os.path.abspath(scene_file) if scene_file else scene.name,
               "scene_mtime": stat.st_mtime if stat else None, "scene_size": stat.st_size if stat else None,
               "camera": camera.name, "frame": frame, "long_side": long_side, "multiple": multiple,
               "depth_range": [rng.near, rng.far], "beauty": beauty}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        wanted = [*(f"{p}.png" for p in CAPTURE_PASSES), *(["beauty.png"] if beauty else [])]
        if _key_matches(folder, digest) and all(os.path.isfile(os.path.join(folder, f)) for f in wanted):
            reused += 1
            folders.append(folder)
            yield i, frame, True
            continue
        t = time.perf_counter()
        options = CaptureOptions(camera=camera.name, long_side=long_side, multiple=multiple, frame=frame,
                                 passes=CAPTURE_PASSES, depth_range="manual", near=rng.near, far=rng.far,
                                 beauty=beauty, beauty_samples=16)
        render_controls(scene, folder, options)
        atomic_write(os.path.join(folder, CAPTURE_KEY), json.dumps({"sha256": digest, **key}, indent=2).encode())
        rendered.append(time.perf_counter() - t)
        folders.append(folder)
        yield i, frame, False
    return {"folders": folders, "frames_rendered": len(rendered), "frames_reused": reused,
            "seconds_per_frame": round(float(np.mean(rendered)), 3) if rendered else None,
            "depth_range": {"near": rng.near, "far": rng.far, "mode": "sequence"},
            "depth_range_seconds": round(range_seconds, 3),
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb():
    """This process's peak resident memory in MB (None where the OS does not say: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _key_matches(folder, digest):
    try:
        with open(os.path.join(folder, CAPTURE_KEY)) as fh:
            return json.load(fh).get("sha256") == digest
    except (OSError, ValueError):
        return False


def _b64(path):
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def build_job(family, styles, seeds, control_types, frames, folders, out_dir, fps, steps=None, cfg=None,
              window=None, overlap=None, first_frame="", remake=False):
    """The video job (core/video.py VideoJob) of captured frames. ``first_frame``: '' , a PNG
    path, or the first frame's beauty.png path."""
    controls, hashes = [], []
    for folder in folders:
        pngs = {t: _b64(os.path.join(folder, f"{t}.png")) for t in control_types}
        controls.append(pngs)
        digest = hashlib.sha256()
        for t in sorted(pngs):
            digest.update(t.encode() + b"\0" + base64.b64decode(pngs[t]))
        hashes.append(digest.hexdigest())
    with open(os.path.join(folders[0], "passes.json")) as fh:
        info = json.load(fh)
    width, height = info["resolution"]
    first, first_sha = "", ""
    if first_frame:
        first = _b64(first_frame)
        first_sha = hashlib.sha256(base64.b64decode(first)).hexdigest()
    job = V.VideoJob(family=family, styles=list(styles), seeds=list(seeds), control_types=list(control_types),
                     frames=list(frames), controls=controls, control_sha256=hashes, width=int(width),
                     height=int(height), steps=steps, cfg=cfg, window=window, overlap=overlap, first_frame=first,
                     first_frame_sha256=first_sha, output_dir=out_dir, fps=float(fps), remake=remake)
    job.validate()
    return job


def beauty_flicker(folders):
    """Mean absolute frame-to-frame difference of the beauty renders (the reference for the
    generated clip's)."""
    frames = [_read_png(os.path.join(f, "beauty.png")) for f in folders]
    frames = [f for f in frames if f is not None]
    diffs = V.flicker(frames)
    return round(float(np.mean(diffs)), 3) if diffs else 0.0


def _read_png(path):
    """A PNG's 8-bit RGB pixels (H, W, 3) through Blender's image loader, or None."""
    from .texture import read_image

    if not os.path.isfile(path):
        return None
    return np.rint(read_image(path) * 255).astype(np.uint8)


def encode_clips(status, fps, scene=None, show=False):
    """Each finished clip's frames as ``video.mp4`` in its folder (Blender's FFmpeg); with
    ``show`` the MP4s land in ``scene``'s sequencer and as movie clips. Returns the MP4 paths."""
    from .movie import encode_frames, show_movie

    out = []
    for clip in status.get("clips", []):
        folder = clip["folder"]
        with open(os.path.join(folder, "metadata.json")) as fh:
            meta = json.load(fh)
        files = [os.path.join(folder, f) for f in meta["frame_files"]]
        mp4 = encode_frames(files, os.path.join(folder, "video.mp4"), fps)
        out.append(mp4)
        if show and scene is not None:
            show_movie(scene, mp4, f"ArchViz {os.path.basename(folder)}")
    return out
