"""Texturing a scene from several cameras: the per-texel arithmetic, in numpy only.

Each view's exact passes say, per pixel, which object it sees, at which UV, facing the
camera how much. A view's generated pixels are splatted into one texture per object at
their UVs, each with a weight: how squarely the surface faces the camera (``facing``:
``-normal . ray``), times a feather that falls to almost nothing at the view's silhouettes
and depth jumps (``edge_feather``). Every view keeps its own weighted mean per texel; the
atlas adds the views up, weighted by each view's mean weight there (so a far view, whose
pixels each cover several texels, counts as much per texel as a near one).

What a new view must make is what the atlas does not cover well yet: its pixels whose
texel holds less than ``threshold`` of weight (``need_mask``); the scene "as textured so
far" seen from the new camera is the atlas sampled at its pixels' UVs (``sample``).

Texel rows run top to bottom as in the PNG written at the end: UV (u, v) lands at
column ``u * W - 0.5``, row ``(1 - v) * H - 0.5``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

#: An atlas texel is "covered well" from this much summed view weight on (a face at 60
#: degrees to the ray, fully inside a view, gives 0.5; 0.2 is a face at 78 degrees, as a
#: floor is seen a few metres ahead from eye height).
DEFAULT_THRESHOLD = 0.2
#: Faces seen flatter than this (cosine) give nothing: a grazing view smears.
MIN_FACING = 0.1
#: A relative depth step larger than this between neighbouring pixels is a depth edge.
DEPTH_JUMP = 0.05
MAX_VIEWS = 31  # views are one bit each in a texel's int32 "seen by" mask


class TextureError(ValueError):
    """A texturing input that cannot work; the message names the value."""


def facing(normals, rays):
    """Per pixel ``-n . d`` clipped to [0, 1]: 1 where the surface faces the camera."""
    n = np.asarray(normals, np.float64)
    d = np.asarray(rays, np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return np.clip(-(n * d).sum(-1), 0.0, 1.0)


def _shift(a, dy, dx, fill):
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


def edges(obj_ids, depth, jump=DEPTH_JUMP):
    """True on pixels next to a silhouette: another object, the background (id 0) or a
    depth step of more than ``jump`` (relative) to a 4-neighbour. Image borders count."""
    ids = np.asarray(obj_ids)
    z = np.where(ids > 0, np.asarray(depth, np.float64), np.inf)
    out = ids <= 0
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nid = _shift(ids, dy, dx, -1)
        nz = _shift(z, dy, dx, np.inf)
        with np.errstate(invalid="ignore"):
            step = np.abs(nz - z) > jump * np.minimum(z, nz)
        out |= (nid != ids) | step
    return out


def distance_to(mask, limit):
    """Chebyshev distance in pixels to the nearest True of ``mask``, capped at ``limit``."""
    mask = np.asarray(mask, bool)
    dist = np.full(mask.shape, float(limit), np.float64)
    ring = mask.copy()
    dist[ring] = 0
    for k in range(1, int(limit)):
        grown = ring.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= _shift(ring, dy, dx, False)
        dist[grown & ~ring] = k
        ring = grown
    return dist


def edge_feather(obj_ids, depth, feather_px):
    """Weight in (0, 1] that rises from ``1 / (feather_px + 1)`` on a silhouette pixel to 1
    at ``feather_px`` pixels from it; 0 where no geometry is."""
    d = distance_to(edges(obj_ids, depth), feather_px)
    return np.where(np.asarray(obj_ids) > 0, np.minimum(1.0, (d + 1.0) / (feather_px + 1.0)), 0.0)


def view_weights(obj_ids, depth, normals, rays, feather_px, min_facing=MIN_FACING):
    """A view's per-pixel weight: facing x edge feather (0 below ``min_facing``)."""
    f = facing(normals, rays)
    f = np.where(f >= min_facing, f, 0.0)
    return f * edge_feather(obj_ids, depth, feather_px)


