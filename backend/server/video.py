"""Video jobs on the backend (``POST /v1/video-jobs``): the control frames of a camera path in,
one clip per (style, seed) out, run by the same worker thread and queue as the sweeps
(status, cancel and the queue limit are the sweep routes': ``GET /v1/jobs/{id}``,
``DELETE /v1/jobs/{id}``).

Output, per clip, in ``<out>/<style>_s<seed>/``: ``frame_<scene frame>.png`` (the params hash in
each PNG's text), ``metadata.json`` (model, controls, seed, frames, params hash, the seams'
and the clip's frame-to-frame differences, timings) and, while the clip is being made,
``.carry/`` (the frames the next window starts from) with ``progress.json``. Resume: a
clip whose metadata has the same params hash is kept; a clip cut off after some windows
goes on from the last window it finished (its carried frames are the PNGs it wrote, so the
result is the same as a run that was never cut off).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fastapi import Request

from ...core import video as V
from ...core.png import atomic_write
from .worker import QueuedRecord

log = logging.getLogger("archviz.backend")


@dataclass
class VideoRecord(QueuedRecord):
    """A video job in the worker's queue; the worker and the status and cancel routes see the
    state every queued job has."""

    id: str
    job: V.VideoJob
    styles: list  # resolved styles: {name, prompt, negative, steps, cfg}
    output_dir: Path
    video: object  # backend.engine.video.VideoEngine
    clips: dict = field(default_factory=dict)  # folder -> clip info
    windows_skipped: int = 0
    warnings: list = field(default_factory=list)
    plan: object = None

    def __post_init__(self):
        # what the worker reads of a sweep's plan: no inputs left to release, one "image" per clip
        self.plan = SimpleNamespace(controls=[], job=SimpleNamespace(controls=[]),
                                    images=[None] * (len(self.styles) * len(self.job.seeds)))

    @property
    def images(self) -> dict:
        return {k: v for k, v in self.clips.items() if v.get("done")}

    def step(self, n: int = 1) -> None:
        with self.lock:
            self.steps_done += n

    def status(self, queue_position: int | None = None) -> dict:
        with self.lock:
            total = len(self.plan.images)
            done = sum(1 for c in self.clips.values() if c.get("done"))
            return {
                "id": self.id, "kind": "video", "state": self.state, "created": self.created,
                "started": self.started, "finished": self.finished, "queue_position": queue_position,
                "progress": {"steps_done": self.steps_done, "steps_total": self.steps_total, "clips_done": done,
                             "clips_total": total, "windows_skipped": self.windows_skipped,
                             "fraction": 1.0 if self.state == "done" else
                             (min(1.0, self.steps_done / self.steps_total) if self.steps_total else 0.0)},
                "clips": [dict(v) for _k, v in sorted(self.clips.items())],
                "phase": self.phase if self.state == "running" else None,
                "error": self.error, "warnings": list(self.warnings), "output_dir": str(self.output_dir),
                "model": self.job.family, "styles": [s["name"] for s in self.styles], "seeds": list(self.job.seeds),
                "width": self.job.width, "height": self.job.height, "frames": list(self.job.frames),
                "windows": [list(w) for w in self.job.window_plan()],
            }

    # -- the worker thread ---------------------------------------------------------------
    def run_with(self, worker) -> None:
        from ..engine.runner import Cancelled
        from ..models.hub import DownloadCancelled

        with self.lock:
            self.state, self.started = "running", time.time()
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._run()
            if self.cancel_event.is_set():
                raise Cancelled()
            final, error = "done", None
        except (Cancelled, DownloadCancelled):
            final, error = ("failed", {"type": "ClientGaveUp", "message": self.cancel_reason}) \
                if self.cancel_reason else ("cancelled", None)
        except Exception as exc:  # noqa: BLE001 - errors are data
            from .worker import error_data

            log.error("video job %s failed: %s\n%s", self.id, exc, traceback.format_exc())
            final, error = "failed", error_data(exc)
        with self.lock:
            self.state, self.error, self.finished = final, error, time.time()
        self.ended.set()

    def _run(self) -> None:
        from ..engine import video as VE

        job, engine = self.job, self.video
        family = job.spec
        windows = job.window_plan()
        dtype = str(engine.dtype).replace("torch.", "")
        clips = []  # (style index, seed, folder, params hash)
        for si, style in enumerate(self.styles):
            for seed in job.seeds:
                folder = self.output_dir / V.clip_name(style["name"], seed)
                digest = V.params_sha256(job, _style_record(style), seed, dtype)
                info = {"style": style["name"], "seed": seed, "folder": str(folder), "params_sha256": digest,
                        "done": False, "skipped": False}
                if not job.remake and _clip_done(folder, digest):
                    info.update(done=True, skipped=True)
                    self.windows_skipped += len(windows)
                else:
                    clips.append((si, seed, folder, digest))
                self.clips[folder.name] = info
        self.steps_total = sum(self.styles[si]["steps"] for si, *_ in clips) * len(windows)
        if not clips:
            return
        self.phase = "downloading" if not family.tiny else "loading"
        engine.fetch(family, cancelled=self.cancel_event.is_set)
        self.phase = "loading"
        pipe = engine.pipeline(family)
        from PIL import Image

        frames = [{t: Image.open(io.BytesIO(base64.b64decode(c[t]))).convert("RGB") for t in job.control_types}
                  for c in job.controls]
        controls = VE.compose_controls(frames, job.control_types)
        first = None
        if job.first_frame:
            first = np.asarray(Image.open(io.BytesIO(base64.b64decode(job.first_frame))).convert("RGB")
                               .resize((job.width, job.height), Image.LANCZOS))
        self.phase = "generating"
        engine.stats.clear()
        engine.timings.clear()
        for si, style in enumerate(self.styles):
            todo = [(seed, folder, digest) for s, seed, folder, digest in clips if s == si]
            if not todo:
                continue
            t0 = time.perf_counter()
            embeds = engine.encode_prompt(pipe, family, style["prompt"], style["negative"], style["cfg"])
            engine.timings["encode"] += time.perf_counter() - t0
            made = {seed: [] for seed, _f, _d in todo}
            seconds = {seed: 0.0 for seed, _f, _d in todo}
            record = _style_record(style)
            for k, window in enumerate(windows):
                wdigest = {seed: V.params_sha256(job, record, seed, dtype, window) for seed, _f, _d in todo}
                run = []
                for seed, folder, _d in todo:
                    def digest_of(w, seed=seed):
                        return V.params_sha256(job, record, seed, dtype, w)

                    if not job.remake and _resume_window(folder, k, digest_of, windows, job, made, seed):
                        self.windows_skipped += 1
                        self.step(style["steps"])
                    else:
                        run.append(seed)
                if not run:
                    continue
                t0 = time.perf_counter()
                out = engine.run_window(pipe, family, job, style, embeds, run, window, made, controls, first,
                                        self.step, self.cancel_event.is_set)
                spent = (time.perf_counter() - t0) / len(run)
                for seed, window_frames in zip(run, out):
                    seconds[seed] += spent
                    VE.blend_into(made[seed], window[0], window_frames, job.overlap_frames if k else 0)
                    folder = next(f for s, f, _d in todo if s == seed)
                    _write_progress(folder, k, wdigest[seed], windows, job, made[seed], style, seed)
            for seed, folder, digest in todo:
                _finish_clip(folder, job, style, seed, digest, made[seed], windows, seconds[seed], dtype,
                             engine.profile.name)
                with self.lock:
                    self.clips[folder.name]["done"] = True


def _style_record(style: dict) -> dict:
    return {k: style[k] for k in ("name", "prompt", "negative", "steps", "cfg")}


def _frame_file(folder: Path, frame: int) -> Path:
    return folder / f"frame_{frame:04d}.png"


def _png(array: np.ndarray, text: dict) -> bytes:
    from .outputs import png_bytes

    return png_bytes(np.ascontiguousarray(array), {k: str(v) for k, v in text.items()})


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _clip_done(folder: Path, digest: str) -> bool:
    meta = folder / "metadata.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    frames = data.get("frame_files") or []
    return data.get("params_sha256") == digest and bool(frames) and all((folder / f).is_file() for f in frames)


def _write_progress(folder: Path, k: int, wdigest: str, windows, job: V.VideoJob, made: list, style, seed) -> None:
    """After window ``k``: the frames no later window touches as final PNGs, the frames the
    next window starts from in ``.carry/``, and ``progress.json`` naming the window's hash."""
    folder.mkdir(parents=True, exist_ok=True)
    final_until = windows[k + 1][0] if k + 1 < len(windows) else len(made)
    text = {"params_sha256": wdigest, "seed": seed, "style": style["name"], "model": job.family}
    for i in range(windows[k][0], final_until):  # the frames before were final after the window before
        atomic_write(_frame_file(folder, job.frames[i]), _png(made[i], text))
    carry = folder / ".carry"
    if k + 1 < len(windows):
        carry.mkdir(exist_ok=True)
        for i in range(final_until, len(made)):
            atomic_write(carry / f"{i:05d}.png", _png(made[i], text))
    atomic_write(folder / "progress.json", json.dumps({"window": k, "params_sha256": wdigest,
                                                       "frames_made": len(made)}).encode())


