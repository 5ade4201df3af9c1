"""core/texture.py: the per-texel arithmetic of texturing from several views (numpy only)."""

import numpy as np
import pytest

from archviz_controlnet.core import texture as T


def test_facing_is_minus_normal_dot_ray_clipped():
    n = np.array([[0, 0, 1.0], [0, 0, 1.0], [1.0, 0, 0]])
    d = np.array([[0, 0, -2.0], [0, 0.5, -0.5], [1.0, 0, 0]])
    assert np.allclose(T.facing(n, d), [1.0, np.sqrt(0.5), 0.0])


def test_edges_and_feather_fall_at_silhouettes_and_depth_steps():
    ids = np.zeros((9, 12), int)
    ids[1:8, 1:11] = 1
    z = np.full(ids.shape, 5.0)
    z[:, 6:] = 9.0  # a depth step inside the object
    e = T.edges(ids, z)
    assert e[0].all() and e[4, 1] and e[4, 5] and e[4, 6] and not e[4, 3]
    f = T.edge_feather(ids, z, 2)
    assert f[0, 0] == 0  # background
    assert np.isclose(f[4, 1], 1 / 3) and np.isclose(f[4, 2], 2 / 3) and f[4, 3] == 1.0
    assert np.isclose(f[4, 5], 1 / 3)  # next to the depth step


def test_splat_then_sample_gives_the_colours_back():
    rng = np.random.default_rng(0)
    size = (16, 16)
    # one pixel on every texel centre
    cols, rows = np.meshgrid(np.arange(16), np.arange(16))
    uv = np.stack([(cols.ravel() + 0.5) / 16, 1 - (rows.ravel() + 0.5) / 16], -1)
    colours = rng.random((256, 3))
    colour, mean_w, hits = T.splat_view(uv, colours, np.full(256, 0.7), size)
    assert hits.all() and np.allclose(mean_w, 0.7)
    assert np.allclose(colour.reshape(-1, 3), colours)
    atlas = T.Atlas({"A": size})
    atlas.add("A", 0, colour, mean_w)
    back, w = atlas.sample("A", uv)
    assert np.allclose(back, colours) and np.allclose(w, 0.7)


def test_two_views_blend_by_weight_and_mark_the_strongest():
    atlas = T.Atlas({"A": (4, 4)})
    red, blue = np.zeros((4, 4, 3)), np.zeros((4, 4, 3))
    red[..., 0] = 1.0
    blue[..., 2] = 1.0
    w1 = np.full((4, 4), 0.75)
    w2 = np.zeros((4, 4))
    w2[:, 2:] = 0.25
    atlas.add("A", 0, red, w1)
    atlas.add("A", 1, blue, w2)
    c = atlas.colour("A")
    assert np.allclose(c[0, 0], [1, 0, 0]) and np.allclose(c[0, 3], [0.75, 0, 0.25])
    assert (atlas.best["A"] == 0).all()
    assert atlas.seen["A"][0, 0] == 1 and atlas.seen["A"][0, 3] == 3
    cov = T.coverage(atlas, ["A"], view_names=["one", "two"])["A"]
    assert cov["covered"] == 1.0 and cov["by_view"] == {"one": 1.0, "two": 0.5}


def test_need_mask_is_geometry_not_covered_well():
    ids = np.array([[0, 1, 1, 2]])
    known = np.array([[0.0, 0.9, 0.1, 0.0]])
    weight = np.array([[0.0, 1.0, 1.0, 0.0]])  # object 2 faces away: nothing to make there
    assert T.need_mask(ids, known, weight, 0.3).tolist() == [[False, False, True, False]]


def test_colour_match_moves_mean_and_spread_to_the_overlap():
    rng = np.random.default_rng(1)
    ref = rng.random((8, 8, 3)) * 0.2 + 0.4
    img = (ref - 0.4) * 2.0 + 0.1  # same pattern, other gain and offset
    overlap = np.zeros((8, 8), bool)
    overlap[:, :4] = True
    out, info = T.colour_match(img, ref, overlap, np.ones((8, 8), bool))
    assert np.allclose(out, ref, atol=1e-6) and info["gain"] == [0.5, 0.5, 0.5]
    same, none = T.colour_match(img, ref, np.zeros((8, 8), bool), np.ones((8, 8), bool))
    assert none is None and np.array_equal(same, img)


def test_gutters_are_filled_and_alpha_marks_coverage():
    atlas = T.Atlas({"A": (8, 8)})
    c = np.zeros((8, 8, 3))
    c[2:4, 2:4] = [0.2, 0.4, 0.6]
    w = np.zeros((8, 8))
    w[2:4, 2:4] = 0.15
    atlas.add("A", 0, c, w)
    rgba = T.bake_rgba(atlas, "A", threshold=0.3, gutter=2)
    assert tuple(rgba[2, 2]) == (51, 102, 153, 128)  # half the threshold: half alpha
    assert tuple(rgba[0, 0, :3]) == (51, 102, 153) and rgba[0, 0, 3] == 0  # gutter: colour, no alpha
    assert tuple(rgba[7, 7]) == (0, 0, 0, 0)  # beyond the gutter


def test_seam_ratio_compares_view_boundaries_with_the_rest():
    atlas = T.Atlas({"A": (8, 1)})
    ramp = np.linspace(0, 0.7, 8)
    c = np.stack([ramp] * 3, -1)[None]
    c[0, 4:] += 0.3  # a step where view 2 takes over
    left, right = np.zeros((1, 8)), np.zeros((1, 8))
    left[0, :4], right[0, 4:] = 1.0, 1.0
    atlas.add("A", 0, c, left)
    atlas.add("A", 1, c, right)
    ratio, pairs = T.seam_ratio(atlas, ["A"])
    assert pairs == 1 and ratio == pytest.approx((0.1 + 0.3) / 0.1, rel=1e-3)


def test_atlas_saves_and_loads(tmp_path):
    atlas = T.Atlas({"A": (4, 2)})
    atlas.add("A", 3, np.ones((2, 4, 3)) * 0.5, np.ones((2, 4)))
    atlas.save(tmp_path / "a.npz")
    back = T.Atlas.load(tmp_path / "a.npz", {"A": (4, 2)})
    assert np.array_equal(back.csum["A"], atlas.csum["A"]) and back.seen["A"][0, 0] == 8
    with pytest.raises(T.TextureError, match="another size"):
        T.Atlas.load(tmp_path / "a.npz", {"A": (8, 8)})


def test_sizes_and_splat_radius():
    assert T.texture_side(400, 0.5, 1024) == 64  # 2 x sqrt(800) = 57 -> 64
    assert T.texture_side(10 ** 8, 0.5, 1024) == 1024
    assert T.splat_radius(64 * 64, 64 * 64) == 0 and T.splat_radius(64 * 64 * 16, 64 * 64) == 2
    assert T.params_hash({"a": 1, "b": 2}) == T.params_hash({"b": 2, "a": 1})
