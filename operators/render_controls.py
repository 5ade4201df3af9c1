"""``archviz.render_controls``: the control passes of the camera, shown as images."""

import os

import bpy
from bpy.props import StringProperty

from ..blender.capture.render import CaptureError, render_controls
from ..blender.compat import BLEND_RELATIVE
from ..blender.properties import capture_options, output_root
from ..blender.results import show_control_images
from ..core.classes import ClassError
from ..core.passes import PassError



class ARCHVIZ_OT_render_controls(bpy.types.Operator):
    """Render exact depth, lines, normal and segmentation images from the camera"""

    bl_idname = "archviz.render_controls"
    bl_label = "Render Control Passes"
    bl_options = {"REGISTER"}

    output_dir: StringProperty(options=BLEND_RELATIVE, name="Output", default="", subtype="DIR_PATH",
                               description="Folder for the passes (default: the scene's ArchViz output folder)")

    @classmethod
    def poll(cls, context):
        scene = context.scene
        if scene is None:
            return False
        if scene.archviz.camera is None and scene.camera is None:
            cls.poll_message_set("No scene camera: add a camera or pick one in the ArchViz panel")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        settings = scene.archviz
        options = capture_options(settings)
        camera_name = options.camera or scene.camera.name
        if self.output_dir:
            out_dir = os.path.abspath(bpy.path.abspath(self.output_dir))
        else:
            root, unsaved = output_root(settings)
            out_dir = os.path.join(root, "passes", bpy.path.clean_name(camera_name))
            if unsaved:
                self.report({"WARNING"}, f"The .blend is not saved: passes go to {out_dir}")
        try:
            result = render_controls(scene, out_dir, options)
        except (CaptureError, PassError, ClassError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        show_control_images(context, result.files)
        w, h = result.info["resolution"]
        self.report({"INFO"}, f"Control passes {w}x{h} from {camera_name!r} in {result.seconds:.1f} s: {out_dir}")
        return {"FINISHED"}


classes = (ARCHVIZ_OT_render_controls,)
