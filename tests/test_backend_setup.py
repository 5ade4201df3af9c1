""""Set up backend": a real venv and a real pip install (offline, from a wheel made here)."""

import os
import subprocess
import zipfile

import pytest

from archviz_controlnet.core.backend_setup import BackendSetup, venv_python


def make_wheel(folder):
    """A minimal pure-Python wheel: enough for pip to install without any index."""
    path = os.path.join(folder, "archviz_probe-1.0-py3-none-any.whl")
    files = {
        "archviz_probe/__init__.py": "VALUE = 42\n",
        "archviz_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: archviz-probe\nVersion: 1.0\n",
        "archviz_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "archviz_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("archviz_probe-1.0.dist-info/RECORD", record)
    return path


def test_setup_creates_venv_and_installs_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text(make_wheel(str(tmp_path)) + "\n")
    setup = BackendSetup(str(tmp_path / "venv"), requirements=str(req), pip_args="--no-index")
    setup.start()
    setup.thread.join(timeout=300)
    assert setup.state == "done", setup.message
    assert setup.message.endswith(venv_python(str(tmp_path / "venv")))
    assert setup.packages_seen >= 1
    out = subprocess.run([venv_python(str(tmp_path / "venv")), "-c", "import archviz_probe; print(archviz_probe.VALUE)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"


def test_setup_failure_keeps_pips_words(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("definitely-not-a-package-archviz==9.9\n")
    setup = BackendSetup(str(tmp_path / "venv"), requirements=str(req), pip_args="--no-index")
    setup.run()
    assert setup.state == "failed"
    assert "installing the backend requirements failed" in setup.message
    assert "definitely-not-a-package-archviz" in setup.message
    missing = BackendSetup(str(tmp_path / "v2"), requirements=str(tmp_path / "nope.txt"))
    missing.run()
    assert missing.state == "failed" and "requirements file not found" in missing.message


def test_setup_operator_reports_failure_through_blender(tmp_path):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from archviz_controlnet import properties

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    try:
        prefs = properties.preferences()
        prefs.venv_dir = str(tmp_path / "venv")
        prefs.pip_args = "--no-index"  # offline: the backend packages cannot be found, pip says so
        with pytest.raises(RuntimeError, match="installing the backend requirements failed.*No matching distribution"):
            bpy.ops.archviz.setup_backend()
        assert os.path.exists(venv_python(str(tmp_path / "venv")))  # the venv itself was made
    finally:
        addon_utils.disable("archviz_controlnet", default_set=True)
