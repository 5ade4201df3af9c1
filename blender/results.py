"""Images in Blender: the control passes as datablocks, generated images with their
generation parameters, the contact sheets, the Image Editor, "Apply as texture" (a
camera-projected material), "Add to compositor" (a switch over the variants over the
render layers) and the per-variant multilayer EXR.

Blender-side code: bpy, stdlib and numpy only. The PNGs stay on disk where the backend
wrote them; nothing here packs or rewrites them.
"""

import json
import os
import struct
import time

import bpy
import numpy as np

from ..core.exr import write_exr
from ..core.jobs import safe_name, sidecar_filename
from . import compat

# Names other code and tests rely on.
CONTROL_IMAGE_PREFIX = "archviz_"  # the control passes' datablocks: archviz_depth, archviz_lines, ...
UV_MAP_NAME = "ArchViz Projection"
MODIFIER_NAME = "ArchViz Projection"
MATERIAL_PREFIX = "ArchViz "
PREVIOUS_MATERIALS_KEY = "archviz_previous_materials"
COMPOSITOR_GROUP_NAME = compat.COMPOSITOR_GROUP_NAME
NODE_RENDER_LAYERS = "ArchViz Render Layers"
NODE_SWITCH = "ArchViz Switch"
NODE_OVER = "ArchViz Over"
NODE_OUTPUT = "ArchViz Output"
NODE_VARIANT_PREFIX = "ArchViz Variant "
EXR_LAYER = "ArchViz"
DEPTH_BACKGROUND = 1.0e10  # Depth.Z where depth.npy says inf (no geometry), as Cycles writes it

_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_MAX_KEY = 63  # Blender's limit on custom property names


# ---------------------------------------------------------------- datablocks

def result_name(camera_name, style, seed):
    return f"{camera_name}_{style}_s{seed}"


def read_png_text(path):
    """The tEXt chunks of a PNG as {key: value} (latin-1), e.g. the backend's metadata."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    text, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        if kind == b"IEND":
            break
        pos += 12 + length
    return text


def _property_value(value):
    """What a custom property can hold: str, bool, float, 32-bit int; the rest as JSON
    (lists, dicts, None) or as a string (ints beyond 32 bits, e.g. large seeds)."""
    if isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if _INT32[0] <= value <= _INT32[1] else str(value)
    if isinstance(value, np.floating):
        return float(value)
    return json.dumps(value)


def _set_props(idblock, props):
    for key, value in props.items():
        if len(key) > _MAX_KEY:
            raise ValueError(f"parameter name {key!r} is longer than Blender's {_MAX_KEY} characters")
        idblock[key] = _property_value(value)


def load_image(name, path):
    """The image datablock ``name`` showing the file at ``path``: loaded the first time,
    pointed at the file and reloaded afterwards (never a duplicate ``name.001``)."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
    else:
        image.source = "FILE"
        image.filepath = path
        image.reload()
    # The panels draw images by their previews, which Blender makes only when asked:
    # without this the thumbnails stay blank. Reloaded, they follow new pixels.
    image.preview_ensure().reload()
    return image


PREVIEW_IMAGE = "ArchViz Preview"


def show_preview(png, folder, info):
    """The image datablock ``ArchViz Preview`` showing a preview PNG (bytes) of an image
    still denoising, written to ``folder/.preview.png`` and reloaded on each new one; its
    custom properties say which image and step it shows."""
    from ..core.png import atomic_write

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".preview.png")
    atomic_write(path, png)
    image = load_image(PREVIEW_IMAGE, path)
    for key in ("camera", "style", "seed", "step", "steps"):
        if info.get(key) is not None:
            image[f"archviz_{key}"] = info[key]
    return image


