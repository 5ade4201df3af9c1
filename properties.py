"""Scene settings (one PointerProperty: ``Scene.archviz``) and add-on preferences."""

import math

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .core.classes import ADE20K, DEFAULT_BACKGROUND_CLASS, DEFAULT_FALLBACK_CLASS


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
    from .core.presets import PresetError, load_presets

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
    model_path: StringProperty(name="ControlNet", subtype="DIR_PATH",
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
    class_table: StringProperty(name="Keyword Table", subtype="FILE_PATH", default="",
                                description="Class table (JSON keyword -> class, or TOML/JSON laid out like core/class_table.toml), "
                                            "tried before the built-in table")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", default="//archviz/",
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
    units: CollectionProperty(type=ARCHVIZ_PG_control_unit)
    active_unit: IntProperty(name="Active Unit", default=0)
    steps: IntProperty(name="Steps", default=0, min=0, max=500, description="Denoising steps (0: the style's)")
    cfg: FloatProperty(name="CFG", default=0.0, min=0.0, max=50.0, description="Guidance scale (0: the style's)")
    max_batch: IntProperty(name="Batch Limit", default=0, min=0, max=64,
                           description="Most images per UNet batch (0: as many as memory allows)")
    scheduler: EnumProperty(name="Scheduler", default="PRESET",
                            items=[("PRESET", "From Style", ""), ("unipc", "UniPC", ""),
                                   ("dpmpp_2m_karras", "DPM++ 2M Karras", ""), ("euler_a", "Euler a", ""),
                                   ("ddim", "DDIM", "")])

    def passes(self):
        return tuple(name for name in ("depth", "lines", "normal", "seg") if getattr(self, f"use_{name}"))


def _addon_package():
    return __package__


class ARCHVIZ_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_mode: EnumProperty(
        name="Backend", default="LOCAL",
        items=[("LOCAL", "Local", "Start a backend process with a local Python interpreter that has torch"),
               ("REMOTE", "Remote", "Use a backend server at a URL (a GPU box shared by several seats)")])
    python: StringProperty(name="Python", subtype="FILE_PATH", default="",
                           description="Interpreter with torch and diffusers (empty: the venv made by Set up backend)")
    venv_dir: StringProperty(name="Backend Venv", subtype="DIR_PATH", default="",
                             description="Where Set up backend creates the venv (empty: the user data folder shared "
                                         "by every Blender version, so it survives an upgrade)")
    pip_args: StringProperty(name="Extra pip Arguments", default="",
                             description="Added to pip install by Set up backend (e.g. --index-url of a mirror)")
    torch_index_url: StringProperty(name="Torch Index URL", default="",
                                    description="Where Set up Backend gets torch (empty: chosen for this machine: "
                                                "the PyTorch CUDA index the NVIDIA driver supports, the registry on "
                                                "Apple Silicon, else the CPU index)")
    url: StringProperty(name="URL", default="http://127.0.0.1:7860", description="Remote backend URL")
    token: StringProperty(name="Token", subtype="PASSWORD", default="", description="Remote backend access token")
    device: EnumProperty(name="Device", default="auto",
                         items=[("auto", "Auto", "CUDA when torch sees an NVIDIA GPU, then MPS (Apple Silicon), "
                                                 "then the CPU"),
                                ("cuda", "CUDA", ""), ("mps", "MPS", "Apple Silicon GPU"), ("cpu", "CPU", "")])
    model: EnumProperty(name="Model", default="sd15",
                        items=[("sd15", "SD 1.5", ""), ("sdxl", "SDXL", ""),
                               ("flux", "FLUX.1-dev", "Gated, non-commercial licence: accept it on the hub and set "
                                                      "the Hugging Face token. Depth and lines units, 1024 px"),
                               ("tiny", "Tiny (offline test)", "Random weights: noise that proves the plumbing"),
                               ("tiny-sdxl", "Tiny SDXL (offline test)", ""),
                               ("tiny-flux", "Tiny FLUX (offline test)", "")])
    model_path: StringProperty(name="Base Model Override", subtype="DIR_PATH", default="",
                               description="Local folder or file used instead of the family's base model")
    output_dir: StringProperty(name="Default Output", subtype="DIR_PATH", default="",
                               description="Used when a scene's output folder is empty")
    hf_cache: StringProperty(name="HF Cache", subtype="DIR_PATH", default="",
                             description="Hugging Face cache folder for the backend (HF_HOME)")
    ray_address: StringProperty(name="Ray", default="",
                                description="Spread sweeps over Ray actors: 'local', 'auto' or ray://host:port "
                                            "(empty: one local engine)")
    offline: BoolProperty(name="Offline", default=False, description="Never reach the Hugging Face hub (HF_HUB_OFFLINE)")
    hf_token: StringProperty(name="Hugging Face Token", subtype="PASSWORD", default="",
                             description="Access token for gated models (accept the licence on the model's page "
                                         "first); passed to the backend as HF_TOKEN, never logged")

    def draw(self, context):
        from .panels import draw_preferences

        draw_preferences(self, context, self.layout)


def preferences(context=None):
    """The add-on preferences, or None when the add-on is used without being enabled in
    Blender's preferences (e.g. registered by hand in a bpy-module script)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


classes = (ARCHVIZ_PG_control_unit, ARCHVIZ_PG_settings, ARCHVIZ_AP_preferences)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.archviz = PointerProperty(type=ARCHVIZ_PG_settings)


def unregister():
    del bpy.types.Scene.archviz
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
