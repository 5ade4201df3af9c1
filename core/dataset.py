"""Paired training data for ControlNets, the parts that need no Blender: view seeds, the
layout of a dataset folder, captions and the resume check. ``blender/capture/dataset.py`` places
the cameras and renders; ``backend/train/controlnet.py`` reads what this layout describes.

Layout (the ``imagefolder`` + ``metadata.jsonl`` convention that Hugging Face ``datasets``
and diffusers' ControlNet training example read)::

    DIR/dataset.json                     settings (scenes, views, controls, size, seed)
    DIR/metadata.jsonl                   one JSON line per view (below)
    DIR/images/<scene>_<view>.png        target: the scene rendered with its own materials
    DIR/conditioning/<type>/<scene>_<view>.png   one folder per control type

A line of ``metadata.jsonl``: ``file_name`` (the target, imagefolder's ``image``),
``conditioning_image_file_name`` (the first control: ``datasets`` reads ``*_file_name``
columns as images, so the columns are ``image``, ``conditioning_image``, ``text``, the
defaults of diffusers' example), ``text`` (the caption), ``control``, ``controls`` (type ->
file), ``name``, ``scene``, ``view``, ``seed``, ``kind`` (interior / exterior), ``camera``
(location, rotation, lens), ``size``, ``classes`` and ``materials`` in view.
"""

import json
import os
import zlib

from .classes import words

METADATA = "metadata.jsonl"
SETTINGS = "dataset.json"
CONTROL_TYPES = ("depth", "lines", "normal", "seg")

#: Words of material names (and ``archviz_style`` material properties) that describe a
#: finish; a caption names the ones in view.
STYLE_WORDS = (
    "oak", "walnut", "ash", "pine", "teak", "wood", "wooden", "timber", "bamboo", "plywood",
    "concrete", "marble", "granite", "stone", "travertine", "terrazzo", "slate", "brick", "tile", "tiles",
    "ceramic", "porcelain", "plaster", "stucco", "glass", "mirror", "steel", "metal", "brass", "copper",
    "chrome", "aluminium", "aluminum", "iron", "fabric", "linen", "wool", "velvet", "leather", "cotton",
    "rattan", "wicker", "cork", "carpet", "paper", "paint", "lacquer", "gloss", "matte", "polished",
    "brushed", "white", "black", "grey", "gray", "beige", "cream", "green", "blue", "red", "terracotta",
)


class DatasetError(ValueError):
    """Bad dataset input; one line naming the bad value."""


def parse_controls(text):
    controls = tuple(dict.fromkeys(c.strip() for c in (text or "").split(",") if c.strip()))
    if not controls:
        raise DatasetError("--controls: no control type given (choose from " + ", ".join(CONTROL_TYPES) + ")")
    for c in controls:
        if c not in CONTROL_TYPES:
            raise DatasetError(f"--controls: unknown control type {c!r} (choose from {', '.join(CONTROL_TYPES)})")
    return controls


def parse_material_rules(items):
    """``--vary-material CLASS=MAT1,MAT2`` (repeatable) -> {class: [materials]}: per view,
    objects of that class get one of these materials of the scene."""
    from .classes import ClassError, check_class

    rules = {}
    for item in items or ():
        cls, sep, mats = str(item).partition("=")
        names = [m.strip() for m in mats.split(",") if m.strip()]
        if not sep or not names:
            raise DatasetError(f"--vary-material {item!r}: expected CLASS=MATERIAL,MATERIAL")
        try:
            cls = check_class(cls.strip(), what="--vary-material class")
        except ClassError as exc:
            raise DatasetError(str(exc)) from None
        rules[cls] = names
    return rules


def parse_light_scale(text):
    """``--light-scale LO:HI`` -> (lo, hi): every light's power is multiplied by a factor
    drawn log-uniformly from that range per view. Empty -> None (lights as they are)."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise DatasetError(f"--light-scale {text!r}: expected LOW:HIGH, e.g. 0.5:2") from None
    if not (0 < lo <= hi < 1e6):
        raise DatasetError(f"--light-scale {text!r}: need 0 < LOW <= HIGH")
    return lo, hi


def scene_key(path):
    """A file-name-safe name for a scene: its file name without ``.blend``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "scene"