def load_result_image(path, camera_name, style, seed, params=None):
    """Load (or reload) a generated PNG as the image ``<camera>_<style>_s<seed>``.

    Every entry of ``params`` (default: the PNG's own tEXt metadata) becomes a custom
    property, plus ``archviz_path``, ``archviz_camera``, ``archviz_style``,
    ``archviz_seed`` and ``archviz_loaded_at`` (time.time(), so "the most recent result"
    is well defined). The file stays on disk: the image refers to its absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"generated image {path} does not exist")
    if params is None:
        params = read_png_text(path)
    image = load_image(result_name(camera_name, style, seed), path)
    for key in json.loads(image.get("archviz_param_keys", "[]")):  # parameters of the last load
        if key in image:
            del image[key]
    _set_props(image, params)
    _set_props(image, {
        "archviz_param_keys": sorted(params),
        "archviz_path": path,
        "archviz_camera": camera_name,
        "archviz_style": style,
        "archviz_seed": seed,
        "archviz_loaded_at": time.time(),
    })
    return image


def result_images():
    """ArchViz results in this file (images with ``archviz_style``), oldest load first. The
    preview of an image still denoising carries its style too, but is no result."""
    found = [img for img in bpy.data.images if "archviz_style" in img and img.name != PREVIEW_IMAGE]
    return sorted(found, key=lambda img: (float(img.get("archviz_loaded_at", 0.0)), img.name))


def show_in_image_editor(context, image):
    """Show ``image`` in the first Image Editor of the current screen; False when there
    is none (headless, or a layout without one)."""
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen else ()):
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()
            return True
    return False



def show_control_images(context, files):
    """Load the control images as datablocks (replacing older ones) and show the first in
    an Image Editor when the window has one."""
    images = []
    for name in ("depth", "lines", "normal", "seg", "beauty"):
        if name in files:
            image = load_image(CONTROL_IMAGE_PREFIX + name, files[name])
            # Control images are data; the beauty pass is a picture in the display space.
            image.colorspace_settings.name = "sRGB" if name == "beauty" else "Non-Color"
            images.append(image)
    if images:
        show_in_image_editor(context, images[0])
    return images


# ---------------------------------------------------------------- apply as texture

def _projection_material(image):
    """The material ``ArchViz <image>``: image texture read through the projection UV
    map, as emission, so the variant looks as generated whatever the scene's lights."""
    name = MATERIAL_PREFIX + image.name
    material = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    tree = compat.node_tree(material)
    tree.nodes.clear()
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.name = uv.label = "ArchViz UV"
    uv.uv_map = UV_MAP_NAME
    uv.location = (-700, 0)
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = "ArchViz Image"
    tex.image = image
    tex.extension = "CLIP"  # nothing outside the camera's frame
    tex.location = (-450, 0)
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.name = "ArchViz Emission"
    emission.inputs["Strength"].default_value = 1.0
    emission.location = (-150, 0)
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    out.name = "Material Output"
    out.location = (100, 0)
    tree.links.new(uv.outputs["UV"], tex.inputs["Vector"])
    tree.links.new(tex.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], out.inputs["Surface"])
    tree.nodes.active = tex  # Solid view's "Texture" colour shows the active image node
    material["archviz_image"] = image.name
    return material


def apply_projection(image, camera, objects):
    """Project ``image`` from ``camera`` onto mesh ``objects``; return the material.

    Each object gets the UV map "ArchViz Projection", a UV Project modifier with the
    camera as projector and the image's aspect, and the material on every slot (one slot
    is added when it has none). The materials it had are kept by name, as JSON, in the
    custom property ``archviz_previous_materials`` (the first time only, so applying
    another variant later still remembers the originals); remove_projection puts them back.
    """
    objects = list(objects)
    if camera is None or camera.type != "CAMERA":
        what = "nothing" if camera is None else f"{camera.name!r} ({camera.type.lower()})"
        raise ValueError(f"the projector must be a camera object, got {what}")
    if not objects:
        raise ValueError("no objects to apply the texture to: select mesh objects")
    not_mesh = [f"{o.name} ({o.type.lower()})" for o in objects if o.type != "MESH"]
    if not_mesh:
        raise ValueError(f"apply as texture works on mesh objects only; not on: {', '.join(not_mesh)}")
    width, height = image.size
    if not width or not height:
        raise ValueError(f"image {image.name!r} has no pixels (is {image.filepath or 'its file'} on disk?)")
    material = _projection_material(image)
    short = min(width, height)
    for obj in objects:
        mesh = obj.data
        if UV_MAP_NAME not in mesh.uv_layers:
            mesh.uv_layers.new(name=UV_MAP_NAME, do_init=False)
        mod = obj.modifiers.get(MODIFIER_NAME)
        if mod is not None and mod.type != "UV_PROJECT":
            obj.modifiers.remove(mod)
            mod = None
        if mod is None:
            mod = obj.modifiers.new(MODIFIER_NAME, "UV_PROJECT")
        mod.uv_layer = UV_MAP_NAME
        mod.projector_count = 1
        mod.projectors[0].object = camera
        mod.aspect_x = width / short  # both >= 1: the modifier's range
        mod.aspect_y = height / short
        mod.scale_x = mod.scale_y = 1.0
        if PREVIOUS_MATERIALS_KEY not in obj:
            obj[PREVIOUS_MATERIALS_KEY] = json.dumps(
                [slot.material.name if slot.material else None for slot in obj.material_slots])
        if not obj.material_slots:
            mesh.materials.append(material)
        for slot in obj.material_slots:
            slot.material = material
        obj["archviz_projection_camera"] = camera.name
    return material


