"""Generate, sweep, cancel, start and stop the backend, and the control units.

Thin: they read the scene settings, plan the sweep with ``blender.sweeping``, hand it to
the task runner (``blender.tasks``: a worker thread, drained by a timer in Blender with a
window, synchronous in ``blender -b``) and report. A modal handler lets Esc cancel.
"""

import dataclasses

import bpy
from bpy.props import EnumProperty

from ..blender import sweeping, tasks
from ..blender.backend import BackendSettings, connect, started_backend, stop_started_backends
from ..blender.capture.render import CaptureError
from ..blender.properties import capture_options, output_root, units_of
from ..blender.tasks import Task
from ..core import jobs as J
from ..core.client import BackendError
from ..core.passes import PassError, size_multiple
from ..core.edit import instruction_edit
from ..core.region import edit_options
from ..core.sweep import UNIT_PRESETS


class _GenerateBase:
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if tasks.running():
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
        # FLUX.1, Qwen-Image and Z-Image want sides that are multiples of 16
        opts = dataclasses.replace(capture_options(settings), multiple=size_multiple(backend.model))
        units = units_of(settings)
        try:
            edit = instruction_edit(settings.edit_text, settings.region_mode)  # the Edit field: no units
        except ValueError as exc:
            raise J.JobError("edit", str(exc)) from None
        if edit:
            units = []
        else:
            edit = edit_options(settings.use_restyle, settings.restyle_strength, settings.region_mode,
                                settings.region_classes,
                                [o.name for o in context.selected_objects if o.type != "CAMERA"])
        from ..blender.references import reference_entries
        from ..core.references import ReferenceError

        try:
            references = reference_entries(settings)
        except ReferenceError as exc:
            raise J.JobError("references", str(exc)) from None
        camera_jobs = sweeping.prepare_jobs(
            scene, cameras, units, styles, seeds, backend.model, root, opts,
            steps=settings.steps or None, cfg=settings.cfg or None,
            scheduler=None if settings.scheduler == "PRESET" else settings.scheduler, share_disk=not backend.url,
            max_batch=settings.max_batch or None, fast=settings.fast, preview_every=settings.preview_every,
            references=references, **edit)
        return Task(scene.name, camera_jobs, root, backend)

    def execute(self, context):
        try:
            task = self._prepare(context)
        except (J.JobError, CaptureError, PassError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        with_window = not bpy.app.background and context.window is not None
        tasks.start(task, with_timer=with_window)
        if with_window:
            context.window_manager.modal_handler_add(self)
            return {"RUNNING_MODAL"}
        tasks.run_until_done(task)
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
        if not tasks.running():
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
            client, proc = connect(url=backend.url, token=backend.token, python=backend.python,
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
        if tasks.running():
            Task.current.cancel()
        stopped = started_backend() is not None
        stop_started_backends()
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
