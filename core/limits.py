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
