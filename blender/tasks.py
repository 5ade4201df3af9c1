"""The task runner of Generate and Sweep: one worker thread, a queue, a timer drain.

The worker thread only talks HTTP (core's client and SweepRunner) and puts events into
a queue; everything that touches bpy happens in ``Task.drain()`` on the main thread,
called by a ``bpy.app.timers`` callback in Blender with a window, or by
``run_until_done`` in ``blender -b`` and the bpy module, where the same task runs
synchronously.
"""

import os
import queue
import threading
import time

import bpy

from ..core.client import BackendError
from ..core.sweep import SweepRunner
from . import results
from .backend import connect
from .sweeping import job_model_roots
from .ui import redraw

TIMER_INTERVAL = 0.2


class Task:
    """One generate/sweep in flight. The worker thread fills ``events``; everything that
    touches bpy happens in ``drain()`` on the main thread."""

    current = None

    def __init__(self, scene_name, camera_jobs, out_dir, backend):
        self.scene_name = scene_name
        self.camera_jobs = camera_jobs
        self.out_dir = out_dir
        self.backend = backend  # the BackendSettings it runs with
        self.events = queue.Queue()
        self.runner = None
        self.fraction = 0.0
        self.images_done = 0
        self.images_total = sum(len(j["styles"]) * len(j["seeds"]) for _, j in camera_jobs)
        self.message = "starting the backend"
        self.state = "running"
        self.error = ""
        self.device_warning = ""
        self.download = {}  # the model download in progress (job status' download), if any
        self.images = []  # image datablock names, in arrival order
        self.preview = {}  # the latest preview shown: camera, style, seed, step, steps
        self.contact_sheets = []
        self.thread = None
        self._cancel_requested = False

    # worker side: HTTP only, never bpy
    def work(self):
        try:
            client, _proc = connect(url=self.backend.url, token=self.backend.token, python=self.backend.python,
                                    device=self.backend.device, log_path=os.path.join(self.out_dir, "backend.log"),
                                    env=self.backend.backend_env(), output_roots=[self.out_dir],
                                    model_roots=[r for _, job in self.camera_jobs for r in job_model_roots(job)])
            warning = client.health().get("device_warning")
            if warning:  # a GPU the backend does not use: shown in the panel until the next run
                self.events.put(("warning", warning))
            self.runner = SweepRunner(client, self.camera_jobs, self.out_dir,
                                      previews=any(job.get("preview_every", 1) for _, job in self.camera_jobs))
            if self._cancel_requested:
                self.runner.cancel()
            self.events.put(("state", "generating"))
            state = self.runner.run(lambda event: self.events.put(("event", event)))
            self.events.put(("finished", state))
        except BackendError as exc:
            self.events.put(("failed", str(exc)))
        except Exception as exc:  # an unexpected bug must still reach the user, not die in a thread
            self.events.put(("failed", f"{type(exc).__name__}: {exc}"))

    def start_thread(self):
        self.thread = threading.Thread(target=self.work, name="archviz-sweep", daemon=True)
        self.thread.start()

    def cancel(self):
        self._cancel_requested = True
        if self.runner is not None:
            self.runner.cancel()
        self.message = "cancelling"

    # main-thread side
    def drain(self):
        """Apply queued events to Blender. Returns True while the task is still running."""
        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "state":
                self.message = payload
            elif kind == "warning":
                self.device_warning = payload
                print(f"ArchViz: warning: {payload}")
            elif kind == "event":
                self._apply(payload)
            elif kind == "finished":
                self.state = payload
                if payload == "failed":
                    self.error = "; ".join(self.runner.errors)
            elif kind == "failed":
                self.state, self.error = "failed", payload
        if self.state != "running":
            self.message = self._summary()
            self._open_contact_sheets()
        _redraw()
        return self.state == "running"

    def _apply(self, event):
        if event.kind == "download":
            self.download = {} if event.download.get("finished") else dict(event.download)
            self.message = event.message
            return
        self.download = {}
        self.fraction = event.fraction
        self.images_done = event.images_done
        if event.kind == "preview":  # the image editor follows the denoising of the newest image
            info = event.image
            image = results.show_preview(info["png"], os.path.join(self.out_dir, "passes"), info)
            self.preview = {k: info.get(k) for k in ("camera", "style", "seed", "step", "steps")}
            if not self.images:  # once a result is there, the editor stays on the results
                results.show_in_image_editor(bpy.context, image)
            self.message = (f"{self.images_done}/{self.images_total} images, preview {info.get('style')} "
                            f"s{info.get('seed')} step {info.get('step')}/{info.get('steps')}")
        elif event.kind == "image":
            info = event.image
            params = dict(info.get("params") or {})
            params.setdefault("style", info["style"])
            params.setdefault("seed", info["seed"])
            image = results.load_result_image(info["path"], info["camera"], info["style"], info["seed"], params)
            image["archviz_exr"] = results.variant_exr(info, self.out_dir)
            self.images.append(image.name)
            results.show_in_image_editor(bpy.context, image)
            self.message = f"{self.images_done}/{self.images_total} images"
        elif event.kind == "error":
            self.error = event.message

    def _open_contact_sheets(self):
        """The comparison view: each camera's contact sheet as an image (last one shown)."""
        for path in results.contact_sheets(self.out_dir, [camera for camera, _ in self.camera_jobs]):
            image = results.load_image("ArchViz Contact Sheet " + os.path.basename(path), path)
            self.contact_sheets.append(image.name)
            results.show_in_image_editor(bpy.context, image)

    def _summary(self):
        if self.state == "done":
            return f"{len(self.images)} image(s) in {self.out_dir}"
        if self.state == "cancelled":
            return f"cancelled; {len(self.images)} image(s) kept in {self.out_dir}"
        return f"failed after {len(self.images)} image(s) (kept in {self.out_dir}): {self.error}"


def _redraw():
    redraw(("VIEW_3D", "IMAGE_EDITOR", "STATUSBAR"))


def _timer():
    task = Task.current
    if task is None:
        return None
    return TIMER_INTERVAL if task.drain() else None


def run_until_done(task, poll=0.05):
    """Drive a started task from the calling (main) thread: what the timer does in the UI."""
    while task.drain():
        time.sleep(poll)
    return task


def start(task, with_timer):
    """Make ``task`` the current one and start its worker thread; with ``with_timer`` (a
    window to draw in) a timer drains it from now on, else the caller drives it
    (``run_until_done``)."""
    Task.current = task
    task.start_thread()
    if with_timer:
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL)


def running():
    """The task in flight, or None."""
    task = Task.current
    return task if task is not None and task.state == "running" else None
