"""Write 8-bit PNGs from numpy arrays with zlib alone.

Control images must keep their exact values (a seg colour is a class), so they are not
passed through Blender's colour management. Blender's Python has no image library, and
PNG encoding is a few lines over zlib, which the standard library has.
"""

import errno
import os
import re
import struct
import tempfile
import time
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


class WriteError(OSError):
    """A file could not be written (disk full, file size limit, permissions). The message
    names the file and says what went wrong in one line."""

    def __str__(self):
        return self.strerror or super().__str__()


_REASONS = {  # errno -> (what happened, a detail for the parenthesis)
    errno.ENOSPC: ("disk full while writing {path}", ""),
    errno.EFBIG: ("disk full while writing {path}", "the file size limit, ulimit -f, was reached"),
    errno.EDQUOT: ("disk full while writing {path}", "the disk quota is exceeded"),
    errno.EACCES: ("permission denied while writing {path}", ""),
    errno.EROFS: ("cannot write {path}: the file system is read-only", ""),
}

#: Our temporary files: ``.NAME.PID.RANDOM.tmp`` next to the file they become.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
#: Temporary files of older versions (no pid in the name): ``.NAME.RANDOM.tmp`` and ``.tmp-RANDOM``.
_OLD_TEMP = re.compile(r"^(\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp|\.tmp-[A-Za-z0-9_]{8})$")
#: An old-style temporary file is stale once it is this old (no live writer takes so long).
OLD_TEMP_AGE_S = 600


def current_umask():
    """The process umask, read without changing it where Linux tells it (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def write_error(exc, path, size=None):
    """A one-line :class:`WriteError` for an OSError met while writing ``path``."""
    template, detail = _REASONS.get(exc.errno, (None, ""))
    text = template.format(path=path) if template else f"cannot write {path}: {exc.strerror or exc}"
    notes = "; ".join(filter(None, [f"{size} bytes" if size is not None else "", detail]))
    return WriteError(exc.errno, f"{text}{f' ({notes})' if notes else ''}; the files finished before it are kept")


def looks_full(path, free_bytes=1 << 20):
    """True when a short file at ``path`` was most likely cut by a full disk or the file
    size limit (for files that native code, such as Blender's EXR writer, writes without
    telling us): its size reached RLIMIT_FSIZE, or its disk has less than ``free_bytes``."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and os.path.getsize(path) >= soft:
            return True
    except (ImportError, OSError):
        pass
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        return st.f_bavail * st.f_frsize < free_bytes
    except (OSError, AttributeError):
        return False


def atomic_write(path, data, error=WriteError):
    """Write bytes to ``path`` through a temporary file in the same folder, fsync and a
    rename, so a reader never sees a half-written file. The file gets the mode any
    program's new file gets (0666 less the umask: 0644 under umask 022). On failure the
    temporary file is removed, ``path`` is as it was, and ``error`` (a :class:`WriteError`
    subclass) names the file: "disk full while writing PATH (N bytes); ..."."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # POSIX; Windows has no mode bits to speak of
                os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, WriteError):
            raise
        err = write_error(exc, path, len(data))
        raise error(err.errno, err.strerror) from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if tmp and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _pid_alive(pid):
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: judged by age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def clean_stale_temps(folder):
    """Remove our temporary files in ``folder`` that no live process is writing: those of
    a process that is gone (killed while writing), and old-style ones older than
    :data:`OLD_TEMP_AGE_S`. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and os.name != "nt":
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        elif m or _OLD_TEMP.match(entry.name):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > OLD_TEMP_AGE_S
            except OSError:
                stale = False
        else:
            continue
        if stale and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass
    return removed


def read_text(path):
    """The tEXt chunks of a PNG file as a dict ({} when it is not a readable PNG)."""
    out = {}
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _SIGNATURE:
                return out
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return out
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT" or kind == b"IEND":
                    return out
                body = fh.read(length)
                fh.read(4)
                if kind == b"tEXt" and b"\0" in body:
                    key, value = body.split(b"\0", 1)
                    out[key.decode("latin-1")] = value.decode("latin-1")
                elif kind == b"iTXt" and b"\0" in body:
                    key, rest = body.split(b"\0", 1)
                    parts = rest[2:].split(b"\0", 2)
                    if len(parts) == 3 and rest[:1] == b"\0":
                        out[key.decode("latin-1")] = parts[2].decode("utf-8", "replace")
    except OSError:
        return out