def texel_coords(uv, size):
    """Float (column, row) texel coordinates of UVs in a ``size`` = (W, H) texture."""
    w, h = size
    uv = np.asarray(uv, np.float64)
    return uv[..., 0] * w - 0.5, (1.0 - uv[..., 1]) * h - 0.5


def _corners(uv, size):
    """The 4 bilinear neighbours of each UV: (cols, rows, weights), each (4, N)."""
    w, h = size
    x, y = texel_coords(uv, size)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    cols, rows, ws = [], [], []
    for dy, dx, wt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        cols.append(np.clip(x0 + dx, 0, w - 1).astype(np.int64))
        rows.append(np.clip(y0 + dy, 0, h - 1).astype(np.int64))
        ws.append(wt)
    return np.array(cols), np.array(rows), np.array(ws)


def splat_view(uv, colours, weights, size, radius=0):
    """One view's weighted mean per texel for one object: (colour HxWx3, mean weight HxW,
    hits HxW bool). ``uv`` (N, 2), ``colours`` (N, 3) in [0, 1], ``weights`` (N,).
    ``radius``: each pixel also lands on the texels within this many texels of its own
    (a view whose pixels are coarser than the texels leaves no holes)."""
    w, h = size
    csum = np.zeros((h * w, 3))
    wsum = np.zeros(h * w)
    count = np.zeros(h * w)
    keep = np.asarray(weights) > 0
    uv, colours, weights = np.asarray(uv)[keep], np.asarray(colours, np.float64)[keep], np.asarray(weights)[keep]
    if len(weights):
        cols, rows, bw = _corners(uv, size)
        r = int(radius)
        for oy in range(-r, r + 1):
            for ox in range(-r, r + 1):
                for c, rr, b in zip(cols, rows, bw):
                    idx = np.clip(rr + oy, 0, h - 1) * w + np.clip(c + ox, 0, w - 1)
                    np.add.at(wsum, idx, b * weights)
                    np.add.at(count, idx, b)
                    for ch in range(3):
                        np.add.at(csum[:, ch], idx, b * weights * colours[:, ch])
    hits = wsum > 1e-9
    colour = np.where(hits[:, None], csum / np.maximum(wsum, 1e-12)[:, None], 0.0)
    mean_w = np.where(hits, wsum / np.maximum(count, 1e-12), 0.0)
    return colour.reshape(h, w, 3), mean_w.reshape(h, w), hits.reshape(h, w)


class Atlas:
    """The textures being made: per object, the weighted colour sum, the weight sum, the
    strongest view's weight and index per texel, and a bit per view that reached the texel."""

    def __init__(self, sizes):
        self.sizes = {name: (int(s[0]), int(s[1])) for name, s in sizes.items()}
        self.csum = {n: np.zeros((h, w, 3), np.float32) for n, (w, h) in self.sizes.items()}
        self.wsum = {n: np.zeros((h, w), np.float32) for n, (w, h) in self.sizes.items()}
        self.best = {n: np.full((h, w), -1, np.int16) for n, (w, h) in self.sizes.items()}
        self.best_w = {n: np.zeros((h, w), np.float32) for n, (w, h) in self.sizes.items()}
        self.seen = {n: np.zeros((h, w), np.int32) for n, (w, h) in self.sizes.items()}

    def add(self, name, view, colour, weight):
        """Add one view's splat (:func:`splat_view`'s colour and mean weight) of ``name``."""
        if not 0 <= view < MAX_VIEWS:
            raise TextureError(f"at most {MAX_VIEWS} views, got view {view + 1}")
        weight = np.asarray(weight, np.float32)
        self.csum[name] += colour.astype(np.float32) * weight[..., None]
        self.wsum[name] += weight
        stronger = weight > self.best_w[name]
        self.best[name][stronger] = view
        self.best_w[name][stronger] = weight[stronger]
        self.seen[name][weight > 0] |= np.int32(1 << view)

    def colour(self, name):
        w = self.wsum[name]
        return np.where(w[..., None] > 0, self.csum[name] / np.maximum(w, 1e-12)[..., None], 0.0)

    def sample(self, name, uv):
        """(colour (N, 3), weight (N,)) of ``name``'s atlas at ``uv`` (bilinear)."""
        size = self.sizes[name]
        cols, rows, bw = _corners(np.asarray(uv).reshape(-1, 2), size)
        csum = sum(b[:, None] * self.csum[name][r, c] for c, r, b in zip(cols, rows, bw))
        wsum = sum(b * self.wsum[name][r, c] for c, r, b in zip(cols, rows, bw))
        colour = np.where(wsum[:, None] > 0, csum / np.maximum(wsum, 1e-12)[:, None], 0.0)
        return colour, wsum

    def save(self, path):
        """Write the atlas to ``path`` (.npz) whole or not at all: a unique temporary name,
        then a rename, so two runs into one folder never mix their files."""
        import io

        from .png import atomic_write

        arrays = {}
        for n in self.sizes:
            for key in ("csum", "wsum", "best", "best_w", "seen"):
                arrays[f"{key}/{n}"] = getattr(self, key)[n]
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path, sizes):
        atlas = cls(sizes)
        with np.load(path) as data:
            for n in atlas.sizes:
                for key in ("csum", "wsum", "best", "best_w", "seen"):
                    stored = data[f"{key}/{n}"]
                    if stored.shape != getattr(atlas, key)[n].shape:
                        raise TextureError(f"{path}: {n!r} has another size than this run's")
                    getattr(atlas, key)[n][...] = stored
        return atlas


