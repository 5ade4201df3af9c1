"""Operators (``archviz.*``): thin wrappers that read settings, call capture/core, report."""

import bpy

from . import generate, models, render_controls, results, setup

_modules = (render_controls, generate, results, setup, models)
classes = tuple(cls for module in _modules for cls in module.classes)
from .video import classes as _video_classes  # noqa: E402 - the Video operator (operators/video.py)
classes = (*classes, *_video_classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
