"""The add-on in the bpy module: registration, the render_controls operator, panel drawing."""

import os

import pytest

bpy = pytest.importorskip("bpy")

import archviz_controlnet  # noqa: E402
from blender_support import RecordingLayout, box, camera, draw, fresh_scene  # noqa: E402


@pytest.fixture
def addon():
    fresh_scene(320, 240)
    archviz_controlnet.register()
    yield
    archviz_controlnet.unregister()


def _registered_names():
    return {name for name in dir(bpy.types) if "archviz" in name.lower()}


def test_register_unregister_leaves_nothing_behind():
    fresh_scene()
    before = _registered_names()
    assert not hasattr(bpy.types.Scene, "archviz")
    from archviz_controlnet import operators, panels
    from archviz_controlnet.blender import properties

    ours = properties.classes + operators.classes + panels.classes
    for _ in range(2):  # twice: a second cycle must work as well as the first
        archviz_controlnet.register()
        try:
            added = _registered_names() - before
            assert {"ARCHVIZ_OT_render_controls", "VIEW3D_PT_archviz"} <= added
            assert all(cls.is_registered for cls in ours)
            assert bpy.context.scene.archviz.long_side == 512
            assert hasattr(bpy.ops.archviz, "render_controls")
        finally:
            archviz_controlnet.unregister()
        assert _registered_names() == before
        assert not any(cls.is_registered for cls in ours)
        assert not hasattr(bpy.types.Scene, "archviz")


def test_operator_renders_passes_and_loads_images(addon, tmp_path):
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera(location=(0, -6, 0))
    settings = bpy.context.scene.archviz
    settings.long_side = 128
    settings.use_normal = False
    assert bpy.ops.archviz.render_controls(output_dir=str(tmp_path)) == {"FINISHED"}
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".png")) == ["depth.png", "lines.png", "seg.png"]
    for name in ("depth", "lines", "seg"):
        image = bpy.data.images["archviz_" + name]
        assert tuple(image.size) == (128, 96) and image.colorspace_settings.name == "Non-Color"
    assert "archviz_normal" not in bpy.data.images


def test_operator_default_output_of_unsaved_file_goes_to_temp(addon):
    box("Chair", (0, 0, 0), (1, 1, 1))
    camera("Cam 1", location=(0, -6, 0))
    bpy.context.scene.archviz.long_side = 64
    assert bpy.ops.archviz.render_controls() == {"FINISHED"}
    path = bpy.data.images["archviz_depth"].filepath
    assert os.path.join("archviz", "passes", "Cam_1") in path and os.path.exists(path)


def test_operator_poll_and_errors_reach_the_user(addon, tmp_path):
    box("Chair", (0, 0, 0), (1, 1, 1))
    assert not bpy.ops.archviz.render_controls.poll()
    with pytest.raises(RuntimeError, match="No scene camera"):
        bpy.ops.archviz.render_controls(output_dir=str(tmp_path))
    camera(location=(0, -6, 0), target=(0, -12, 0))
    with pytest.raises(RuntimeError, match="nothing in view"):
        bpy.ops.archviz.render_controls(output_dir=str(tmp_path))
    bpy.context.scene.archviz.long_side = 100
    with pytest.raises(RuntimeError, match="multiple of 8.*100"):
        bpy.ops.archviz.render_controls(output_dir=str(tmp_path))


def test_panels_draw_without_error(addon, tmp_path):
    from archviz_controlnet import panels

    box("Chair", (0, 0, 0), (1, 1, 1))
    camera(location=(0, -6, 0))
    bpy.context.scene.archviz.long_side = 64
    bpy.ops.archviz.render_controls(output_dir=str(tmp_path))
    bpy.context.scene.archviz.depth_mode = "MANUAL"
    bpy.ops.archviz.control_preset(preset="early_depth_late_lines")
    for cls in panels.classes:
        if not issubclass(cls, bpy.types.Panel):
            continue
        calls = draw(cls, bpy.context)
        drawn = [c[1][1] for c in calls if c[0] == "prop"]
        assert calls, cls.__name__
        if cls is panels.VIEW3D_PT_archviz_results:
            assert ("label", (), {"text": "No generated images yet"}) in calls
        if cls is panels.VIEW3D_PT_archviz:
            assert ("operator", ("archviz.render_controls",), {"icon": "RENDER_STILL"}) in calls
            assert any(c[0] == "label" and c[2].get("text") == "64 x 48 px" for c in calls)
            assert sum(1 for c in calls if c[0] == "template_icon") == 4  # the four previews
        if cls is panels.VIEW3D_PT_archviz_depth_lines:
            assert "depth_near" in drawn and "depth_far" in drawn
        if cls is panels.VIEW3D_PT_archviz_generate:
            ops = [c[1][0] for c in calls if c[0] == "operator"]
            assert {"archviz.generate", "archviz.sweep", "archviz.backend_start"} <= set(ops)
    units = bpy.context.scene.archviz.units
    assert [(u.type, round(u.start, 2), round(u.end, 2)) for u in units] == [("depth", 0.0, 0.5), ("lines", 0.2, 1.0)]
    calls = []
    panels.ARCHVIZ_UL_controls.draw_item(None, bpy.context, RecordingLayout(calls), None, units[0], 0, None, "")
    assert [c[1][1] for c in calls if c[0] == "prop"] == ["type", "scale", "start", "end"]


def test_preferences_draw_when_enabled_as_an_addon():
    import addon_utils

    from archviz_controlnet.blender import preferences, properties

    fresh_scene()
    addon_utils.enable("archviz_controlnet", default_set=True)
    try:
        prefs = properties.preferences()
        assert prefs is not None and prefs.backend_mode == "LOCAL" and prefs.model == "sd15"
        for mode in ("LOCAL", "REMOTE"):
            prefs.backend_mode = mode
            calls = []
            preferences.draw_preferences(prefs, bpy.context, RecordingLayout(calls))
            drawn = {c[1][1] for c in calls if c[0] == "prop"}
            assert ("url" in drawn) == (mode == "REMOTE") and ("python" in drawn) == (mode == "LOCAL")
        # What the preferences say reaches the environment of the backend Blender starts.
        from archviz_controlnet.blender.backend import BackendSettings

        prefs.backend_mode = "LOCAL"
        prefs.ray_address, prefs.hf_cache, prefs.offline, prefs.model = "local", "/tmp/hf", True, "tiny"
        backend = BackendSettings(bpy.context)
        env = backend.backend_env()
        assert backend.url == "" and backend.model == "tiny"
        assert env["ARCHVIZ_RAY"] == "local" and env["HF_HOME"] == "/tmp/hf" and env["HF_HUB_OFFLINE"] == "1"
        prefs.ray_address = ""
        assert "ARCHVIZ_RAY" not in BackendSettings(bpy.context).backend_env()
    finally:
        addon_utils.disable("archviz_controlnet", default_set=True)
    assert not hasattr(bpy.types.Scene, "archviz")
