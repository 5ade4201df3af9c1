"""ArchViz ControlNet: exact control passes from the scene camera and multi-ControlNet
style sweeps for architectural visualization.

The repository root is both the Blender extension and the Python package
``archviz_controlnet``. Nothing heavy is imported here: Blender modules load in
``register()``, so ``archviz serve`` (the backend) can import this package without bpy.
"""

__version__ = "0.1.0"


def _submodules():
    from . import operators, panels
    from .blender import properties

    return (properties, operators, panels)


def register():
    for module in _submodules():
        module.register()


def unregister():
    for module in reversed(_submodules()):
        module.unregister()
