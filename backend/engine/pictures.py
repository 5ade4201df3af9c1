"""Decoding a picture a job sends (a photo or sketch to sweep from, a reference image): the
formats read, the size limits, the EXIF rotation and transparency over white, all refused
as one-line job errors naming the field. Used by the server's ``POST /v1/picture`` and by
the planning of reference images.

May import: core.
"""

from __future__ import annotations

import io

from ...core import jobs as J

#: Formats a picture may come in (decoded by Pillow; anything else is refused by name).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
#: The short side of a picture below this is refused: nothing a detector could find.
MIN_SIDE = 64
_ORIENTATION = 0x0112


def pixel_limit_error(field: str, fmt: str, w: int, h: int) -> J.JobError:
    """The README's words for a picture over the pixel limit (a bomb header as well)."""
    return J.JobError(field, f"{fmt} of {w}x{h} = {w * h / 1e6:.0f} megapixels is over the limit of "
                             f"{J.MAX_PNG_PIXELS / 1e6:.0f} megapixels")


def open_picture(data: bytes, field: str = "image"):
    """(the picture in ``data`` as a Pillow RGB image, its format): :func:`decode_picture`
    at full size."""
    image, fmt, _seen = decode_picture(data, field)
    return image, fmt


def decode_picture(data: bytes, field: str = "image", long_side: int | None = None):
    """(the picture in ``data`` as a Pillow RGB image, its format, its (width, height) as
    seen); a JobError naming ``field`` when it is not an image of an accepted format,
    cannot be decoded, is too small or too large.

    With ``long_side``, the picture is decoded no larger than needed for that size: a JPEG
    at a reduced DCT scale (Pillow's ``draft``), anything else reduced by a whole factor
    right after decoding (``Image.reduce``, premultiplied alpha), before the colour work
    that copies it."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise J.JobError(field, "the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > J.MAX_PNG_PIXELS:
                raise pixel_limit_error(field, fmt, w, h)
            if min(w, h) < MIN_SIDE:
                raise J.JobError(field, f"{fmt} of {w}x{h} px is too small: a picture needs at least {MIN_SIDE} px "
                                        "on its short side")
            seen = (h, w) if im.getexif().get(_ORIENTATION) in (5, 6, 7, 8) else (w, h)
            factor = max(1, max(w, h) // long_side) if long_side else 1
            if factor > 1 and fmt == "JPEG":
                im.draft(im.mode, (-(-w // factor), -(-h // factor)))
            im.load()
            small = im
            factor = max(1, max(im.size) // long_side) if long_side else 1
            if factor > 1:
                if small.mode.startswith("I;16"):
                    small = small.convert("I")
                elif small.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
                    small = small.convert("RGBA" if small.mode in ("P", "PA") else "RGB")
                small = small.reduce(factor)
                small.info = dict(im.info)
                exif = im.getexif()
                if exif.get(_ORIENTATION):
                    small.info["exif"] = exif.tobytes()
            return _rgb(small), fmt, seen
    except UnidentifiedImageError:
        raise J.JobError(field, f"not an image ({', '.join(FORMATS)} are read)") from None
    except J.JobError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard fired at open: say it in our words
        raise _bomb_error(data, field, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise J.JobError(field, f"the image is damaged and cannot be decoded ({exc})") from None


def _bomb_error(data: bytes, field: str, exc: Exception) -> J.JobError:
    """The README's pixel limit for a header Pillow refused as a decompression bomb: with the
    PNG's width and height from its IHDR chunk, else the pixel count Pillow gave."""
    import re

    from ...core.png import png_size

    size = png_size(data[:24])
    if size:
        return pixel_limit_error(field, "PNG", *size)
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" of {int(m.group(1)) / 1e6:.0f} megapixels" if m else ""
    return J.JobError(field, f"a picture{size} is over the limit of {J.MAX_PNG_PIXELS / 1e6:.0f} megapixels")


def _rgb(im):
    """RGB pixels as the picture is seen: a phone photo's EXIF rotation applied, 16-bit and
    float gray scaled to 8 bits, transparency over white paper (a sketch with a transparent
    background must not turn into lines on black)."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return im.convert("RGB")
