"""What differs between the Blender versions the add-on supports, 4.2 LTS to 5.2 LTS, in
one place. The rest of the Blender side asks this module and never reads
``bpy.app.version`` itself. Where an API can be asked whether it has a feature, the
answer comes from the API (``hasattr``), not from a version number.

The differences (CONVENTIONS.md, "Blender versions seen in real programs"):
- image output: 5.x chooses a multilayer EXR with ``media_type`` before ``file_format``;
  4.x has no ``media_type``.
- EXR pass names: 4.x writes the index passes as ``IndexOB`` / ``IndexMA``, 5.x as
  ``Object Index`` / ``Material Index``.
- node trees: a new material or world in 4.x has no node tree until ``use_nodes``.
- video: 5.x chooses FFmpeg output with ``media_type`` "VIDEO" first; the sequencer's
  strips are ``SequenceEditor.strips`` from 4.4 on (``sequences`` before, gone in 5.x).
- the compositor: 5.x keeps it in ``Scene.compositing_node_group`` (a node group whose
  Group Output is the result) and has the Menu Switch node there; 4.x keeps it in
  ``Scene.node_tree`` with ``use_nodes`` and a Composite node, and has no Menu Switch.
"""

import functools

import bpy

VERSION = tuple(bpy.app.version[:3])
VERSION_STRING = bpy.app.version_string

#: ``options`` of a path property that accepts blend-file relative (``//``) paths: Blender
#: 4.5 and later draw a ``//`` path in red unless the property says so; 4.2 has no such
#: option (and no warning).
BLEND_RELATIVE = ({"PATH_SUPPORTS_BLEND_RELATIVE"}
                  if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties else set())

# The passes whose layer in a multilayer EXR is named differently by version, newest first
# (the others keep their name).
_PASS_NAMES = {
    "Object Index": ("Object Index", "IndexOB"),
    "Material Index": ("Material Index", "IndexMA"),
}


def pass_channel(channels, name):
    """The array of channel ``<pass>.<chan>`` (e.g. ``"Object Index.X"``) in ``channels``
    (``{full channel name: array}`` of a multilayer EXR), under whichever name this Blender
    gave the pass; None when no such channel is there."""
    pass_name, _, chan = name.rpartition(".")
    for alias in _PASS_NAMES.get(pass_name, (pass_name,)):
        suffix = f"{alias}.{chan}"
        for key, arr in channels.items():
            if key == suffix or key.endswith("." + suffix):
                return arr
    return None


# kind -> (media_type, file_format) of ImageFormatSettings
_OUTPUT_FORMATS = {"EXR_MULTILAYER": ("MULTI_LAYER_IMAGE", "OPEN_EXR_MULTILAYER"), "PNG": ("IMAGE", "PNG"),
                   "VIDEO": ("VIDEO", "FFMPEG")}


def output_format(settings, kind):
    """The ``(attribute, value)`` pairs, in the order they must be set, that make the
    ImageFormatSettings ``settings`` write ``kind``: "EXR_MULTILAYER", "PNG" or "VIDEO"
    (FFmpeg; the container and codec are ``RenderSettings.ffmpeg``'s)."""
    if kind not in _OUTPUT_FORMATS:
        raise ValueError(f"unknown output kind {kind!r}")
    media_type, file_format = _OUTPUT_FORMATS[kind]
    pairs = [("media_type", media_type)] if hasattr(settings, "media_type") else []  # 5.x: chosen first
    return pairs + [("file_format", file_format)]


def node_tree(idblock):
    """The node tree of a material or world, made first where this Blender leaves a new
    one without (4.x: ``use_nodes``)."""
    if idblock.node_tree is None:
        idblock.use_nodes = True
    return idblock.node_tree


def sequencer_strips(editor):
    """The collection of a SequenceEditor's top-level strips (``new_movie``, ``new_image``,
    ...): ``strips`` from 4.4 on, ``sequences`` before."""
    if "strips" in editor.bl_rna.properties:
        return editor.strips
    return editor.sequences


# ---------------------------------------------------------------- compositor

COMPOSITOR_GROUP_NAME = "ArchViz Compositor"


def has_compositor_group():
    """True where the compositor is a node group of the scene (5.x)."""
    return "compositing_node_group" in bpy.types.Scene.bl_rna.properties


def compositor_tree(scene, create=True):
    """The scene's compositor node tree (None when it has none and ``create`` is False).
    5.x: ``scene.compositing_node_group``, a new group when missing. 4.x: ``scene.node_tree``
    once ``use_nodes`` is on (Blender then adds Render Layers and Composite nodes)."""
    if has_compositor_group():
        tree = scene.compositing_node_group
        if tree is None and create:
            tree = bpy.data.node_groups.new(COMPOSITOR_GROUP_NAME, "CompositorNodeTree")
            scene.compositing_node_group = tree
        return tree
    if not scene.use_nodes:
        if not create:
            return None
        scene.use_nodes = True
    return scene.node_tree


def compositor_output(tree, name, location):
    """The node whose first input is the compositor's result: the active Group Output
    (with an Image output socket on the group) in 5.x, the active Composite node in 4.x.
    One is added (named ``name``) when the tree has none."""
    if has_compositor_group():
        if not any(item.item_type == "SOCKET" and item.in_out == "OUTPUT" for item in tree.interface.items_tree):
            tree.interface.new_socket(name="Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        kind = "NodeGroupOutput"
    else:
        kind = "CompositorNodeComposite"
    outputs = [n for n in tree.nodes if n.bl_idname == kind]
    for node in outputs:
        if getattr(node, "is_active_output", False):
            return node
    if outputs:
        return outputs[0]
    node = tree.nodes.new(kind)
    node.name = name
    node.location = location
    return node


def alpha_over_inputs(node):
    """(background, foreground) input sockets of an Alpha Over node: named in 5.x, the
    second and third of "Fac", "Image", "Image" in 4.x."""
    if "Foreground" in node.inputs:
        return node.inputs["Background"], node.inputs["Foreground"]
    return node.inputs[1], node.inputs[2]


@functools.cache
def has_compositor_menu_switch():
    """True where the compositor has the Menu Switch node (5.x)."""
    tree = bpy.data.node_groups.new("ArchViz probe", "CompositorNodeTree")
    try:
        tree.nodes.new("GeometryNodeMenuSwitch")
        return True
    except RuntimeError:
        return False
    finally:
        bpy.data.node_groups.remove(tree)


# ---------------------------------------------------------------- the application

def online_access():
    """Blender's Allow Online Access (Preferences > System > Network)."""
    return bool(getattr(bpy.app, "online_access", True))


def newer_than_running(saved):
    """True when a file saved by Blender ``saved`` (major, minor) is newer than this one."""
    return tuple(saved[:2]) > VERSION[:2]
