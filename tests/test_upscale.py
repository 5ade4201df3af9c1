"""Exact tiled upscaling with the tiny SD 1.5 model: the grid and weights (core/tiles.py),
output size, each tile equal to its own img2img run where no other tile lies, a single tile
equal to a whole-image run, overlap bands that blend two tiles convexly (no seam), and the
engine only ever seeing tile-sized images."""

import os

import numpy as np
import pytest

from archviz_controlnet.core import tiles as T

from backend_support import beauty_image, depth_image, lines_image


def test_grid_covers_the_image_and_weights_ramp_only_towards_neighbours():
    assert T.starts(128, 64, 16) == [0, 48, 64]
    assert T.starts(64, 64, 16) == [0] and T.starts(40, 64, 16) == [0]
    boxes = T.grid(128, 96, 64, 16)
    assert len(boxes) == 3 * 2 and all(b[2:] == (64, 64) for b in boxes)
    w = T.weights((0, 0, 64, 64), 128, 96, 16)
    assert w[0, 0] == 1.0 and w[0, 47] == 1.0 and w[0, 63] == pytest.approx(0.5 / 16)
    # a neighbour below too, moved back to end at the border (starts 0, 32): they share 32 px,
    # and the 16 px band sits in the middle of them
    assert T.starts(96, 64, 16) == [0, 32]
    assert w[39, 0] == 1.0 and w[40, 0] == pytest.approx(15.5 / 16) and w[55, 0] == pytest.approx(0.5 / 16)
    assert w[56:, 0].max() == 0.0


@pytest.mark.parametrize("width, height, tile, overlap", [
    (128, 96, 64, 16), (113, 200, 64, 16), (2048, 1152, 512, 64), (4096, 2304, 512, 64), (1000, 700, 256, 24)])
def test_weights_add_up_to_one_and_each_blend_band_is_overlap_wide(width, height, tile, overlap):
    boxes = T.grid(width, height, tile, overlap)
    total = np.zeros((height, width), np.float64)
    counting = np.zeros((height, width), np.int32)
    for box in boxes:
        x, y, w, h = box
        wt = T.weights(box, width, height, overlap)
        assert wt.min() >= 0.0 and wt.max() == 1.0
        total[y:y + h, x:x + w] += wt
        counting[y:y + h, x:x + w] += wt > 0
    assert np.abs(total - 1.0).max() < 1e-6  # a partition of unity: the blend is convex everywhere
    # along a side, pixels where two tiles count: one band of `overlap` px per pair of neighbours,
    # however much more the moved-back last tile shares with its neighbour
    xs = T.starts(width, tile, overlap)
    assert (counting[0] > 1).sum() == overlap * (len(xs) - 1)


def test_a_moved_back_tile_keeps_the_detail_of_the_strip_it_shares():
    """Two tiles of unrelated detail sharing 320 px (the moved-back last tile of a 1152 px side):
    outside the 64 px band each pixel is one tile's, so the strip keeps its contrast."""
    rng = np.random.default_rng(0)
    width, height, tile, overlap = 1152, 64, 512, 64
    canvas = T.Canvas(width, height, overlap)
    for box in T.grid(width, height, tile, overlap):
        canvas.add(box, rng.random((box[3], box[2], 3), dtype=np.float32))
    out = canvas.result()
    strip = out[:, 640:960]  # shared by the tiles starting at 640 and 448
    band = out[:, 768:832]
    alone = out[:, 0:448]
    assert strip[:, :128].std() == pytest.approx(alone.std(), rel=0.05)  # the first tile alone
    assert strip[:, 192:].std() == pytest.approx(alone.std(), rel=0.05)  # the last tile alone
    assert band.std() < 0.9 * alone.std()  # only the band mixes them
    with pytest.raises(ValueError, match="overlap must be from 0 to below the tile size 64, got 64"):
        T.starts(128, 64, 64)


TEMPLATE = {"model": "tiny", "styles": ["modern"], "steps": 4, "cfg": 7.0, "scheduler": "unipc"}


