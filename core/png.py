"""Write 8-bit PNGs from numpy arrays with zlib alone.

Control images must keep their exact values (a seg colour is a class), so they are not
passed through Blender's colour management. Blender's Python has no image library, and
PNG encoding is a few lines over zlib, which the standard library has.
"""

import os
import struct
import tempfile
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(image, text=None, level=6):
    """PNG bytes for a uint8 array of shape (h, w), (h, w, 3) or (h, w, 4); row 0 is the top.

    ``text`` adds tEXt chunks (latin-1 keys and values), e.g. generation metadata.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG image must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in _COLOR_TYPES:
        raise ValueError(f"PNG image must be (h, w), (h, w, 3) or (h, w, 4), got shape {arr.shape}")
    height, width, channels = arr.shape
    if height == 0 or width == 0:
        raise ValueError(f"PNG image must not be empty, got {width}x{height}")
    rows = np.zeros((height, width * channels + 1), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = arr.reshape(height, width * channels)
    parts = [
        _SIGNATURE,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)),
    ]
    for key, value in (text or {}).items():
        parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + str(value).encode("latin-1", "replace")))
    parts.append(_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def atomic_write(path, data):
    """Write bytes to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(path, image, text=None):
    atomic_write(path, encode_png(image, text=text))
