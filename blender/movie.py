"""Movies on the Blender side: PNG frames encoded into an MP4 by Blender's own FFmpeg, and an
MP4 shown in the scene as a sequencer strip and a movie clip. Walkthroughs (``archviz
walkthrough``) and generated videos (``archviz video``) both end here, so a clip looks and
lands the same whichever route made it.

Encoding uses a throw-away scene whose sequencer holds the frames as one image strip; the
render writes H.264 in an MP4 through ``RenderSettings.ffmpeg``. No frame is changed: the
scene's view transform is Standard, so what was in the PNG is what is in the video (up to
the codec's loss)."""

import os

import bpy

from ..core.png import temp_name
from . import compat

_ENCODE_SCENE = "ArchViz Encode"


class MovieError(ValueError):
    """A movie that cannot be made or shown; the message names the bad value."""


def encode_frames(frames, mp4_path, fps):
    """Write the PNG files ``frames`` (in order, all in one folder, all one size) as the
    H.264 MP4 ``mp4_path`` at ``fps`` frames per second. The file appears whole or not at
    all (written beside and renamed). Returns ``mp4_path``."""
    frames = [os.path.abspath(f) for f in frames]
    if not frames:
        raise MovieError("no frames to encode")
    folders = {os.path.dirname(f) for f in frames}
    if len(folders) != 1:
        raise MovieError(f"frames must share one folder, got {len(folders)}: {sorted(folders)[:2]}")
    missing = [f for f in frames if not os.path.isfile(f)]
    if missing:
        raise MovieError(f"frame not found: {missing[0]}")
    if not (isinstance(fps, (int, float)) and 0 < fps <= 240):
        raise MovieError(f"fps must be between 0 and 240, got {fps!r}")
    mp4_path = os.path.abspath(mp4_path)
    os.makedirs(os.path.dirname(mp4_path), exist_ok=True)
    first = bpy.data.images.load(frames[0], check_existing=False)
    try:
        width, height = first.size
    finally:
        bpy.data.images.remove(first)
    scene = bpy.data.scenes.new(_ENCODE_SCENE)
    try:
        _movie_scene(scene, frames, width, height, fps)
        scene.render.filepath = temp_name(mp4_path)  # unique: two encodes into one folder never meet
        written = scene.render.frame_path(frame=scene.frame_start)
        window_scene = _render_animation(scene)
        if not os.path.isfile(written):
            raise MovieError(f"Blender wrote no movie at {written} (window scene {window_scene})")
        os.replace(written, mp4_path)
    finally:
        bpy.data.scenes.remove(scene)
    return mp4_path


def _movie_scene(scene, frames, width, height, fps):
    """Set ``scene`` up to render ``frames`` as a movie: an image strip per frame sequence,
    an even-sized H.264 output (yuv420 needs even sides), Standard colour."""
    render = scene.render
    render.resolution_x = width - width % 2 or 2
    render.resolution_y = height - height % 2 or 2
    render.resolution_percentage = 100
    render.fps, render.fps_base = _fps_pair(fps)
    render.use_sequencer = True
    render.use_compositing = False
    for attr, value in compat.output_format(render.image_settings, "VIDEO"):
        setattr(render.image_settings, attr, value)
    render.ffmpeg.format = "MPEG4"
    render.ffmpeg.codec = "H264"
    render.ffmpeg.constant_rate_factor = "HIGH"
    render.ffmpeg.audio_codec = "NONE"
    render.use_file_extension = True
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.frame_start = 1
    scene.frame_end = len(frames)
    editor = scene.sequence_editor_create()
    strip = compat.sequencer_strips(editor).new_image("frames", frames[0], 1, 1)
    for path in frames[1:]:
        strip.elements.append(os.path.basename(path))


def _fps_pair(fps):
    """(fps, fps_base) for RenderSettings: whole numbers as they are, others as n / 1.001
    (23.976, 29.97) or over a base of 1000."""
    if float(fps).is_integer():
        return int(fps), 1.0
    ntsc = round(fps * 1.001)
    if abs(ntsc / 1.001 - fps) < 1e-3:
        return ntsc, 1.001
    return round(fps * 1000), 1000.0


def _render_animation(scene):
    """Render ``scene``'s animation (its sequencer) with the window showing it, then put the
    window's scene back. Returns the name of the scene that was shown before."""
    window = bpy.context.window
    before = window.scene if window else None
    if window:
        window.scene = scene
    try:
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(animation=True, scene=scene.name)
    finally:
        if window and before:
            window.scene = before
    return before.name if before else None


def show_movie(scene, mp4_path, name):
    """Put the MP4 ``mp4_path`` in ``scene``'s sequencer as the movie strip ``name`` (one
    channel above the strips there, from the scene's first frame; a strip of that name from
    an earlier run is replaced) and load it as a movie clip. Returns (strip, clip)."""
    if not os.path.isfile(mp4_path):
        raise MovieError(f"movie not found: {mp4_path}")
    editor = scene.sequence_editor_create()
    strips = compat.sequencer_strips(editor)
    old = strips.get(name)
    if old is not None:
        strips.remove(old)
    channel = 1 + max((s.channel for s in strips), default=0)
    strip = strips.new_movie(name, mp4_path, channel, scene.frame_start)
    clip = bpy.data.movieclips.load(mp4_path, check_existing=True)
    clip.name = name
    return strip, clip
