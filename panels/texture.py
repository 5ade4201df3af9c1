"""The **Texture Scene** box: texture the scene from several cameras, its progress per
view and coverage, and the walkthrough. UI only: it names operators by their ids."""

import bpy

from ..blender.ui import draw_lines
from .base import ArchVizPanel


class VIEW3D_PT_archviz_texture(ArchVizPanel, bpy.types.Panel):
    bl_label = "Texture Scene"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from ..blender.texturing import ChildRun

        layout = self.layout
        props = context.scene.archviz.texture
        col = layout.column()
        col.use_property_split = True
        for name in ("cameras", "style", "seed", "long_side", "steps", "texture_size", "output_dir"):
            col.prop(props, name)
        run = ChildRun.current
        if run is not None and run.state == "running":
            row = layout.row()
            row.progress(factor=run.fraction, type="BAR", text=run.message[:60])
            row.operator("archviz.texture_cancel", text="", icon="CANCEL")
        else:
            layout.operator("archviz.texture_scene", icon="TEXTURE")
        if props.status:
            layout.label(text=props.status[:80])
        if props.report:
            box = layout.box()
            box.label(text="Coverage of the visible surface", icon="INFO")
            for line in props.report.splitlines():
                draw_lines(box, line)
        walk = layout.box()
        walk.label(text="Walkthrough", icon="RENDER_ANIMATION")
        col = walk.column()
        col.use_property_split = True
        for name in ("walk_camera", "walk_frames", "walk_engine", "walk_samples"):
            col.prop(props, name)
        walk.operator("archviz.walkthrough", icon="SEQUENCE")


classes = (VIEW3D_PT_archviz_texture,)
