"""3D View sidebar tab "ArchViz": UI only."""

import bpy

from ..core.passes import PassError, control_resolution
from ..operators.render_controls import IMAGE_PREFIX


class ArchVizPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ArchViz"


class VIEW3D_PT_archviz(ArchVizPanel, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_archviz"
    bl_label = "Control Passes"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        scene = context.scene
        settings = scene.archviz
        col = layout.column()
        col.prop(settings, "camera")
        if settings.camera is None:
            col.label(text=f"Scene camera: {scene.camera.name}" if scene.camera else "No scene camera",
                      icon="CAMERA_DATA" if scene.camera else "ERROR")
        col.prop(settings, "long_side")
        try:
            w, h = control_resolution(scene.render.resolution_x, scene.render.resolution_y, settings.long_side,
                                      (scene.render.pixel_aspect_x, scene.render.pixel_aspect_y))
            col.label(text=f"{w} x {h} px")
        except PassError as exc:
            col.label(text=str(exc), icon="ERROR")
        heading = layout.column(heading="Passes")
        for name in ("use_depth", "use_lines", "use_normal", "use_seg"):
            heading.prop(settings, name)
        layout.prop(settings, "output_dir")
        layout.operator("archviz.render_controls", icon="RENDER_STILL")
        previews = [bpy.data.images.get(IMAGE_PREFIX + n) for n in ("depth", "lines", "normal", "seg")]
        previews = [img for img in previews if img is not None]
        if previews:
            grid = layout.grid_flow(columns=2, even_columns=True)
            for image in previews:
                cell = grid.column()
                cell.template_icon(icon_value=image.preview.icon_id if image.preview else 0, scale=5.0)
                cell.label(text=image.name[len(IMAGE_PREFIX):].title())


class VIEW3D_PT_archviz_depth_lines(ArchVizPanel, bpy.types.Panel):
    bl_label = "Depth and Lines"
    bl_parent_id = "VIEW3D_PT_archviz"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.archviz
        layout.prop(settings, "depth_mode")
        if settings.depth_mode == "MANUAL":
            layout.prop(settings, "depth_near")
            layout.prop(settings, "depth_far")
        layout.prop(settings, "crease_angle")


class VIEW3D_PT_archviz_classes(ArchVizPanel, bpy.types.Panel):
    bl_label = "Segmentation Classes"
    bl_parent_id = "VIEW3D_PT_archviz"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.archviz
        layout.prop(settings, "background_class")
        layout.prop(settings, "fallback_class")
        layout.prop(settings, "class_table")
        obj = context.object
        if obj is not None:
            box = layout.box()
            box.label(text=f"{obj.name}: set the custom property 'archviz_class' to override", icon="INFO")


classes = (VIEW3D_PT_archviz, VIEW3D_PT_archviz_depth_lines, VIEW3D_PT_archviz_classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