def write_png(path, image, text=None):
    atomic_write(path, encode_png(image, text=text))


#: Channels per PNG colour type (grey, RGB, palette, grey + alpha, RGBA).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_problem(path, flag, max_bytes=None, max_pixels=None):
    """Why the file at ``path`` is not a whole PNG within the limits (one line starting
    with ``flag``), or None. Stdlib only, bounded memory: the file size and the header's
    pixel count against the jobs' limits (16 MiB, 36 megapixels) before anything is
    inflated, every chunk's CRC up to IEND, and the image data inflated in steps of 1 MiB
    to exactly the size its header gives (a cut or damaged file is found here, before
    any render)."""
    from .limits import MAX_PNG_BYTES, MAX_PNG_PIXELS

    max_bytes = MAX_PNG_BYTES if max_bytes is None else max_bytes
    max_pixels = MAX_PNG_PIXELS if max_pixels is None else max_pixels
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return (f"{flag} {path} is {size / 2**20:.1f} MiB; a picture may be at most {max_bytes // 2**20} MiB "
                    "(save it smaller, e.g. as JPEG or at a lower resolution)")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        return f"{flag} {path} cannot be read ({exc.strerror})"
    if not data.startswith(_SIGNATURE):
        return f"{flag} {path}: not a PNG file"
    pos, width, height, raw_size, interlaced = 8, 0, 0, None, False
    inflate = zlib.decompressobj()
    inflated = 0
    while True:
        if pos + 8 > len(data):
            return f"{flag} {path}: the PNG is cut short (no IEND chunk after {len(data)} bytes)"
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            return f"{flag} {path}: the PNG is cut short (its {kind.decode('latin-1')!r} chunk at byte {pos} ends past " \
                   f"the file's {len(data)} bytes)"
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            return f"{flag} {path}: the PNG is damaged (bad checksum of its {kind.decode('latin-1')!r} chunk at byte {pos})"
        if kind == b"IHDR":
            if length != 13:
                return f"{flag} {path}: the PNG is damaged (its header is {length} bytes, not 13)"
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if width * height > max_pixels:
                return (f"{flag} {path}: PNG of {width}x{height} = {width * height / 1e6:.0f} megapixels is over the "
                        f"limit of {max_pixels / 1e6:.0f} megapixels")
            if colour not in _CHANNELS or not width or not height:
                return f"{flag} {path}: the PNG is damaged (colour type {colour}, {width}x{height} px)"
            interlaced = bool(interlace)
            raw_size = height * (1 + (width * _CHANNELS[colour] * depth + 7) // 8)
        elif kind == b"IDAT":
            if raw_size is None:
                return f"{flag} {path}: the PNG is damaged (image data before its header)"
            try:
                chunk = inflate.decompress(body, 2**20)
                while chunk:
                    inflated += len(chunk)
                    if not interlaced and inflated > raw_size:
                        return f"{flag} {path}: the PNG is damaged (its image data is longer than its header says)"
                    chunk = inflate.decompress(inflate.unconsumed_tail, 2**20) if inflate.unconsumed_tail else b""
            except zlib.error as exc:
                return f"{flag} {path}: the PNG is damaged (its image data does not inflate: {exc})"
        elif kind == b"IEND":
            break
        pos += 12 + length
    if raw_size is None:
        return f"{flag} {path}: the PNG is damaged (no header)"
    if not inflate.eof or (not interlaced and inflated != raw_size):
        return (f"{flag} {path}: the PNG is cut short or damaged (its image data gives {inflated} of the "
                f"{raw_size} bytes its header says)")
    return None


def png_size(head):
    """(width, height) from a PNG's first 24 bytes (its IHDR), or None when they are not
    a PNG's: the size of a picture Pillow refuses to open as a decompression bomb."""
    if head[:8] == _SIGNATURE and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    return None


def temp_name(path):
    """A unique temporary name next to ``path`` (``.NAME.PID.RANDOM.tmp``, the name
    :func:`clean_stale_temps` knows), for a file another program writes (Blender's EXR)."""
    import secrets

    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


class folder_lock:
    """``with folder_lock(folder, waiting):`` an exclusive ``flock`` on the folder itself
    (no lock file left behind), so runs writing into one folder take turns; ``waiting()``
    is called once when another run holds it. Where ``fcntl`` does not exist (Windows)
    nothing is locked."""

    def __init__(self, folder, waiting=None):
        self.folder, self.waiting, self.fd = folder, waiting, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.waiting:
                self.waiting()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False
