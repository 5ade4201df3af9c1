"""Scenes that cannot give control images (issue 6), with real bpy: each is a CaptureError
that names the camera or objects and says what to do; scenes that can (linked library
data, a collection instance, faceless helpers next to real geometry) just work."""

import os
import re

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

from blender_support import box, camera, fresh_scene, material  # noqa: E402

from archviz_controlnet.blender.capture.render import CaptureError, CaptureOptions, render_controls  # noqa: E402

CHAIR = [204, 70, 3]  # ADE20K chair


def capture(tmp_path, name="passes", **kw):
    kw.setdefault("long_side", 64)
    return render_controls(bpy.context.scene, str(tmp_path / name), CaptureOptions(**kw))


def _faceless(name="Wire"):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(0, 0, 0), (1, 0, 0)], [(0, 1)], [])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _seg_colours(result):
    seg = np.array(Image.open(result.files["seg"]))
    return np.unique(seg.reshape(-1, 3), axis=0).tolist()


@pytest.mark.parametrize("setup, message", [
    (lambda: box("Chair", (0, 0, 0), (1, 1, 1)), "has no camera"),
    (lambda: (box("Chair", (0, 0, 0), (1, 1, 1)), camera(location=(0, -6, 0), target=(0, -12, 0))),
     "nothing in view of camera 'Camera'"),
    (lambda: (box("Column", (0, 0, 0), (2, 2, 2)), camera(location=(0, 0, 0), target=(0, 5, 0))),
     "camera 'Camera' is inside object 'Column'"),
    (lambda: (box("Chair", (0, 0, 0), (1, 1, 1)), setattr(camera(), "location", (float("nan"), 0, 0))),
     "camera 'Camera' has a location, rotation or scale that is not a finite number"),
    (lambda: (box("Chair", (0, 0, 0), (1, 1, 1)), setattr(box("Broken", (0, 0, 0), (1, 1, 1)), "location",
                                                            (0, float("nan"), 0)), camera()),
     "object(s) 'Broken' have a location, rotation, scale or vertices that are not finite"),
    (lambda: (box("Chair", (1e30, 0, 0), (1, 1, 1)), camera(location=(1e30, -6, 0), target=(1e30, 0, 0))),
     "is 1e+30 m from the origin"),
    (lambda: (_faceless(), camera()), "'Wire' have no faces"),
    (lambda: camera(), "has no visible geometry"),
])
def test_scenes_that_cannot_give_passes_say_why(tmp_path, setup, message):
    fresh_scene(64, 64)
    setup()
    with pytest.raises(CaptureError, match=re.escape(message)):
        capture(tmp_path)
    assert not [p for p in os.listdir(tmp_path / "passes") if p.endswith(".png")] if (tmp_path / "passes").exists() else True


def test_far_stray_object_and_faceless_helpers_do_not_spoil_the_depth_range(tmp_path):
    fresh_scene(64, 64)
    box("Chair", (0, 0, 0), (1, 1, 1))
    box("Stray", (1e30, 0, 0), (1, 1, 1))  # beyond every clip end: not rendered, not in the range
    _faceless()
    camera()
    result = capture(tmp_path, depth_range="scene")
    assert result.info["depth_range"]["far"] < 10
    depth = np.array(Image.open(result.files["depth"]))
    assert depth.max() > 200 and depth.min() == 0  # the chair is bright, the background black


def test_linked_library_object_and_collection_instance(tmp_path):
    fresh_scene(64, 64)
    coll = bpy.data.collections.new("Furniture")
    bpy.context.scene.collection.children.link(coll)
    box("Chair", (0, 0, 0), (1, 1, 1), collection=coll, material=material("Oak"))
    lib = str(tmp_path / "library.blend")
    bpy.data.libraries.write(lib, {coll}, fake_user=True)

    fresh_scene(64, 64)  # linked object placed directly
    with bpy.data.libraries.load(lib, link=True) as (_src, dst):
        dst.objects = ["Chair"]
    bpy.context.scene.collection.objects.link(dst.objects[0])
    assert dst.objects[0].library is not None
    camera()
    assert CHAIR in _seg_colours(capture(tmp_path, "linked"))
    assert dst.objects[0].pass_index == 0  # linked data is left as it was

    fresh_scene(64, 64)  # a linked collection placed by an instancing empty (the usual way)
    with bpy.data.libraries.load(lib, link=True) as (_src, dst):
        dst.collections = ["Furniture"]
    empty = bpy.data.objects.new("FurnitureInstance", None)
    empty.instance_type = "COLLECTION"
    empty.instance_collection = dst.collections[0]
    empty.location = (0.5, 0, 0)
    bpy.context.scene.collection.objects.link(empty)
    camera()
    result = capture(tmp_path, "instanced")
    assert CHAIR in _seg_colours(result) and "Chair" in result.info["objects"]


def test_output_folder_that_cannot_be_written(tmp_path):
    fresh_scene(64, 64)
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CaptureError, match="cannot create output folder .*a-file/passes"):
        render_controls(bpy.context.scene, str(blocker / "passes"), CaptureOptions(long_side=64))
    if os.geteuid() != 0:  # root writes anywhere: the permission case only means something for users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CaptureError, match="is not writable"):
            render_controls(bpy.context.scene, str(locked), CaptureOptions(long_side=64))


def test_unsaved_blend_goes_to_the_temp_folder_with_a_warning(tmp_path, monkeypatch):
    import tempfile

    import archviz_controlnet
    from archviz_controlnet.blender.properties import output_root

    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.data.filepath == ""
    archviz_controlnet.register()
    try:
        root, unsaved = output_root(bpy.context.scene.archviz)
        assert unsaved and root.startswith(tempfile.gettempdir())
    finally:
        archviz_controlnet.unregister()


def test_a_local_backend_is_restarted_when_a_run_needs_another_output_folder(tmp_path, monkeypatch):
    from archviz_controlnet.blender import backend as blender_backend
    from backend_support import TEST_HOME

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    a, b = tmp_path / "scene-a", tmp_path / "scene-b"
    try:
        _client, first = blender_backend.connect(device="cpu", output_roots=[str(a)])
        assert "--output-root" in first.command() and str(a) in first.command()
        _client, same = blender_backend.connect(device="cpu", output_roots=[str(a / "sub")])
        assert same is first  # already allowed: reused
        client, second = blender_backend.connect(device="cpu", output_roots=[str(b)])
        assert second is not first and not first.alive()
        assert second.covers([str(a), str(b)])  # both folders allowed now
        client.health()
    finally:
        blender_backend.stop_started_backends()