def sample_view(atlas, obj_ids, uv, names):
    """The atlas seen by one view: (colour HxWx3 in [0, 1], weight HxW) at each pixel's
    object and UV (0 where no geometry or no atlas object). ``names``: object id -> name."""
    h, w = obj_ids.shape
    colour = np.zeros((h, w, 3))
    weight = np.zeros((h, w))
    for oid, name in names.items():
        sel = obj_ids == oid
        if not sel.any() or name not in atlas.sizes:
            continue
        c, wt = atlas.sample(name, uv[sel])
        colour[sel], weight[sel] = c, wt
    return colour, weight


def need_mask(obj_ids, atlas_weight, view_weight, threshold=DEFAULT_THRESHOLD):
    """Pixels this view should make: geometry it sees usefully (weight > 0) whose texels the
    atlas does not cover well yet (weight below ``threshold``)."""
    return (np.asarray(obj_ids) > 0) & (np.asarray(view_weight) > 0) & (np.asarray(atlas_weight) < threshold)


def colour_match(image, reference, overlap, apply, min_pixels=16, max_gain=2.0):
    """``image`` (HxWx3 float in [0, 1]) with each channel moved, where ``apply`` is True,
    so that over ``overlap`` its mean and spread equal ``reference``'s. Fewer than
    ``min_pixels`` overlapping pixels: unchanged. Returns (image, {"gain", "offset"})."""
    image = np.asarray(image, np.float64)
    overlap = np.asarray(overlap, bool)
    if overlap.sum() < min_pixels:
        return image.copy(), None
    a, b = image[overlap], np.asarray(reference, np.float64)[overlap]
    gain = np.clip(b.std(0) / np.maximum(a.std(0), 1e-6), 1.0 / max_gain, max_gain)
    offset = b.mean(0) - gain * a.mean(0)
    out = image.copy()
    sel = np.asarray(apply, bool)
    out[sel] = np.clip(image[sel] * gain + offset, 0.0, 1.0)
    return out, {"gain": [round(float(g), 4) for g in gain], "offset": [round(float(o), 4) for o in offset]}


