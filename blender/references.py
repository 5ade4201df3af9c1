"""Reference images in the panel (core/references.py): a list of images from disk or
Blender image datablocks, each with a scale, turned into the job's ``references``.

An image datablock whose file is on disk, unchanged and not packed is sent as that file;
any other (packed, generated, painted) is sent as its pixels, encoded to PNG here with
numpy (core/png.py): Blender's Python has no Pillow.
"""

import base64
import os

import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, PointerProperty, StringProperty

from ..core.references import (DEFAULT_REFERENCE_SCALE, MAX_REFERENCE_SCALE, MIN_REFERENCE_SIDE, ReferenceError,
                               reference_entry)

SOURCES = [("FILE", "File", "An image file on disk (PNG, JPEG, WebP, BMP, TIFF)"),
           ("IMAGE", "Image", "An image datablock of this .blend")]


class ARCHVIZ_PG_reference(bpy.types.PropertyGroup):
    source: EnumProperty(name="Source", items=SOURCES, default="FILE")
    path: StringProperty(name="File", subtype="FILE_PATH", description="A reference image: a material, a mood board")
    image: PointerProperty(name="Image", type=bpy.types.Image, description="A reference image of this .blend")
    scale: FloatProperty(name="Scale", default=DEFAULT_REFERENCE_SCALE, min=0.0, max=MAX_REFERENCE_SCALE,
                         description="How strongly this reference steers the look (0: not at all)")

    @property
    def label(self):
        if self.source == "IMAGE":
            return self.image.name if self.image else "(no image)"
        return os.path.basename(self.path) if self.path else "(no file)"


def image_png(image):
    """PNG bytes of an image datablock's pixels (top row first, 8-bit RGB)."""
    w, h = image.size
    if min(w, h) < MIN_REFERENCE_SIDE:
        raise ReferenceError(f"reference image {image.name!r} is {w}x{h} px, too small: a reference needs at least "
                             f"{MIN_REFERENCE_SIDE} px on its short side")
    pixels = np.empty(w * h * image.channels, np.float32)
    image.pixels.foreach_get(pixels)
    rgba = pixels.reshape(h, w, image.channels)[::-1]
    rgb = rgba[..., :3] if image.channels >= 3 else np.repeat(rgba[..., :1], 3, axis=-1)
    from ..core.png import encode_png

    return encode_png((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def reference_entries(settings):
    """The job's ``references`` from the panel's list (ReferenceError with one line naming
    the bad one); None when the list is empty."""
    out = []
    for i, ref in enumerate(settings.references):
        scale = round(float(ref.scale), 4)  # a float32 property: 0.7, not 0.699999988
        if ref.source == "IMAGE":
            image = ref.image
            if image is None:
                raise ReferenceError(f"reference {i + 1}: choose an image")
            path = bpy.path.abspath(image.filepath) if image.filepath else ""
            if path and os.path.isfile(path) and not image.packed_file and not image.is_dirty:
                out.append(reference_entry(path, scale, f"reference {image.name!r}"))
            else:
                out.append({"image": base64.b64encode(image_png(image)).decode("ascii"), "scale": scale})
        else:
            if not ref.path:
                raise ReferenceError(f"reference {i + 1}: choose a file")
            out.append(reference_entry(bpy.path.abspath(ref.path), scale, "reference"))
    return out or None


classes = (ARCHVIZ_PG_reference,)