def _resume_window(folder: Path, k: int, digest_of, windows, job, made: dict, seed: int) -> bool:
    """Window ``k`` of this clip is on disk from a run that was cut off (at this window or a
    later one; a window's hash covers every window before it): at the last finished window
    fill ``made[seed]`` from its PNGs. Says whether window ``k`` need not run."""
    try:
        progress = json.loads((folder / "progress.json").read_text())
        last = int(progress["window"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if last < k or last >= len(windows) or progress.get("params_sha256") != digest_of(windows[last]):
        return False
    if last > k:
        return True
    final_until = windows[k + 1][0] if k + 1 < len(windows) else progress["frames_made"]
    try:
        frames = [_read(_frame_file(folder, job.frames[i])) for i in range(final_until)]
        frames += [_read(folder / ".carry" / f"{i:05d}.png") for i in range(final_until, progress["frames_made"])]
    except OSError:
        return False
    made[seed][:] = frames
    return True


def _finish_clip(folder: Path, job: V.VideoJob, style: dict, seed: int, digest: str, made: list, windows,
                 seconds: float, dtype: str, profile: str) -> None:
    from ..engine.video import seam_figures

    folder.mkdir(parents=True, exist_ok=True)
    text = {"params_sha256": digest, "seed": seed, "style": style["name"], "model": job.family}
    files = []
    for i, frame in enumerate(made):
        path = _frame_file(folder, job.frames[i])
        atomic_write(path, _png(frame, text))
        files.append(path.name)
    diffs = V.flicker(made)
    meta = {
        "model": job.family, "hub_id": job.spec.hub_id or None, "controls": job.control_types, "style": style,
        "seed": seed, "frames": job.frames, "frame_files": files, "fps": job.fps, "width": job.width,
        "height": job.height, "params_sha256": digest, "dtype": dtype, "memory_profile": profile,
        "window": job.window_frames, "overlap": job.overlap_frames, "windows": [list(w) for w in windows],
        "first_frame_sha256": job.first_frame_sha256 or None,
        "flicker": {"mean_abs_frame_diff": round(float(np.mean(diffs)), 3) if diffs else 0.0,
                    "per_frame": [round(d, 3) for d in diffs], "seams": seam_figures(made, windows)},
        "seconds": round(seconds, 3), "denoise_seconds_per_frame": round(seconds / max(1, len(made)), 4),
    }
    atomic_write(folder / "metadata.json", (json.dumps(meta, indent=2) + "\n").encode())
    shutil.rmtree(folder / ".carry", ignore_errors=True)
    try:
        (folder / "progress.json").unlink()
    except OSError:
        pass


def resolve_styles(job: V.VideoJob, presets: dict) -> list[dict]:
    """Each style name as a prompt (the preset's FLUX.1 section: Wan reads natural language
    through UMT5, as FLUX.1 reads it through T5), with the job's or the family's steps and cfg."""
    out = []
    fam = job.spec
    for name in job.styles:
        preset = presets.get(name)
        if preset is None:
            raise V.VideoError(f"styles: unknown preset {name!r}; archviz presets lists them")
        p = preset.for_family("flux")
        out.append({"name": name, "prompt": p.prompt, "negative": p.negative or "",
                    "steps": job.steps or fam.steps, "cfg": float(job.cfg if job.cfg is not None else fam.cfg)})
    return out


def install(app, worker, presets) -> None:
    """The video route on ``app`` (backend/server/app.py calls this once)."""
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from ...core import jobs as J

    holder = {}

    def video_engine():
        if "engine" not in holder:
            from ..engine.video import VideoEngine

            holder["engine"] = VideoEngine(worker.engine)
        return holder["engine"]

    @app.post("/v1/video-jobs", status_code=202)
    async def submit_video(request: Request):
        raw = await request.body()
        try:
            job = V.VideoJob.from_dict(json.loads(raw))
            found, _ = presets()
            styles = resolve_styles(job, found)
        except (V.VideoError, ValueError) as exc:
            raise J.JobError("video", str(exc)) from None
        job_id = uuid.uuid4().hex[:12]
        out = worker.roots.resolve(job.output_dir or None, job_id)
        record = VideoRecord(id=job_id, job=job, styles=styles, output_dir=out, video=video_engine())
        worker.submit_record(record)
        return JSONResponse(status_code=202, content={"id": job_id, "state": record.state,
                                                      "status_url": f"/v1/jobs/{job_id}", "output_dir": str(out)})

    def video_record(job_id: str) -> VideoRecord:
        record = worker.get(job_id)
        if record is None:
            raise HTTPException(404, f"job {J._short(job_id, 40)} not found")
        if not isinstance(record, VideoRecord):
            raise HTTPException(404, f"job {job_id} is a sweep, not a video job (its images: /v1/jobs/{job_id}/images/N)")
        return record

    @app.get("/v1/jobs/{job_id}/clips")
    def video_clips(job_id: str) -> dict:
        """A video job's clips, each with the files a client of a remote backend downloads
        (``files``: the PNG frames in order, then ``metadata.json``; empty until the clip is
        done, or when its folder no longer holds this job's clip: ``problem`` says why)."""
        record = video_record(job_id)
        with record.lock:
            clips = {name: dict(info) for name, info in record.clips.items()}
        out = []
        for name, info in sorted(clips.items()):
            entry = {"name": name, "style": info["style"], "seed": info["seed"], "params_sha256": info["params_sha256"],
                     "done": bool(info.get("done")), "skipped": bool(info.get("skipped")), "files": []}
            if entry["done"]:
                meta, problem = clip_metadata(record, name)
                if meta is None:
                    entry["problem"] = problem[1]
                else:
                    entry["files"] = [*meta["frame_files"], "metadata.json"]
                    entry["urls"] = [f"/v1/jobs/{job_id}/clips/{name}/{f}" for f in entry["files"]]
            out.append(entry)
        return {"id": job_id, "state": record.state, "clips": out}

    @app.get("/v1/jobs/{job_id}/clips/{clip}/{file}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    def video_clip_file(job_id: str, clip: str, file: str):
        """One file of a finished clip: a PNG frame its ``metadata.json`` lists, or the
        ``metadata.json``. Only files of this job's clip folder are served: 404 for any other
        name, 409 when the folder now holds a clip made with other parameters, 410 when gone."""
        record = video_record(job_id)
        meta, problem = clip_metadata(record, clip)
        if meta is None:
            raise HTTPException(*problem)
        if file != "metadata.json" and file not in meta["frame_files"]:
            raise HTTPException(404, f"clip {clip} of job {job_id} has no file {J._short(file, 80)} "
                                     f"(its files: frame PNGs and metadata.json; GET /v1/jobs/{job_id}/clips lists them)")
        path = served_path(record, clip, file)
        if path is None:
            raise HTTPException(404, f"clip {clip} of job {job_id}: {J._short(file, 80)} is not a file inside the "
                                     "clip's folder")
        if file == "metadata.json":
            return FileResponse(path, media_type="application/json", filename=file)
        from .outputs import existing_matches

        if not existing_matches(path, record.clips[clip]["params_sha256"]):
            raise HTTPException(409, f"frame {file} of clip {clip} of job {job_id} was replaced on disk by one made "
                                     "with other parameters (another job into the same folder)")
        return FileResponse(path, media_type="image/png", filename=file)


def clip_metadata(record: VideoRecord, clip: str):
    """(metadata, None) of ``clip`` of ``record`` as on disk, or (None, (status, message)):
    404 for a clip the job does not have or has not finished, 410 when its metadata is gone,
    409 when the folder holds a clip made with other parameters."""
    from ...core import jobs as J

    with record.lock:
        info = dict(record.clips.get(clip) or {})
    if not info:
        return None, (404, f"job {record.id} has no clip {J._short(clip, 80)}"
                           f" (its clips: {', '.join(sorted(record.clips)) or 'none yet'})")
    if not info.get("done"):
        return None, (404, f"clip {clip} of job {record.id} is not done (state {record.state})")
    path = served_path(record, clip, "metadata.json")
    try:
        meta = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return None, (410, f"clip {clip} of job {record.id}: its metadata.json is no longer on disk")
    files = meta.get("frame_files")
    if meta.get("params_sha256") != info["params_sha256"] or not isinstance(files, list) \
            or not all(isinstance(f, str) for f in files):
        return None, (409, f"clip {clip} of job {record.id} was replaced on disk by a clip made with other "
                           "parameters (another job into the same folder); submit this job again to make it again")
    return meta, None


def served_path(record: VideoRecord, clip: str, name: str) -> Path | None:
    """``<output>/<clip>/<name>`` when it is a plain file whose real path (links followed)
    lies directly in the clip's real folder inside the job's output folder; else None."""
    import os

    if clip not in record.clips or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    root = os.path.realpath(record.output_dir)
    folder = os.path.realpath(record.output_dir / clip)
    real = os.path.realpath(record.output_dir / clip / name)
    if os.path.dirname(folder) != root or os.path.dirname(real) != folder or not os.path.isfile(real):
        return None
    return Path(real)


def control_sha256(pngs: dict) -> str:
    """One frame's hash over its control PNGs' bytes, by type."""
    digest = hashlib.sha256()
    for t in sorted(pngs):
        digest.update(t.encode() + b"\0" + base64.b64decode(pngs[t]))
    return digest.hexdigest()
