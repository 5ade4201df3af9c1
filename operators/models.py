"""The Models box of the preferences: what each family needs from the hub, what is cached,
and a Download button with progress.

Both run ``archviz models`` (``list --json`` / ``download NAME --progress json``) in the
backend's interpreter as a child process from a worker thread that reads its JSON lines;
a timer redraws the preferences. The child gets the backend's environment (HF cache,
token, offline switch, Blender's online access), so it fetches exactly what the backend
would load. In ``blender -b`` the operators wait for the child.
"""

import json
import os
import subprocess
import threading

import bpy
from bpy.props import EnumProperty

from ..core.sweep import download_text

FAMILIES = [("sd15", "SD 1.5", "Base model, depth and lineart ControlNets"),
            ("sdxl", "SDXL", "Base model, fp16-fix VAE, depth and canny ControlNets"),
            ("flux", "FLUX.1-dev", "Gated base model (accept the licence on the hub), depth and canny ControlNets")]


class ModelsRun:
    """One ``archviz models`` child. ``state``: running | done | failed."""

    def __init__(self, python, env, args):
        self.python, self.env, self.args = python, env, list(args)
        self.state, self.message, self.download, self.result = "running", "starting", {}, None
        self.thread = None

    def command(self):
        return [self.python, "-m", "archviz_controlnet.cli", "models", *self.args]

    def start(self):
        self.thread = threading.Thread(target=self.run, name="archviz-models", daemon=True)
        self.thread.start()

    def run(self):
        env = dict(self.env)
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.basename(package_dir) == "archviz_controlnet":  # an installed extension: put it on the path
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(package_dir), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env)
        except OSError as exc:
            self.state, self.message = "failed", f"cannot run {self.python!r}: {exc.strerror}"
            return
        errors = []
        threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
        for line in proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "download" in data:
                self.download = data["download"]
                self.message = download_text(self.download)
            elif "done" in data:
                done = data["done"]
                self.result = done
                self.message = (f"{', '.join(done['names'])} ready: fetched {done['files_fetched']} file(s), "
                                f"{done['bytes_fetched']} bytes")
            elif "models" in data:
                self.result = data
                self.message = ""
        code = proc.wait()
        if code == 0:
            self.state = "done"
        else:  # its one-line error (the child prints "archviz models: ..." last)
            tail = [e.strip() for e in errors if e.strip()]
            last = next((e for e in reversed(tail) if e.startswith("archviz models")), tail[-1] if tail else "")
            self.state = "failed"
            self.message = last.replace("archviz models: ", "") or f"archviz models exited with {code}"
        self.download = {}


download = None  # the ModelsRun of the Download button
listing = None  # the ModelsRun of the last Refresh (its result: `archviz models list --json`)


def _redraw_preferences():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    running = any(r is not None and r.state == "running" for r in (download, listing))
    return 0.3 if running else None


def _start(args, context):
    from .generate import BackendSettings

    backend = BackendSettings(context)
    run = ModelsRun(backend.python, backend.backend_env(), args)
    run.start()
    if bpy.app.background:
        run.thread.join()
    else:
        bpy.app.timers.register(_redraw_preferences, first_interval=0.3)
    return run


def offline_reason(context):
    """Why the add-on may not download now ('' when it may)."""
    from ..blender.properties import preferences

    prefs = preferences(context)
    if prefs is not None and prefs.offline:
        return "The add-on's Offline preference is on"
    if not getattr(bpy.app, "online_access", True):
        return "Blender's Allow Online Access is off (Preferences > System > Network)"
    return ""


class ARCHVIZ_OT_models_refresh(bpy.types.Operator):
    """Look at what the Hugging Face cache holds for each model family"""

    bl_idname = "archviz.models_refresh"
    bl_label = "Refresh"

    def execute(self, context):
        global listing
        listing = _start(["list", "--json"], context)
        if bpy.app.background and listing.state == "failed":
            self.report({"ERROR"}, listing.message)
            return {"CANCELLED"}
        return {"FINISHED"}


class ARCHVIZ_OT_models_download(bpy.types.Operator):
    """Download the models of a family into the Hugging Face cache (only the files the backend loads)"""

    bl_idname = "archviz.models_download"
    bl_label = "Download"

    family: EnumProperty(name="Family", items=FAMILIES, default="sd15")

    @classmethod
    def poll(cls, context):
        if download is not None and download.state == "running":
            cls.poll_message_set("A download is running")
            return False
        reason = offline_reason(context)
        if reason:
            cls.poll_message_set(reason)
            return False
        return True

    def execute(self, context):
        global download
        download = _start(["download", self.family, "--progress", "json"], context)
        if bpy.app.background:
            if download.state != "done":
                self.report({"ERROR"}, download.message)
                return {"CANCELLED"}
            self.report({"INFO"}, download.message)
            return {"FINISHED"}
        self.report({"INFO"}, f"Downloading {self.family}; progress shows in the preferences")
        return {"FINISHED"}


def draw_models_box(prefs, context, layout):
    """The Models box: token, per family what it needs and what is cached, Download."""
    box = layout.box()
    box.label(text="Models (Hugging Face hub)", icon="FILE_BLEND")
    box.prop(prefs, "hf_token")
    data = listing.result if listing is not None and listing.state == "done" else None
    if listing is not None and listing.state == "failed":
        box.label(text=listing.message, icon="ERROR")
    for family, label, _desc in FAMILIES:
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
    if download is not None:
        if download.state == "running" and download.download:
            from ..core.sweep import download_fraction

            box.progress(factor=download_fraction(download.download), type="BAR", text=download.message)
        else:
            icon = {"failed": "ERROR", "done": "CHECKMARK"}.get(download.state, "TIME")
            box.label(text=download.message, icon=icon)


classes = (ARCHVIZ_OT_models_refresh, ARCHVIZ_OT_models_download)
