"""Read the float channels of an OpenEXR file (single-part or multi-part scanline).

Blender's own Python has numpy but no image library that exposes the passes of a
multilayer EXR, so the capture side reads the file it just rendered with this small
reader: scanline images, compression NONE, ZIPS or ZIP, pixel types HALF, FLOAT, UINT.
That covers what Blender writes for render passes; anything else is refused by name.
"""

import struct
import zlib

import numpy as np

MAGIC = 20000630
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
# compression id -> (name, scanlines per chunk); only the supported ones are listed.
_COMPRESSIONS = {0: ("NONE", 1), 2: ("ZIPS", 1), 3: ("ZIP", 16)}
_MULTIPART = 0x1000
_TILED = 0x200
_NON_IMAGE = 0x800


class ExrError(ValueError):
    """The file is not an EXR this reader understands; the message says why."""


def _read_cstring(buf, pos):
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def _parse_header(buf, pos):
    attrs = {}
    while True:
        name, pos = _read_cstring(buf, pos)
        if not name:
            return attrs, pos
        type_name, pos = _read_cstring(buf, pos)
        (size,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        attrs[name] = (type_name, buf[pos:pos + size])
        pos += size


def _channels(raw):
    channels, pos = [], 0
    while raw[pos:pos + 1] != b"\0":
        name, pos = _read_cstring(raw, pos)
        pixel_type, _plinear, xs, ys = struct.unpack_from("<iB3xii", raw, pos)
        pos += 16
        if pixel_type not in _PIXEL_DTYPES:
            raise ExrError(f"channel {name!r} has unknown pixel type {pixel_type}")
        if (xs, ys) != (1, 1):
            raise ExrError(f"channel {name!r} is subsampled ({xs}x{ys}); not supported")
        channels.append((name, _PIXEL_DTYPES[pixel_type]))
    return channels


def _undo_zip_predictor(data):
    """OpenEXR's ZIP filter: delta-coded bytes, then the two halves interleaved."""
    t = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    t[1:] -= 128
    t = np.cumsum(t) & 0xFF
    out = np.empty(t.size, dtype=np.uint8)
    half = (t.size + 1) // 2
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


class _Part:
    def __init__(self, attrs):
        self.name = attrs["name"][1].rstrip(b"\0").decode() if "name" in attrs else ""
        if "type" in attrs and attrs["type"][1].rstrip(b"\0") != b"scanlineimage":
            raise ExrError(f"part {self.name!r} is {attrs['type'][1].decode()!r}; only scanline images are read")
        comp = attrs["compression"][1][0]
        if comp not in _COMPRESSIONS:
            raise ExrError(f"part {self.name!r} uses compression id {comp}; only NONE, ZIPS and ZIP are read")
        self.compression, self.lines_per_chunk = _COMPRESSIONS[comp]
        xmin, ymin, xmax, ymax = struct.unpack("<iiii", attrs["dataWindow"][1])
        self.ymin, self.width, self.height = ymin, xmax - xmin + 1, ymax - ymin + 1
        self.channels = sorted(_channels(attrs["channels"][1]), key=lambda c: c[0])
        if "chunkCount" in attrs:
            (self.chunk_count,) = struct.unpack("<i", attrs["chunkCount"][1])
        else:
            self.chunk_count = -(-self.height // self.lines_per_chunk)
        self.arrays = {name: np.empty((self.height, self.width), dtype=np.float32) for name, _ in self.channels}

    def decode_chunk(self, y, data):
        lines = min(self.lines_per_chunk, self.ymin + self.height - y)
        expected = lines * self.width * sum(dt.itemsize for _, dt in self.channels)
        if self.compression != "NONE" and len(data) < expected:
            data = _undo_zip_predictor(zlib.decompress(data))
        if len(data) != expected:
            raise ExrError(f"part {self.name!r}: chunk at y={y} holds {len(data)} bytes, expected {expected}")
        row0 = y - self.ymin
        pos = 0
        for line in range(lines):
            for name, dtype in self.channels:
                n = self.width * dtype.itemsize
                self.arrays[name][row0 + line] = np.frombuffer(data, dtype=dtype, count=self.width, offset=pos)
                pos += n


def read_exr(path):
    """Return {channel name: float32 array (height, width)}, row 0 at the top.

    In a multilayer file the names are Blender's full names, e.g. ``ViewLayer.Depth.Z``.
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != MAGIC:
        raise ExrError(f"{path}: not an OpenEXR file")
    (version,) = struct.unpack_from("<i", buf, 4)
    if version & (_TILED | _NON_IMAGE):
        raise ExrError(f"{path}: tiled or deep EXR files are not supported")
    multipart = bool(version & _MULTIPART)
    pos, parts = 8, []
    while True:
        attrs, pos = _parse_header(buf, pos)
        parts.append(_Part(attrs))
        if not multipart:
            break
        if buf[pos:pos + 1] == b"\0":  # empty header ends the list of parts
            pos += 1
            break
    offsets = []
    for part in parts:
        table = np.frombuffer(buf, dtype="<u8", count=part.chunk_count, offset=pos)
        offsets.append(table)
        pos += 8 * part.chunk_count
    for index, part in enumerate(parts):
        for offset in offsets[index]:
            off = int(offset)
            if multipart:
                off += 4  # part number, implied by the offset table we are reading
            y, size = struct.unpack_from("<ii", buf, off)
            part.decode_chunk(y, buf[off + 8:off + 8 + size])
    channels = {}
    for part in parts:
        channels.update(part.arrays)
    return channels
