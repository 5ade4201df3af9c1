"""Small drawing and redraw helpers shared by the panels, the preferences and the
timers (bpy only)."""

import textwrap

import bpy


def draw_lines(layout, text, icon="NONE", width=90):
    """A long message as several labels (Blender's labels do not wrap), set tight in one
    aligned column so a wrapped message reads as one paragraph."""
    col = layout.column(align=True)
    for i, line in enumerate(textwrap.wrap(text, width) or [""]):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")


def text_width(context, fallback=40):
    """How many characters of label text fit across the region being drawn (the sidebar
    is narrow: a long status line would be cut in the middle)."""
    region = getattr(context, "region", None)
    if region is None or not region.width:
        return fallback
    scale = context.preferences.system.ui_scale or 1.0
    return max(20, int(region.width / (7.0 * scale)) - 4)


def redraw(area_types):
    """Tag every area of these types in every window for a redraw (nothing without a window)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type in area_types:
                area.tag_redraw()
