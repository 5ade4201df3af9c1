"""The Video operator's run (``archviz.video``): what ``archviz video`` does, inside Blender.

It runs through the task runner of Generate and Sweep (``blender.tasks``: ``Task.current``,
the timer drain, ``run_until_done`` in ``blender -b``, the Cancel operator and the panel's
progress bar all take it), in three parts:

* the passes of every frame under one depth range (blender/video.py), rendered on the main
  thread one frame per drain, so Blender redraws between frames and Cancel stops between
  them (the frames rendered so far are kept and reused by the next run);
* meanwhile a worker thread starts (or reaches) the backend, then submits the video job and
  follows it (HTTP only, never bpy), cancelling it on the backend when asked;
* at the end, on the main thread again: each clip's MP4 (Blender's FFmpeg), shown as a movie
  strip in the sequencer and as a movie clip, and ``video.json`` with the run's figures.

A remote backend writes the clips into its own output folder; when the job ends the worker
thread downloads each finished clip's frames and metadata into the scene's output folder
(core/video_fetch.py, the sweeps' rule: a backend on this machine writing there already did).
"""

import json
import os
import queue
import threading
from dataclasses import dataclass

import bpy

from ..core import video as V
from ..core.client import BackendError
from . import video as BV
from .backend import connect
from .ui import redraw

#: the share of the progress bar the passes take (the rest: the backend's steps)
CAPTURE_SHARE = 0.25


@dataclass
class VideoPlan:
    """What the operator read from the scene's Video settings."""

    camera: str
    family: str
    styles: list
    seeds: list
    controls: list
    frames: list
    out_dir: str
    long_side: int
    fps: float
    first_frame: str = ""  # '' | 'beauty' | a PNG path
    steps: int | None = None
    cfg: float | None = None
    remake: bool = False
    scene_file: str = ""
    still: bool = False


