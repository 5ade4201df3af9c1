"""Create the backend's own venv and install its requirements (the "Set up Backend" button).

In a worker thread: ``python -m venv``, then torch from the index that suits the machine
(:func:`.devices.choose_torch`: the CUDA build the NVIDIA driver supports, MPS on Apple
Silicon, else the CPU build), then the rest of ``backend/setup/requirements.txt``, then a check
in the new venv that imports torch and reports the device it sees. pip's output is read
as it comes so the preferences can show progress; a failure keeps pip's last lines.

The venv lives in a user data folder that no Blender version owns (:func:`default_venv_dir`),
so it survives a Blender upgrade; a venv that an earlier version of the add-on made in a
Blender version's config folder is found and reused (:func:`find_backend_venv`).
Stdlib only: it runs inside Blender's Python.
"""

import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
import threading
from dataclasses import dataclass

from . import devices

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(PACKAGE_DIR, "backend", "setup", "requirements.txt")
#: What the backend process imports before it can serve (a Python without them is not set up).
BACKEND_MODULES = ("uvicorn", "fastapi", "torch", "diffusers", "transformers")
SETUP_HINT = ("set up the backend first: Edit > Preferences > Add-ons > ArchViz ControlNet > Set up Backend "
              f"(or set Python to an interpreter that has it; from a terminal: pip install -r {REQUIREMENTS})")


def venv_python(venv_dir):
    if sys.platform == "win32":
        return os.path.join(venv_dir, "Scripts", "python.exe")
    return os.path.join(venv_dir, "bin", "python")


# ---------------------------------------------------------------------------- where the venv lives

def user_data_dir(system=None, env=None, home=None):
    """The add-on's per-user data folder, shared by every Blender version:
    ``%LOCALAPPDATA%\\archviz`` on Windows, ``~/Library/Application Support/archviz`` on
    macOS, ``$XDG_DATA_HOME/archviz`` (``~/.local/share/archviz``) elsewhere."""
    os_name = devices.normalize_os(system or platform.system())
    env = os.environ if env is None else env
    home = home or os.path.expanduser("~")
    if os_name == "windows":
        base = env.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif os_name == "macos":
        base = os.path.join(home, "Library", "Application Support")
    else:
        base = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "archviz")


def default_venv_dir(system=None, env=None, home=None):
    return os.path.join(user_data_dir(system, env, home), "backend-venv")


def previous_venvs(blender_config_dir):
    """Backend venvs that earlier versions of the add-on made inside a Blender version's
    config folder (``<blender>/<version>/config/archviz/backend-venv``), newest Blender
    version first. ``blender_config_dir``: this Blender's ``user_resource("CONFIG")``."""
    if not blender_config_dir:
        return []
    root = os.path.dirname(os.path.dirname(os.path.normpath(blender_config_dir)))
    found = [p for p in glob.glob(os.path.join(root, "*", "config", "archviz", "backend-venv"))
             if os.path.exists(venv_python(p))]

    def version(path):
        name = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        return tuple(int(n) for n in re.findall(r"\d+", name))

    return sorted(found, key=version, reverse=True)


