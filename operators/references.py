"""Add and remove reference images in the panel's References list (blender/references.py)."""

import bpy


class ARCHVIZ_OT_reference_add(bpy.types.Operator):
    """Add a reference image (a material, a mood board) to steer the look"""

    bl_idname = "archviz.reference_add"
    bl_label = "Add Reference"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.archviz
        settings.references.add()
        settings.active_reference = len(settings.references) - 1
        return {"FINISHED"}


class ARCHVIZ_OT_reference_remove(bpy.types.Operator):
    """Remove the selected reference image"""

    bl_idname = "archviz.reference_remove"
    bl_label = "Remove Reference"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if not len(context.scene.archviz.references):
            cls.poll_message_set("No reference image to remove")
            return False
        return True

    def execute(self, context):
        settings = context.scene.archviz
        settings.references.remove(settings.active_reference)
        settings.active_reference = max(0, min(settings.active_reference, len(settings.references) - 1))
        return {"FINISHED"}


classes = (ARCHVIZ_OT_reference_add, ARCHVIZ_OT_reference_remove)
