"""Tiles for exact tiled upscaling (backend/upscale.py): the grid and the blend weights.

A side of ``length`` pixels is covered by tiles of ``tile`` pixels that overlap by at least
``overlap``: starts ``0, tile - overlap, 2 (tile - overlap), ...``, the last one moved back
to end at the border (so it overlaps its neighbour by more). Each tile's weight is 1 in its
middle and ramps linearly over the ``overlap`` pixels of every side that has a neighbour
(``(k + 0.5) / overlap`` for pixel k of the ramp); the output is the weighted mean of the
tiles. Where only one tile lies, the output is that tile's pixels exactly; in an overlap
band it is a convex blend that moves from one tile to the other across the band.
Stdlib + numpy only.
"""

from __future__ import annotations

import numpy as np


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one side (a single tile when ``length <= tile``)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be from 0 to below the tile size {tile}, got {overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    out = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(out))


def grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of every tile, row by row."""
    tw, th = min(tile, width), min(tile, height)
    return [(x, y, tw, th) for y in starts(height, tile, overlap) for x in starts(width, tile, overlap)]


def _ramp(size: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    w = np.ones(size, np.float32)
    if overlap:
        ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if before:
            w[:overlap] = np.minimum(w[:overlap], ramp)
        if after:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def weights(box, width: int, height: int, overlap: int) -> np.ndarray:
    """The (h, w) weight of one tile of the grid over a ``width`` x ``height`` image."""
    x, y, w, h = box
    wx = _ramp(w, overlap, x > 0, x + w < width)
    wy = _ramp(h, overlap, y > 0, y + h < height)
    return wy[:, None] * wx[None, :]


class Canvas:
    """The weighted sum of the tiles so far (float32), one tile at a time."""

    def __init__(self, width: int, height: int, overlap: int):
        self.width, self.height, self.overlap = width, height, overlap
        self.sum = np.zeros((height, width, 3), np.float32)
        self.weight = np.zeros((height, width), np.float32)

    def add(self, box, pixels: np.ndarray) -> None:
        x, y, w, h = box
        wt = weights(box, self.width, self.height, self.overlap)
        self.sum[y:y + h, x:x + w] += np.asarray(pixels, np.float32) * wt[..., None]
        self.weight[y:y + h, x:x + w] += wt

    def result(self) -> np.ndarray:
        if not (self.weight > 0).all():
            raise ValueError("the tiles do not cover the image")
        return self.sum / self.weight[..., None]


def upscale_argv(image_path: str, scale: int, scene_path: str, camera: str = "") -> list[str]:
    """``archviz upscale`` arguments for one result of a sweep (``archviz sweep --upscale``)."""
    argv = ["upscale", image_path, "--scale", str(scale), "--scene", scene_path]
    return argv + (["--camera", camera] if camera else [])
