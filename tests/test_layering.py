"""core/ must import with bpy and torch unavailable (it runs inside Blender's Python)."""

import os
import pkgutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKER = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('bpy', 'torch', 'diffusers', 'transformers', 'PIL', 'cv2'):
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print('imported', len(sys.argv) - 1)
"""


def core_modules():
    return ["archviz_controlnet.core." + m.name for m in pkgutil.iter_modules([os.path.join(ROOT, "core")])]


def test_core_imports_without_bpy_or_torch():
    mods = core_modules()
    assert "archviz_controlnet.core.passes" in mods and len(mods) >= 4
    out = subprocess.run([sys.executable, "-c", BLOCKER, "archviz_controlnet", *mods],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"imported {len(mods) + 1}"


def test_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", BLOCKER, "bpy"], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked in this test: bpy" in out.stderr
