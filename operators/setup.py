"""``archviz.setup_backend``: one click from the preferences to a backend venv;
``archviz.doctor``: the ``archviz doctor`` report in the preferences."""

import threading

import bpy

from ..core.backend_setup import BackendSetup
from .generate import BackendSettings, backend_venv_dir

current = None  # the BackendSetup shown in the preferences
doctor = None  # the DoctorRun shown in the preferences


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
        from ..blender.properties import preferences

        prefs = preferences(context)
        venv_dir = backend_venv_dir(prefs.venv_dir if prefs else "")
        current = BackendSetup(venv_dir, pip_args=prefs.pip_args if prefs else "",
                               torch_index=prefs.torch_index_url if prefs else "")
        current.start()
        if bpy.app.background:
            current.thread.join()
            if current.state != "done":
                self.report({"ERROR"}, current.message)
                return {"CANCELLED"}
            self.report({"INFO"}, current.message)
            if current.warning:
                self.report({"WARNING"}, current.warning)
            return {"FINISHED"}
        bpy.app.timers.register(_poll_setup, first_interval=0.5)
        self.report({"INFO"}, f"Setting up the backend in {venv_dir}; progress shows in the preferences")
        return {"FINISHED"}


class DoctorRun:
    """One ``archviz doctor`` check in a worker thread (it starts the backend's Python to
    ask it about torch and the model cache). ``lines``: the report; ``can_generate``."""

    def __init__(self, python, env, offline_switch, venv_dir, blender_online):
        self.args = dict(python=python, env=env, offline_switch=offline_switch, venv_dir=venv_dir,
                         blender_online=blender_online)
        self.state, self.lines, self.can_generate = "running", ["checking..."], False
        self.thread = threading.Thread(target=self.run, name="archviz-doctor", daemon=True)

    def run(self):
        from ..core import doctor as D

        try:
            facts = D.collect(**self.args)
            findings, self.can_generate = D.diagnose(facts)
            self.lines = D.report_lines(facts, findings, self.can_generate)
            self.state = "done"
        except Exception as exc:  # a bug in the check must reach the user, not die in a thread
            self.lines, self.state = [f"the check failed: {type(exc).__name__}: {exc}"], "failed"


class ARCHVIZ_OT_doctor(bpy.types.Operator):
    """Check whether a real generation can run: torch and its device, the GPU and driver, the cached models,
    the Hugging Face cache, token and offline settings; each problem with its fix (archviz doctor)"""

    bl_idname = "archviz.doctor"
    bl_label = "Doctor"

    @classmethod
    def poll(cls, context):
        if doctor is not None and doctor.state == "running":
            cls.poll_message_set("The check is running")
            return False
        return True

    def execute(self, context):
        global doctor
        from ..blender.properties import preferences

        prefs = preferences(context)
        backend = BackendSettings(context)
        doctor = DoctorRun(backend.python, backend.backend_env(), backend.offline,
                           backend_venv_dir(prefs.venv_dir if prefs else ""), bpy.app.online_access)
        doctor.thread.start()
        if bpy.app.background:
            doctor.thread.join()
            for line in doctor.lines:
                print(line)
            self.report({"INFO"} if doctor.can_generate else {"WARNING"}, doctor.lines[-1])
            return {"FINISHED"}
        bpy.app.timers.register(_poll_doctor, first_interval=0.5)
        return {"FINISHED"}


def _poll_doctor():
    _poll_setup()
    return 0.5 if doctor is not None and doctor.state == "running" else None


classes = (ARCHVIZ_OT_setup_backend, ARCHVIZ_OT_doctor)