def python_runs(python, timeout=30):
    """True when ``python`` starts (a venv whose base interpreter was removed does not)."""
    try:
        return subprocess.run([python, "-c", "import sys"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_backend_venv(data_venv, blender_config_dir=""):
    """The venv to use: ``data_venv`` when it holds one; else a previous Blender version's
    venv that still runs (reused as it is); else ``data_venv`` (Set up Backend makes it)."""
    if os.path.exists(venv_python(data_venv)):
        return data_venv
    for old in previous_venvs(blender_config_dir):
        if python_runs(venv_python(old)):
            return old
    return data_venv


# ---------------------------------------------------------------------------- a Python without the backend

def missing_modules(python=None):
    """The backend modules the running interpreter lacks (only this interpreter can be
    asked without starting a process; ``python`` names another one: nothing is checked).
    Paths are compared as given, not resolved: a venv's ``python`` is a link to the Python
    it was made from (Blender's own, say), yet it is another interpreter with other packages."""
    if python and os.path.normpath(os.path.abspath(python)) != os.path.normpath(sys.executable):
        return []
    return [m for m in BACKEND_MODULES if importlib.util.find_spec(m) is None]


def missing_backend_message(python, output):
    """One line pointing at Set up Backend when ``output`` (a backend that did not start)
    says a module is missing; None when it says something else."""
    match = re.search(r"No module named '([\w.]+)'", output or "")
    if not match:
        return None
    return f"the backend's Python ({python}) has no {match.group(1)!r} module: {SETUP_HINT}"


# ---------------------------------------------------------------------------- the torch check

#: Run by the backend's Python: imports torch and prints one JSON line about it.
#: The check run in the backend's Python (its source; see that file).
TORCH_CHECK_SCRIPT = Path(__file__).resolve().parent.parent / "backend" / "setup" / "torch_check.py"


@dataclass
class TorchCheck:
    """What the backend's Python says about torch."""

    python: str
    ok: bool
    torch: str = ""
    cuda_build: str | None = None
    device: str = ""  # the device ``auto`` picks: cuda | mps | cpu
    device_name: str = ""
    vram_mib: int | None = None
    error: str = ""

    def summary(self):
        if not self.ok:
            return f"torch does not import in {self.python}: {self.error}"
        build = f"CUDA {self.cuda_build}" if self.cuda_build else "no CUDA"
        return f"torch {self.torch} ({build}), device {self.device}: {self.device_name}"


def check_torch(python, timeout=300, env=None):
    """Run :data:`TORCH_CHECK_SCRIPT` in ``python`` (a real subprocess)."""
    try:
        proc = subprocess.run([python, "-c", TORCH_CHECK_SCRIPT.read_text()], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return TorchCheck(python, False, error=f"cannot run {python}: {exc}")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        said = " | ".join(l for l in (proc.stdout + proc.stderr).splitlines()[-4:] if l.strip())
        return TorchCheck(python, False, error=f"exit {proc.returncode}: {said}")
    data = json.loads(lines[-1])
    if "error" in data:
        return TorchCheck(python, False, error=data["error"])
    return TorchCheck(python, True, torch=data["torch"], cuda_build=data.get("cuda_build"),
                      device=data["device"], device_name=data.get("device_name", ""), vram_mib=data.get("vram_mib"))


def torch_warning(check, system=None, machine=None, nvidia=None):
    """The loud line for a backend whose torch will not use the machine's GPU ("" if none)."""
    if not check.ok:
        return ""
    gpus = (nvidia or devices.NvidiaSmi()).gpus
    return devices.cpu_warning(check.device, "auto", system or platform.system(), machine or platform.machine(),
                               gpus, check.cuda_build, check.torch)


# ---------------------------------------------------------------------------- the setup run

def installed_version(python, distribution):
    """The version of ``distribution`` installed for ``python`` ("" when none)."""
    code = ("import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: pass")
    try:
        proc = subprocess.run([python, "-c", code, distribution], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def requirements_without_torch(requirements, folder, torch_pin=""):
    """A copy of ``requirements`` whose torch line is ``torch==torch_pin`` (the build just
    installed from the index chosen for the machine: a package that wants another torch
    then fails loudly instead of swapping in the registry's build) or gone. Returns its path."""
    with open(requirements, encoding="utf-8") as f:
        lines = [l for l in f.read().splitlines()
                 if not re.match(r"\s*torch\s*(\[.*\])?\s*([<>=!~;].*)?(#.*)?$", l)]
    if torch_pin:
        lines.append(f"torch=={torch_pin}")
    path = os.path.join(folder, "requirements-without-torch.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


class BackendSetup:
    """One setup run. ``state``: idle | running | done | failed; ``message`` says where it
    is; after the check, ``check`` (a :class:`TorchCheck`) and ``warning`` (a GPU torch
    will not use) say what the backend will run on.

    ``torch_choice``: the build to install (default: :func:`.devices.choose_torch` for this
    machine, with ``torch_index`` replacing its index URL); ``None`` build skips torch
    (a requirements file that brings its own)."""

    def __init__(self, venv_dir, base_python=None, requirements=REQUIREMENTS, pip_args="", torch_index="",
                 torch_choice=None, install_torch=True):
        self.venv_dir = os.path.abspath(venv_dir)
        self.base_python = base_python or sys.executable
        self.requirements = requirements
        self.pip_args = shlex.split(pip_args or "")
        self.torch_index = torch_index.strip()
        self.torch_choice = torch_choice
        self.install_torch = install_torch
        self.state = "idle"
        self.message = ""
        self.packages_seen = 0
        self.log = []
        self.thread = None
        self.check = None
        self.warning = ""

    def start(self):
        self.state, self.message = "running", "creating the venv"
        self.thread = threading.Thread(target=self.run, name="archviz-backend-setup", daemon=True)
        self.thread.start()

    def choose(self):
        """The torch build for this machine (asks ``nvidia-smi``)."""
        self.nvidia = devices.query_nvidia_smi()
        return devices.choose_torch(platform.system(), platform.machine(), self.nvidia, self.torch_index)

    def run(self):
        self.nvidia = None
        try:
            if not os.path.isfile(self.requirements):
                raise RuntimeError(f"requirements file not found: {self.requirements}")
            python = venv_python(self.venv_dir)
            if not os.path.exists(python):
                self._call([self.base_python, "-m", "venv", self.venv_dir], "creating the venv")
            elif not python_runs(python):  # its base interpreter is gone (an uninstalled Blender)
                self._call([self.base_python, "-m", "venv", "--clear", self.venv_dir], "re-creating the venv")
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
            requirements = self.requirements
            with tempfile.TemporaryDirectory(prefix="archviz-setup-") as tmp:
                if self.install_torch:
                    choice = self.torch_choice or self.choose()
                    self.torch_choice = choice
                    self.log.append(f"torch: {choice.reason}")
                    self._call([*pip, *choice.pip_args(), *self.pip_args],
                               f"installing torch ({choice.build}{' from ' + choice.index_url if choice.index_url else ''})")
                    requirements = requirements_without_torch(self.requirements, tmp,
                                                              installed_version(python, "torch"))
                self._call([*pip, "-r", requirements, *self.pip_args], "installing the backend requirements")
            self.message = "checking torch in the new venv"
            self.check = check_torch(python)
            if not self.check.ok:
                raise RuntimeError(self.check.summary())
            self.warning = torch_warning(self.check, nvidia=self.nvidia or devices.query_nvidia_smi())
            if self.warning and self.torch_choice is not None and self.torch_choice.warning:
                self.warning = self.torch_choice.warning  # the reason known before installing (an old driver)
            self.state, self.message = "done", f"backend venv ready: {python}; {self.check.summary()}"
        except (OSError, RuntimeError) as exc:
            self.state, self.message = "failed", str(exc)

    def _call(self, cmd, what):
        self.message = what
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            raise RuntimeError(f"{what} failed: cannot run {cmd[0]}: {exc.strerror}") from None
        for line in proc.stdout:
            line = line.rstrip()
            self.log = (self.log + [line])[-200:]
            if line.startswith(("Collecting", "Processing")):
                self.packages_seen += 1
                self.message = f"{what}: {line.split()[1]} ({self.packages_seen} packages so far)"
            elif line.startswith("Installing collected packages"):
                self.message = f"{what}: installing {self.packages_seen} packages"
        if proc.wait() != 0:
            errors = [l for l in self.log if l.startswith("ERROR:")]  # pip's own summary of what failed
            tail = " | ".join(errors[-3:] if errors else [l for l in self.log[-6:] if l.strip()])
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
