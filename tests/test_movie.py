"""blender/movie.py in the project venv's Blender: PNG frames to an MP4 through Blender's
FFmpeg, the MP4 in the sequencer and as a movie clip, bad input refused in one line. The
same check runs in every Blender of the matrix (tests/blenders, check ``movie``)."""

import pytest

bpy = pytest.importorskip("bpy")

from blender_support import fresh_scene, movie_roundtrip  # noqa: E402


def test_frames_to_mp4_and_into_the_sequencer(tmp_path):
    from archviz_controlnet.blender import movie

    fresh_scene()
    movie_roundtrip(movie, str(tmp_path))
