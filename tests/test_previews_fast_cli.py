"""``archviz sweep --fast --previews DIR`` on a real scene with the tiny models: the fast
images are labelled and resumed apart from the exact ones, previews land in DIR; an
unsupported ``--fast`` is refused in one line."""

import os
import subprocess
import sys

import pytest

from backend_support import TEST_HOME, read_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


def test_cli_sweep_fast_with_previews_and_resume(tmp_path):
    pytest.importorskip("bpy")
    scene = tmp_path / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=120)
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    out, previews = tmp_path / "out", tmp_path / "previews"
    base = [ARCHVIZ, "sweep", str(scene), "--styles", "modern", "--seeds", "0-1", "--model", "tiny",
            "--controls", "depth,lines", "--long-side", "64", "--out", str(out)]
    fast = subprocess.run(base + ["--fast", "--steps", "40", "--preview-every", "2", "--previews", str(previews)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert fast.returncode == 0, fast.stderr
    assert "fast mode" in fast.stdout and "2 new image(s), 0 already on disk" in fast.stdout
    pixels, meta = read_png(out / "Camera_modern_s0.png")
    assert meta["fast"] == "LCM-LoRA" and meta["scheduler"] == "lcm" and "Fast mode: LCM-LoRA" in meta["parameters"]
    shots = sorted(previews.glob("Camera_modern_s*_step*.png"))
    assert shots, fast.stdout  # the backend made 2 x 19 previews; the sweep fetched those it saw
    assert all(read_png(p)[0].shape == pixels.shape for p in shots)  # the image's size (long side 64 <= 256)
    # the exact sweep does not take the fast images for its own, and makes new ones
    exact = subprocess.run(base + ["--steps", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert exact.returncode == 0, exact.stderr
    assert "2 new image(s), 0 already on disk" in exact.stdout
    assert "fast" not in read_png(out / "Camera_modern_s0.png")[1]


def test_cli_fast_refusal_is_one_line(tmp_path):
    pytest.importorskip("bpy")
    scene = tmp_path / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=120)
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    run = subprocess.run([ARCHVIZ, "sweep", str(scene), "--styles", "modern", "--seeds", "0", "--model", "tiny",
                          "--long-side", "64", "--fast", "--scheduler", "ddim", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("archviz sweep:")]
    assert len(lines) == 1 and "fast mode" in lines[0] and "lcm" in lines[0] and "Traceback" not in run.stderr


def test_blender_generate_fast_with_a_preview_image(tmp_path, monkeypatch):
    """The panel's Fast Mode and Preview Every: the job is fast (the LoRA in the model
    recorded on the result) and the ArchViz Preview image shows the denoising."""
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.operators import generate as gen

    scene = tmp_path / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=str(scene))
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.output_dir = 64, 40, str(tmp_path / "out")
        settings.style, settings.seed = "modern", 1
        settings.fast, settings.preview_every = True, 2
        gen.Task.current = None
        assert bpy.ops.archviz.generate() == {"FINISHED"}, gen.Task.current and gen.Task.current.message
        image = bpy.data.images["Camera_modern_s1"]
        assert "lcm-lora" in image["model"] and image["scheduler"] == "lcm"
        preview = bpy.data.images["ArchViz Preview"]
        assert preview["archviz_steps"] == 40 and 2 <= preview["archviz_step"] < 40
        assert tuple(preview.size) == tuple(image.size)
        # the Generate panel's progress box draws the preview of the running task
        from archviz_controlnet import panels

        task = gen.Task.current
        assert task.preview["step"] == preview["archviz_step"] and task.preview["style"] == "modern"
        drawn = []

        class Layout:
            def __getattr__(self, name):
                def record(*args, **kwargs):
                    drawn.append((name, kwargs.get("text"), kwargs.get("icon_value")))
                    return Layout()
                return record

        task.state = "running"  # the box is drawn while it runs
        try:
            panels.draw_progress(Layout(), task)
        finally:
            task.state = "done"
        assert any(n == "label" and t and f"s1: step {task.preview['step']}/40" in t for n, t, _i in drawn)
        assert any(n == "template_icon" for n, _t, _i in drawn)
    finally:
        gen.Task.current = None
        archviz_controlnet.unregister()