def fill_gutters(colour, covered, pixels):
    """``colour`` with up to ``pixels`` rings of texels around the covered ones filled with
    the mean of their covered neighbours, so filtering at island edges never reads black."""
    colour = np.asarray(colour, np.float64).copy()
    have = np.asarray(covered, bool).copy()
    for _ in range(int(pixels)):
        acc = np.zeros_like(colour)
        cnt = np.zeros(have.shape)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == dx == 0:
                    continue
                m = _shift(have, dy, dx, False)
                for ch in range(3):
                    acc[..., ch] += _shift(colour[..., ch], dy, dx, 0.0) * m
                cnt += m
        new = ~have & (cnt > 0)
        if not new.any():
            break
        colour[new] = acc[new] / cnt[new][:, None]
        have |= new
    return colour


def bake_rgba(atlas, name, threshold=DEFAULT_THRESHOLD, gutter=4):
    """The bake of one object: uint8 HxWx4, colour = the views' blend (gutters filled),
    alpha = summed weight / threshold, clipped to 1 (0 where no view reached: the object's
    own material shows there)."""
    w = atlas.wsum[name]
    colour = fill_gutters(atlas.colour(name), w > 0, gutter)
    alpha = np.clip(w / threshold, 0.0, 1.0)
    rgba = np.concatenate([colour, alpha[..., None]], axis=-1)
    return np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8)


def splat_radius(texels, pixels):
    """Extra splat radius for a view whose ``pixels`` of an object spread over ``texels``."""
    if pixels <= 0:
        return 0
    return int(min(4, max(0, np.ceil(np.sqrt(texels / pixels) / 2.0 - 0.5))))


def texture_side(max_pixels, uv_share, limit, smallest=8):
    """Side of a square texture with about four texels for each pixel the object fills in
    its nearest view (``uv_share``: the share of the UV square its islands use; a view
    mostly sees one side of an object, so a side's texels must match its pixels), a power
    of two from ``smallest`` to ``limit``."""
    want = 2.0 * np.sqrt(max(1.0, max_pixels) / max(uv_share, 1e-3))
    side = smallest
    while side < want and side < limit:
        side *= 2
    return int(min(side, limit))


def coverage(atlas, names, threshold=DEFAULT_THRESHOLD, view_names=()):
    """Per object: texels any view reached (the visible surface), the share of them covered
    well, and per view the share it reached."""
    out = {}
    for name in names:
        w, seen = atlas.wsum[name], atlas.seen[name]
        visible = int((seen != 0).sum())
        entry = {"texels": int(w.size), "visible_texels": visible,
                 "covered": round(float((w >= threshold).sum()) / visible, 4) if visible else 0.0,
                 "baked": round(float((w > 0).sum()) / visible, 4) if visible else 0.0,
                 "by_view": {}}
        for i, view in enumerate(view_names):
            reached = int(((seen >> i) & 1).sum())
            if reached:
                entry["by_view"][view] = round(reached / visible, 4)
        out[name] = entry
    return out


def seam_ratio(atlas, names, threshold=DEFAULT_THRESHOLD):
    """Seam visibility of the bake: mean colour gradient between neighbouring covered texels
    whose strongest view differs (a view boundary), over the mean gradient between covered
    neighbours of one view. 1: a boundary is no more visible than any other step. None when
    there is no boundary or no interior."""
    across, inside = [], []
    for name in names:
        colour = atlas.colour(name)
        cov = atlas.wsum[name] >= threshold
        best = atlas.best[name]
        for axis in (0, 1):
            a = [slice(None)] * 2
            b = [slice(None)] * 2
            a[axis], b[axis] = slice(0, -1), slice(1, None)
            a, b = tuple(a), tuple(b)
            both = cov[a] & cov[b]
            grad = np.abs(colour[a] - colour[b]).mean(-1)
            diff = best[a] != best[b]
            across.append(grad[both & diff])
            inside.append(grad[both & ~diff])
    across = np.concatenate(across) if across else np.zeros(0)
    inside = np.concatenate(inside) if inside else np.zeros(0)
    if not len(across) or not len(inside):
        return None, int(len(across))
    return round(float(across.mean() / max(inside.mean(), 1e-9)), 4), int(len(across))


def params_hash(params):
    """Hash of a view's parameters (JSON, sorted keys): a rerun keeps a view only when equal."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
