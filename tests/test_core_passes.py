"""core/ control-image math on plain numpy arrays: no Blender, no torch."""

import math

import numpy as np
import pytest

from archviz_controlnet.core import passes
from archviz_controlnet.core.passes import DepthRange, PassError

BG = 1e10


def test_control_resolution_keeps_aspect_and_multiples_of_8():
    assert passes.control_resolution(1920, 1080) == (512, 288)
    assert passes.control_resolution(1080, 1920) == (288, 512)
    assert passes.control_resolution(1000, 1000, 1024) == (1024, 1024)
    w, h = passes.control_resolution(1234, 777, 512)
    assert w == 512 and h % 8 == 0 and abs(w / h - 1234 / 777) < 0.03
    # Non-square pixels count in the aspect ratio.
    assert passes.control_resolution(1000, 1000, 512, pixel_aspect=(2.0, 1.0)) == (512, 256)


@pytest.mark.parametrize("bad", [500, 0, 63, -8, 512.0])
def test_control_resolution_rejects_bad_long_side(bad):
    with pytest.raises(PassError, match=repr(bad).replace(".", r"\.")):
        passes.control_resolution(1920, 1080, bad)


def test_depth_range_from_bounds_is_camera_independent_and_sane():
    corners = np.array([[x, y, z] for x in (-3, 3) for y in (-2, 2) for z in (0, 3)], dtype=float)
    inside = np.array([[0.0, 0.0, 1.5]])
    r = passes.depth_range_from_bounds(corners, inside)
    assert r.far == pytest.approx(math.sqrt(9 + 4 + 2.25))
    assert r.near == pytest.approx(0.15 * r.far)  # inside the box: the ratio floor
    outside = np.array([[0.0, -12.0, 1.5]])
    r2 = passes.depth_range_from_bounds(corners, outside)
    assert r2.near == pytest.approx(10.0)  # distance to the box face at y = -2
    both = passes.depth_range_from_bounds(corners, np.concatenate([inside, outside]))
    assert both.far == pytest.approx(r2.far) and both.near == pytest.approx(0.15 * r2.far)


@pytest.mark.parametrize("near,far", [(0, 5), (5, 1), (1, float("nan")), (-1, 3), (1, float("inf"))])
def test_user_depth_range_rejects_bad_values(near, far):
    with pytest.raises(PassError, match="near"):
        passes.user_depth_range(near, far)


def test_depth_image_inverse_monotonic_and_black_background():
    z = np.array([[1.0, 2.0, 4.0, 8.0, BG, 0.5, 20.0]])
    img = passes.depth_image(z, DepthRange(1.0, 10.0, "user"))
    assert img[0, 0] == 255 and img[0, 5] == 255  # at or nearer than near: white
    assert img[0, 0] > img[0, 1] > img[0, 2] > img[0, 3] > 0
    assert img[0, 4] == 0 and img[0, 6] == 0  # background and beyond far: black
    # Exact inverse mapping: 1/z linear between 1/far and 1/near.
    expected = (1 / 2.0 - 1 / 10.0) / (1 / 1.0 - 1 / 10.0)
    assert img[0, 1] == int(math.floor(expected * 255 + 0.5))


def test_normal_coding_follows_controlnet_convention():
    n = np.array([[[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0]]], dtype=float)
    hit = np.array([[True] * 5 + [False]])
    img = passes.normal_image(n, hit)
    assert tuple(img[0, 0]) == (128, 128, 255)  # facing the camera
    assert tuple(img[0, 1]) == (0, 128, 128)  # facing right: red goes down
    assert tuple(img[0, 2]) == (255, 128, 128)  # facing left: red up ("red is left")
    assert tuple(img[0, 3]) == (128, 255, 128)  # facing up: green up
    assert tuple(img[0, 4]) == (128, 0, 128)
    assert tuple(img[0, 5]) == (128, 128, 255)  # background


def test_camera_space_normals_undo_camera_rotation():
    # Camera turned 90 degrees about world Z: its x axis is world +Y.
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    world = np.array([[[0, 1, 0], [-1, 0, 0], [0, 0, 2]]], dtype=float)
    cam = passes.camera_space_normals(world, rot)
    np.testing.assert_allclose(cam[0], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-12)


def _square_scene(size=40, inner=(10, 30), near=2.0, far=5.0):
    z = np.full((size, size), far)
    n = np.zeros((size, size, 3))
    n[..., 2] = 1.0
    a, b = inner
    z[a:b, a:b] = near
    ids = np.ones((size, size), dtype=int)
    ids[a:b, a:b] = 2
    return z, n, ids


def test_lines_follow_silhouette_on_nearer_side_and_leave_faces_black():
    z, n, _ = _square_scene()
    lines = passes.line_image(z, n) > 0  # depth jump alone, no ids
    border = np.zeros_like(lines)
    border[10:30, 10:30] = True
    border[11:29, 11:29] = False
    assert (lines == border).all()  # exactly the square's outline, 1 px, on the near square


def test_lines_from_id_boundaries_and_background():
    z, n, ids = _square_scene(near=5.0)  # same depth: only the id tells the square apart
    assert not passes.line_image(z, n).any()
    lines = passes.line_image(z, n, ids=(ids,)) > 0
    # Equal depth: the line may sit on either side of the boundary, never farther.
    assert lines[9:11, 15].sum() == 1 and lines[29:31, 15].sum() == 1
    assert not lines[12:28, 12:28].any() and not lines[:8].any()
    z[:, 35:] = BG
    lines = passes.line_image(z, n) > 0
    assert lines[:, 34].all() and not lines[:, 35:].any() and not lines[:, :33].any()


def test_lines_ignore_grazing_plane_but_find_crease():
    h, w = 64, 64
    rows = np.arange(h, dtype=float)[:, None] * np.ones((1, w))
    # A floor seen at a grazing angle: inverse depth is affine in the row, depth changes fast.
    inv = 0.02 + 0.01 * rows
    z = 1.0 / inv
    n = np.zeros((h, w, 3))
    n[..., 1] = 1.0
    assert not passes.line_image(z, n).any()
    # Fold the floor up into a wall at row 40: normals turn by 90 degrees.
    n[40:, :, 1] = 0.0
    n[40:, :, 2] = 1.0
    lines = passes.line_image(z, n) > 0
    assert lines[39:41].any(axis=0).all() and not lines[:38].any() and not lines[42:].any()
    # A 20 degree fold is below the default 30 degree threshold but above a 10 degree one.
    n2 = np.zeros((h, w, 3))
    n2[..., 2] = 1.0
    n2[40:, :] = [0.0, math.sin(math.radians(20)), math.cos(math.radians(20))]
    assert not passes.line_image(z, n2).any()
    assert passes.line_image(z, n2, crease_angle=10.0)[39:41].any(axis=0).all()


def test_orthographic_lines_use_depth_and_near_side():
    z, n, _ = _square_scene(near=2.0, far=3.0)
    lines = passes.line_image(z, n, orthographic=True) > 0
    assert lines[10, 20] and not lines[9, 20]


def test_seg_image_exact_palette_and_background():
    labels = np.array([[0, 1], [1, 0]])
    lut = np.array([[120, 120, 120], [204, 70, 3]], dtype=np.uint8)
    hit = np.array([[True, True], [True, False]])
    img = passes.seg_image(labels, lut, hit, (6, 230, 230))
    assert img.tolist() == [[[120, 120, 120], [204, 70, 3]], [[204, 70, 3], [6, 230, 230]]]
    with pytest.raises(PassError, match="outside the legend"):
        passes.seg_image(np.array([[5]]), lut, np.array([[True]]), (0, 0, 0))
