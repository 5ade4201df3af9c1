"""Scene settings (one PointerProperty: ``Scene.archviz``), registered with the add-on
preferences (``preferences``), and what the operators read from them: capture options,
control units, the output folder."""

import math
import os
import tempfile

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..core.classes import ADE20K, DEFAULT_BACKGROUND_CLASS, DEFAULT_FALLBACK_CLASS
from .references import ARCHVIZ_PG_reference
from ..core.sweep import UNIT_PRESETS, ControlUnit
from .capture.render import CaptureOptions
from .compat import BLEND_RELATIVE
from .preferences import ARCHVIZ_AP_preferences, preferences  # noqa: F401 - registered here; preferences() for callers
from .texturing import ARCHVIZ_PG_texture
from .video_settings import ARCHVIZ_PG_video


def _class_items():
    return [(name, name.title(), f"ADE20K class {index}") for name, (index, _) in sorted(ADE20K.items(), key=lambda kv: kv[1][0])]


_CLASS_ITEMS = _class_items()  # Blender needs the enum items kept alive
# The fallback may also be a facing rule of core/class_table.toml.
_FALLBACK_ITEMS = _CLASS_ITEMS + [("surface", "Surface by Facing",
                                   "Floor where it faces up, ceiling where it faces down, wall otherwise")]


def _is_camera(_self, obj):
    return obj.type == "CAMERA"


_PRESET_ITEMS = []


def _preset_items(_self, _context):
    """Style presets for the enum: built-in and user presets, read from their TOML files."""
    from ..core.presets import PresetError, load_presets

    try:
        presets = load_presets()
    except PresetError as exc:
        print(f"ArchViz: {exc}")
        presets = {}
    _PRESET_ITEMS[:] = [(name, p.label or name, p.description or p.prompt[:80]) for name, p in sorted(presets.items())]
    return _PRESET_ITEMS or [("modern", "modern", "")]


CONTROL_TYPE_ITEMS = [("depth", "Depth", "Inverse depth pass"), ("lines", "Lines", "Line pass"),
                      ("normal", "Normal", "Normal pass"), ("seg", "Segmentation", "ADE20K segmentation pass"),
                      ("custom", "Custom", "A ControlNet folder made by archviz train-controlnet (reads the pass "
                                           "its card names)")]
MODE_ITEMS = [("balanced", "Balanced", "Control and prompt weigh the same"),
              ("prompt", "Prompt More Important", "Control residuals fade toward the deep layers"),
              ("controlnet", "ControlNet More Important", "Control applies to the conditional half of guidance only")]


