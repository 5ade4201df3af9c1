"""The background runs the preferences show: Set up Backend (core's BackendSetup), the
doctor's check, and ``archviz models`` listing and downloading. Each runs in a worker
thread that never touches bpy; a timer redraws the preferences while one runs, and in
``blender -b`` the caller waits for it. The runs the preferences show are kept here.

The Models runs start ``archviz models`` (``list --json`` / ``download NAME --progress
json``) in the backend's interpreter as a child process and read its JSON lines. The
child gets the backend's environment (HF cache, token, offline switch, Blender's online
access), so it fetches exactly what the backend would load.
"""

import json
import os
import subprocess
import threading

import bpy

from ..core import families
from ..core.backend_setup import BackendSetup
from ..core.sweep import download_text
from .ui import redraw

setup = None  # the BackendSetup of Set up Backend
doctor = None  # the DoctorRun of the Doctor button
download = None  # the ModelsRun of the Download button
listing = None  # the ModelsRun of the last Refresh (its result: `archviz models list --json`)


class DoctorRun:
    """One ``archviz doctor`` check in a worker thread (it starts the backend's Python to
    ask it about torch and the model cache). ``lines``: the report; ``can_generate``."""

    def __init__(self, python, env, offline_switch, venv_dir, blender_online):
        self.args = dict(python=python, env=env, offline_switch=offline_switch, venv_dir=venv_dir,
                         blender_online=blender_online)
        self.state, self.lines, self.can_generate = "running", ["checking..."], False
        self.thread = threading.Thread(target=self.run, name="archviz-doctor", daemon=True)

    def run(self):
        from ..core import doctor as D

        try:
            facts = D.collect(**self.args)
            findings, self.can_generate = D.diagnose(facts)
            self.lines = D.report_lines(facts, findings, self.can_generate)
            self.state = "done"
        except Exception as exc:  # a bug in the check must reach the user, not die in a thread
            self.lines, self.state = [f"the check failed: {type(exc).__name__}: {exc}"], "failed"


#: (family, label, what Download gets) of the Models box (core/families.py)
FAMILIES = families.download_items()


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


def _redraw_preferences():
    redraw(("PREFERENCES",))
    running = any(r is not None and r.state == "running" for r in (setup, doctor, download, listing))
    return 0.3 if running else None


def _follow(run):
    """Wait for ``run`` in ``blender -b``; else redraw the preferences while it runs."""
    if bpy.app.background:
        run.thread.join()
    else:
        bpy.app.timers.register(_redraw_preferences, first_interval=0.3)
    return run


def start_setup(venv_dir, pip_args="", torch_index=""):
    """Set up the backend venv in ``venv_dir`` (the run the preferences show)."""
    global setup
    setup = BackendSetup(venv_dir, pip_args=pip_args, torch_index=torch_index)
    setup.start()
    return _follow(setup)


def start_doctor(python, env, offline_switch, venv_dir, blender_online):
    """Run the doctor's check (the run the preferences show)."""
    global doctor
    doctor = DoctorRun(python, env, offline_switch, venv_dir, blender_online)
    doctor.thread.start()
    return _follow(doctor)


def start_models(args, python, env):
    """``archviz models ARGS`` in ``python``: a download (``download ...``) or a listing."""
    global download, listing
    run = ModelsRun(python, env, args)
    if args and args[0] == "download":
        download = run
    else:
        listing = run
    run.start()
    return _follow(run)
