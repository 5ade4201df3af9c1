"""Blender-side capture: renders control passes from a scene camera (imports bpy)."""
