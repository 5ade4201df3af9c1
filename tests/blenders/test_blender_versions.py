"""The add-on in every Blender it claims (``make test-blenders``): each check of drive.py
runs in a venv that holds only that Blender's bpy, against one backend served from the
project venv on loopback with the tiny models (a remote backend, with a token).

The venvs are named by ARCHVIZ_BLENDER_VENVS (``4.2=PATH,4.5=PATH,5.2=PATH``), which the
Makefile sets; without it this module is not collected (tests/conftest.py), so ``make test``
does not pretend to have run it.
"""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the support modules
from backend_support import TEST_HOME, base_env, running_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKEN = "matrix-token"

VENVS = dict(item.split("=", 1) for item in os.environ.get("ARCHVIZ_BLENDER_VENVS", "").split(",") if "=" in item)
# In this order: install puts the extension in place for the checks after it.
CHECKS = ("install", "passes_and_panels", "generate_sweep_results", "cancel", "upscale", "local_backend", "headless", "movie")
CHECKS += ("video",)  # the Video operator (operators/video.py) against the backend


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory):
    """The zip ``make extension`` builds, with the project venv's Blender."""
    import bpy

    out = tmp_path_factory.mktemp("dist")
    tool = os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    done = subprocess.run([sys.executable, tool, "build", "--source-dir", ROOT, "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(next(out.glob("*.zip")))


@pytest.fixture(scope="session")
def backend():
    with running_server(["--token", TOKEN, "--host", "127.0.0.1"]) as server:
        yield server


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("blenders")


def _env(version, work, extension_zip, backend):
    folder = work / version
    folder.mkdir(exist_ok=True)
    env = base_env(TEST_HOME)
    for name in ("ARCHVIZ_MODEL", "ARCHVIZ_BACKEND_URL", "ARCHVIZ_TOKEN", "ARCHVIZ_DEVICE", "PYTHONPATH",
                 "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update({
        "BLENDER_USER_RESOURCES": str(folder / "user"),  # the extension installs here, once per Blender
        "ARCHVIZ_TEST_ZIP": extension_zip,
        "ARCHVIZ_TEST_URL": backend.url,
        "ARCHVIZ_TEST_TOKEN": TOKEN,
        "ARCHVIZ_TEST_WORK": str(folder),
        "ARCHVIZ_TEST_README": os.path.join(ROOT, "README.md"),
        "ARCHVIZ_PYTHON": sys.executable,  # a local backend (Start Backend, Upscale): the project venv
    })
    return env


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("version", sorted(VENVS))
def test_addon_in_blender(version, check, extension_zip, backend, work):
    env = _env(version, work, extension_zip, backend)
    if check == "headless":  # the README's script reaches the backend the way a script would
        env["ARCHVIZ_BACKEND_URL"], env["ARCHVIZ_TOKEN"] = backend.url, TOKEN
    python = os.path.join(VENVS[version], "bin", "python")
    done = subprocess.run([python, os.path.join(HERE, "drive.py"), check], capture_output=True, text=True,
                          timeout=600, env=env, cwd=str(work / version))
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0 and f"{check} OK" in done.stdout, f"Blender {version}, {check}:\n{tail}"
    print(done.stdout.strip().splitlines()[-1])
