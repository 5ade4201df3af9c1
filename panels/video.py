"""The Video box of the ArchViz sidebar (a sub-panel of Generate): the settings of
``archviz.video`` (blender/video_settings.py), its button, and the run's progress, Cancel and
outcome. UI only."""

import bpy

from ..blender.ui import draw_lines, text_width
from .base import ArchVizPanel


class VIEW3D_PT_archviz_video(ArchVizPanel, bpy.types.Panel):
    bl_label = "Video"
    bl_parent_id = "VIEW3D_PT_archviz_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from ..blender.tasks import Task
        from ..blender.video_settings import video_camera
        from ..blender.video_task import VideoTask

        layout = self.layout
        scene = context.scene
        video = scene.archviz.video
        col = layout.column()
        col.use_property_split = True
        col.prop(video, "camera")
        if video.camera is None:
            camera = video_camera(context)
            col.label(text=f"Camera: {camera.name}" if camera else "No camera",
                      icon="CAMERA_DATA" if camera else "ERROR")
        col.prop(video, "use_scene_range")
        if video.use_scene_range:
            col.label(text=f"Frames {scene.frame_start}-{scene.frame_end}")
        else:
            sub = col.column(align=True)
            sub.prop(video, "frame_start")
            sub.prop(video, "frame_end")
        col.prop(video, "every")
        col.prop(video, "model")
        heading = col.column(heading="Controls")
        heading.prop(video, "use_depth")
        heading.prop(video, "use_lines")
        col.prop(video, "first_frame")
        if video.first_frame == "FILE":
            col.prop(video, "first_frame_path")
        col.prop(video, "styles")
        col.prop(video, "seeds")
        col.prop(video, "long_side")
        col.prop(video, "steps")
        col.prop(video, "remake")
        layout.operator("archviz.video", icon="SEQUENCE")
        task = Task.current
        if isinstance(task, VideoTask):
            box = layout.column(align=True)
            if task.state == "running":
                box.progress(factor=task.fraction, type="BAR", text=f"Video {task.fraction:.0%}")
                box.operator("archviz.cancel", icon="CANCEL")
            draw_lines(box, task.message, icon="ERROR" if task.state == "failed" else "INFO",
                       width=text_width(context))


classes = (VIEW3D_PT_archviz_video,)
