"""What every panel of the ArchViz sidebar tab shares (a module of its own, so the panels of
panels/__init__.py and the boxes in their own modules import it without an import circle)."""


class ArchVizPanel:
    """Mixed into each ``bpy.types.Panel`` of the add-on: the 3D View's sidebar, tab ArchViz."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ArchViz"