def controls(size):
    return [({"type": "depth", "scale": 0.9}, depth_image(size, size)),
            ({"type": "lines", "scale": 0.6}, lines_image(size, size))]


def one_tile(engine, box, enlarged, ctrls, strength, seed):
    from archviz_controlnet.backend.engine.sweep import build_plan
    from archviz_controlnet.backend.engine.upscale import tile_job
    from archviz_controlnet.core import jobs as J
    from archviz_controlnet.core.presets import load_presets

    plan = build_plan(J.Job.from_dict(tile_job(TEMPLATE, box, enlarged, ctrls, strength, seed)),
                      load_presets(include_user=False))
    return engine.generate(plan, plan.images)[0]


def test_2x_upscale_tiles_blend_without_seams_and_equal_their_own_runs(engine):
    from archviz_controlnet.backend.engine.upscale import enlarge, tile_seed, upscale

    source = beauty_image(64, 64)
    ctrls = controls(128)  # the controls at the target size
    seen = []
    out = upscale(engine, TEMPLATE, source, ctrls, seed=5, tile=64, overlap=16, strength=0.4,
                  on_tile=lambda done, total, box: seen.append((done, total, box)))
    assert out.shape == (128, 128, 3)
    assert [s[0] for s in seen] == list(range(1, 10)) and {s[1] for s in seen} == {9}
    assert all(s[2][2:] == (64, 64) for s in seen)  # the engine only ever ran 64 px tiles
    enlarged = enlarge(source, 128, 128)
    boxes = T.grid(128, 128, 64, 16)
    rows, cols = sorted({b[1] for b in boxes}), sorted({b[0] for b in boxes})
    tiles = {b: one_tile(engine, b, enlarged, ctrls, 0.4, tile_seed(5, rows.index(b[1]), cols.index(b[0])))
             for b in boxes}
    # where only the first tile lies, the output is that tile's own run
    assert np.abs(out[:48, :48] - tiles[(0, 0, 64, 64)][:48, :48]).max() < 1e-6
    # the band between the first two tiles of the top row: a convex blend moving from A to B
    a = tiles[(0, 0, 64, 64)][:48, 48:64]
    b = tiles[(48, 0, 64, 64)][:48, 0:16]
    band = out[:48, 48:64]
    assert (band >= np.minimum(a, b) - 1e-6).all() and (band <= np.maximum(a, b) + 1e-6).all()
    share_b = (band - a) / np.where(np.abs(b - a) > 1e-3, b - a, np.nan)
    col_share = np.nanmedian(share_b.reshape(48, 16, 3).transpose(1, 0, 2).reshape(16, -1), axis=1)
    assert (np.diff(col_share) > 0).all() and col_share[0] < 0.1 and col_share[-1] > 0.9
    # no seam: the step between neighbouring columns inside the band is no bigger than
    # the tiles' own differences spread over the band plus the image's own column steps
    steps = np.abs(np.diff(out[:48, 47:65], axis=1)).max()
    own = max(np.abs(np.diff(a, axis=1)).max(), np.abs(np.diff(b, axis=1)).max())
    assert steps <= own + np.abs(a - b).max() / 8 + 1e-6
    # the tiles really differ (different seeds and crops): the blend is not trivially exact
    assert np.abs(a - b).mean() > 0.01


def test_a_single_tile_equals_a_whole_image_img2img_run(engine):
    from archviz_controlnet.backend.engine.upscale import enlarge, upscale

    source = beauty_image(64, 64)
    ctrls = controls(64)
    out = upscale(engine, TEMPLATE, source, ctrls, seed=9, tile=64, overlap=16, strength=0.5)
    whole = one_tile(engine, (0, 0, 64, 64), enlarge(source, 64, 64), ctrls, 0.5, 9)
    assert np.abs(out - whole).max() < 1e-6


