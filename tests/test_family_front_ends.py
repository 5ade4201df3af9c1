"""The transformer families through the two front ends, from a real .blend: `archviz sweep`
with resume, and the panel's Generate operator (sides multiples of 16, the family and its
preset section's cfg recorded). One test per front end, run for every such family."""

import os
import subprocess
import sys

import pytest

from archviz_controlnet.core.presets import load_presets

from backend_support import TEST_HOME

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: tiny family -> its preset section (the cfg the panel's image records)
FAMILIES = {"tiny-flux": "flux", "tiny-qwen": "qwen", "tiny-zimage": "zimage"}


def build_interior(tmp_path):
    scene = tmp_path / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=120)
    return scene


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_sweep_and_resume(tmp_path, family):
    pytest.importorskip("bpy")
    scene = build_interior(tmp_path)
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    cmd = [ARCHVIZ, "sweep", str(scene), "--styles", "modern,japandi", "--seeds", "0-1", "--model", family,
           "--controls", "depth,lines", "--long-side", "64", "--steps", "2", "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "4 new image(s), 0 already on disk" in first.stdout
    pngs = sorted((tmp_path / "out").glob("Camera_*_s[0-9].png"))
    assert len(pngs) == 4
    mtimes = [p.stat().st_mtime for p in pngs]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert "0 new image(s), 4 already on disk" in second.stdout
    assert [p.stat().st_mtime for p in pngs] == mtimes


@pytest.mark.parametrize("family", FAMILIES)
def test_blender_generate(tmp_path, monkeypatch, family):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.operators import generate as gen

    scene = build_interior(tmp_path)
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", family)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=str(scene))
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.output_dir = 96, 2, str(tmp_path / "out")
        settings.style, settings.seed = "japandi", 3
        gen.Task.current = None
        assert bpy.ops.archviz.generate() == {"FINISHED"}, gen.Task.current and gen.Task.current.message
        image = bpy.data.images["Camera_japandi_s3"]
        assert tuple(image.size) == (96, 48)  # 16:9 at long side 96 in multiples of 16 (SD: 96 x 56)
        assert f'"family": "{family}"' in image["model"] and image["steps"] == 2
        section = getattr(load_presets(include_user=False)["japandi"], FAMILIES[family])
        assert image["cfg"] == section["cfg"]
    finally:
        gen.Task.current = None
        archviz_controlnet.unregister()
