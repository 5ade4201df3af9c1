"""What several operators share: where outputs go."""

import os
import tempfile

import bpy


def output_root(settings, override=""):
    """Absolute output folder. ``//`` paths are next to the .blend; an unsaved file has no
    folder, so they go to the temporary folder and the caller reports where."""
    path = override or settings.output_dir or "//archviz/"
    if path.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), "archviz", path[2:]), True
    return os.path.abspath(bpy.path.abspath(path)), False
