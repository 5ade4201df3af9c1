"""Generate, sweep, cancel, start and stop the backend.

In Blender with a window the work runs in a worker thread that only talks HTTP; a
``bpy.app.timers`` callback brings progress and finished images onto the main thread,
and a modal handler lets Esc cancel. In ``blender -b`` and the bpy module the same
operators run synchronously and return when done.
"""

import dataclasses
import os
import queue
import sys
import threading
import time

import bpy
from bpy.props import EnumProperty

from .. import sweeping
from ..capture.render import CaptureError
from ..core import jobs as J
from ..core.client import BackendError
from ..core.passes import PassError, size_multiple
from ..core.region import edit_options
from ..core.sweep import UNIT_PRESETS, ControlUnit, SweepRunner
from .common import output_root
from .render_controls import capture_options

TIMER_INTERVAL = 0.2


# ---------------------------------------------------------------- settings

class BackendSettings:
    """Where the backend runs: the add-on preferences, or environment variables when the
    add-on is registered by a script without being enabled in Blender's preferences."""

    def __init__(self, context):
        from ..properties import preferences

        prefs = preferences(context)
        env = os.environ
        if prefs is not None:
            self.url = prefs.url if prefs.backend_mode == "REMOTE" else ""
            self.token = prefs.token
            self.python = bpy.path.abspath(prefs.python) if prefs.python else default_python(prefs.venv_dir)
            self.device = prefs.device
            self.model = bpy.path.abspath(prefs.model_path) if prefs.model_path else prefs.model
            self.hf_cache = bpy.path.abspath(prefs.hf_cache) if prefs.hf_cache else ""
            self.offline = prefs.offline
            self.hf_token = prefs.hf_token.strip()
            self.ray = prefs.ray_address.strip()
        else:
            self.url = env.get("ARCHVIZ_BACKEND_URL", "")
            self.token = env.get("ARCHVIZ_TOKEN", "")
            self.python = env.get("ARCHVIZ_PYTHON", "") or default_python("")
            self.device = env.get("ARCHVIZ_DEVICE", "auto")
            self.model = env.get("ARCHVIZ_MODEL", "sd15")
            self.hf_cache = ""
            self.offline = False
            self.hf_token = ""  # HF_TOKEN from the environment reaches the backend as it is
            self.ray = env.get("ARCHVIZ_RAY", "")
        # An add-on must not go online when Blender says no (Preferences > System > Network).
        self.blender_offline = not getattr(bpy.app, "online_access", True)

    def backend_env(self):
        env = dict(os.environ)
        if self.hf_cache:
            env["HF_HOME"] = self.hf_cache
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["ARCHVIZ_OFFLINE_REASON"] = "the add-on's Offline preference is on"
        elif self.blender_offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["ARCHVIZ_OFFLINE_REASON"] = ("Blender's Allow Online Access is off: Preferences > System > Network, "
                                             "or start Blender with --online-mode")
        if self.hf_token:
            env["HF_TOKEN"] = self.hf_token
        if self.ray:
            env["ARCHVIZ_RAY"] = self.ray  # the backend fans sweeps out to Ray actors
        else:
            env.pop("ARCHVIZ_RAY", None)
        return env


def backend_venv_dir(venv_dir=""):
    """The Backend Venv preference, else the venv in the user data folder that every
    Blender version shares, else one a previous Blender version's add-on made (reused)."""
    if venv_dir:
        return bpy.path.abspath(venv_dir)
    from ..core.backend_setup import default_venv_dir, find_backend_venv

    return find_backend_venv(default_venv_dir(), bpy.utils.user_resource("CONFIG"))


def default_python(venv_dir):
    """The Set-up-backend venv's interpreter when it exists, else this interpreter (the
    project venv, where torch is installed next to the bpy module)."""
    bindir = "Scripts" if sys.platform == "win32" else "bin"
    candidate = os.path.join(backend_venv_dir(venv_dir), bindir, "python.exe" if sys.platform == "win32" else "python")
    return candidate if os.path.exists(candidate) else sys.executable


def units_of(settings):
    """The sweep's control units; a Custom unit reads its ControlNet folder's card (JobError
    when the folder is not one made by archviz train-controlnet)."""
    if len(settings.units):
        return [ControlUnit.custom(bpy.path.abspath(u.model_path) if u.model_path else "", u.scale, u.start, u.end,
                                   u.mode) if u.type == "custom"
                else ControlUnit(u.type, u.scale, u.start, u.end, u.mode) for u in settings.units]
    return list(UNIT_PRESETS["depth_lines"])


# ---------------------------------------------------------------- the running task

