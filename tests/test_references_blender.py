"""The References list in Blender (the bpy module in the project venv): images from disk and
datablocks, each with its scale, reach the job and every image's parameters through a real
local backend with the tiny SD 1.5 model; a bad one is the operator's one-line error; the
panel draws; presets' ``[reference]`` images are read relative to the preset file."""

import json
import os

import pytest

bpy = pytest.importorskip("bpy")

import numpy as np  # noqa: E402

import archviz_controlnet  # noqa: E402
from backend_support import TEST_HOME, png_bytes, read_png  # noqa: E402
from blender_support import RecordingLayout, box, camera, draw, fresh_scene, plane  # noqa: E402


def _board(seed):
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), 16, 0), 16, 1)


def test_references_list_generates_and_records_them(tmp_path, monkeypatch):
    from archviz_controlnet import panels
    from archviz_controlnet.blender import backend, tasks

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fresh_scene(64, 64)
    box("Wall", (0, 2, 0), (4, 0.2, 3))
    plane("Floor", (0, 0, -1), 8)
    camera("Camera", (0, -5, 0.5), (0, 0, 0))
    board = tmp_path / "board.png"
    board.write_bytes(png_bytes(_board(3)))
    painted = bpy.data.images.new("Painted", 64, 64)  # a datablock with no file: sent as its pixels
    painted.pixels.foreach_set(np.tile([0.8, 0.4, 0.1, 1.0], 64 * 64).astype(np.float32))
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.supersample = 64, 2, 1
        settings.output_dir = str(tmp_path / "out")
        bpy.ops.archviz.reference_add()
        settings.references[0].path, settings.references[0].scale = str(board), 0.7
        bpy.ops.archviz.reference_add()
        ref = settings.references[1]
        ref.source, ref.image, ref.scale = "IMAGE", painted, 1.3
        calls = draw(panels.references.VIEW3D_PT_archviz_references, bpy.context)
        assert ("template_list", ("ARCHVIZ_UL_references", "", settings, "references", settings,
                                  "active_reference"), {"rows": 2}) in calls
        assert [c[1][1] for c in calls if c[0] == "prop"] == ["source", "image", "scale"]
        row = []
        panels.references.ARCHVIZ_UL_references.draw_item(None, bpy.context, RecordingLayout(row), None, ref, 0, None, "")
        assert ("label", (), {"text": "Painted", "icon": "IMAGE_DATA"}) in row

        assert bpy.ops.archviz.generate() == {"FINISHED"}
        made = [i for i in bpy.data.images if "archviz_style" in i]
        assert len(made) == 1
        _pixels, meta = read_png(made[0]["archviz_path"])
        params = json.loads(meta["archviz"])["params"]
        assert sorted(r["scale"] for r in params["references"]) == [0.7, 1.3]
        assert params["model"]["references"].endswith("sd15/ip-adapter")

        dot = bpy.data.images.new("Dot", 1, 1)
        ref.image = dot
        with pytest.raises(RuntimeError, match="'Dot' is 1x1 px, too small"):
            bpy.ops.archviz.generate()  # the operator's one-line error report
        bpy.ops.archviz.reference_remove()
        bpy.ops.archviz.reference_remove()
        assert not len(settings.references)
    finally:
        tasks.Task.current = None
        backend.stop_started_backends()
        archviz_controlnet.unregister()


def test_preset_reference_images_are_relative_to_the_preset_file(tmp_path):
    from archviz_controlnet.core.presets import PresetError, load_presets
    from archviz_controlnet.core.references import ReferenceError, preset_references

    folder = tmp_path / "presets"
    (folder / "boards").mkdir(parents=True)
    (folder / "boards" / "oak.png").write_bytes(png_bytes(_board(4)))
    (folder / "oak.toml").write_text('prompt = "an oak interior"\n[reference]\nimages = ["boards/oak.png"]\n'
                                     'scale = 0.6\n')
    (folder / "plain.toml").write_text('prompt = "a plain interior"\n')
    presets = load_presets([folder], include_user=False)
    assert presets["oak"].references == (str(folder / "boards" / "oak.png"),)
    assert preset_references(presets, ["oak"]) == ([str(folder / "boards" / "oak.png")], 0.6, "oak")
    assert preset_references(presets, ["plain"]) == ([], None, "")
    with pytest.raises(ReferenceError, match="'oak' has \\[reference\\] images in its preset and 'plain' has no"):
        preset_references(presets, ["oak", "plain"])
    (folder / "bad.toml").write_text('prompt = "x"\n[reference]\nimages = "oak.png"\n')
    with pytest.raises(PresetError, match="reference.images: expected a list of image paths"):
        load_presets([folder], include_user=False)
