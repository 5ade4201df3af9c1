"""Video: a walkthrough clip from the camera path (``archviz video`` from the panel).

Thin: it reads the Video settings (blender/video_settings.py), hands the run to the task
runner of Generate and Sweep (blender/video_task.py through ``blender.tasks``: a timer drain
in Blender with a window, synchronous in ``blender -b``), lets Esc or Cancel stop it, and
reports in one line. The MP4 lands in the sequencer and as a movie clip.
"""

import bpy

from ..blender import tasks
from ..blender.backend import BackendSettings
from ..blender.properties import output_root
from ..blender.video import still_camera_note
from ..core import video as V
from .generate import _GenerateBase


class ARCHVIZ_OT_video(_GenerateBase, bpy.types.Operator):
    """Make a walkthrough video along the camera path: every frame's passes under one depth range, Wan VACE over them, the MP4 in the sequencer"""

    bl_idname = "archviz.video"
    bl_label = "Make Video"

    @classmethod
    def poll(cls, context):
        from ..blender.video_settings import video_camera

        if tasks.running():
            cls.poll_message_set("A generation is already running (Esc or Cancel stops it)")
            return False
        if video_camera(context) is None:
            cls.poll_message_set("No camera: pick one in the Video box or set the scene camera")
            return False
        if not context.scene.archviz.video.controls():
            cls.poll_message_set("No control: tick Depth, Lines or both in the Video box")
            return False
        return True

    def execute(self, context):
        from ..blender.video_settings import read_plan
        from ..blender.video_task import VideoTask
        from ..core.jobs import JobError

        root, unsaved = output_root(context.scene.archviz)
        try:
            plan = read_plan(context, root)
        except (V.VideoError, JobError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if unsaved:
            self.report({"WARNING"}, f"The .blend is not saved: the video goes to {plan.out_dir}")
        if plan.still:
            self.report({"INFO"}, "Note: " + still_camera_note(plan.camera))
        task = VideoTask(context.scene.name, plan, BackendSettings(context))
        with_window = not bpy.app.background and context.window is not None
        tasks.start(task, with_timer=with_window)
        if with_window:
            context.window_manager.modal_handler_add(self)
            return {"RUNNING_MODAL"}
        tasks.run_until_done(task)
        return self._finish(task)


classes = (ARCHVIZ_OT_video,)