class ARCHVIZ_PG_control_unit(bpy.types.PropertyGroup):
    type: EnumProperty(name="Type", items=CONTROL_TYPE_ITEMS, default="depth")
    scale: FloatProperty(name="Scale", default=0.9, min=0.0, max=2.0, description="Conditioning scale of this unit")
    start: FloatProperty(name="Start", default=0.0, min=0.0, max=1.0, subtype="FACTOR",
                         description="Fraction of the steps where this unit starts")
    end: FloatProperty(name="End", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
                       description="Fraction of the steps where this unit stops")
    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="balanced")
    model_path: StringProperty(options=BLEND_RELATIVE, name="ControlNet", subtype="DIR_PATH",
                               description="Folder of a ControlNet trained with archviz train-controlnet (Custom units)")


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
        items=[("VIEW", "Fit View", "Robust percentiles of this view's inverse depth (what depth models were trained on)"),
               ("SEQUENCE", "Sequence", "One range for this camera over the scene's frame range (no flicker)"),
               ("SCENE", "Scene Bounds", "Same range for every camera and frame, from the scene's bounds"),
               ("MANUAL", "Manual", "Fixed near and far distances")],
        default="VIEW")
    depth_near: FloatProperty(name="Near", default=1.0, min=0.001, unit="LENGTH",
                              description="Distance that maps to white")
    depth_far: FloatProperty(name="Far", default=20.0, min=0.002, unit="LENGTH",
                             description="Distance that maps to black")
    line_style: EnumProperty(
        name="Line Style", default="AUTO",
        items=[("AUTO", "From Model", "Each control unit gets the style its ControlNet was trained on "
                                      "(lines.png: lineart)"),
               ("CANNY", "Canny", "Binary 1 px edges"),
               ("LINEART", "Lineart", "Anti-aliased strokes, width scales with resolution"),
               ("MLSD", "MLSD", "Straight segments only"),
               ("SOFTEDGE", "Soft Edge", "Soft, wider edges (HED/PiDiNet-like)")],
        description="Override the line style of every line control unit")
    supersample: IntProperty(name="Supersample", default=2, min=1, max=4,
                             description="Render the passes this many times finer so thin rails stay continuous "
                                         "(time grows with its square)")
    use_beauty: BoolProperty(name="Beauty Pass", default=False,
                             description="Also render beauty.png with the scene's own materials and lights")
    beauty_engine: EnumProperty(name="Beauty Engine", default="CYCLES",
                                items=[("CYCLES", "Cycles", ""), ("EEVEE", "EEVEE", "")])
    beauty_samples: IntProperty(name="Beauty Samples", default=16, min=1, max=4096)
    use_restyle: BoolProperty(name="Restyle", default=False,
                              description="Start from the scene's own render (the beauty pass) instead of noise; "
                                          "the control units still hold the geometry")
    restyle_strength: FloatProperty(name="Precise <-> Creative", default=0.6, min=0.0, max=1.0, subtype="FACTOR",
                                    description="0.25 precise: materials and light change a little; 0.45 faithful; "
                                                "0.6 balanced; 0.8 creative: only the composition is kept; "
                                                "1 free: the render is all but ignored")
    edit_text: StringProperty(name="Edit", default="",
                              description="Instruction edit of the beauty pass, e.g. 'make it a snowy winter "
                                          "evening' (model kontext or qwen-edit; no control units)")
    region_mode: EnumProperty(name="Region", default="NONE",
                              items=[("NONE", "Whole Image", "Generate the whole image"),
                                     ("SELECTED", "Selected Objects", "Regenerate only the selected objects' pixels "
                                                                      "of the beauty pass"),
                                     ("CLASSES", "Classes", "Regenerate only these ADE20K classes")])
    region_classes: StringProperty(name="Classes", default="floor",
                                   description="Comma-separated ADE20K classes, e.g. floor,rug")
    crease_angle: FloatProperty(name="Crease Angle", default=math.radians(30.0), min=math.radians(1.0),
                                max=math.radians(179.0), subtype="ANGLE",
                                description="Neighbouring faces turned more than this make a line")
    background_class: EnumProperty(name="Background", items=_CLASS_ITEMS, default=DEFAULT_BACKGROUND_CLASS,
                                   description="Class of pixels with no geometry (the world, seen through windows)")
    fallback_class: EnumProperty(name="Unclassified", items=_FALLBACK_ITEMS, default=DEFAULT_FALLBACK_CLASS,
                                 description="Class of objects that no property, IFC class or name keyword classifies")
    class_table: StringProperty(options=BLEND_RELATIVE, name="Keyword Table", subtype="FILE_PATH", default="",
                                description="Class table (JSON keyword -> class, or TOML/JSON laid out like core/class_table.toml), "
                                            "tried before the built-in table")
    output_dir: StringProperty(options=BLEND_RELATIVE, name="Output", subtype="DIR_PATH", default="//archviz/",
                               description="Folder for control passes and generated images (// = next to the .blend)")

    # Generation
    style: EnumProperty(name="Style", items=_preset_items, description="Style preset for Generate")
    styles: StringProperty(name="Styles", default="modern,industrial",
                           description="Comma-separated style presets for Sweep")
    seed: IntProperty(name="Seed", default=0, min=0, description="Seed for Generate")
    seeds: StringProperty(name="Seeds", default="0-3", description="Seeds for Sweep, e.g. 0-7 or 1,5,9")
    sweep_cameras: EnumProperty(
        name="Cameras", default="SCENE",
        items=[("SCENE", "Scene Camera", "The scene camera"), ("SELECTED", "Selected", "The selected cameras"),
               ("COLLECTION", "Collection", "Every camera in a collection"), ("ALL", "All", "Every camera in the scene")])
    camera_collection: PointerProperty(name="Camera Collection", type=bpy.types.Collection)
    texture: PointerProperty(type=ARCHVIZ_PG_texture)  # the Texture Scene box (blender/texturing.py)
    units: CollectionProperty(type=ARCHVIZ_PG_control_unit)
    video: PointerProperty(type=ARCHVIZ_PG_video, name="Video")  # the Video box (blender/video_settings.py)
    active_unit: IntProperty(name="Active Unit", default=0)
    references: CollectionProperty(type=ARCHVIZ_PG_reference)  # reference images (blender/references.py)
    active_reference: IntProperty(name="Active Reference", default=0)
    steps: IntProperty(name="Steps", default=0, min=0, max=500, description="Denoising steps (0: the style's)")
    cfg: FloatProperty(name="CFG", default=0.0, min=0.0, max=50.0, description="Guidance scale (0: the style's)")
    fast: BoolProperty(name="Fast Mode", default=False,
                       description="The model family's few-step variant for quick looks (SD 1.5/SDXL: LCM-LoRA, "
                                   "FLUX.1: FLUX.1-schnell). Changes the images; labelled in their parameters")
    preview_every: IntProperty(name="Preview Every", default=4, min=0, max=500,
                               description="Show a preview of the image being made every N denoising steps "
                                           "(0: none). Never changes the images")
    max_batch: IntProperty(name="Batch Limit", default=0, min=0, max=64,
                           description="Most images per UNet batch (0: as many as memory allows)")
    scheduler: EnumProperty(name="Scheduler", default="PRESET",
                            items=[("PRESET", "From Style", ""), ("unipc", "UniPC", ""),
                                   ("dpmpp_2m_karras", "DPM++ 2M Karras", ""), ("euler_a", "Euler a", ""),
                                   ("ddim", "DDIM", "")])

    def passes(self):
        return tuple(name for name in ("depth", "lines", "normal", "seg") if getattr(self, f"use_{name}"))