class Task:
    """One generate/sweep in flight. The worker thread fills ``events``; everything that
    touches bpy happens in ``drain()`` on the main thread."""

    current = None

    def __init__(self, scene_name, camera_jobs, out_dir, backend):
        self.scene_name = scene_name
        self.camera_jobs = camera_jobs
        self.out_dir = out_dir
        self.backend = backend
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
        self.contact_sheets = []
        self.thread = None
        self._cancel_requested = False

    # worker side: HTTP only, never bpy
    def work(self):
        try:
            client, _proc = sweeping.connect(url=self.backend.url, token=self.backend.token,
                                             python=self.backend.python, device=self.backend.device,
                                             log_path=os.path.join(self.out_dir, "backend.log"),
                                             env=self.backend.backend_env(),
                                             output_roots=[self.out_dir],
                                             model_roots=[r for _, job in self.camera_jobs
                                                          for r in sweeping.job_model_roots(job)])
            warning = client.health().get("device_warning")
            if warning:  # a GPU the backend does not use: shown in the panel until the next run
                self.events.put(("warning", warning))
            self.runner = SweepRunner(client, self.camera_jobs, self.out_dir)
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
        from .. import results

        if event.kind == "download":
            self.download = {} if event.download.get("finished") else dict(event.download)
            self.message = event.message
            return
        self.download = {}
        self.fraction = event.fraction
        self.images_done = event.images_done
        if event.kind == "image":
            info = event.image
            params = dict(info.get("params") or {})
            params.setdefault("style", info["style"])
            params.setdefault("seed", info["seed"])
            image = results.load_result_image(info["path"], info["camera"], info["style"], info["seed"], params)
            image["archviz_exr"] = sweeping.variant_exr(info, self.out_dir)
            self.images.append(image.name)
            results.show_in_image_editor(bpy.context, image)
            self.message = f"{self.images_done}/{self.images_total} images"
        elif event.kind == "error":
            self.error = event.message

    def _open_contact_sheets(self):
        """The comparison view: each camera's contact sheet as an image (last one shown)."""
        from .. import results

        for path in sweeping.contact_sheets(self.out_dir, [camera for camera, _ in self.camera_jobs]):
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
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR", "STATUSBAR"):
                area.tag_redraw()


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


# ---------------------------------------------------------------- operators

