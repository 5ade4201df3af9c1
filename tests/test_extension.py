"""The repo root builds into an installable extension with Blender's own `extension build`."""

import os
import subprocess
import sys
import zipfile

import pytest

bpy = pytest.importorskip("bpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extension_builds_with_blender_tooling(tmp_path):
    tool = os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    proc = subprocess.run([sys.executable, tool, "build", "--source-dir", ROOT, "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = tmp_path.glob("archviz_controlnet-*.zip")
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py", "properties.py", "operators/__init__.py",
            "panels/__init__.py", "capture/render.py", "core/passes.py", "core/class_table.toml"} <= names
    assert not any(n.startswith(("tests/", ".venv/", ".ci/", "bench/")) or "__pycache__" in n for n in names)