# ---------------------------------------------------------------- reading the settings

def capture_options(settings, beauty=None):
    """The CaptureOptions the settings give (``beauty``: instead of the Beauty Pass setting)."""
    manual = settings.depth_mode == "MANUAL"
    return CaptureOptions(
        camera=settings.camera.name if settings.camera else "",
        long_side=settings.long_side,
        passes=settings.passes(),
        depth_range=settings.depth_mode.lower(),
        near=settings.depth_near if manual else 0.0,
        far=settings.depth_far if manual else 0.0,
        line_style=settings.line_style.lower(),
        supersample=settings.supersample,
        beauty=settings.use_beauty if beauty is None else beauty,
        beauty_engine=settings.beauty_engine,
        beauty_samples=settings.beauty_samples,
        crease_angle=math.degrees(settings.crease_angle),
        background_class=settings.background_class,
        fallback_class=settings.fallback_class,
        class_table=bpy.path.abspath(settings.class_table) if settings.class_table else "",
    )


def units_of(settings):
    """The sweep's control units; a Custom unit reads its ControlNet folder's card (JobError
    when the folder is not one made by archviz train-controlnet)."""
    if len(settings.units):
        return [ControlUnit.custom(bpy.path.abspath(u.model_path) if u.model_path else "", u.scale, u.start, u.end,
                                   u.mode) if u.type == "custom"
                else ControlUnit(u.type, u.scale, u.start, u.end, u.mode) for u in settings.units]
    return list(UNIT_PRESETS["depth_lines"])


def output_root(settings, override=""):
    """Absolute output folder. ``//`` paths are next to the .blend; an unsaved file has no
    folder, so they go to the temporary folder and the caller reports where."""
    path = override or settings.output_dir or "//archviz/"
    if path.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), "archviz", path[2:]), True
    return os.path.abspath(bpy.path.abspath(path)), False


classes = (ARCHVIZ_PG_texture, ARCHVIZ_PG_video, ARCHVIZ_PG_control_unit, ARCHVIZ_PG_reference, ARCHVIZ_PG_settings,
           ARCHVIZ_AP_preferences)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.archviz = PointerProperty(type=ARCHVIZ_PG_settings)


def unregister():
    del bpy.types.Scene.archviz
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