def remove_projection(objects):
    """Undo apply_projection: the previous materials back, the modifier and UV map gone."""
    for obj in objects:
        if obj.type != "MESH" or PREVIOUS_MATERIALS_KEY not in obj:
            continue
        previous = json.loads(obj[PREVIOUS_MATERIALS_KEY])
        if previous:
            for slot, name in zip(obj.material_slots, previous):
                slot.material = bpy.data.materials.get(name) if name else None
        else:
            obj.data.materials.clear()
        mod = obj.modifiers.get(MODIFIER_NAME)
        if mod is not None:
            obj.modifiers.remove(mod)
        uv = obj.data.uv_layers.get(UV_MAP_NAME)
        if uv is not None:
            obj.data.uv_layers.remove(uv)
        del obj[PREVIOUS_MATERIALS_KEY]
        obj.pop("archviz_projection_camera", None)


# ---------------------------------------------------------------- compositor

def _render_layers(tree):
    for node in tree.nodes:
        if node.bl_idname == "CompositorNodeRLayers":
            return node
    node = tree.nodes.new("CompositorNodeRLayers")
    node.name = NODE_RENDER_LAYERS
    node.location = (-600, 300)
    return node


def add_to_compositor(scene, images, active=0):
    """Put a switch over ``images`` (the variants) over the render layers in the
    scene's compositor (compat.compositor_tree); return that node tree.

    Nodes: "ArchViz Variant <image>" (Image) for each variant -> "ArchViz Switch" (Menu
    Switch, one item per image name, set to ``images[active]``) -> Foreground of
    "ArchViz Over" (Alpha Over) whose Background is what fed the Group Output before
    (the Render Layers image in a new tree) -> Group Output. A scene without a
    compositor gets a new group; an existing one is extended. A second call updates the
    same nodes: the switch then covers exactly the images given. Where the compositor
    has no Menu Switch (4.x) the active variant is linked to the Foreground directly, and
    its Composite node takes the place of the Group Output.
    """
    images = list(images)
    if not images:
        raise ValueError("no images to add to the compositor")
    if not isinstance(active, int) or not 0 <= active < len(images):
        raise ValueError(f"active variant index {active!r} is out of range for {len(images)} image(s)")
    names = [img.name for img in images]
    if len(set(names)) != len(names):
        raise ValueError(f"the same image is given twice: {', '.join(names)}")

    tree = compat.compositor_tree(scene)
    nodes, links = tree.nodes, tree.links
    output = compat.compositor_output(tree, NODE_OUTPUT, (600, 0))

    over = nodes.get(NODE_OVER)
    if over is None:
        over = nodes.new("CompositorNodeAlphaOver")
        over.name = over.label = NODE_OVER
        over.location = (300, 0)
        feed = output.inputs[0].links[0].from_socket if output.inputs[0].is_linked else None
        links.new(feed or _render_layers(tree).outputs["Image"], compat.alpha_over_inputs(over)[0])
    links.new(over.outputs["Image"], output.inputs[0])
    foreground = compat.alpha_over_inputs(over)[1]

    variants = {n.image.name: n for n in nodes
                if n.bl_idname == "CompositorNodeImage" and n.name.startswith(NODE_VARIANT_PREFIX) and n.image}
    for name, node in list(variants.items()):
        if name not in names:
            nodes.remove(node)
    variant_nodes = []
    for index, image in enumerate(images):
        node = variants.get(image.name)
        if node is None:
            node = nodes.new("CompositorNodeImage")
            node.image = image
        node.name = NODE_VARIANT_PREFIX + image.name  # Blender cuts node names at 63 characters
        node.label = image.name
        node.location = (-300, -200 - 220 * index)
        variant_nodes.append(node)

    if not compat.has_compositor_menu_switch():
        # No Menu Switch in this compositor: the active variant feeds the Foreground
        # directly; choosing another variant is linking its node there.
        links.new(variant_nodes[active].outputs["Image"], foreground)
        return tree
    switch = nodes.get(NODE_SWITCH)
    if switch is None:
        switch = nodes.new("GeometryNodeMenuSwitch")
        switch.name = switch.label = NODE_SWITCH
        switch.data_type = "RGBA"
        switch.location = (50, -200)
    switch.enum_items.clear()
    for name in names:
        switch.enum_items.new(name)
    for index, node in enumerate(variant_nodes):
        links.new(node.outputs["Image"], switch.inputs[index + 1])  # input 0 is the menu
    switch.inputs["Menu"].default_value = names[active]
    links.new(switch.outputs["Output"], foreground)
    return tree


