"""Limits on pictures, and the formats read, shared by the job schema (core/jobs.py), the
stdlib PNG checks (core/png.py), pictures and references (core/picture.py,
core/references.py), in a module of their own so none of them imports another. Stdlib only."""

#: A control image (or a photo to preprocess): at most this many bytes of PNG, and at most
#: this many pixels (checked from the PNG header before anything is decoded, so a
#: decompression bomb is refused without being inflated).
MAX_PNG_BYTES = 16 * 2**20
MAX_PNG_PIXELS = 36_000_000  # e.g. 6000 x 6000

#: First bytes of the formats the backend reads (backend/engine/pictures.py FORMATS).
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
              (b"MM\x00*", "TIFF"))
FORMATS_TEXT = "PNG, JPEG, WebP, BMP or TIFF"

def sniff(head):
    """The image format of a file from its first bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for sig, name in SIGNATURES if head.startswith(sig)), None)


def image_file_problem(path, flag, noun, thing="an image"):
    """Why the file at ``path`` (given as ``flag``) cannot be read as ``noun`` ("a picture",
    "a reference"): missing, a folder, unreadable, empty, not an image of a format read
    (``thing``: what a folder or empty file is said not to be), larger than
    :data:`MAX_PNG_BYTES`. Returns (one-line problem or None, the format by its first bytes
    and the first 32 bytes). Stdlib only: the file is not decoded."""
    import os

    if not os.path.exists(path):
        return f"{flag} {path}: no such file", None, b""
    if os.path.isdir(path):
        return f"{flag} {path} is a folder, not {thing}", None, b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        return f"{flag} {path} cannot be read ({exc.strerror})", None, b""
    if not head:
        return f"{flag} {path} is empty (0 bytes), not {thing}", None, head
    kind = sniff(head)
    if kind is None:
        return f"{flag} {path} is not an image ({FORMATS_TEXT} are read)", None, head
    size = os.path.getsize(path)
    if size > MAX_PNG_BYTES:  # the backend takes no more: said here, not as a broken pipe
        return (f"{flag} {path} is {size / 2**20:.1f} MiB; {noun} may be at most {MAX_PNG_BYTES // 2**20} MiB "
                "(save it smaller, e.g. as JPEG or at a lower resolution)"), kind, head
    return None, kind, head