def test_bad_upscale_arguments(engine):
    from archviz_controlnet.backend.engine.upscale import upscale

    ctrls = [({"type": "depth"}, depth_image(128, 128)), ({"type": "lines"}, lines_image(64, 64))]
    with pytest.raises(ValueError, match="control 'lines' is 64x64, not 128x128"):
        upscale(engine, TEMPLATE, beauty_image(), ctrls, seed=0, tile=64, overlap=16)
    with pytest.raises(ValueError, match=r"tile \(60\) and overlap \(16\) must be multiples of 8"):
        upscale(engine, TEMPLATE, beauty_image(), controls(128), seed=0, tile=60, overlap=16)


# ---------------------------------------------------------------- archviz upscale

ARCHVIZ = os.path.join(os.path.dirname(os.sys.executable), "archviz")


def run_cli(*args):
    import subprocess

    from backend_support import TEST_HOME

    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    return subprocess.run([ARCHVIZ, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def test_archviz_upscale_rerenders_the_passes_and_refines_by_tiles(tmp_path):
    pytest.importorskip("bpy")
    import json
    import subprocess
    import sys

    from backend_support import read_png

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scene = tmp_path / "interior.blend"
    subprocess.run([sys.executable, os.path.join(root, "examples", "build_interior.py"), "--out", str(scene)],
                   check=True, capture_output=True, timeout=300)
    made = run_cli("sweep", scene, "--styles", "modern", "--seeds", "4", "--model", "tiny", "--long-side", "64",
                   "--steps", "3", "--out", tmp_path / "out")
    assert made.returncode == 0, made.stderr
    image = next(p for p in (tmp_path / "out").iterdir() if p.name.endswith("_s4.png"))
    small, _ = read_png(str(image))
    proc = run_cli("upscale", image, "--scale", "2", "--scene", scene, "--tile", "64", "--overlap", "16")
    assert proc.returncode == 0, proc.stderr
    out = image.with_name(image.stem + "_x2.png")
    big, meta = read_png(str(out))
    assert big.shape == (small.shape[0] * 2, small.shape[1] * 2, 3)
    params = json.loads(meta["archviz"])["params"]
    assert params["scale"] == 2 and params["tile"] == 64 and params["source"]["seed"] == 4
    # the controls were rendered again at the target size, not enlarged: sharper than the
    # 64 px depth pass blown up
    passes = next((tmp_path / "out" / "passes_upscale").iterdir())
    depth_big, _ = read_png(str(passes / "depth.png"))
    depth_small, _ = read_png(str(next((tmp_path / "out" / "passes").iterdir()) / "depth.png"))
    assert depth_big.shape[:2] == big.shape[:2]
    blown_up = np.repeat(np.repeat(depth_small, 2, axis=0), 2, axis=1)
    assert (depth_big != blown_up).mean() > 0.1
    again = run_cli("upscale", image, "--scale", "2", "--scene", scene, "--tile", "64", "--overlap", "16")
    assert again.returncode == 0 and "kept" in again.stdout  # resume
    too_big = run_cli("upscale", image, "--scale", "4", "--scene", scene, "--max-pixels", "10000")
    assert too_big.returncode == 2
    assert too_big.stderr.strip() == ("archviz upscale: --scale 4: 256x128 = 32,768 pixels is over the limit "
                                      "of 10,000 pixels (--max-pixels, ARCHVIZ_UPSCALE_MAX_PIXELS)")
    plain = tmp_path / "plain.png"
    plain.write_bytes((passes / "depth.png").read_bytes())
    no_meta = run_cli("upscale", plain, "--scale", "2", "--scene", scene)
    assert no_meta.returncode == 2 and "has no archviz metadata" in no_meta.stderr
    assert len(no_meta.stderr.strip().splitlines()) == 1
    # archviz sweep --upscale 2: the sweep's images, then each one upscaled the same way
    swept = run_cli("sweep", scene, "--styles", "modern", "--seeds", "4", "--model", "tiny", "--long-side", "64",
                    "--steps", "3", "--out", tmp_path / "out2", "--upscale", "2")
    assert swept.returncode == 0, swept.stderr
    twice = next(p for p in (tmp_path / "out2").iterdir() if p.name.endswith("_s4_x2.png"))
    pixels2, meta2 = read_png(str(twice))
    assert pixels2.shape == big.shape and json.loads(meta2["archviz"])["params"]["tile"] == 512