def active_variant(tree):
    """The image name the ArchViz compositor setup passes on (the switch's choice, or the
    variant linked straight to the Alpha Over), or None without one."""
    if tree is None:
        return None
    switch = tree.nodes.get(NODE_SWITCH)
    if switch is not None:
        return switch.inputs["Menu"].default_value
    over = tree.nodes.get(NODE_OVER)
    if over is None:
        return None
    foreground = compat.alpha_over_inputs(over)[1]
    if not foreground.is_linked:
        return None
    node = foreground.links[0].from_node
    return node.image.name if getattr(node, "image", None) else None


# ---------------------------------------------------------------- multilayer EXR

def read_image_bytes(path):
    """uint8 (h, w, 4) pixels of an 8-bit image through Blender's loader, row 0 at the
    top. Non-Color, so the bytes come back untouched; the datablock is removed again."""
    image = bpy.data.images.load(os.fspath(path), check_existing=False)
    try:
        image.colorspace_settings.name = "Non-Color"
        width, height = image.size
        if not width or not height:
            raise ValueError(f"Blender could not read {path}")
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        pixels = pixels.reshape(height, width, image.channels)[::-1]  # Blender's rows start at the bottom
        if image.channels == 1:
            pixels = np.repeat(pixels, 4, axis=2)
        elif image.channels == 3:
            pixels = np.concatenate([pixels, np.ones_like(pixels[:, :, :1])], axis=2)
        return np.ascontiguousarray(np.rint(pixels * 255.0).clip(0, 255).astype(np.uint8))
    finally:
        bpy.data.images.remove(image)


def _resize_nearest(arr, height, width):
    h, w = arr.shape[:2]
    if (h, w) == (height, width):
        return arr
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return arr[rows][:, cols]


def variant_exr_channels(image_png_path, passes_dir):
    """{channel: float32 (h, w)} for write_variant_exr; see there for the layout."""
    ai = read_image_bytes(image_png_path)
    height, width = ai.shape[:2]
    layer = EXR_LAYER + "."
    channels = {}
    for index, c in enumerate("RGB"):
        channels[f"{layer}AI.{c}"] = ai[:, :, index].astype(np.float32) / np.float32(255)
    depth_npy = os.path.join(passes_dir, "depth.npy")
    if os.path.exists(depth_npy):
        depth = np.load(depth_npy).astype(np.float32)
        depth = np.where(np.isfinite(depth), depth, np.float32(DEPTH_BACKGROUND))
        channels[f"{layer}Depth.Z"] = _resize_nearest(depth, height, width)
    for name, chans in (("Lines", "V"), ("Normal", "RGB"), ("Seg", "RGB")):
        png = os.path.join(passes_dir, f"{name.lower()}.png")
        if not os.path.exists(png):
            continue
        pixels = _resize_nearest(read_image_bytes(png), height, width)
        for index, c in enumerate(chans):
            channels[f"{layer}{name}.{c}"] = pixels[:, :, index].astype(np.float32) / np.float32(255)
    return channels


def write_variant_exr(path, image_png_path, passes_dir, compression="ZIP"):
    """One multilayer EXR per variant: the AI image and its camera's control passes.

    Layer "ArchViz", passes AI (R G B), Depth (Z: raw float depth from depth.npy,
    1e10 where no geometry), Lines (V), Normal (R G B) and Seg (R G B); the 8-bit
    images as byte / 255. Passes missing from ``passes_dir`` are left out; passes of
    another size are resampled to the AI image's size by nearest neighbour (seg colours
    stay exact). Returns the list of channel names written.
    """
    if not os.path.isfile(image_png_path):
        raise FileNotFoundError(f"generated image {image_png_path} does not exist")
    if not os.path.isdir(passes_dir):
        raise FileNotFoundError(f"control passes folder {passes_dir} does not exist")
    channels = variant_exr_channels(image_png_path, passes_dir)
    write_exr(path, channels, compression=compression)
    return sorted(channels)


