"""Read and write the float channels of OpenEXR files.

Blender's own Python has numpy but no image library that exposes the passes of a
multilayer EXR, so the capture side reads the file it just rendered with this small
reader: scanline images, compression NONE, ZIPS or ZIP, pixel types HALF, FLOAT, UINT.
That covers what Blender writes for render passes; anything else is refused by name.

The writer makes what the results need (an AI image plus its passes as layers of one
file): a single-part scanline image, FLOAT pixels, compression NONE or ZIP.
"""

import os
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


# ---------------------------------------------------------------- writer

_WRITE_COMPRESSIONS = {"NONE": 0, "ZIP": 3}
_FLOAT = 2
_LONG_NAMES = 0x400
_MAX_SHORT_NAME = 31


def _do_zip_predictor(data):
    """The inverse of _undo_zip_predictor: interleave the bytes (even ones first), then
    delta-code them with OpenEXR's +128 bias."""
    raw = np.frombuffer(data, dtype=np.uint8)
    half = (raw.size + 1) // 2
    t = np.empty(raw.size, dtype=np.uint8)
    t[:half] = raw[0::2]
    t[half:] = raw[1::2]
    out = t.astype(np.int16)
    out[1:] = (out[1:] - t[:-1].astype(np.int16) + 128) & 0xFF
    return out.astype(np.uint8).tobytes()


def _attribute(name, type_name, value):
    return name.encode() + b"\0" + type_name.encode() + b"\0" + struct.pack("<i", len(value)) + value


def encode_exr(channels, compression="ZIP"):
    """EXR bytes for ``{channel name: 2-D array}`` (all the same shape, row 0 at the top).

    One part, scanlines, 32-bit FLOAT pixels. ``compression`` is ``"ZIP"`` (zlib over
    16 scanlines with OpenEXR's predictor) or ``"NONE"``. Channel names are kept as
    given; a dot makes a layer, e.g. ``AI.R`` or ``Depth.Z``, which Blender and OpenEXR
    read as pass ``AI``, channel ``R``.
    """
    if compression not in _WRITE_COMPRESSIONS:
        raise ValueError(f"EXR compression must be one of {', '.join(_WRITE_COMPRESSIONS)}, got {compression!r}")
    if not channels:
        raise ValueError("an EXR needs at least one channel")
    arrays, shape = {}, None
    for name, value in channels.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"bad EXR channel name {name!r}")
        if len(name.encode()) > 255:
            raise ValueError(f"EXR channel name {name!r} is longer than 255 bytes")
        arr = np.asarray(value)
        if arr.ndim != 2 or 0 in arr.shape:
            raise ValueError(f"EXR channel {name!r} must be a non-empty 2-D array (height, width), got shape {arr.shape}")
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ValueError(f"EXR channel {name!r} has shape {arr.shape}, the others {shape}")
        arrays[name] = np.ascontiguousarray(arr, dtype="<f4")
    height, width = shape
    names = sorted(arrays, key=lambda n: n.encode())  # OpenEXR keeps channels sorted by name

    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", _FLOAT, 0, 1, 1) for n in names) + b"\0"
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = b"".join([
        _attribute("channels", "chlist", chlist),
        _attribute("compression", "compression", bytes([_WRITE_COMPRESSIONS[compression]])),
        _attribute("dataWindow", "box2i", window),
        _attribute("displayWindow", "box2i", window),
        _attribute("lineOrder", "lineOrder", b"\0"),  # INCREASING_Y
        _attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]) + b"\0"
    version = 2 | (_LONG_NAMES if any(len(n.encode()) > _MAX_SHORT_NAME for n in names) else 0)

    # Within a scanline the channels follow one another, each a full row of pixels.
    rows = np.stack([arrays[n] for n in names], axis=1)  # (height, channels, width)
    lines_per_chunk = {"NONE": 1, "ZIP": 16}[compression]
    chunks = []
    for y in range(0, height, lines_per_chunk):
        data = rows[y:y + lines_per_chunk].tobytes()
        if compression == "ZIP":
            packed = zlib.compress(_do_zip_predictor(data), 6)
            if len(packed) < len(data):  # as OpenEXR: keep raw data when zlib does not help
                data = packed
        chunks.append(struct.pack("<ii", y, len(data)) + data)

    start = 8 + len(header) + 8 * len(chunks)
    offsets, pos = [], start
    for chunk in chunks:
        offsets.append(pos)
        pos += len(chunk)
    return b"".join([struct.pack("<ii", MAGIC, version), header,
                     np.array(offsets, dtype="<u8").tobytes()] + chunks)


def write_exr(path, channels, compression="ZIP"):
    """Write ``{channel name: float32 array (height, width)}`` as a single-part scanline
    EXR (see encode_exr), through a temporary file and a rename."""
    from .png import atomic_write

    atomic_write(os.fspath(path), encode_exr(channels, compression=compression))
