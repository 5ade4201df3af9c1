"""3D View sidebar tab "ArchViz": UI only. Panels read the scene settings and the state
of ``blender`` (the running task, the results) and name operators by their ids; they
import no operator module. The preferences draw themselves (``blender.preferences``)."""

import bpy

from ..blender.results import CONTROL_IMAGE_PREFIX
from ..blender.ui import draw_lines, text_width
from ..core.passes import PassError, control_resolution
from ..core.sweep import download_fraction, download_text
from . import references, texture, video
from .base import ArchVizPanel


_presets = None  # core.presets.PresetCache, made on the first draw


def style_defaults(name):
    """The style preset ``name`` (its cfg and steps stand where the panel's are 0), or an
    empty one when the presets cannot be read (the Generate button then reports why). The
    panel draws often: the preset files are parsed again only when one of them changes."""
    global _presets
    from ..core.presets import Preset, PresetCache

    if _presets is None:
        _presets = PresetCache()
    presets, errors = _presets.get()
    preset = None if errors else presets.get(name)
    return preset or Preset(name=name or "", prompt="")


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
        previews = [bpy.data.images.get(CONTROL_IMAGE_PREFIX + n) for n in ("depth", "lines", "normal", "seg")]
        previews = [img for img in previews if img is not None]
        if previews:
            grid = layout.grid_flow(columns=2, even_columns=True)
            for image in previews:
                cell = grid.column()
                cell.template_icon(icon_value=layout.icon(image), scale=5.0)  # makes the preview if missing
                cell.label(text=image.name[len(CONTROL_IMAGE_PREFIX):].title())


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
        layout.prop(settings, "line_style")
        layout.prop(settings, "crease_angle")
        layout.prop(settings, "supersample")
        layout.prop(settings, "use_beauty")
        if settings.use_beauty:
            layout.prop(settings, "beauty_engine")
            layout.prop(settings, "beauty_samples")


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


