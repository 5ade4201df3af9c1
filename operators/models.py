"""``archviz.models_refresh`` / ``archviz.models_download``: the Models box of the
preferences. The runs (``archviz models`` in the backend's interpreter, from a worker
thread) are ``blender.runs``'; these operators start them and report."""

import bpy
from bpy.props import EnumProperty

from ..blender import runs
from ..blender.backend import BackendSettings
from ..blender.preferences import offline_reason


def _start(args, context):
    backend = BackendSettings(context)
    return runs.start_models(args, backend.python, backend.backend_env())


class ARCHVIZ_OT_models_refresh(bpy.types.Operator):
    """Look at what the Hugging Face cache holds for each model family"""

    bl_idname = "archviz.models_refresh"
    bl_label = "Refresh"

    def execute(self, context):
        listing = _start(["list", "--json"], context)
        if bpy.app.background and listing.state == "failed":
            self.report({"ERROR"}, listing.message)
            return {"CANCELLED"}
        return {"FINISHED"}


class ARCHVIZ_OT_models_download(bpy.types.Operator):
    """Download the models of a family into the Hugging Face cache (only the files the backend loads)"""

    bl_idname = "archviz.models_download"
    bl_label = "Download"

    family: EnumProperty(name="Family", items=runs.FAMILIES, default="sd15")

    @classmethod
    def poll(cls, context):
        if runs.download is not None and runs.download.state == "running":
            cls.poll_message_set("A download is running")
            return False
        reason = offline_reason(context)
        if reason:
            cls.poll_message_set(reason)
            return False
        return True

    def execute(self, context):
        download = _start(["download", self.family, "--progress", "json"], context)
        if bpy.app.background:
            if download.state != "done":
                self.report({"ERROR"}, download.message)
                return {"CANCELLED"}
            self.report({"INFO"}, download.message)
            return {"FINISHED"}
        self.report({"INFO"}, f"Downloading {self.family}; progress shows in the preferences")
        return {"FINISHED"}


classes = (ARCHVIZ_OT_models_refresh, ARCHVIZ_OT_models_download)
