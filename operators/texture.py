"""Texture Scene, Walkthrough and Cancel (``archviz.texture_scene``, ``archviz.walkthrough``,
``archviz.texture_cancel``): the ``archviz texture`` / ``archviz walkthrough`` flows in a
child process (``blender.texturing``), with progress per view, cancel, and the result
opened as the active scene."""

import os

import bpy

from ..blender import texturing
from ..blender.backend import BackendSettings, connect
from ..core import jobs as J
from ..core.client import BackendError


class _ChildOperator:
    bl_options = {"REGISTER"}
    _timer = None

    @classmethod
    def poll(cls, context):
        run = texturing.ChildRun.current
        if run is not None and run.state == "running":
            cls.poll_message_set("A texture run or walkthrough is running (Cancel stops it)")
            return False
        return True

    def _start(self, context, run):
        texturing.ChildRun.current = run
        props = context.scene.archviz.texture
        props.status, props.progress = run.message, 0.0
        if bpy.app.background or context.window is None:
            import time

            while run.drain():
                self._show(context, run)
                time.sleep(0.05)
            return self._finish(context, run)
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _show(self, context, run):
        props = context.scene.archviz.texture
        props.progress, props.status = run.fraction, run.message
        for area in getattr(context.screen, "areas", ()):
            if area.type == "VIEW_3D":
                area.tag_redraw()

    def modal(self, context, event):
        run = texturing.ChildRun.current
        if event.type == "ESC" and event.value == "PRESS":
            run.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if run.drain():
            self._show(context, run)
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(context, run)

    def _finish(self, context, run):
        props = context.scene.archviz.texture
        self._show(context, run)
        if run.state != "done":
            props.status = run.message
            self.report({"WARNING" if run.state == "cancelled" else "ERROR"}, run.message)
            return {"CANCELLED"}
        return self.done(context, run)


def _backend_url(context, out_dir):
    """The URL of a backend for the child: the preferences' remote one, else one this
    Blender starts (or has started) with the preferences' Python."""
    backend = BackendSettings(context)
    client, _proc = connect(url=backend.url, token=backend.token, python=backend.python, device=backend.device,
                            log_path=os.path.join(out_dir, "backend.log"), env=backend.backend_env(),
                            output_roots=[out_dir])
    return client.url, backend


class ARCHVIZ_OT_texture_scene(_ChildOperator, bpy.types.Operator):
    """Texture the scene from the chosen cameras (each view inpaints what the earlier ones did not cover) and open the baked copy as a new scene"""

    bl_idname = "archviz.texture_scene"
    bl_label = "Texture Scene"

    def execute(self, context):
        props = context.scene.archviz.texture
        try:
            out = texturing.output_dir(props)
            os.makedirs(out, exist_ok=True)
            url, backend = _backend_url(context, out)
            argv, out = texturing.texture_argv(context, props, url, backend.token)
            argv += ["--model", backend.model]
        except (J.JobError, BackendError, OSError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            props.status = str(exc)
            return {"CANCELLED"}
        props.report = ""
        return self._start(context, texturing.ChildRun("texture", argv, out, context.scene.name))

    def done(self, context, run):
        props = context.scene.archviz.texture
        props.report = texturing.coverage_text(run.out_dir)
        try:
            name = texturing.open_result(context, run.out_dir, run.scene_name)
        except (OSError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        props.result_scene = name
        props.status = f"textured: scene {name!r} ({os.path.join(run.out_dir, 'textured.blend')})"
        bpy.data.scenes[name].archviz.texture.report = props.report
        self.report({"INFO"}, props.status)
        return {"FINISHED"}


class ARCHVIZ_OT_walkthrough(_ChildOperator, bpy.types.Operator):
    """Render the camera's animation of this scene to PNG frames and an MP4, shown in the sequencer"""

    bl_idname = "archviz.walkthrough"
    bl_label = "Walkthrough"

    def execute(self, context):
        scene = context.scene
        props = scene.archviz.texture
        camera = props.walk_camera or (scene.camera.name if scene.camera else "")
        if not camera:
            self.report({"ERROR"}, "walkthrough: the scene has no camera; name one in Walk Camera")
            return {"CANCELLED"}
        out = os.path.join(texturing.output_dir(props), "walk")
        os.makedirs(out, exist_ok=True)
        source = os.path.join(out, "scene.blend")
        bpy.ops.wm.save_as_mainfile(filepath=source, copy=True)
        # the copy lands beside the original's relative paths only when saved with them remapped
        argv = ["walkthrough", source, "--camera", camera, "--engine", props.walk_engine.lower(),
                "--samples", str(props.walk_samples), "--out", out]
        if props.walk_frames:
            argv += ["--frames", props.walk_frames]
        return self._start(context, texturing.ChildRun("walkthrough", argv, out, scene.name))

    def done(self, context, run):
        from ..blender import movie

        mp4 = os.path.join(run.out_dir, "walk.mp4")
        try:
            movie.show_movie(context.scene, mp4, "walkthrough")
        except movie.MovieError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        context.scene.archviz.texture.status = f"walkthrough: {mp4} (in the sequencer)"
        self.report({"INFO"}, context.scene.archviz.texture.status)
        return {"FINISHED"}


class ARCHVIZ_OT_texture_cancel(bpy.types.Operator):
    """Stop the texture run or walkthrough (finished views stay on disk; a new run goes on from them)"""

    bl_idname = "archviz.texture_cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        run = texturing.ChildRun.current
        return run is not None and run.state == "running"

    def execute(self, context):
        texturing.ChildRun.current.cancel()
        return {"FINISHED"}


classes = (ARCHVIZ_OT_texture_scene, ARCHVIZ_OT_walkthrough, ARCHVIZ_OT_texture_cancel)