class ARCHVIZ_UL_controls(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        row.prop(item, "type", text="")
        row.prop(item, "scale", text="")
        row.prop(item, "start", text="")
        row.prop(item, "end", text="")


def draw_progress(layout, task, width=90):
    """Progress bar, message and Cancel for the running (or last) generation; the message
    wraps at ``width`` characters."""
    if task is None:
        return
    col = layout.column(align=True)
    if task.state == "running" and task.download:
        col.progress(factor=download_fraction(task.download), type="BAR", text=download_text(task.download))
        col.operator("archviz.cancel", icon="CANCEL")
    elif task.state == "running":
        col.progress(factor=task.fraction, type="BAR",
                     text=f"{task.images_done}/{task.images_total} images, {task.fraction:.0%}")
        col.operator("archviz.cancel", icon="CANCEL")
    draw_lines(col, task.message, icon="ERROR" if task.state == "failed" else "INFO", width=width)
    if task.state == "running" and task.preview:  # the image being made, a few steps behind
        image = bpy.data.images.get("ArchViz Preview")
        if image is not None:
            box = col.box()
            box.label(text=f"{task.preview.get('style')} s{task.preview.get('seed')}: step "
                           f"{task.preview.get('step')}/{task.preview.get('steps')}", icon="IMAGE_DATA")
            box.template_icon(icon_value=box.icon(image), scale=6.0)
    if task.device_warning:
        draw_lines(col.box(), task.device_warning, icon="ERROR", width=width)


class VIEW3D_PT_archviz_generate(ArchVizPanel, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_archviz_generate"
    bl_label = "Generate"

    def draw(self, context):
        from ..blender.tasks import Task

        layout = self.layout
        settings = context.scene.archviz
        layout.prop(settings, "style", text="")  # a row of its own: long preset names are not cut
        layout.prop(settings, "seed")
        layout.operator("archviz.generate", icon="IMAGE_DATA")
        box = layout.box()
        box.label(text="Sweep")
        box.prop(settings, "styles")
        box.prop(settings, "seeds")
        box.prop(settings, "sweep_cameras")
        if settings.sweep_cameras == "COLLECTION":
            box.prop(settings, "camera_collection")
        box.operator("archviz.sweep", icon="RENDERLAYERS")
        box = layout.box()
        box.prop(settings, "use_restyle")
        if settings.use_restyle:
            from ..core.restyle import strength_name

            box.prop(settings, "restyle_strength", slider=True)
            box.label(text=f"{strength_name(settings.restyle_strength).capitalize()}, from the beauty pass")
        box.prop(settings, "edit_text")  # instruction edit (Kontext, Qwen-Image-Edit)
        box.prop(settings, "region_mode")
        if settings.region_mode == "CLASSES":
            box.prop(settings, "region_classes")
        draw_progress(layout, Task.current, width=text_width(context))
        row = layout.row(align=True)
        row.operator("archviz.backend_start", icon="PLAY")
        row.operator("archviz.backend_stop", icon="CANCEL")


class VIEW3D_PT_archviz_units(ArchVizPanel, bpy.types.Panel):
    bl_label = "Control Units"
    bl_parent_id = "VIEW3D_PT_archviz_generate"

    def draw(self, context):
        from ..blender.preferences import preferences
        from ..core.jobs import control_types_for

        layout = self.layout
        settings = context.scene.archviz
        prefs = preferences(context)
        if prefs is not None:  # the model family lives in the preferences; shown here too
            layout.prop(prefs, "model")
            offered = control_types_for(prefs.model)
            unsupported = sorted({u.type for u in settings.units if u.type not in offered})
            if unsupported:
                layout.label(text=f"{prefs.model} has no ControlNet for: {', '.join(unsupported)}", icon="ERROR")
        if not len(settings.units):
            layout.label(text="Default: depth 0.9 + lines 0.6", icon="INFO")
        row = layout.row()
        row.template_list("ARCHVIZ_UL_controls", "", settings, "units", settings, "active_unit", rows=2)
        col = row.column(align=True)
        col.operator("archviz.unit_add", icon="ADD", text="")
        col.operator("archviz.unit_remove", icon="REMOVE", text="")
        layout.operator_menu_enum("archviz.control_preset", "preset", text="Presets")
        if len(settings.units) and settings.active_unit < len(settings.units):
            unit = settings.units[settings.active_unit]
            col = layout.column()
            col.use_property_split = True
            if unit.type == "custom":
                col.prop(unit, "model_path")
            col.prop(unit, "mode")
        col = layout.column()
        col.use_property_split = True
        style = style_defaults(settings.style)
        # 0 means "the style's value": say which value that is instead of showing 0.00
        col.prop(settings, "steps", text="Steps" if settings.steps or style.steps is None
                 else f"Steps (style: {style.steps})")
        col.prop(settings, "cfg", text="CFG" if settings.cfg or style.cfg is None else f"CFG (style: {style.cfg:g})")
        col.prop(settings, "scheduler")
        col.prop(settings, "max_batch")
        col.prop(settings, "fast")
        col.prop(settings, "preview_every")


class VIEW3D_PT_archviz_results(ArchVizPanel, bpy.types.Panel):
    bl_label = "Results"
    bl_parent_id = "VIEW3D_PT_archviz_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from ..blender.results import result_images

        layout = self.layout
        results = result_images()
        if not results:
            layout.label(text="No generated images yet")
            return
        for image in results[-8:]:
            layout.label(text=image.name, icon="IMAGE_DATA")
        layout.operator("archviz.apply_texture", icon="TEXTURE")
        layout.operator("archviz.add_to_compositor", icon="NODE_COMPOSITING")
        from ..blender.upscaling import running

        upscale = running()
        if upscale is not None:
            row = layout.row()
            row.progress(factor=upscale.fraction, type="BAR", text=f"Upscale: {upscale.message}")
            row.operator("archviz.upscale_cancel", text="", icon="CANCEL")
        else:
            row = layout.row(align=True)
            row.operator("archviz.upscale", text="Upscale 2x", icon="FULLSCREEN_ENTER").scale = "2"
            row.operator("archviz.upscale", text="4x").scale = "4"
        layout.operator("archviz.show_region_mask", icon="MOD_MASK")


def draw_status(self, context):
    from ..blender.tasks import Task

    task = Task.current
    if task is not None and task.state == "running" and task.download:
        self.layout.progress(factor=download_fraction(task.download), type="BAR",
                             text="ArchViz " + download_text(task.download))
    elif task is not None and task.state == "running":
        self.layout.progress(factor=task.fraction, type="BAR", text=f"ArchViz {task.images_done}/{task.images_total}")


classes = (VIEW3D_PT_archviz, VIEW3D_PT_archviz_depth_lines, VIEW3D_PT_archviz_classes, ARCHVIZ_UL_controls,
           VIEW3D_PT_archviz_generate, VIEW3D_PT_archviz_units, VIEW3D_PT_archviz_results)
classes += references.classes + texture.classes + video.classes  # the boxes in modules of their own


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.STATUSBAR_HT_header.append(draw_status)


def unregister():
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