class _GenerateBase:
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if Task.current is not None and Task.current.state == "running":
            cls.poll_message_set("A generation is already running (Esc or Cancel stops it)")
            return False
        if context.scene.camera is None and context.scene.archviz.camera is None:
            cls.poll_message_set("No scene camera")
            return False
        return True

    def plan(self, context):
        """(cameras, styles, seeds) for this operator."""
        raise NotImplementedError

    def _prepare(self, context):
        scene = context.scene
        settings = scene.archviz
        backend = BackendSettings(context)
        cameras, styles, seeds = self.plan(context)
        root, unsaved = output_root(settings)
        if unsaved:
            self.report({"WARNING"}, f"The .blend is not saved: images go to {root}")
        # FLUX.1 wants sides that are multiples of 16
        opts = dataclasses.replace(capture_options(settings), multiple=size_multiple(backend.model))
        camera_jobs = sweeping.prepare_jobs(
            scene, cameras, units_of(settings), styles, seeds, backend.model, root, opts,
            steps=settings.steps or None, cfg=settings.cfg or None,
            scheduler=None if settings.scheduler == "PRESET" else settings.scheduler, share_disk=not backend.url,
            max_batch=settings.max_batch or None,
            **edit_options(settings.use_restyle, settings.restyle_strength, settings.region_mode,
                           settings.region_classes, [o.name for o in context.selected_objects if o.type != "CAMERA"]))
        return Task(scene.name, camera_jobs, root, backend)

    def execute(self, context):
        try:
            task = self._prepare(context)
        except (J.JobError, CaptureError, PassError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        Task.current = task
        task.start_thread()
        if not bpy.app.background and context.window is not None:
            bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL)
            context.window_manager.modal_handler_add(self)
            return {"RUNNING_MODAL"}
        run_until_done(task)
        return self._finish(task)

    def modal(self, context, event):
        task = Task.current
        if task is None or task.state != "running":
            return self._finish(task) if task else {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            task.cancel()
        return {"PASS_THROUGH"}

    def _finish(self, task):
        if task.state == "done":
            self.report({"INFO"}, task.message)
            return {"FINISHED"}
        if task.state == "cancelled":
            self.report({"WARNING"}, task.message)
            return {"CANCELLED"}
        self.report({"ERROR"}, task.message)
        return {"CANCELLED"}


class ARCHVIZ_OT_generate(_GenerateBase, bpy.types.Operator):
    """Generate one image from the camera with the chosen style and seed"""

    bl_idname = "archviz.generate"
    bl_label = "Generate"

    def plan(self, context):
        settings = context.scene.archviz
        camera = settings.camera or context.scene.camera
        return [camera], [settings.style], [settings.seed]


class ARCHVIZ_OT_sweep(_GenerateBase, bpy.types.Operator):
    """Generate every style x seed x camera of the sweep settings"""

    bl_idname = "archviz.sweep"
    bl_label = "Sweep"

    def plan(self, context):
        settings = context.scene.archviz
        spec = {"SCENE": "scene", "SELECTED": "selected", "ALL": "all"}.get(settings.sweep_cameras)
        if spec is None:
            if settings.camera_collection is None:
                raise J.JobError("cameras", "pick a camera collection")
            spec = "collection:" + settings.camera_collection.name
        cameras = sweeping.resolve_cameras(context.scene, spec, selected=context.selected_objects or ())
        if spec == "scene" and settings.camera is not None:
            cameras = [settings.camera]
        styles = [s.strip() for s in settings.styles.split(",") if s.strip()]
        if not styles:
            raise J.JobError("styles", "no styles given")
        return cameras, styles, J.parse_seeds(settings.seeds)


class ARCHVIZ_OT_cancel(bpy.types.Operator):
    """Cancel the running generation (finished images are kept)"""

    bl_idname = "archviz.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        if Task.current is None or Task.current.state != "running":
            cls.poll_message_set("Nothing is running")
            return False
        return True

    def execute(self, context):
        Task.current.cancel()
        self.report({"INFO"}, "Cancelling: images already finished are kept")
        return {"FINISHED"}


class ARCHVIZ_OT_backend_start(bpy.types.Operator):
    """Start the local backend now (Generate also starts it when needed)"""

    bl_idname = "archviz.backend_start"
    bl_label = "Start Backend"

    def execute(self, context):
        backend = BackendSettings(context)
        try:
            client, proc = sweeping.connect(url=backend.url, token=backend.token, python=backend.python,
                                            device=backend.device, env=backend.backend_env())
            health = client.health()
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        where = proc.url if proc else backend.url
        self.report({"INFO"}, f"Backend at {where} on {health.get('device', '?')}")
        return {"FINISHED"}


class ARCHVIZ_OT_backend_stop(bpy.types.Operator):
    """Stop the backend this Blender started"""

    bl_idname = "archviz.backend_stop"
    bl_label = "Stop Backend"

    def execute(self, context):
        if Task.current is not None and Task.current.state == "running":
            Task.current.cancel()
        stopped = sweeping.started_backend() is not None
        sweeping.stop_started_backends()
        self.report({"INFO"}, "Backend stopped" if stopped else "No backend started by this Blender")
        return {"FINISHED"}


class ARCHVIZ_OT_control_preset(bpy.types.Operator):
    """Replace the control units with a preset"""

    bl_idname = "archviz.control_preset"
    bl_label = "Control Preset"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", items=[
        ("depth_lines", "Depth 0.9 + Lines 0.6", "Weighted multi-control"),
        ("early_depth_late_lines", "Early Depth, Late Lines", "Structure early (0-50%), edges late (20-100%)"),
        ("depth_seg", "Depth + Segmentation", ""),
        ("all_passes", "All Passes", "Depth, lines, normal and segmentation"),
    ])

    def execute(self, context):
        units = context.scene.archviz.units
        units.clear()
        for unit in UNIT_PRESETS[self.preset]:
            item = units.add()
            item.type = unit.type
            item.scale = unit.scale if unit.scale is not None else 1.0
            item.start = unit.start if unit.start is not None else 0.0
            item.end = unit.end if unit.end is not None else 1.0
            item.mode = unit.mode or "balanced"
        return {"FINISHED"}


class ARCHVIZ_OT_unit_add(bpy.types.Operator):
    """Add a control unit"""

    bl_idname = "archviz.unit_add"
    bl_label = "Add Control Unit"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.archviz
        settings.units.add()
        settings.active_unit = len(settings.units) - 1
        return {"FINISHED"}


class ARCHVIZ_OT_unit_remove(bpy.types.Operator):
    """Remove the active control unit"""

    bl_idname = "archviz.unit_remove"
    bl_label = "Remove Control Unit"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.archviz.units) > 0

    def execute(self, context):
        settings = context.scene.archviz
        settings.units.remove(settings.active_unit)
        settings.active_unit = max(0, min(settings.active_unit, len(settings.units) - 1))
        return {"FINISHED"}


classes = (ARCHVIZ_OT_generate, ARCHVIZ_OT_sweep, ARCHVIZ_OT_cancel, ARCHVIZ_OT_backend_start,
           ARCHVIZ_OT_backend_stop, ARCHVIZ_OT_control_preset, ARCHVIZ_OT_unit_add, ARCHVIZ_OT_unit_remove)
