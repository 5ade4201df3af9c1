"""Small drawing and redraw helpers shared by the panels, the preferences and the
timers (bpy only)."""

import textwrap

import bpy


def draw_lines(layout, text, icon="NONE", width=90):
    """A long message as several labels (Blender's labels do not wrap)."""
    for i, line in enumerate(textwrap.wrap(text, width) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


def redraw(area_types):
    """Tag every area of these types in every window for a redraw (nothing without a window)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type in area_types:
                area.tag_redraw()
