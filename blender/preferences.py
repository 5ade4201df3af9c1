"""The add-on preferences (where the backend runs, models, cache, token) and their
drawing: Set up Backend, Doctor and the Models box show the runs of ``runs``."""

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..core import families
from ..core.sweep import download_fraction
from . import compat, runs
from .ui import draw_lines

# The add-on's own package (``archviz_controlnet``, or ``bl_ext.<repo>.archviz_controlnet``
# when installed as an extension): the parent of this one. Preferences are keyed by it.
ADDON_PACKAGE = __package__.rpartition(".")[0]


class ARCHVIZ_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

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
    model: EnumProperty(name="Model", default="sd15", items=families.menu_items())  # core/families.py
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
        draw_preferences(self, context, self.layout)


def preferences(context=None):
    """The add-on preferences, or None when the add-on is used without being enabled in
    Blender's preferences (e.g. registered by hand in a bpy-module script)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon else None


def offline_reason(context):
    """Why the add-on may not download now ('' when it may)."""
    prefs = preferences(context)
    if prefs is not None and prefs.offline:
        return "The add-on's Offline preference is on"
    if not compat.online_access():
        return "Blender's Allow Online Access is off (Preferences > System > Network)"
    return ""


def draw_preferences(prefs, context, layout):
    layout.prop(prefs, "backend_mode", expand=True)
    if prefs.backend_mode == "LOCAL":
        layout.prop(prefs, "python")
        layout.prop(prefs, "venv_dir")
        layout.prop(prefs, "pip_args")
        row = layout.row()
        row.operator("archviz.setup_backend", icon="IMPORT")
        layout.prop(prefs, "torch_index_url")
        task = runs.setup
        if task is not None:
            icon = {"failed": "ERROR", "done": "CHECKMARK"}.get(task.state, "TIME")
            draw_lines(layout, task.message, icon=icon)
            if task.warning:  # a GPU this torch will not use, and why
                draw_lines(layout.box(), task.warning, icon="ERROR")
        layout.prop(prefs, "device")
        layout.prop(prefs, "ray_address")
    else:
        layout.prop(prefs, "url")
        layout.prop(prefs, "token")
    layout.prop(prefs, "model")
    layout.prop(prefs, "model_path")
    layout.prop(prefs, "output_dir")
    layout.prop(prefs, "hf_cache")
    layout.prop(prefs, "offline")
    layout.operator("archviz.doctor", icon="CHECKMARK")
    report = runs.doctor
    if report is not None:
        box = layout.box().column(align=True)  # one report, not a list of separate rows
        for line in report.lines:
            icon = "ERROR" if line.startswith(("ERROR", "WARNING")) else "NONE"
            draw_lines(box, line, icon=icon, width=110)
    draw_models_box(prefs, context, layout)


def draw_models_box(prefs, context, layout):
    """The Models box: token, per family what it needs and what is cached, Download."""
    box = layout.box()
    box.label(text="Models (Hugging Face hub)", icon="FILE_BLEND")
    box.prop(prefs, "hf_token")
    data = runs.listing.result if runs.listing is not None and runs.listing.state == "done" else None
    if runs.listing is not None and runs.listing.state == "failed":
        box.label(text=runs.listing.message, icon="ERROR")
    for family, label, _desc in runs.FAMILIES:
        col = box.column(align=True)
        rows = [r for r in (data or {}).get("models", []) if r["name"] == family]
        ready = rows and all(r["complete"] for r in rows)
        head = col.row()
        head.label(text=f"{label}: " + ("ready" if ready else "not downloaded" if rows else "press Refresh"),
                   icon="CHECKMARK" if ready else "IMPORT")
        op = head.operator("archviz.models_download", text="Download", icon="IMPORT")
        op.family = family
        for r in rows:
            col.label(text=f"    {r['label']}: {r['repo']}, {r['status']}")
    row = box.row()
    row.operator("archviz.models_refresh", icon="FILE_REFRESH")
    if data:
        row.label(text=f"Cache: {data['cache']}")
    reason = offline_reason(context)
    if reason:
        box.label(text=f"{reason}: downloads are off", icon="INFO")
    download = runs.download
    if download is not None:
        if download.state == "running" and download.download:
            box.progress(factor=download_fraction(download.download), type="BAR", text=download.message)
        else:
            icon = {"failed": "ERROR", "done": "CHECKMARK"}.get(download.state, "TIME")
            box.label(text=download.message, icon=icon)