class VideoTask:
    """One video run in flight; looks like a ``tasks.Task`` to the timer, the Cancel operator
    and the panels. ``state``: running | done | cancelled | failed."""

    def __init__(self, scene_name, plan, backend):
        self.scene_name = scene_name
        self.plan = plan
        self.backend = backend  # BackendSettings
        self.events = queue.Queue()
        self.state = "running"
        self.phase = "passes"
        self.message = f"passes of {len(plan.frames)} frame(s)"
        self.error = ""
        self.fraction = 0.0
        self.images_done = 0  # clips done (the panel's and the status bar's counter)
        self.images_total = len(plan.styles) * len(plan.seeds)
        self.download, self.preview, self.device_warning = {}, {}, ""
        self.frames_done = 0
        self.capture = None  # the figures of the passes
        self.job = None
        self.status = None
        self.mp4s = []
        self.movies = []  # (strip name, movie clip name)
        self.summary = None
        self.thread = None
        self._steps = None
        self._job_ready = threading.Event()
        self._cancel_requested = False

    # ---------------------------------------------------------------- worker side (no bpy)
    def start_thread(self):
        self.thread = threading.Thread(target=self.work, name="archviz-video", daemon=True)
        self.thread.start()

    def work(self):
        b = self.backend
        try:
            client, _proc = connect(url=b.url, token=b.token, python=b.python, device=b.device,
                                    log_path=os.path.join(self.plan.out_dir, "backend.log"), env=b.backend_env(),
                                    output_roots=[self.plan.out_dir])
            warning = client.health().get("device_warning")
            if warning:
                self.events.put(("warning", warning))
            while not self._job_ready.wait(0.1):
                if self._cancel_requested or self.state != "running":
                    return
            if self._cancel_requested or self.job is None:
                return
            body = dict(self.job.__dict__)
            if b.url:  # a remote backend writes into its own output folder
                body["output_dir"] = ""
            job_id = client.submit_video(body)["id"]
            cancelled = False
            while True:
                status = client.job(job_id)
                self.events.put(("status", status))
                if status["state"] in ("done", "failed", "cancelled"):
                    self.events.put(("finished", self._local(client, status)))
                    return
                if self._cancel_requested and not cancelled:
                    client.cancel(job_id)
                    cancelled = True
                threading.Event().wait(0.2)
        except BackendError as exc:
            self.events.put(("failed", str(exc)))
        except Exception as exc:  # an unexpected bug must still reach the user, not die in a thread
            self.events.put(("failed", f"{type(exc).__name__}: {exc}"))

    def _local(self, client, status):
        """``status`` with its finished clips in the scene's output folder (downloaded from a
        remote backend; OSError for a local write is a failure like the backend's)."""
        from ..core.video_fetch import local_clips

        def on_file(clip, i, n):
            self.events.put(("message", f"downloading {clip}: {i}/{n} files"))

        try:
            return local_clips(client, status, self.plan.out_dir, on_file=on_file)
        except OSError as exc:
            raise BackendError(f"cannot write the clips into {self.plan.out_dir}: {exc}") from None
        except BackendError as exc:
            if status["state"] == "done":
                raise
            print(f"ArchViz: the clips the {status['state']} video job finished stay on the backend: {exc}")
            return status

    def cancel(self):
        self._cancel_requested = True
        self.message = "cancelling"

    # ---------------------------------------------------------------- main thread
    def drain(self):
        """One frame of passes while they render, then the worker's events; the MP4s and the
        movie strips at the end. Returns True while the task is still running."""
        if self.state == "running" and self.phase == "passes":
            self._capture_one()
        while self.state == "running":
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "warning":
                self.device_warning = payload
                print(f"ArchViz: warning: {payload}")
            elif kind == "message":
                self.message = payload
            elif kind == "status":
                self._progress(payload)
            elif kind == "finished":
                self._finished(payload)
            elif kind == "failed":
                self._fail(payload)
        redraw(("VIEW_3D", "SEQUENCE_EDITOR", "CLIP_EDITOR", "STATUSBAR"))
        return self.state == "running"

    def _capture_one(self):
        from .capture.render import CaptureError
        from ..core.passes import PassError

        p = self.plan
        scene = bpy.data.scenes[self.scene_name]
        if self._cancel_requested:
            self._end("cancelled", f"cancelled; the passes of {self.frames_done} frame(s) are kept in "
                                   f"{os.path.join(p.out_dir, 'passes')} (the next run reuses them)")
            return
        try:
            if self._steps is None:  # the sequence's depth range is measured on the first call
                family = V.video_family(p.family)
                self._steps = BV.capture_steps(scene, scene.objects[p.camera], p.frames, p.out_dir, p.long_side,
                                               family.multiple, scene_file=p.scene_file)
            try:
                i, frame, reused = next(self._steps)
            except StopIteration:
                self._submit()
                return
        except (CaptureError, PassError, V.VideoError, OSError) as exc:
            self._fail(str(exc))
            return
        self.frames_done = i + 1
        self.fraction = CAPTURE_SHARE * self.frames_done / len(p.frames)
        self.message = f"passes: frame {frame} ({i + 1}/{len(p.frames)}){' kept' if reused else ''}"

    def _submit(self):
        p = self.plan
        self.capture = self._steps.figures
        first = ""
        if p.first_frame == "beauty":
            first = os.path.join(self.capture["folders"][0], "beauty.png")
        elif p.first_frame:
            first = p.first_frame
        self.job = BV.build_job(p.family, p.styles, p.seeds, p.controls, p.frames, self.capture["folders"], p.out_dir,
                                p.fps, steps=p.steps, cfg=p.cfg, first_frame=first, remake=p.remake)
        self.phase = "generating"
        self.fraction = CAPTURE_SHARE
        self.message = (f"passes: {self.capture['frames_rendered']} rendered, {self.capture['frames_reused']} kept; "
                        "waiting for the backend")
        self._job_ready.set()

    def _progress(self, status):
        p = status["progress"]
        self.status = status
        self.images_done = p["clips_done"]
        self.fraction = CAPTURE_SHARE + (1 - CAPTURE_SHARE) * p["fraction"]
        phase = status.get("phase") or status["state"]
        if self._cancel_requested:
            self.message = "cancelling"
        elif phase == "generating":
            self.message = (f"step {p['steps_done']}/{p['steps_total']}, clips {p['clips_done']}/{p['clips_total']}"
                            f"{', windows kept ' + str(p['windows_skipped']) if p.get('windows_skipped') else ''}")
        else:
            self.message = phase

    def _finished(self, status):
        self._progress(status)
        state = status["state"]
        if state == "cancelled":
            self._end("cancelled", f"cancelled; the clips and windows made so far are kept in {self.plan.out_dir} "
                                   "(the next run goes on from them)")
            return
        if state != "done":
            err = (status.get("error") or {}).get("message") or state
            self._fail(f"the video job {state}: {err}")
            return
        from .cli_video import _summary
        from .movie import MovieError
        from ..core.png import atomic_write

        p = self.plan
        scene = bpy.data.scenes[self.scene_name]
        try:
            self.mp4s = BV.encode_clips(status, p.fps)
            for clip, mp4 in zip(status["clips"], self.mp4s):
                name = f"ArchViz {os.path.basename(clip['folder'])}"
                from .movie import show_movie

                strip, movie = show_movie(scene, mp4, name)
                self.movies.append((strip.name, movie.name))
            family = V.video_family(p.family)
            self.summary = _summary(status, self.capture, family, self.job, p.fps, p.still, p.camera, self.mp4s)
            atomic_write(os.path.join(p.out_dir, "video.json"), (json.dumps(self.summary, indent=2) + "\n").encode())
        except (MovieError, OSError, ValueError) as exc:
            self._fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        clips = self.summary["clips"]
        flicker = ", ".join(f"{c['flicker']:.2f}" for c in clips)
        self.images_done = len(clips)
        self._end("done", f"{len(clips)} clip(s) of {len(p.frames)} frames in {p.out_dir}, in the sequencer; "
                          f"frame-to-frame difference {flicker} (beauty render {self.summary['beauty_flicker']:.2f})")

    def _fail(self, message):
        self.error = message
        self._end("failed", message)

    def _end(self, state, message):
        self.state, self.message = state, message
        if state != "done":
            self.fraction = min(self.fraction, 1.0)
        self._job_ready.set()  # a worker still waiting for the job goes home