def variant_exr(image_info, out_dir):
    """Write the multilayer EXR of one generated image: the AI image plus its camera's
    passes as layers, next to the PNG. Returns its path."""
    png = image_info["path"]
    path = os.path.splitext(png)[0] + ".exr"
    write_variant_exr(path, png, os.path.join(out_dir, "passes", safe_name(image_info["camera"])))
    return path


def contact_sheets(out_dir, camera_names):
    """Paths of the contact sheets the backend wrote for these cameras."""
    paths = [os.path.join(out_dir, sidecar_filename(name, "contact_sheet.png")) for name in camera_names]
    return [p for p in paths if os.path.exists(p)]


# ---------------------------------------------------------------- upscales and region edits

REGION_PREVIEW_SUFFIX = " Region"
REGION_TINT = (1.0, 0.25, 0.1)  # the mask's colour over the image in the preview


def load_upscaled_image(path, source=None):
    """Load (or reload) an ``archviz upscale`` PNG as the image ``<source>_x<scale>``, a
    result like the generated ones: its PNG metadata (the upscale's parameters, with the
    source's inside ``archviz``) as custom properties, and the source's camera, style and
    seed, so Apply as Texture projects it from the same camera and Add to Compositor lists it."""
    path = os.path.abspath(os.fspath(path))
    params = read_png_text(path)
    try:
        upscale = json.loads(params.get("archviz", "{}")).get("params", {})
    except ValueError:
        upscale = {}
    scale = upscale.get("scale", "")
    seed = upscale.get("source", {}).get("seed", params.get("seed", 0))
    camera = source.get("archviz_camera", "") if source is not None else ""
    style = source.get("archviz_style", "upscale") if source is not None else "upscale"
    base = source.name if source is not None else os.path.splitext(os.path.basename(path))[0]
    image = load_image(f"{base}_x{scale}" if scale else base, path)
    for key in json.loads(image.get("archviz_param_keys", "[]")):
        if key in image:
            del image[key]
    _set_props(image, params)
    _set_props(image, {
        "archviz_param_keys": sorted(params),
        "archviz_path": path,
        "archviz_camera": camera,
        "archviz_style": style,
        "archviz_seed": seed,
        "archviz_scale": scale,
        "archviz_upscale_of": source.name if source is not None else "",
        "archviz_loaded_at": time.time(),
    })
    return image


def region_mask_path(image):
    """The mask PNG a region edit saved beside its image (``<camera>_region_mask.png``);
    ValueError naming the image when it is not a region edit or the mask is gone."""
    path = image.get("archviz_path", "")
    if not path or not os.path.isfile(path):
        raise ValueError(f"{image.name!r} is not an ArchViz result on disk")
    if "mask_sha256" not in image and "mask_sha256" not in read_png_text(path):
        raise ValueError(f"{image.name!r} is not a region edit (its parameters have no mask)")
    mask = os.path.join(os.path.dirname(path), f"{safe_name(image.get('archviz_camera', ''))}_region_mask.png")
    if not os.path.isfile(mask):
        raise ValueError(f"{image.name!r}: its region mask {mask} is not on disk")
    return mask


def region_preview(image, opacity=0.6):
    """The region edit ``image`` with its mask over it, as the image ``<image> Region``:
    each pixel tinted toward REGION_TINT by ``opacity`` x the mask's alpha (the feather band
    shows as a fading rim), every pixel outside the mask as it is. Returns the preview."""
    mask_path = region_mask_path(image)
    pixels = read_image_bytes(image["archviz_path"]).astype(np.float32) / 255.0
    mask = read_image_bytes(mask_path)[:, :, 0].astype(np.float32) / 255.0
    height, width = pixels.shape[:2]
    if mask.shape != (height, width):
        raise ValueError(f"{image.name!r} is {width}x{height} but its region mask is {mask.shape[1]}x{mask.shape[0]}")
    a = (opacity * mask)[:, :, None]
    rgb = pixels[:, :, :3] * (1.0 - a) + np.asarray(REGION_TINT, np.float32) * a
    name = image.name + REGION_PREVIEW_SUFFIX
    preview = bpy.data.images.get(name)
    if preview is not None and tuple(preview.size) != (width, height):
        bpy.data.images.remove(preview)
        preview = None
    if preview is None:
        preview = bpy.data.images.new(name, width, height)
    rgba = np.concatenate([rgb, np.ones((height, width, 1), np.float32)], axis=2)[::-1]  # Blender: bottom row first
    preview.pixels.foreach_set(np.ascontiguousarray(rgba).ravel())
    preview.update()
    preview["archviz_region_of"] = image.name
    preview["archviz_mask_path"] = mask_path
    return preview
