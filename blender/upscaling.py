"""Upscale a result from Blender: the same ``archviz upscale`` as on the command line.

``archviz upscale IMAGE --scale 2|4 --scene BLEND --camera CAM --progress json`` runs in the
backend's interpreter as a child process (it renders the control passes of the saved .blend
again at the target size and refines the enlarged image tile by tile with the engine); a
worker thread reads its JSON lines (one per tile), and the main thread (a timer, or the
caller in ``blender -b``) turns them into progress and, at the end, loads the upscaled PNG
as an image datablock with its parameters (results.load_upscaled_image), so Apply as
Texture and Add to Compositor take it like any result.
"""

import json
import os
import queue
import subprocess
import threading
import time

import bpy

from . import results
from .ui import redraw

TIMER_INTERVAL = 0.3


class UpscaleRun:
    """One ``archviz upscale`` child. ``state``: running | done | failed | cancelled."""

    current = None

    def __init__(self, python, env, source_name, argv):
        self.python, self.env, self.argv = python, dict(env), list(argv)
        self.source_name = source_name  # the result image it upscales
        self.events = queue.Queue()
        self.state, self.message, self.error = "running", "starting", ""
        self.tile, self.tiles = 0, 0
        self.tile_seconds = []  # seconds of each tile, in order
        self.result = None  # the upscaled image datablock's name
        self.proc = None
        self.thread = None

    def command(self):
        return [self.python, "-m", "archviz_controlnet.cli", "upscale", *self.argv, "--progress", "json"]

    @property
    def fraction(self):
        return self.tile / self.tiles if self.tiles else 0.0

    # worker side: the child and its lines, never bpy
    def start(self):
        self.thread = threading.Thread(target=self.work, name="archviz-upscale", daemon=True)
        self.thread.start()

    def work(self):
        env = dict(self.env)
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.basename(package_dir) == "archviz_controlnet":  # an installed extension: put it on the path
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(package_dir), env.get("PYTHONPATH")]))
        try:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.events.put(("failed", f"cannot run {self.python!r}: {exc.strerror}"))
            return
        errors = []
        reader = threading.Thread(target=lambda: errors.extend(self.proc.stderr), daemon=True)
        reader.start()
        done = None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("state") == "done":
                done = event
            else:
                self.events.put(("progress", event))
        code = self.proc.wait()
        reader.join(timeout=5)
        if code == 0 and done is not None:
            self.events.put(("done", done))
        elif code < 0 or self.state == "cancelled":
            self.events.put(("cancelled", "cancelled"))
        else:  # its one-line error (the child prints "archviz upscale: ..." last)
            tail = [e.strip() for e in errors if e.strip()]
            last = next((e for e in reversed(tail) if e.startswith("archviz upscale: ")), tail[-1] if tail else "")
            self.events.put(("failed", last.removeprefix("archviz upscale: ") or f"archviz upscale exited with {code}"))

    def cancel(self):
        self.state = "cancelled"
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    # main-thread side
    def drain(self):
        """Apply the child's events to Blender. Returns True while it runs."""
        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                if payload.get("state") == "rendering":
                    self.message = f"rendering the passes at {payload['width']}x{payload['height']}"
                elif payload.get("state") == "refining":
                    self.tile, self.tiles = int(payload["tile"]), int(payload["tiles"])
                    self.tile_seconds.append(float(payload["seconds"]))
                    self.message = f"tile {self.tile}/{self.tiles}"
            elif kind == "done":
                source = bpy.data.images.get(self.source_name)
                image = results.load_upscaled_image(payload["path"], source)
                self.result = image.name
                results.show_in_image_editor(bpy.context, image)
                self.tile = self.tiles = int(payload.get("tiles") or self.tiles)
                self.state = "done"
                self.message = (f"{image.name}: {image.size[0]}x{image.size[1]}" if not payload.get("kept")
                                else f"{image.name}: kept (made before with the same parameters)")
            elif kind == "cancelled":
                self.state, self.message = "cancelled", "cancelled"
            elif kind == "failed":
                self.state, self.error, self.message = "failed", payload, payload
        redraw(("VIEW_3D", "IMAGE_EDITOR"))
        return self.state == "running"


def upscale_argv(image, scale, scene_path, device="auto", tile=0, overlap=0):
    """``archviz upscale`` arguments for a result image datablock; ValueError naming what is
    missing when it is not an ArchViz result on disk."""
    path = image.get("archviz_path", "")
    if not path:
        raise ValueError(f"{image.name!r} is not an ArchViz result (no archviz_path): generate one first")
    if not os.path.isfile(path):
        raise ValueError(f"{image.name!r}: its file {path} is no longer on disk")
    argv = [path, "--scale", str(int(scale)), "--scene", scene_path, "--device", device]
    camera = image.get("archviz_camera", "")
    if camera:
        argv += ["--camera", camera]
    if tile:
        argv += ["--tile", str(int(tile))]
    if overlap:
        argv += ["--overlap", str(int(overlap))]
    return argv


def _timer():
    run = UpscaleRun.current
    if run is None:
        return None
    return TIMER_INTERVAL if run.drain() else None


def start(run, with_timer):
    """Make ``run`` the current upscale and start it; a timer drains it when there is a
    window, else the caller does (``run_until_done``)."""
    UpscaleRun.current = run
    run.start()
    if with_timer:
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL)
    return run


def run_until_done(run, poll=0.1):
    while run.drain():
        time.sleep(poll)
    return run


def running():
    run = UpscaleRun.current
    return run if run is not None and run.state == "running" else None
