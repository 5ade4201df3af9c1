"""``archviz.setup_backend``: one click from the preferences to a backend venv;
``archviz.doctor``: the ``archviz doctor`` report in the preferences. The runs are
``blender.runs``'; these operators start them and report."""

import bpy

from ..blender import compat, runs
from ..blender.backend import BackendSettings, backend_venv_dir
from ..blender.preferences import preferences


class ARCHVIZ_OT_setup_backend(bpy.types.Operator):
    """Create a venv for the backend and install torch, diffusers and the rest into it"""

    bl_idname = "archviz.setup_backend"
    bl_label = "Set up Backend"

    @classmethod
    def poll(cls, context):
        if runs.setup is not None and runs.setup.state == "running":
            cls.poll_message_set("The backend is being set up")
            return False
        if not compat.online_access():  # Set up Backend downloads torch and the rest with pip
            cls.poll_message_set("Blender's Allow Online Access is off (Preferences > System > Network): "
                                 "Set up Backend downloads packages")
            return False
        return True

    def execute(self, context):
        prefs = preferences(context)
        venv_dir = backend_venv_dir(prefs.venv_dir if prefs else "")
        setup = runs.start_setup(venv_dir, pip_args=prefs.pip_args if prefs else "",
                                 torch_index=prefs.torch_index_url if prefs else "")
        if bpy.app.background:
            if setup.state != "done":
                self.report({"ERROR"}, setup.message)
                return {"CANCELLED"}
            self.report({"INFO"}, setup.message)
            if setup.warning:
                self.report({"WARNING"}, setup.warning)
            return {"FINISHED"}
        self.report({"INFO"}, f"Setting up the backend in {venv_dir}; progress shows in the preferences")
        return {"FINISHED"}


class ARCHVIZ_OT_doctor(bpy.types.Operator):
    """Check whether a real generation can run: torch and its device, the GPU and driver, the cached models,
    the Hugging Face cache, token and offline settings; each problem with its fix (archviz doctor)"""

    bl_idname = "archviz.doctor"
    bl_label = "Doctor"

    @classmethod
    def poll(cls, context):
        if runs.doctor is not None and runs.doctor.state == "running":
            cls.poll_message_set("The check is running")
            return False
        return True

    def execute(self, context):
        prefs = preferences(context)
        backend = BackendSettings(context)
        doctor = runs.start_doctor(backend.python, backend.backend_env(), backend.offline,
                                   backend_venv_dir(prefs.venv_dir if prefs else ""), compat.online_access())
        if bpy.app.background:
            for line in doctor.lines:
                print(line)
            self.report({"INFO"} if doctor.can_generate else {"WARNING"}, doctor.lines[-1])
        return {"FINISHED"}


classes = (ARCHVIZ_OT_setup_backend, ARCHVIZ_OT_doctor)
