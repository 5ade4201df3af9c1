"""Tiles for exact tiled upscaling (backend/engine/upscale.py): the grid and the blend weights.

A side of ``length`` pixels is covered by tiles of ``tile`` pixels that overlap by at least
``overlap``: starts ``0, tile - overlap, 2 (tile - overlap), ...``, the last one moved back
to end at the border (so it overlaps its neighbour by more). Between two neighbours the
blend band is always ``overlap`` pixels wide, in the middle of what they share: there the
weight ramps linearly from one tile to the other (``(k + 0.5) / overlap`` for pixel k of the
band); before the band the first tile counts alone, after it the second. Along a side the
weights of the tiles add up to 1, so the output (the weighted mean of the tiles) is, where
only one tile counts, that tile's pixels exactly, and in a band a convex blend that moves
from one tile to the other. A wider shared strip (the moved-back last tile) is therefore
not averaged over its whole width: averaging two tiles' different detail over hundreds of
pixels shows as a soft, lower-contrast stripe. Stdlib + numpy only.
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


def _axis(start: int, size: int, length: int, overlap: int) -> np.ndarray:
    """The weight along one side of the tile starting at ``start`` (see the module's doc)."""
    w = np.ones(size, np.float32)
    grid_starts = starts(length, size, overlap) if length > size else [0]
    i = grid_starts.index(start)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap if overlap else np.zeros(0, np.float32)
    if i > 0:  # the band with the previous tile: after ``before`` px of what they share
        shared = grid_starts[i - 1] + size - start
        before = (shared - overlap) // 2
        w[:before] = 0.0
        w[before:before + overlap] = ramp
    if i < len(grid_starts) - 1:  # the band with the next tile, seen from this one
        shared = start + size - grid_starts[i + 1]
        after = (shared - overlap) - (shared - overlap) // 2
        w[size - after:] = 0.0
        w[size - after - overlap:size - after] = np.minimum(w[size - after - overlap:size - after], ramp[::-1])
    return w


def weights(box, width: int, height: int, overlap: int) -> np.ndarray:
    """The (h, w) weight of one tile of the grid over a ``width`` x ``height`` image."""
    x, y, w, h = box
    return _axis(y, h, height, overlap)[:, None] * _axis(x, w, width, overlap)[None, :]


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
