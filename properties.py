"""Scene settings (one PointerProperty: ``Scene.archviz``) and add-on preferences."""

import math

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .core.classes import ADE20K, DEFAULT_BACKGROUND_CLASS, DEFAULT_FALLBACK_CLASS


def _class_items():
    return [(name, name.title(), f"ADE20K class {index}") for name, (index, _) in sorted(ADE20K.items(), key=lambda kv: kv[1][0])]


_CLASS_ITEMS = _class_items()  # Blender needs the enum items kept alive


def _is_camera(_self, obj):
    return obj.type == "CAMERA"


class ARCHVIZ_PG_settings(bpy.types.PropertyGroup):
    camera: PointerProperty(
        name="Camera", type=bpy.types.Object, poll=_is_camera,
        description="Camera to render the control passes from (empty: the scene camera)")
    long_side: IntProperty(
        name="Long Side", default=512, min=64, max=4096, step=8,
        description="Long side of the control images in pixels, a multiple of 8 (512 for SD 1.5, 1024 for SDXL)")
    use_depth: BoolProperty(name="Depth", default=True, description="Inverse depth, near = white")
    use_lines: BoolProperty(name="Lines", default=True, description="Silhouettes, creases and object boundaries")
    use_normal: BoolProperty(name="Normal", default=True, description="Camera-space normals (normalbae coding)")
    use_seg: BoolProperty(name="Segmentation", default=True, description="ADE20K classes per object")
    depth_mode: EnumProperty(
        name="Depth Range",
        items=[("SCENE", "Scene Bounds", "Same range for every camera and frame, from the scene's bounds"),
               ("MANUAL", "Manual", "Fixed near and far distances")],
        default="SCENE")
    depth_near: FloatProperty(name="Near", default=1.0, min=0.001, unit="LENGTH",
                              description="Distance that maps to white")
    depth_far: FloatProperty(name="Far", default=20.0, min=0.002, unit="LENGTH",
                             description="Distance that maps to black")
    crease_angle: FloatProperty(name="Crease Angle", default=math.radians(30.0), min=math.radians(1.0),
                                max=math.radians(179.0), subtype="ANGLE",
                                description="Neighbouring faces turned more than this make a line")
    background_class: EnumProperty(name="Background", items=_CLASS_ITEMS, default=DEFAULT_BACKGROUND_CLASS,
                                   description="Class of pixels with no geometry (the world, seen through windows)")
    fallback_class: EnumProperty(name="Unclassified", items=_CLASS_ITEMS, default=DEFAULT_FALLBACK_CLASS,
                                 description="Class of objects that no property or name keyword classifies")
    class_table: StringProperty(name="Keyword Table", subtype="FILE_PATH", default="",
                                description="JSON file of name keyword -> ADE20K class, tried before the built-in table")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", default="//archviz/",
                               description="Folder for control passes and generated images (// = next to the .blend)")

    def passes(self):
        return tuple(name for name in ("depth", "lines", "normal", "seg") if getattr(self, f"use_{name}"))


classes = (ARCHVIZ_PG_settings,)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.archviz = PointerProperty(type=ARCHVIZ_PG_settings)


def unregister():
    del bpy.types.Scene.archviz
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
