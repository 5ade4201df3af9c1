"""Create the backend's own venv and install its requirements (the "Set up backend" button).

Runs ``python -m venv`` and ``pip install -r backend/requirements.txt`` in a worker thread,
reading pip's output as it comes so the preferences can show progress; a failure keeps
pip's last lines for the message. Stdlib only: it runs inside Blender's Python.
"""

import os
import shlex
import subprocess
import sys
import threading

REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backend", "requirements.txt")


def venv_python(venv_dir):
    if sys.platform == "win32":
        return os.path.join(venv_dir, "Scripts", "python.exe")
    return os.path.join(venv_dir, "bin", "python")


class BackendSetup:
    """One setup run. ``state``: idle | running | done | failed; ``message`` says where it is."""

    def __init__(self, venv_dir, base_python=None, requirements=REQUIREMENTS, pip_args=""):
        self.venv_dir = os.path.abspath(venv_dir)
        self.base_python = base_python or sys.executable
        self.requirements = requirements
        self.pip_args = shlex.split(pip_args or "")
        self.state = "idle"
        self.message = ""
        self.packages_seen = 0
        self.log = []
        self.thread = None

    def start(self):
        self.state, self.message = "running", "creating the venv"
        self.thread = threading.Thread(target=self.run, name="archviz-backend-setup", daemon=True)
        self.thread.start()

    def run(self):
        try:
            if not os.path.isfile(self.requirements):
                raise RuntimeError(f"requirements file not found: {self.requirements}")
            if not os.path.exists(venv_python(self.venv_dir)):
                self._call([self.base_python, "-m", "venv", self.venv_dir], "creating the venv")
            self._call([venv_python(self.venv_dir), "-m", "pip", "install", "--disable-pip-version-check",
                        "-r", self.requirements, *self.pip_args], "installing the backend requirements")
            self.state, self.message = "done", f"backend venv ready: {venv_python(self.venv_dir)}"
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
            tail = " | ".join(l for l in self.log[-6:] if l.strip())
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
