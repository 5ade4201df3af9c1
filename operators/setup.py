"""``archviz.setup_backend``: one click from the preferences to a backend venv."""

import bpy

from ..core.backend_setup import BackendSetup
from .generate import backend_venv_dir

current = None  # the BackendSetup shown in the preferences


def _poll_setup():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    return 0.5 if current is not None and current.state == "running" else None


class ARCHVIZ_OT_setup_backend(bpy.types.Operator):
    """Create a venv for the backend and install torch, diffusers and the rest into it"""

    bl_idname = "archviz.setup_backend"
    bl_label = "Set up Backend"

    @classmethod
    def poll(cls, context):
        if current is not None and current.state == "running":
            cls.poll_message_set("The backend is being set up")
            return False
        return True

    def execute(self, context):
        global current
        from ..properties import preferences

        prefs = preferences(context)
        venv_dir = backend_venv_dir(prefs.venv_dir if prefs else "")
        current = BackendSetup(venv_dir, pip_args=prefs.pip_args if prefs else "")
        current.start()
        if bpy.app.background:
            current.thread.join()
            if current.state != "done":
                self.report({"ERROR"}, current.message)
                return {"CANCELLED"}
            self.report({"INFO"}, current.message)
            return {"FINISHED"}
        bpy.app.timers.register(_poll_setup, first_interval=0.5)
        self.report({"INFO"}, f"Setting up the backend in {venv_dir}; progress shows in the preferences")
        return {"FINISHED"}


classes = (ARCHVIZ_OT_setup_backend,)
