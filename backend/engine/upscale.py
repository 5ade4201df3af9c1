"""Exact tiled upscaling: enlarge, then refine tile by tile with ControlNet img2img at low
strength, each tile conditioned on its own crop of the control passes rendered again at the
target size (exact at any size), the tiles blended over their overlaps (core/tiles.py).

Each tile is an ordinary one-image job (the sweep's engine, img2img, the same parameters as
the image being upscaled): the engine only ever sees tile-sized images, so its memory is
bounded by the tile size whatever the output size. Tile (row, column) gets the seed
:func:`tile_seed` of the image's seed and its position, the same on every run.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from ...core import jobs as J
from ...core import tiles as T
from ...core.png import encode_png

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_STRENGTH = 0.3  # refine: keeps the enlarged image's content, redraws its detail


def tile_seed(seed: int, row: int, column: int) -> int:
    return (int(seed) + 1_000_003 * row + 7_919 * column) % (J.MAX_SEED + 1)


def enlarge(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((width, height), Image.LANCZOS))


def tile_job(template: dict, box, enlarged: np.ndarray, controls: list[tuple[dict, np.ndarray]], strength: float,
             seed: int) -> dict:
    """The one-image job of one tile: the template's model, style and sampling, the tile's
    crops of the enlarged image (init) and of each control."""
    x, y, w, h = box
    job = copy.deepcopy(template)
    job["controls"] = [{**unit, "image": J.encode_png(encode_png(np.ascontiguousarray(img[y:y + h, x:x + w])))}
                       for unit, img in controls]
    job.update(init_image=J.encode_png(encode_png(np.ascontiguousarray(enlarged[y:y + h, x:x + w]))),
               strength=strength, seeds=[seed], width=w, height=h, skip_existing=False, contact_sheet=False)
    job.pop("output_dir", None)
    return job


def upscale(engine, template: dict, image: np.ndarray, controls: list[tuple[dict, np.ndarray]], *, seed: int,
            tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, strength: float = DEFAULT_STRENGTH,
            presets=None, on_tile: Callable[[int, int, tuple], None] | None = None) -> np.ndarray:
    """``image`` (uint8 HxWx3) refined at the controls' size (each control: its unit
    settings and uint8 pixels at the target size). Returns float32 HxWx3 in [0, 1];
    ``on_tile(done, total, box)`` after each tile."""
    from ...core.presets import load_presets
    from .sweep import build_plan

    height, width = controls[0][1].shape[:2]
    for unit, img in controls:
        if img.shape[:2] != (height, width):
            raise ValueError(f"control {unit.get('type')!r} is {img.shape[1]}x{img.shape[0]}, not {width}x{height}")
    if tile % J.SIZE_MULTIPLE or overlap % J.SIZE_MULTIPLE:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {J.SIZE_MULTIPLE}")
    presets = presets if presets is not None else load_presets(include_user=False)
    enlarged = enlarge(image, width, height)
    canvas = T.Canvas(width, height, overlap)
    boxes = T.grid(width, height, tile, overlap)
    rows = sorted({b[1] for b in boxes})
    cols = sorted({b[0] for b in boxes})
    for done, box in enumerate(boxes, start=1):
        s = tile_seed(seed, rows.index(box[1]), cols.index(box[0]))
        plan = build_plan(J.Job.from_dict(tile_job(template, box, enlarged, controls, strength, s)), presets,
                          engine.dtype_name, engine.image_changes)
        canvas.add(box, engine.generate(plan, plan.images)[plan.images[0].index])
        if on_tile:
            on_tile(done, len(boxes), box)
    return canvas.result()
