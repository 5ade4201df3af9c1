import math
import os

import bpy
from bpy.props import StringProperty

from ..blender import results
from ..blender.capture.render import CaptureError, CaptureOptions, render_controls
from ..core.classes import ClassError
from ..core.passes import PassError
from .common import output_root

IMAGE_PREFIX = "archviz_"


def capture_options(settings, beauty=None):
    manual = settings.depth_mode == "MANUAL"
    return CaptureOptions(
        camera=settings.camera.name if settings.camera else "",
        long_side=settings.long_side,
        passes=settings.passes(),
        depth_range=settings.depth_mode.lower(),
        near=settings.depth_near if manual else 0.0,
        far=settings.depth_far if manual else 0.0,
        line_style=settings.line_style.lower(),
        supersample=settings.supersample,
        beauty=settings.use_beauty if beauty is None else beauty,
        beauty_engine=settings.beauty_engine,
        beauty_samples=settings.beauty_samples,
        crease_angle=math.degrees(settings.crease_angle),
        background_class=settings.background_class,
        fallback_class=settings.fallback_class,
        class_table=bpy.path.abspath(settings.class_table) if settings.class_table else "",
    )


def show_images(context, files):
    """Load the control images as datablocks (replacing older ones) and show the first in
    an Image Editor when the window has one."""
    images = []
    for name in ("depth", "lines", "normal", "seg", "beauty"):
        if name in files:
            image = results.load_image(IMAGE_PREFIX + name, files[name])
            # Control images are data; the beauty pass is a picture in the display space.
            image.colorspace_settings.name = "sRGB" if name == "beauty" else "Non-Color"
            images.append(image)
    if images:
        results.show_in_image_editor(context, images[0])
    return images


class ARCHVIZ_OT_render_controls(bpy.types.Operator):
    """Render exact depth, lines, normal and segmentation images from the camera"""

    bl_idname = "archviz.render_controls"
    bl_label = "Render Control Passes"
    bl_options = {"REGISTER"}

    output_dir: StringProperty(name="Output", default="", subtype="DIR_PATH",
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
        show_images(context, result.files)
        w, h = result.info["resolution"]
        self.report({"INFO"}, f"Control passes {w}x{h} from {camera_name!r} in {result.seconds:.1f} s: {out_dir}")
        return {"FINISHED"}


classes = (ARCHVIZ_OT_render_controls,)
