"""The Blender side of upscales and region edits, with real bpy, real Cycles passes and the
real tiny backend: a region edit of the floor made by ``archviz sweep``, previewed as its mask
over the image; the Upscale operator running ``archviz upscale`` in the backend's
interpreter, its progress counting tiles, its result an image datablock with its parameters
that Apply as Texture and Add to Compositor take; the bad cases as one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backend_support import TEST_HOME, read_png

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def region_edit(tmp_path_factory):
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("upscale_blender")
    scene = folder / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    made = subprocess.run([ARCHVIZ, "sweep", str(scene), "--styles", "modern", "--seeds", "3", "--model", "tiny",
                           "--long-side", "64", "--steps", "4", "--supersample", "1", "--region", "floor",
                           "--out", str(folder / "out")], capture_output=True, text=True, timeout=600, env=env)
    assert made.returncode == 0, made.stderr
    image = next(p for p in (folder / "out").iterdir() if p.name.endswith("_s3.png"))
    return str(scene), str(image)


def pixels_of(image):
    width, height = image.size
    flat = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, image.channels)[::-1]


def test_region_mask_preview_and_the_upscale_operator(region_edit, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.blender import backend, results, upscaling

    scene, path = region_edit
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=scene)
    archviz_controlnet.register()
    try:
        source = results.load_result_image(path, "Camera", "modern", 3)
        pixels, meta = read_png(path)
        mask, _ = read_png(os.path.join(os.path.dirname(path), "Camera_region_mask.png"))
        alpha = mask[..., 0] / 255.0
        assert 0 < (alpha > 0).mean() < 1 and float(meta["region_coverage"]) == pytest.approx((alpha > 0).mean(), abs=1e-4)

        # the region edit previewed as its mask over the image
        assert bpy.ops.archviz.show_region_mask(image=source.name) == {"FINISHED"}
        preview = bpy.data.images[source.name + results.REGION_PREVIEW_SUFFIX]
        shown = pixels_of(preview)[..., :3]
        assert shown.shape == pixels.shape
        outside, inside = alpha == 0, alpha == 1
        assert np.abs(shown[outside] - pixels[outside] / 255.0).max() < 1 / 255 + 1e-6  # untouched
        tinted = pixels[inside] / 255.0 * 0.4 + np.array(results.REGION_TINT) * 0.6
        assert np.abs(shown[inside] - tinted).max() < 1 / 255 + 1e-6
        assert "archviz_style" not in preview  # a preview, not a result

        # Upscale 2x in tiles of 64 px: progress counts the tiles, the result is a datablock
        assert bpy.ops.archviz.upscale(image=source.name, scale="2", tile=64, overlap=16) == {"FINISHED"}
        run = upscaling.UpscaleRun.current
        assert run.state == "done" and run.tiles > 1 and run.tile == run.tiles
        assert len(run.tile_seconds) == run.tiles  # one progress event per tile
        big = bpy.data.images[run.result]
        assert big.name == f"{source.name}_x2" and tuple(big.size) == (2 * source.size[0], 2 * source.size[1])
        assert big["archviz_camera"] == "Camera" and big["archviz_upscale_of"] == source.name
        assert big["archviz_scale"] == 2 and big in results.result_images()
        params = json.loads(big["archviz"])["params"]
        assert params["scale"] == 2 and params["tile"] == 64 and params["source"]["seed"] == 3
        assert params["source"]["region"]["mask_sha256"] == meta["mask_sha256"]
        assert os.path.dirname(big["archviz_path"]) == os.path.dirname(path)

        # Apply as Texture and Add to Compositor take it like any result
        for obj in bpy.context.view_layer.objects:
            obj.select_set(obj.name == "Sofa")
        bpy.context.view_layer.objects.active = bpy.data.objects["Sofa"]
        assert bpy.ops.archviz.apply_texture(image=big.name) == {"FINISHED"}
        material = bpy.data.objects["Sofa"].material_slots[0].material
        assert material["archviz_image"] == big.name
        assert bpy.data.objects["Sofa"].modifiers[results.MODIFIER_NAME].projectors[0].object.name == "Camera"
        assert bpy.ops.archviz.add_to_compositor(images=f"{source.name},{big.name}", active=1) == {"FINISHED"}
        assert results.active_variant(bpy.context.scene.compositing_node_group) == big.name

        # again: the same parameters, kept
        assert bpy.ops.archviz.upscale(image=source.name, scale="2", tile=64, overlap=16) == {"FINISHED"}
        assert upscaling.UpscaleRun.current.message.endswith("kept (made before with the same parameters)")

        # bad cases: one line each, naming the value
        with pytest.raises(RuntimeError, match=r"is not a region edit \(its parameters have no mask\)"):
            bpy.ops.archviz.show_region_mask(image=big.name)
        monkeypatch.setenv("ARCHVIZ_UPSCALE_MAX_PIXELS", "20000")
        with pytest.raises(RuntimeError, match=r"--scale 4: \d+x\d+ = [\d,]+ pixels is over the limit of 20,000 "
                                               r"pixels"):
            bpy.ops.archviz.upscale(image=source.name, scale="4")
        with pytest.raises(RuntimeError, match=r"'nope' is not an ArchViz result"):
            bpy.data.images.new("nope", 4, 4)
            bpy.ops.archviz.upscale(image="nope")
    finally:
        upscaling.UpscaleRun.current = None
        backend.stop_started_backends()
        archviz_controlnet.unregister()
