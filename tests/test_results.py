"""Generated images in Blender: datablocks, Apply as texture, Add to compositor, the
per-variant multilayer EXR, and their operators. Real bpy, real Cycles passes; the
"generated" PNGs are written here with known pixels (no backend needed)."""

import json
import os

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import archviz_controlnet  # noqa: E402
from archviz_controlnet.blender import results  # noqa: E402
from archviz_controlnet.blender.capture.render import CaptureOptions, render_controls  # noqa: E402
from archviz_controlnet.core.exr import read_exr  # noqa: E402
from archviz_controlnet.core.png import write_png  # noqa: E402
from archviz_controlnet.operators import results as result_ops  # noqa: E402
from blender_support import box, camera, fresh_scene, material, plane  # noqa: E402
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402

W, H = 64, 48
PARAMS = {"prompt": "a concrete loft, morning light", "negative": "blurry", "steps": 2, "cfg": 7.5,
          "scheduler": "UniPC", "controlnets": ["depth", "lines"], "scales": {"depth": 0.9, "lines": 0.6},
          "base_model": "tiny", "big_seed": 2 ** 40}


def _pattern(seed):
    """Known pixels: a gradient plus a per-seed colour, different in every row and column."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 4 % 256, y * 5 % 256, np.full_like(x, 40 * seed + 10)], axis=-1)
    return img.astype(np.uint8)


@pytest.fixture
def scene_with_passes(tmp_path):
    """A box on a floor seen by a camera, the add-on and our operators registered, real
    control passes in tmp_path/passes, and two generated PNGs in tmp_path/out."""
    scene = fresh_scene(W, H)
    archviz_controlnet.register()
    ours = [cls for cls in result_ops.classes if not cls.is_registered]  # the lead may list them already
    for cls in ours:
        bpy.utils.register_class(cls)
    red = material("Red")
    box("Table", (0, 0, 0), (1.5, 1, 1), material=red)
    plane("Floor", (0, 0, -0.5), size=8)
    cam = camera("Cam", location=(1.0, -6.0, 1.5), target=(0, 0, 0))
    passes = render_controls(scene, str(tmp_path / "passes"), CaptureOptions(long_side=W))
    assert passes.info["resolution"] == [W, H]
    out = tmp_path / "out"
    out.mkdir()
    pngs = []
    for seed in (0, 1):
        path = out / f"Cam_modern_s{seed}.png"
        write_png(str(path), _pattern(seed), text={"prompt": "a loft", "seed": seed, "style": "modern"})
        pngs.append(str(path))
    yield scene, cam, passes, pngs
    for cls in reversed(ours):
        bpy.utils.unregister_class(cls)
    archviz_controlnet.unregister()


# ---------------------------------------------------------------- datablocks

def test_load_result_image_names_props_and_reload(scene_with_passes):
    _scene, _cam, _passes, pngs = scene_with_passes
    image = results.load_result_image(pngs[0], "Cam", "modern", 0, PARAMS)
    assert image.name == "Cam_modern_s0"
    assert tuple(image.size) == (W, H)
    assert image.filepath == pngs[0] and os.path.isabs(image.filepath) and not image.packed_file
    assert image["prompt"] == "a concrete loft, morning light" and image["steps"] == 2 and image["cfg"] == 7.5
    assert json.loads(image["controlnets"]) == ["depth", "lines"]
    assert json.loads(image["scales"]) == {"depth": 0.9, "lines": 0.6}
    assert image["big_seed"] == str(2 ** 40)  # beyond a 32-bit custom property: kept exactly as text
    assert (image["archviz_path"], image["archviz_camera"], image["archviz_style"], image["archviz_seed"]) == (
        pngs[0], "Cam", "modern", 0)
    pixels = np.empty(W * H * 4, np.float32)
    image.pixels.foreach_get(pixels)
    top_left = pixels.reshape(H, W, 4)[::-1][0, 0, :3]
    np.testing.assert_allclose(top_left * 255, _pattern(0)[0, 0], atol=1e-3)

    # Reloading the same name from another file replaces the datablock, its pixels and props.
    count = len(bpy.data.images)
    again = results.load_result_image(pngs[1], "Cam", "modern", 0, {"prompt": "second"})
    assert again == image and len(bpy.data.images) == count
    assert again.filepath == pngs[1] and again["prompt"] == "second"
    assert "steps" not in again and "controlnets" not in again  # stale parameters gone
    again.pixels.foreach_get(pixels)
    assert round(pixels.reshape(H, W, 4)[::-1][0, 0, 2] * 255) == _pattern(1)[0, 0, 2]


def test_load_result_image_reads_png_metadata_by_default(scene_with_passes):
    pngs = scene_with_passes[3]
    image = results.load_result_image(pngs[1], "Cam", "modern", 1)
    assert (image["prompt"], image["seed"], image["style"]) == ("a loft", "1", "modern")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        results.load_result_image(os.path.join(os.path.dirname(pngs[0]), "missing.png"), "Cam", "x", 0, {})


def test_the_preview_image_is_no_result(scene_with_passes, tmp_path):
    """The preview of an image still denoising carries its style and seed, but Apply as
    Texture, Add to Compositor and the Results list take only finished images."""
    pngs = scene_with_passes[3]
    result = results.load_result_image(pngs[0], "Cam", "modern", 0, PARAMS)
    with open(pngs[1], "rb") as fh:
        preview = results.show_preview(fh.read(), str(tmp_path), {"camera": "Cam", "style": "modern", "seed": 1,
                                                                  "step": 2, "steps": 4})
    assert preview["archviz_style"] == "modern" and preview.preview is not None
    assert results.result_images() == [result]


def test_show_in_image_editor(scene_with_passes):
    image = results.load_result_image(scene_with_passes[3][0], "Cam", "modern", 0, {})
    screen = bpy.context.screen
    assert not any(a.type == "IMAGE_EDITOR" for a in screen.areas)
    assert results.show_in_image_editor(bpy.context, image) is False  # nothing to show it in
    assert results.show_in_image_editor(type("Ctx", (), {"screen": None})(), image) is False
    area = screen.areas[0]
    old = area.type
    area.type = "IMAGE_EDITOR"
    try:
        assert results.show_in_image_editor(bpy.context, image) is True
        assert area.spaces.active.image == image
    finally:
        area.type = old


# ---------------------------------------------------------------- apply as texture

def _projected_uvs(obj):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        uv = mesh.uv_layers[results.UV_MAP_NAME].data
        out = []
        for loop in mesh.loops:
            world = ev.matrix_world @ mesh.vertices[loop.vertex_index].co
            out.append((tuple(uv[loop.index].uv), world))
        return out
    finally:
        ev.to_mesh_clear()


def test_apply_projection_modifier_uvs_material_and_slots(scene_with_passes):
    scene, cam, _passes, pngs = scene_with_passes
    image = results.load_result_image(pngs[0], "Cam", "modern", 0, {})
    table, floor = bpy.data.objects["Table"], bpy.data.objects["Floor"]
    mat = results.apply_projection(image, cam, [table, floor])

    assert mat.name == "ArchViz Cam_modern_s0"
    for obj in (table, floor):
        mods = [m for m in obj.modifiers if m.type == "UV_PROJECT"]
        assert len(mods) == 1 and mods[0].name == results.MODIFIER_NAME
        mod = mods[0]
        assert mod.uv_layer == results.UV_MAP_NAME and mod.projector_count == 1
        assert mod.projectors[0].object == cam
        assert mod.aspect_x / mod.aspect_y == pytest.approx(W / H)
        assert results.UV_MAP_NAME in obj.data.uv_layers
        assert len(obj.material_slots) >= 1 and all(slot.material == mat for slot in obj.material_slots)
    assert json.loads(table[results.PREVIOUS_MATERIALS_KEY]) == ["Red"]
    assert json.loads(floor[results.PREVIOUS_MATERIALS_KEY]) == []

    nodes = mat.node_tree.nodes
    tex = [n for n in nodes if n.bl_idname == "ShaderNodeTexImage"]
    assert len(tex) == 1 and tex[0].image == image and tex[0].extension == "CLIP"
    uv_node = tex[0].inputs["Vector"].links[0].from_node
    assert uv_node.bl_idname == "ShaderNodeUVMap" and uv_node.uv_map == results.UV_MAP_NAME
    shader = tex[0].outputs["Color"].links[0].to_node
    assert shader.bl_idname == "ShaderNodeEmission"
    assert shader.outputs[0].links[0].to_node.bl_idname == "ShaderNodeOutputMaterial"

    # The evaluated UVs are where the camera sees each vertex (scene has the image's aspect).
    checked = 0
    for uv, world in _projected_uvs(table):
        co = world_to_camera_view(scene, cam, world)
        assert uv == pytest.approx((co.x, co.y), abs=1e-4)
        checked += 1
    assert checked == 24


def test_apply_projection_twice_keeps_originals_and_remove_restores(scene_with_passes):
    _scene, cam, _passes, pngs = scene_with_passes
    first = results.load_result_image(pngs[0], "Cam", "modern", 0, {})
    second = results.load_result_image(pngs[1], "Cam", "modern", 1, {})
    table = bpy.data.objects["Table"]
    results.apply_projection(first, cam, [table])
    mat2 = results.apply_projection(second, cam, [table])
    assert [m.type for m in table.modifiers] == ["UV_PROJECT"]  # updated, not stacked
    assert len([uv for uv in table.data.uv_layers if uv.name == results.UV_MAP_NAME]) == 1
    assert table.material_slots[0].material == mat2
    assert json.loads(table[results.PREVIOUS_MATERIALS_KEY]) == ["Red"]
    results.remove_projection([table])
    assert table.material_slots[0].material.name == "Red"
    assert not table.modifiers and results.UV_MAP_NAME not in table.data.uv_layers
    assert results.PREVIOUS_MATERIALS_KEY not in table


def test_apply_projection_refuses_non_meshes_and_non_cameras(scene_with_passes):
    _scene, cam, _passes, pngs = scene_with_passes
    image = results.load_result_image(pngs[0], "Cam", "modern", 0, {})
    table = bpy.data.objects["Table"]
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    with pytest.raises(ValueError, match=r"mesh objects only; not on: Lamp \(light\), Cam \(camera\)"):
        results.apply_projection(image, cam, [table, lamp, cam])
    assert not table.modifiers and table.material_slots[0].material.name == "Red"  # nothing half-done
    with pytest.raises(ValueError, match="'Table' \\(mesh\\)"):
        results.apply_projection(image, table, [table])
    with pytest.raises(ValueError, match="select mesh objects"):
        results.apply_projection(image, cam, [])


# ---------------------------------------------------------------- compositor

def _link(tree, from_node, to_node, to_socket):
    return any(l.from_node.name == from_node and l.to_node.name == to_node and l.to_socket.name == to_socket
               for l in tree.links)


def test_add_to_compositor_builds_switch_over_render_layers(scene_with_passes):
    scene, _cam, _passes, pngs = scene_with_passes
    images = [results.load_result_image(p, "Cam", "modern", s, {}) for s, p in enumerate(pngs)]
    assert scene.compositing_node_group is None
    tree = results.add_to_compositor(scene, images, active=1)
    assert scene.compositing_node_group == tree and tree.bl_idname == "CompositorNodeTree"
    kinds = sorted(n.bl_idname for n in tree.nodes)
    assert kinds == sorted(["CompositorNodeRLayers", "CompositorNodeImage", "CompositorNodeImage",
                            "GeometryNodeMenuSwitch", "CompositorNodeAlphaOver", "NodeGroupOutput"])
    switch = tree.nodes["ArchViz Switch"]
    assert [item.name for item in switch.enum_items] == ["Cam_modern_s0", "Cam_modern_s1"]
    assert switch.inputs["Menu"].default_value == "Cam_modern_s1" == results.active_variant(tree)
    for image in images:
        node = tree.nodes["ArchViz Variant " + image.name]
        assert node.image == image
        assert _link(tree, node.name, "ArchViz Switch", image.name)
    assert _link(tree, "ArchViz Switch", "ArchViz Over", "Foreground")
    assert _link(tree, "ArchViz Render Layers", "ArchViz Over", "Background")
    out = [n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"][0]
    assert _link(tree, "ArchViz Over", out.name, "Image")
    assert [(i.name, i.in_out) for i in tree.interface.items_tree] == [("Image", "OUTPUT")]

    # A second call updates the same nodes: new active, one variant dropped.
    count = len(tree.nodes)
    assert results.add_to_compositor(scene, images, active=0) == tree
    assert len(tree.nodes) == count and len(bpy.data.node_groups) == 1
    assert results.active_variant(tree) == "Cam_modern_s0"
    results.add_to_compositor(scene, images[1:], active=0)
    assert "ArchViz Variant Cam_modern_s0" not in tree.nodes and len(tree.nodes) == count - 1
    assert [item.name for item in switch.enum_items] == ["Cam_modern_s1"]
    with pytest.raises(ValueError, match="index 2 is out of range for 2"):
        results.add_to_compositor(scene, images, active=2)


def test_add_to_compositor_extends_an_existing_tree(scene_with_passes):
    scene = scene_with_passes[0]
    images = [results.load_result_image(p, "Cam", "modern", s, {}) for s, p in enumerate(scene_with_passes[3])]
    tree = bpy.data.node_groups.new("My Comp", "CompositorNodeTree")
    tree.interface.new_socket(name="Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    rl = tree.nodes.new("CompositorNodeRLayers")
    glare = tree.nodes.new("CompositorNodeGlare")
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(rl.outputs["Image"], glare.inputs["Image"])
    tree.links.new(glare.outputs["Image"], out.inputs["Image"])
    scene.compositing_node_group = tree
    assert results.add_to_compositor(scene, images) == tree
    assert {rl.name, glare.name, out.name} <= set(tree.nodes.keys())
    assert len([n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"]) == 1
    assert _link(tree, glare.name, "ArchViz Over", "Background")  # the user's chain stays under the variant
    assert _link(tree, "ArchViz Over", out.name, "Image")
    assert len(tree.interface.items_tree) == 1


def _render_still(scene, path, view_transform: str) -> np.ndarray:
    """One Cycles sample of the scene through its compositor, written as a PNG and read back (RGB)."""
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.view_settings.view_transform = view_transform
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return results.read_image_bytes(str(path))[:, :, :3]


def test_compositor_render_shows_the_active_variant(scene_with_passes, tmp_path):
    scene, _cam, _passes, pngs = scene_with_passes
    images = [results.load_result_image(p, "Cam", "modern", s, {}) for s, p in enumerate(pngs)]
    results.add_to_compositor(scene, images, active=1)
    got = _render_still(scene, tmp_path / "comp.png", "Standard").astype(int)
    assert got.shape == (H, W, 3)
    assert np.abs(got - _pattern(1)).max() <= 1  # sRGB -> linear -> sRGB rounding
    assert np.abs(got - _pattern(0)).max() > 30


# ---------------------------------------------------------------- multilayer EXR

def test_write_variant_exr_layers_and_values(scene_with_passes, tmp_path):
    _scene, _cam, passes, pngs = scene_with_passes
    exr = tmp_path / "Cam_modern_s0.exr"
    names = results.write_variant_exr(str(exr), pngs[0], passes.out_dir)
    expected = {"ArchViz.AI.R", "ArchViz.AI.G", "ArchViz.AI.B", "ArchViz.Depth.Z", "ArchViz.Lines.V",
                "ArchViz.Normal.R", "ArchViz.Normal.G", "ArchViz.Normal.B",
                "ArchViz.Seg.R", "ArchViz.Seg.G", "ArchViz.Seg.B"}
    assert set(names) == expected
    channels = read_exr(str(exr))
    assert set(channels) == expected
    ai = _pattern(0).astype(np.float32) / np.float32(255)
    for index, c in enumerate("RGB"):
        assert np.array_equal(channels[f"ArchViz.AI.{c}"], ai[:, :, index]), c
    depth = np.load(os.path.join(passes.out_dir, "depth.npy"))
    finite = np.isfinite(depth)
    assert finite.any() and (~finite).any()  # the camera sees geometry and background
    assert np.array_equal(channels["ArchViz.Depth.Z"][finite], depth[finite])
    assert np.all(channels["ArchViz.Depth.Z"][~finite] == results.DEPTH_BACKGROUND)
    seg = results.read_image_bytes(passes.files["seg"])
    assert np.array_equal(channels["ArchViz.Seg.G"], seg[:, :, 1].astype(np.float32) / np.float32(255))
    lines = channels["ArchViz.Lines.V"]
    line_png = results.read_image_bytes(passes.files["lines"])  # lineart strokes by default: anti-aliased
    assert np.array_equal(lines, line_png[:, :, 0].astype(np.float32) / np.float32(255))
    assert lines.min() == 0.0 and lines.max() == 1.0  # white lines on black

    # Blender reads it as a multilayer image with the layer's passes.
    image = bpy.data.images.load(str(exr))
    tree = bpy.data.node_groups.new("Probe", "CompositorNodeTree")
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    assert image.type == "MULTILAYER"
    assert node.layer == "ArchViz"
    assert {s.name for s in node.outputs if s.enabled} == {"AI", "Depth", "Lines", "Normal", "Seg"}
    # ...and the values it reads are ours: composite the AI pass alone, written with the Raw view.
    tree.interface.new_socket(name="Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(node.outputs["AI"], out.inputs["Image"])
    scene = bpy.context.scene
    scene.compositing_node_group = tree
    assert np.array_equal(_render_still(scene, tmp_path / "ai.png", "Raw"), _pattern(0))


def test_write_variant_exr_resamples_other_sizes_and_skips_missing_passes(scene_with_passes, tmp_path):
    _scene, _cam, passes, _pngs = scene_with_passes
    big = np.repeat(np.repeat(_pattern(2), 2, axis=0), 2, axis=1)  # the AI image at twice the size
    png = tmp_path / "big.png"
    write_png(str(png), big)
    os.remove(os.path.join(passes.out_dir, "normal.png"))
    exr = tmp_path / "big.exr"
    names = results.write_variant_exr(str(exr), str(png), passes.out_dir)
    assert not any("Normal" in n for n in names)
    channels = read_exr(str(exr))
    assert channels["ArchViz.AI.R"].shape == (2 * H, 2 * W)
    seg = results.read_image_bytes(passes.files["seg"])[:, :, 0].astype(np.float32) / np.float32(255)
    assert np.array_equal(channels["ArchViz.Seg.R"][::2, ::2], seg)  # nearest: colours stay exact
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results.write_variant_exr(str(exr), str(png), str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- operators

def test_operators_run_and_report_errors(scene_with_passes):
    scene, cam, _passes, pngs = scene_with_passes
    images = [results.load_result_image(p, "Cam", "modern", s, {}) for s, p in enumerate(pngs)]
    table, floor = bpy.data.objects["Table"], bpy.data.objects["Floor"]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    assert not bpy.ops.archviz.apply_texture.poll()
    with pytest.raises(RuntimeError, match="Select the mesh objects"):
        bpy.ops.archviz.apply_texture()
    table.select_set(True)
    floor.select_set(True)
    cam.select_set(True)  # not a mesh: left alone
    assert bpy.ops.archviz.apply_texture() == {"FINISHED"}  # default: the latest result, its camera
    assert table.material_slots[0].material.name == "ArchViz Cam_modern_s1"
    assert floor.modifiers[results.MODIFIER_NAME].projectors[0].object == cam
    assert bpy.ops.archviz.apply_texture(image="Cam_modern_s0") == {"FINISHED"}
    assert table.material_slots[0].material.name == "ArchViz Cam_modern_s0"
    with pytest.raises(RuntimeError, match="No image named 'nope'"):
        bpy.ops.archviz.apply_texture(image="nope")
    with pytest.raises(RuntimeError, match="No camera named 'Ghost'"):
        bpy.ops.archviz.apply_texture(image="Cam_modern_s0", camera="Ghost")
    with pytest.raises(RuntimeError, match="projector must be a camera.*'Table'"):
        bpy.ops.archviz.apply_texture(image="Cam_modern_s0", camera="Table")

    assert bpy.ops.archviz.add_to_compositor(active=1) == {"FINISHED"}  # default: every result
    tree = scene.compositing_node_group
    assert [i.name for i in tree.nodes["ArchViz Switch"].enum_items] == [img.name for img in images]
    assert results.active_variant(tree) == "Cam_modern_s1"
    assert bpy.ops.archviz.add_to_compositor(images="Cam_modern_s1, Cam_modern_s0", active=0) == {"FINISHED"}
    assert results.active_variant(tree) == "Cam_modern_s1"
    with pytest.raises(RuntimeError, match="No image named 'nope'"):
        bpy.ops.archviz.add_to_compositor(images="Cam_modern_s0,nope")
    with pytest.raises(RuntimeError, match="index 5 is out of range"):
        bpy.ops.archviz.add_to_compositor(active=5)
