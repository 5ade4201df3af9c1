"""The backend as the Blender side starts and reaches it: where it runs (the add-on
preferences, or environment variables for a script), which interpreter and venv, and
the local backend process this Blender started (kept, reused, stopped at exit).

The client and the process class are core's (core/client.py); this module only decides
how to launch them from Blender.
"""

import atexit
import os
import sys

import bpy

from ..core.backend_setup import SETUP_HINT, missing_backend_message, missing_modules
from ..core.client import BackendError, BackendProcess, Client
from . import compat
from .preferences import preferences

_started = {}  # (python, device, ...) -> BackendProcess started by this Blender/Python process


class BackendSettings:
    """Where the backend runs: the add-on preferences, and over them the environment
    variables a script sets (``ARCHVIZ_BACKEND_URL``, ``ARCHVIZ_TOKEN``, ``ARCHVIZ_PYTHON``,
    ``ARCHVIZ_DEVICE``, ``ARCHVIZ_MODEL``, ``ARCHVIZ_RAY``): a ``blender -b`` script that
    sets ``ARCHVIZ_MODEL=tiny`` gets tiny whatever the preferences say. Without
    preferences (the add-on registered by a script) the variables alone decide."""

    def __init__(self, context):
        prefs = preferences(context)
        env = os.environ
        if prefs is not None:
            self.url = prefs.url if prefs.backend_mode == "REMOTE" else ""
            self.token = prefs.token
            self.python = bpy.path.abspath(prefs.python) if prefs.python else default_python(prefs.venv_dir)
            self.device = prefs.device
            self.model = bpy.path.abspath(prefs.model_path) if prefs.model_path else prefs.model
            self.hf_cache = bpy.path.abspath(prefs.hf_cache) if prefs.hf_cache else ""
            self.offline = prefs.offline
            self.hf_token = prefs.hf_token.strip()
            self.ray = prefs.ray_address.strip()
        else:
            self.url, self.token, self.python = "", "", default_python("")
            self.device, self.model = "auto", "sd15"
            self.hf_cache = ""
            self.offline = False
            self.hf_token = ""  # HF_TOKEN from the environment reaches the backend as it is
            self.ray = ""
        for attr, name in (("url", "ARCHVIZ_BACKEND_URL"), ("token", "ARCHVIZ_TOKEN"), ("python", "ARCHVIZ_PYTHON"),
                           ("device", "ARCHVIZ_DEVICE"), ("model", "ARCHVIZ_MODEL"), ("ray", "ARCHVIZ_RAY")):
            if env.get(name):
                setattr(self, attr, env[name])
        # An add-on must not go online when Blender says no (Preferences > System > Network).
        self.blender_offline = not compat.online_access()

    def backend_env(self):
        env = dict(os.environ)
        if self.hf_cache:
            env["HF_HOME"] = self.hf_cache
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["ARCHVIZ_OFFLINE_REASON"] = "the add-on's Offline preference is on"
        elif self.blender_offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["ARCHVIZ_OFFLINE_REASON"] = ("Blender's Allow Online Access is off: Preferences > System > Network, "
                                             "or start Blender with --online-mode")
        if self.hf_token:
            env["HF_TOKEN"] = self.hf_token
        if self.ray:
            env["ARCHVIZ_RAY"] = self.ray  # the backend fans sweeps out to Ray actors
        else:
            env.pop("ARCHVIZ_RAY", None)
        return env


def backend_venv_dir(venv_dir=""):
    """The Backend Venv preference, else the venv in the user data folder that every
    Blender version shares, else one a previous Blender version's add-on made (reused)."""
    if venv_dir:
        return bpy.path.abspath(venv_dir)
    from ..core.backend_setup import default_venv_dir, find_backend_venv

    return find_backend_venv(default_venv_dir(), bpy.utils.user_resource("CONFIG"))


def default_python(venv_dir):
    """The Set-up-backend venv's interpreter when it exists, else this interpreter (the
    project venv, where torch is installed next to the bpy module)."""
    bindir = "Scripts" if sys.platform == "win32" else "bin"
    candidate = os.path.join(backend_venv_dir(venv_dir), bindir, "python.exe" if sys.platform == "win32" else "python")
    return candidate if os.path.exists(candidate) else sys.executable


def connect(url="", token="", python="", device="auto", log_path=None, output_roots=(), model_roots=(), env=None):
    """A client for ``url``, or for a local backend this process started (started now if
    needed; it stops when this process exits). Returns (client, started process or None).

    A local backend writes only into folders it was started with (``output_roots``, e.g.
    the scene's output folder) and reads models only from its model roots; when a later
    run needs a folder the running one does not allow, it is restarted allowing both."""
    if url:
        client = Client(url, token=token)
        client.health(retry_for=5)  # raises BackendUnreachable with the URL in the message
        client.presets()  # a route behind the token: BackendAuthError now, not after the renders
        return client, None
    env = dict(os.environ if env is None else env)
    # A backend started with other settings in its environment (Ray, HF cache, offline)
    # is a different backend.
    key = (python or "", device, env.get("ARCHVIZ_RAY", ""), env.get("HF_HOME", ""), env.get("HF_HUB_OFFLINE", ""),
           env.get("HF_TOKEN", ""))
    proc = _started.get(key)
    if proc is not None and proc.alive() and not proc.covers(output_roots, model_roots):
        output_roots = [*proc.output_roots, *output_roots]
        model_roots = [*proc.model_roots, *model_roots]
        proc.stop()
    if proc is None or not proc.alive():
        lacking = missing_modules(python or None)
        if lacking:  # this interpreter (Blender's own, before Set up Backend) cannot run the backend
            raise BackendError(f"this Python ({python or sys.executable}) has no {', '.join(lacking)}: {SETUP_HINT}")
        proc = BackendProcess(python=python or None, device=device, log_path=log_path,
                              output_roots=output_roots, model_roots=model_roots, env=env)
        try:
            proc.start()
        except BackendError as exc:
            hint = missing_backend_message(proc.python, str(exc))
            if hint:
                raise BackendError(hint) from None
            raise
        _started[key] = proc
    return Client(proc.url), proc


def stop_started_backends():
    for proc in list(_started.values()):
        proc.stop()
    _started.clear()


def started_backend():
    """The backend this process started and that is still running, if any."""
    return next((p for p in _started.values() if p.alive()), None)


atexit.register(stop_started_backends)
