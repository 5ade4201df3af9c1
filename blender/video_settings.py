"""The Video box's settings (``Scene.archviz.video``) and the plan the Video operator reads
from them (the same choices as ``archviz video``'s options)."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from ..core import video as V
from .compat import BLEND_RELATIVE

MODEL_ITEMS = [(f.name, f.label, f"{f.name}: {f.hub_id or 'random weights, for tests'} ({f.licence})")
               for f in V.VIDEO_FAMILY_LIST]


def _is_camera(_self, obj):
    return obj.type == "CAMERA"


class ARCHVIZ_PG_video(bpy.types.PropertyGroup):
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                            description="Camera whose path the video follows (empty: the ArchViz camera, else the "
                                        "scene camera)")
    use_scene_range: BoolProperty(name="Scene Range", default=True,
                                  description="Every frame of the scene's frame range")
    frame_start: IntProperty(name="Start", default=1, description="First scene frame of the clip")
    frame_end: IntProperty(name="End", default=81, description="Last scene frame of the clip")
    every: IntProperty(name="Every", default=1, min=1, soft_max=10, description="Take every N-th frame")
    model: EnumProperty(name="Model", items=MODEL_ITEMS, default="wan",
                        description="Video family (Wan2.1 VACE); tiny-wan is random weights for tests")
    use_depth: BoolProperty(name="Depth", default=True, description="The depth frames in the control video")
    use_lines: BoolProperty(name="Lines", default=True,
                            description="The line frames in the control video (over the depth, in white)")
    first_frame: EnumProperty(name="First Frame", default="NONE",
                              items=[("NONE", "None", "The model makes the first frame too"),
                                     ("BEAUTY", "Beauty", "Start from the first frame's beauty render"),
                                     ("FILE", "Image", "Start from a still, e.g. an archviz sweep image")])
    first_frame_path: StringProperty(options=BLEND_RELATIVE, name="Image", subtype="FILE_PATH", default="",
                                     description="PNG the clip starts from")
    styles: StringProperty(name="Styles", default="modern", description="Comma-separated style presets")
    seeds: StringProperty(name="Seeds", default="0", description="Seeds, e.g. 0-3 or 1,5")
    long_side: IntProperty(name="Long Side", default=0, min=0, max=4096, step=16,
                           description="Long side of the frames in px (0: the model's, 832 for wan)")
    steps: IntProperty(name="Steps", default=0, min=0, max=200, description="Denoising steps (0: the model's)")
    remake: BoolProperty(name="Remake", default=False,
                         description="Make the clips again (the passes are still reused)")

    def controls(self):
        return [name for name in ("depth", "lines") if getattr(self, f"use_{name}")]


def video_camera(context):
    """The camera the Video operator follows, or None."""
    scene = context.scene
    video = scene.archviz.video
    return video.camera or scene.archviz.camera or scene.camera


def read_plan(context, out_root):
    """The run the Video settings ask for (blender.video_task.VideoPlan); VideoError (or
    JobError for the seeds) in one line naming the bad value."""
    from ..core import jobs as J
    from . import video as BV
    from .video_task import VideoPlan

    scene = context.scene
    video = scene.archviz.video
    camera = video_camera(context)
    if camera is None:
        raise V.VideoError("no camera: pick one in the Video box or set the scene camera")
    family = V.video_family(video.model)
    controls = video.controls()
    if not controls:
        raise V.VideoError("controls: tick Depth, Lines or both")
    first, last = scene.frame_start, scene.frame_end
    if not video.use_scene_range:
        first, last = V.parse_frames(f"{video.frame_start}-{video.frame_end}", first, last)
    frames = V.frame_numbers(first, last, video.every)
    styles = [s.strip() for s in video.styles.split(",") if s.strip()]
    if not styles:
        raise V.VideoError("styles: give at least one preset name")
    seeds = J.parse_seeds(video.seeds)
    first_frame = {"NONE": "", "BEAUTY": "beauty"}.get(video.first_frame)
    if first_frame is None:
        first_frame = bpy.path.abspath(video.first_frame_path) if video.first_frame_path else ""
        if not os.path.isfile(first_frame):
            raise V.VideoError(f"first frame {video.first_frame_path!r}: no such file (give a PNG, or Beauty)")
    V.check_window(family.window, min(family.overlap, family.window - 1))
    return VideoPlan(camera=camera.name, family=family.name, styles=styles, seeds=seeds, controls=controls,
                     frames=frames, out_dir=os.path.join(out_root, "video", bpy.path.clean_name(camera.name)),
                     long_side=video.long_side or family.long_side,
                     fps=scene.render.fps / (scene.render.fps_base or 1.0), first_frame=first_frame,
                     steps=video.steps or None, remake=video.remake,
                     scene_file=bpy.data.filepath, still=not BV.camera_animated(scene, camera))


classes = (ARCHVIZ_PG_video,)
