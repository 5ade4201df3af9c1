"""Limits on pictures shared by the job schema (core/jobs.py) and the stdlib PNG checks
(core/png.py), in a module of their own so neither imports the other. Stdlib only."""

#: A control image (or a photo to preprocess): at most this many bytes of PNG, and at most
#: this many pixels (checked from the PNG header before anything is decoded, so a
#: decompression bomb is refused without being inflated).
MAX_PNG_BYTES = 16 * 2**20
MAX_PNG_PIXELS = 36_000_000  # e.g. 6000 x 6000
