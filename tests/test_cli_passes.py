"""``archviz passes`` as a user runs it: the installed console script in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

bpy = pytest.importorskip("bpy")

from blender_support import box, camera, fresh_scene  # noqa: E402

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


def save_scene(path, with_camera=True):
    fresh_scene(800, 600)
    box("Chair", (0, 0, 0), (1, 1, 1))
    box("Wall", (0, 3, 0), (8, 0.2, 6))
    if with_camera:
        camera("Main", location=(2, -6, 1.5))
        camera("Side", location=(-6, -2, 1.5), make_active=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return str(path)


def run(*args):
    return subprocess.run([ARCHVIZ, *args], capture_output=True, text=True, timeout=300)


def test_passes_command_writes_four_images_and_json(tmp_path):
    scene = save_scene(tmp_path / "room.blend")
    out = tmp_path / "out"
    proc = run("passes", scene, "--out", str(out), "--camera", "Side", "--long-side", "128")
    assert proc.returncode == 0, proc.stderr
    assert "from camera 'Side' at 128x96" in proc.stdout
    names = sorted(os.listdir(out))
    assert {"depth.png", "lines.png", "normal.png", "seg.png", "depth.npy", "passes.json", "passes.exr"} <= set(names)
    info = json.loads((out / "passes.json").read_text())
    assert info["camera"] == "Side" and info["resolution"] == [128, 96] and info["frame"] == 1
    assert {e["class"] for e in info["legend"]} == {"chair", "wall"}


def test_passes_command_errors_have_exit_codes_and_messages(tmp_path):
    proc = run("passes", str(tmp_path / "missing.blend"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "no such .blend file" in proc.stderr
    scene = save_scene(tmp_path / "nocam.blend", with_camera=False)
    proc = run("passes", scene, "--out", str(tmp_path / "o"))
    assert proc.returncode == 3 and "has no camera" in proc.stderr
    scene = save_scene(tmp_path / "room.blend")
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--passes", "depth,albedo")
    assert proc.returncode == 3 and "unknown pass 'albedo'" in proc.stderr
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--long-side", "100")
    assert proc.returncode == 3 and "100" in proc.stderr
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--near", "5", "--far", "2")
    assert proc.returncode == 3 and "near=5.0, far=2.0" in proc.stderr


def test_passes_command_depth_range_line_styles_and_beauty(tmp_path):
    scene = save_scene(tmp_path / "room.blend")
    out = tmp_path / "out"
    proc = run("passes", scene, "--out", str(out), "--long-side", "64", "--depth-range", "scene",
               "--line-style", "canny", "--line-styles", "mlsd,softedge", "--supersample", "1",
               "--beauty", "--beauty-samples", "2")
    assert proc.returncode == 0, proc.stderr
    assert "depth range scene" in proc.stdout and "beauty pass: CYCLES at 2 samples" in proc.stdout
    assert {"beauty.png", "lines_mlsd.png", "lines_softedge.png"} <= set(os.listdir(out))
    info = json.loads((out / "passes.json").read_text())
    assert info["depth_range"]["mode"] == "scene" and info["supersample"] == 1
    assert info["lines"]["style"] == "canny" and info["lines"]["override"] == "canny"
    assert info["beauty"]["samples"] == 2 and info["beauty"]["seconds"] > 0
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--depth-range", "manual")
    assert proc.returncode == 3 and "near=0.0, far=0.0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--line-styles", "pencil")
    assert proc.returncode == 3 and "unknown line style 'pencil'" in proc.stderr
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--supersample", "9")
    assert proc.returncode == 3 and "supersample must be 1, 2, 3 or 4, got 9" in proc.stderr
    proc = run("passes", scene, "--out", str(tmp_path / "o"), "--depth-range", "flat")
    assert proc.returncode == 2 and "flat" in proc.stderr  # argparse names the choices


@pytest.mark.parametrize("options", [
    dict(),
    dict(camera="Side", long_side=256, multiple=16, frame=3, passes=("depth", "lines"), depth_range="sequence",
         line_style="mlsd", line_styles=("canny", "softedge"), supersample=3, fallback_class="surface",
         class_table="/tmp/table.toml", beauty=True, beauty_engine="EEVEE", beauty_samples=4),
    dict(near=1.5, far=20.0, crease_angle=45.0, background_class="building", supersample=1),
])
def test_a_sweeps_child_render_gets_every_capture_option(options):
    """``archviz sweep`` renders each camera in a child ``archviz passes``: the arguments it
    builds (child.options_argv) must come back as the very same CaptureOptions."""
    import argparse

    from archviz_controlnet.blender.capture import cli as passes_cli
    from archviz_controlnet.core.render_child import options_argv
    from archviz_controlnet.blender.capture.render import CaptureOptions

    want = CaptureOptions(**options)
    parser = argparse.ArgumentParser()
    passes_cli.add_arguments(parser)
    args = parser.parse_args(options_argv("/scenes/house.blend", "/out/passes/Cam", want))
    assert passes_cli.capture_options(args) == want
    assert (args.scene, args.out) == ("/scenes/house.blend", "/out/passes/Cam")