def view_seed(seed, scene, view):
    """The seed of one view: a function of the dataset seed, the scene's name and the view
    number only, so any view can be made again on its own."""
    return zlib.crc32(f"{int(seed)}:{scene}:{int(view)}".encode()) & 0x7FFFFFFF


def interior_draw(seed, scene, view):
    """A number in [0, 1) per view; the view is inside a room when it is below the
    interior share. Golden-ratio steps from a per-scene start spread the draws evenly, so
    any run of views holds close to the asked share of interiors."""
    start = view_seed(seed, scene, -1) / 2**31
    return (start + int(view) * 0.6180339887498949) % 1.0


def view_name(scene, view):
    return f"{scene}_{int(view):05d}"


def style_tags(material_names, extra=()):
    """Finish words in these material names (plus explicit style tags), in order, unique."""
    tags = []
    for name in material_names:
        for w in words(name):
            if w in STYLE_WORDS and w not in tags:
                tags.append(w)
    for t in extra:
        t = str(t).strip().lower()
        if t and t not in tags:
            tags.append(t)
    return tags


def caption(kind, classes, tags, prompt=""):
    """``<prompt>, an interior view with wall, floor, sofa; oak, plaster, fabric``."""
    where = "an interior view" if kind == "interior" else "an exterior view of a building"
    text = where + (" with " + ", ".join(classes) if classes else "")
    if tags:
        text += "; " + ", ".join(tags)
    prompt = (prompt or "").strip()
    return f"{prompt}, {text}" if prompt else text


def read_prompt_file(scene_path):
    """The optional per-scene prompt: ``SCENE.prompt.txt`` next to ``SCENE.blend``."""
    path = os.path.splitext(scene_path)[0] + ".prompt.txt"
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as fh:
        return " ".join(fh.read().split())


def settings(scenes, views, controls, long_side, seed, interior_share, samples, materials=None, light_scale=None,
             engine="CYCLES"):
    return {"scenes": [os.path.basename(s) for s in scenes], "views": int(views), "controls": list(controls),
            "long_side": int(long_side), "seed": int(seed), "interior_share": float(interior_share),
            "target_samples": int(samples), "target_engine": str(engine).upper(),
            "vary_materials": dict(materials or {}),
            "light_scale": list(light_scale) if light_scale else None, "line_style": line_style()}


def line_style():
    """The style of the dataset's line images: the capture's ``lines.png`` by default (the
    style of the default SD 1.5 lines model); a custom ControlNet reads the same."""
    from .passes import line_style_for

    return line_style_for("lines", "sd15", "auto")


def check_resume(out_dir, wanted):
    """The views already in ``out_dir`` (name -> metadata row) when it was made with the
    same settings; DatasetError naming the first difference otherwise. Views whose files
    are gone are left out (they are made again)."""
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(out_dir, METADATA)):
            raise DatasetError(f"--out {out_dir!r} has a {METADATA} but no {SETTINGS}: not made by archviz dataset; "
                               "choose another --out")
        return {}
    with open(path, encoding="utf-8") as fh:
        old = json.load(fh)
    for key in ("controls", "long_side", "seed", "interior_share", "target_samples", "target_engine", "vary_materials",
                "light_scale"):
        if old.get(key) != wanted.get(key):
            raise DatasetError(f"--out {out_dir!r} was made with {key} {old.get(key)!r}, not {wanted.get(key)!r}: "
                               "use the same settings to resume, or another --out")
    return {name: row for name, row in read_metadata(out_dir).items()
            if all(os.path.isfile(os.path.join(out_dir, f)) for f in [row["file_name"], *row["controls"].values()])}


def read_metadata(out_dir):
    rows = {}
    path = os.path.join(out_dir, METADATA)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by an interrupted run: the view is made again
                    rows[row["name"]] = row
    return rows


def write_metadata(out_dir, rows):
    """``metadata.jsonl`` with these rows (atomically: an interrupted run never leaves a
    half-written file)."""
    path = os.path.join(out_dir, METADATA)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
