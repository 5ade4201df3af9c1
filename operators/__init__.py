"""Operators (``archviz.*``): thin wrappers that read settings, call capture/core, report."""

import bpy

from . import generate, models, references, render_controls, results, setup, texture, video

_modules = (render_controls, generate, results, setup, models, references, texture, video)
classes = tuple(cls for module in _modules for cls in module.classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
