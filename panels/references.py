"""The References list under Generate: images from disk or datablocks, each with a scale."""

import bpy
from .base import ArchVizPanel



class ARCHVIZ_UL_references(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        row.label(text=item.label, icon="IMAGE_DATA" if item.source == "IMAGE" else "FILE_IMAGE")
        row.prop(item, "scale", text="")


class VIEW3D_PT_archviz_references(ArchVizPanel, bpy.types.Panel):
    bl_label = "References"
    bl_parent_id = "VIEW3D_PT_archviz_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from ..core.references import MECHANISMS
        from ..core.jobs import FAMILY_ALIASES, FAMILY_ARCH
        from ..blender.preferences import preferences

        layout = self.layout
        settings = context.scene.archviz
        prefs = preferences(context)
        if prefs is not None and len(settings.references):
            arch = FAMILY_ARCH.get(FAMILY_ALIASES.get(prefs.model, prefs.model))
            mech = MECHANISMS.get(arch)
            layout.label(text=f"{prefs.model}: {mech.label}" if mech else f"{prefs.model} takes no reference images",
                         icon="INFO" if mech else "ERROR")
        row = layout.row()
        row.template_list("ARCHVIZ_UL_references", "", settings, "references", settings, "active_reference", rows=2)
        col = row.column(align=True)
        col.operator("archviz.reference_add", icon="ADD", text="")
        col.operator("archviz.reference_remove", icon="REMOVE", text="")
        if len(settings.references) and settings.active_reference < len(settings.references):
            ref = settings.references[settings.active_reference]
            col = layout.column()
            col.use_property_split = True
            col.prop(ref, "source")
            col.prop(ref, "image" if ref.source == "IMAGE" else "path")
            col.prop(ref, "scale")


classes = (ARCHVIZ_UL_references, VIEW3D_PT_archviz_references)
