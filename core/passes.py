"""Control images from exact render passes, in the conventions of each ControlNet.

Inputs are float arrays as a renderer writes them: Z depth (distance along the camera
axis, huge where no geometry was hit), world-space normals, object and material ids.
Row 0 is the top of the image. Nothing here knows about Blender.
"""

import math
from dataclasses import dataclass

import numpy as np

from . import families

# A Z value at or above this means the ray hit no geometry (Cycles writes 1e10 there).
BACKGROUND_DEPTH = 1e9
NORMAL_BACKGROUND = (128, 128, 255)


class PassError(ValueError):
    """Inputs that cannot give a control image; the message names the problem."""


def geometry_mask(z):
    """True where a ray hit geometry."""
    z = np.asarray(z)
    return np.isfinite(z) & (z < BACKGROUND_DEPTH)


def _to_uint8(unit):
    return np.clip(np.floor(unit * 255.0 + 0.5), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- resolution and range

def control_resolution(width, height, long_side=512, pixel_aspect=(1.0, 1.0), multiple=8):
    """(w, h) with the scene's aspect ratio, the long side ``long_side``, both multiples of
    ``multiple`` (8 for SD 1.5 / SDXL, 16 for FLUX.1)."""
    if not isinstance(long_side, int) or long_side < 64 or long_side % multiple:
        raise PassError(f"long side must be a multiple of {multiple} and at least 64, got {long_side!r}")
    if width <= 0 or height <= 0:
        raise PassError(f"scene resolution must be positive, got {width}x{height}")
    aspect = (width * pixel_aspect[0]) / (height * pixel_aspect[1])
    if aspect >= 1.0:
        w, h = long_side, max(multiple, int(round(long_side / aspect / multiple)) * multiple)
    else:
        w, h = max(multiple, int(round(long_side * aspect / multiple)) * multiple), long_side
    return w, h


#: How the depth image's near (white) and far (black) are chosen.
#: view: from this image's own geometry pixels (robust percentiles of inverse depth);
#: sequence: one range for one camera over the scene's frame range; scene: one range for
#: every camera and frame, from the scene's bounds; manual: fixed near and far.
DEPTH_MODES = ("view", "sequence", "scene", "manual")
DEFAULT_DEPTH_MODE = "view"
#: Percentiles of inverse depth (over the geometry pixels) that become far and near.
VIEW_PERCENTILES = (0.5, 99.5)


def size_multiple(model: str) -> int:
    """The multiple a family's image sides must be: 16 for the transformer families (FLUX.1,
    Kontext, Qwen-Image and its edit models, Z-Image: VAE 1/8 and 2x2 patches), else 8
    (core/families.py; a model folder named after a family counts as that family)."""
    return families.side_multiple(model)


def default_long_side(model: str) -> int:
    """The long side a family renders at by default: Qwen-Image's native 1328 square (its
    union net was trained there), 1024 for SDXL and the other transformer families, else 512
    (SD 1.5). From core/families.py."""
    return families.long_side(model)


@dataclass(frozen=True)
class DepthRange:
    near: float
    far: float
    source: str  # "view", "sequence", "scene bounds" or "user"
    mode: str = ""
    detail: dict | None = None

    def as_dict(self):
        out = {"near": self.near, "far": self.far, "source": self.source}
        if self.mode:
            out["mode"] = self.mode
        if self.detail:
            out.update(self.detail)
        return out


def check_depth_mode(mode):
    key = str(mode).strip().lower()
    if key not in DEPTH_MODES:
        raise PassError(f"unknown depth range {mode!r}; choose from {', '.join(DEPTH_MODES)}")
    return key


def _weighted_percentile(values, weights, q):
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    target = cum[-1] * q / 100.0
    return float(v[min(np.searchsorted(cum, target, side="left"), len(v) - 1)])


#: Samples are weighted by inverse depth to this power when the percentiles are taken.
WEIGHT_POWER = 1.0


def inverse_depth_range(inv, percentiles=VIEW_PERCENTILES, source="view", mode="view", extra=None,
                        power=None):
    """A DepthRange from samples of inverse depth (1/z, > 0).

    far = the ``percentiles[0]`` percentile with each sample weighted by its inverse depth
    (WEIGHT_POWER), near = the plain ``percentiles[1]`` percentile. The weighting keeps the band of pixels
    a huge ground plane fills toward the horizon from deciding the far end (on the IFC
    house a 20 km plane moves the building by about 3 of 256 levels against a 100 m
    one), while far walls still get levels of their own (about 2% of an interior view is
    clipped at either end). One near pixel (or 0.5% of them) cannot set the near end.
    """
    inv = np.asarray(inv, dtype=np.float64).ravel()
    inv = inv[np.isfinite(inv) & (inv > 0.0)]
    if inv.size == 0:
        raise PassError("no geometry in view to fit the depth range to")
    lo, hi = percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise PassError(f"depth percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    power = WEIGHT_POWER if power is None else power
    # Far end weighted (a huge ground plane's far band weighs little), near end not (a
    # speck at the lens weighs as one pixel, not as its large inverse depth).
    inv_near = float(np.percentile(inv, hi))
    inv_far = _weighted_percentile(inv, np.minimum(inv, inv_near) ** power, lo)
    if inv_near <= inv_far * (1.0 + 1e-6):  # one flat distance: put it mid-grey-to-white
        inv_near, inv_far = inv_near * 1.25, inv_near * 0.5
    detail = {"percentiles": [lo, hi], "far_weighting": f"inverse depth ** {power:g}"}
    detail.update(extra or {})
    return DepthRange(near=1.0 / inv_near, far=1.0 / inv_far, source=source, mode=mode, detail=detail)


def view_depth_range(z, percentiles=VIEW_PERCENTILES):
    """The range fitted to one view: robust percentiles over its geometry pixels."""
    z = np.asarray(z, dtype=np.float64)
    hit = geometry_mask(z)
    if not hit.any():
        raise PassError("no geometry in view to fit the depth range to")
    return inverse_depth_range(1.0 / np.maximum(z[hit], 1e-12), percentiles)


def depth_range_from_bounds(corners, viewpoints, near_ratio=0.15):
    """A depth range that depends on the scene, not on one image.

    ``corners``: (N, 3) world-space corners of the renderable geometry's bounds.
    ``viewpoints``: (M, 3) positions of the scene's cameras. ``far`` is the largest
    distance from any camera to any corner (no visible point can be farther). ``near`` is
    the smallest distance from any camera to the scene's bounding box, but at least
    ``far * near_ratio`` (a camera inside the box would give 0). Every frame and camera
    of the scene gets the same mapping, so one wall has one grey level everywhere.
    """
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 3)
    viewpoints = np.asarray(viewpoints, dtype=np.float64).reshape(-1, 3)
    if corners.size == 0:
        raise PassError("the scene has no renderable geometry to take a depth range from")
    if viewpoints.size == 0:
        raise PassError("no camera to take a depth range from")
    if not np.isfinite(corners).all() or not np.isfinite(viewpoints).all():
        raise PassError("the scene bounds or a camera position are not finite numbers")
    if not 0.0 < near_ratio < 1.0:
        raise PassError(f"near ratio must be between 0 and 1, got {near_ratio!r}")
    far = float(np.linalg.norm(corners[None, :, :] - viewpoints[:, None, :], axis=2).max())
    if far <= 0.0:
        raise PassError("the scene bounds are a single point at the camera")
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    outside = np.maximum(lo - viewpoints, 0.0) + np.maximum(viewpoints - hi, 0.0)
    to_box = float(np.linalg.norm(outside, axis=1).min())
    near = min(max(to_box, far * near_ratio), far * 0.9)
    return DepthRange(near=near, far=far, source="scene bounds", mode="scene")


def user_depth_range(near, far):
    if not (math.isfinite(near) and math.isfinite(far)) or near <= 0.0 or far <= near:
        raise PassError(f"depth range needs 0 < near < far, got near={near!r}, far={far!r}")
    return DepthRange(near=float(near), far=float(far), source="user", mode="manual")


# ---------------------------------------------------------------- depth

def inverse_depth(z, depth_range):
    """0-1 inverse depth: 1 at ``near`` (and closer), 0 at ``far`` (and beyond) and where
    there is no geometry. Inverse depth is what MiDaS-trained depth ControlNets expect."""
    z = np.asarray(z, dtype=np.float64)
    hit = geometry_mask(z)
    inv_near, inv_far = 1.0 / depth_range.near, 1.0 / depth_range.far
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(hit, 1.0 / np.maximum(z, 1e-12), inv_far)
    return np.clip((inv - inv_far) / (inv_near - inv_far), 0.0, 1.0) * hit


def depth_image(z, depth_range):
    """uint8 (h, w): near = white, far = black, background black."""
    return _to_uint8(inverse_depth(z, depth_range))


# ---------------------------------------------------------------- normals

def camera_space_normals(world_normals, camera_rotation):
    """Rotate world-space normals (h, w, 3) into the camera frame (x right, y up, z toward
    the viewer). ``camera_rotation``: the camera's 3x3 world rotation (columns = its axes)."""
    rot = np.asarray(camera_rotation, dtype=np.float64).reshape(3, 3)
    n = np.asarray(world_normals, dtype=np.float64) @ rot  # row form of R^T n
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(length > 1e-8, n / length, 0.0)


def normal_image(camera_normals, hit):
    """uint8 (h, w, 3) coded R = (1 - x)/2, G = (1 + y)/2, B = (1 + z)/2; background (128, 128, 255)."""
    n = np.asarray(camera_normals, dtype=np.float64)
    coded = np.stack([(1.0 - n[..., 0]) / 2.0, (1.0 + n[..., 1]) / 2.0, (1.0 + n[..., 2]) / 2.0], axis=-1)
    img = _to_uint8(coded)
    img[~hit] = NORMAL_BACKGROUND
    return img


# ---------------------------------------------------------------- lines

def _shifted(axis, start, stop, ndim):
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def _pair_edges(w, z, n, ids, hit, axis, crease_cos, depth_tolerance, seam_ids=(), seam_tolerance=0.002):
    """Edges between each pixel and its next neighbour along ``axis``.

    Returns a bool mask over the pairs and which side of each pair is nearer the camera.
    """
    def sl(a, start, stop):
        return a[_shifted(axis, start, stop, a.ndim)]

    wa, wb = sl(w, None, -1), sl(w, 1, None)
    ha, hb = sl(hit, None, -1), sl(hit, 1, None)
    both = ha & hb

    # Silhouettes against the background.
    edge = ha ^ hb
    # Object and material boundaries.
    for id_pass in ids:
        edge |= both & (sl(id_pass, None, -1) != sl(id_pass, 1, None))
    # Creases: the angle between neighbouring normals above the threshold.
    dot = np.sum(sl(n, None, -1) * sl(n, 1, None), axis=-1)
    edge |= both & (dot < crease_cos)
    # Depth jumps. ``w`` is affine in screen space on any plane (inverse depth for a
    # perspective camera, depth for an orthographic one), so on a plane the step between
    # two pixels equals the step beside them, even at grazing angles. A jump is a step
    # much larger than the steps on either side, and larger than a fraction of the depth.
    step = np.abs(wb - wa)
    # The step of the pair just before and just after each pair, on the same surface;
    # inf where that neighbour does not exist or is not geometry.
    known = np.where(both, step, np.inf)
    before = np.full_like(step, np.inf)
    after = np.full_like(step, np.inf)
    before[_shifted(axis, 1, None, step.ndim)] = known[_shifted(axis, None, -1, step.ndim)]
    after[_shifted(axis, None, -1, step.ndim)] = known[_shifted(axis, 1, None, step.ndim)]
    slope = np.minimum(before, after)
    slope[np.isinf(slope)] = 0.0
    edge |= both & (step > 2.0 * slope + depth_tolerance * np.maximum(wa, wb))
    # Seams: where two objects meet, a line only where one stands in front of the other
    # (a step in depth finer than depth_tolerance); a bend is a line where it is a crease,
    # as inside one object, so how a surface was split into objects never shows.
    for id_pass in seam_ids:
        apart = step > 2.0 * slope + seam_tolerance * np.maximum(wa, wb)
        edge |= both & (sl(id_pass, None, -1) != sl(id_pass, 1, None)) & apart

    a_nearer = np.where(both, sl(z, None, -1) <= sl(z, 1, None), ha)
    return edge, a_nearer


def line_mask(z, camera_normals, ids=(), orthographic=False, crease_angle=30.0, depth_tolerance=0.02,
              seam_ids=(), seam_tolerance=0.002):
    """bool (h, w): 1-px lines at silhouettes, depth jumps, creases sharper than
    ``crease_angle`` degrees and boundaries between ``ids`` (class and material id
    passes). Boundaries between ``seam_ids`` (object ids) are lines only where one side
    stands in front of the other (a depth step over ``seam_tolerance`` of the depth) or
    at a crease: two walls of one class meeting in one plane draw nothing.
    Each line is drawn on the nearer side of the edge, so it follows the outline
    of the object in front; flat faces stay empty."""
    if not 0.0 < crease_angle < 180.0:
        raise PassError(f"crease angle must be between 0 and 180 degrees, got {crease_angle!r}")
    z = np.asarray(z, dtype=np.float64)
    hit = geometry_mask(z)
    with np.errstate(divide="ignore"):
        w = np.where(hit, z if orthographic else 1.0 / np.maximum(z, 1e-12), 0.0)
    n = np.asarray(camera_normals, dtype=np.float64)
    ids = [np.asarray(i) for i in ids]
    crease_cos = math.cos(math.radians(crease_angle))
    lines = np.zeros(z.shape, dtype=bool)
    seam_ids = [np.asarray(i) for i in seam_ids]
    for axis in (0, 1):
        edge, a_nearer = _pair_edges(w, z, n, ids, hit, axis, crease_cos, depth_tolerance, seam_ids, seam_tolerance)
        mark_a = edge & a_nearer
        mark_b = edge & ~a_nearer
        if axis == 0:
            lines[:-1, :] |= mark_a
            lines[1:, :] |= mark_b
        else:
            lines[:, :-1] |= mark_a
            lines[:, 1:] |= mark_b
    return lines


def line_image(z, camera_normals, ids=(), orthographic=False, crease_angle=30.0, depth_tolerance=0.02):
    """uint8 (h, w): white 1-px lines on black (canny style), see :func:`line_mask`."""
    return line_mask(z, camera_normals, ids, orthographic, crease_angle, depth_tolerance).astype(np.uint8) * 255


# ---------------------------------------------------------------- line styles

#: How each ControlNet family was trained to see lines (CONVENTIONS.md):
#: canny: binary 1-px edges; lineart: anti-aliased strokes about 1.5 px wide at 512 px
#: (width scales with resolution); mlsd: 1-px straight segments only; softedge: soft,
#: wider edges (HED/PiDiNet-like).
LINE_STYLES = ("canny", "lineart", "mlsd", "softedge")
LINEART_WIDTH_AT_512 = 1.5
SOFTEDGE_SIGMA_AT_512 = 1.6
MLSD_MIN_LENGTH_AT_512 = 20  # as MLSD annotators drop shorter segments


#: The line style each family's ControlNet for each line control type was trained on
#: (core/families.py; backend/models/registry.py has the model ids): SD 1.5 'lines' and 'lineart' use
#: the lineart ControlNet, 'canny' and 'mlsd' their own; every SDXL, FLUX.1 and Qwen-Image
#: line type runs a canny-trained net; Z-Image's union net reads canny, soft and MLSD lines.
MODEL_LINE_STYLES = {f.name: families.ARCHES[f.arch].line_styles for f in families.FAMILY_LIST
                     if families.ARCHES[f.arch].line_styles is not None}
#: The style of lines.png when no model is known (the default SD 1.5 'lines' unit).
DEFAULT_LINE_STYLE = "lineart"


def line_style_for(control_type, family="sd15", override="auto"):
    """The line style a control unit's model wants, or ``override`` unless it is 'auto'."""
    if override and override != "auto":
        return check_line_style(override)
    return MODEL_LINE_STYLES.get(family, MODEL_LINE_STYLES["sd15"]).get(control_type, DEFAULT_LINE_STYLE)


def check_line_style(style):
    key = str(style).strip().lower()
    if key not in LINE_STYLES:
        raise PassError(f"unknown line style {style!r}; choose from {', '.join(LINE_STYLES)}")
    return key


def box_reduce(a, factor):
    """Mean over ``factor`` x ``factor`` blocks (the sides must divide)."""
    a = np.asarray(a, dtype=np.float64)
    if factor == 1:
        return a
    h, w = a.shape[0] // factor, a.shape[1] // factor
    return a.reshape(h, factor, w, factor, *a.shape[2:]).mean(axis=(1, 3))


def block_any(mask, factor):
    """True where any pixel of a ``factor`` x ``factor`` block is."""
    mask = np.asarray(mask, dtype=bool)
    if factor == 1:
        return mask
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[:h * factor, :w * factor].reshape(h, factor, w, factor).any(axis=(1, 3))


def thin(mask, max_rounds=20):
    """Zhang-Suen thinning: lines one pixel wide, connectivity kept (a canny edge is one
    pixel wide; a fine line reduced by blocks can touch two)."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    for _ in range(max_rounds):
        changed = False
        for step in (0, 1):
            p2, p3, p4, p5 = m[:-2, 1:-1], m[:-2, 2:], m[1:-1, 2:], m[2:, 2:]
            p6, p7, p8, p9 = m[2:, 1:-1], m[2:, :-2], m[1:-1, :-2], m[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            b = sum(r.astype(np.int8) for r in ring[:8])
            a = sum((~ring[i] & ring[i + 1]).astype(np.int8) for i in range(8))
            if step == 0:
                c, d = ~(p2 & p4 & p6), ~(p4 & p6 & p8)
            else:
                c, d = ~(p2 & p4 & p8), ~(p2 & p6 & p8)
            centre = m[1:-1, 1:-1]
            kill = centre & (b >= 2) & (b <= 6) & (a == 1) & c & d
            if kill.any():
                changed = True
                centre &= ~kill
        if not changed:
            break
    return m[1:-1, 1:-1].copy()


def _shift(a, dy, dx, fill=0):
    out = np.full_like(a, fill)
    h, w = a.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def dilate(mask, radius):
    """Binary dilation by a disc of ``radius`` pixels (0 = unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    r = int(math.floor(radius))
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius + 1e-9:
                out |= _shift(mask, dy, dx, False)
    return out


def gaussian_blur(a, sigma):
    """Separable Gaussian blur (edges padded with zeros)."""
    a = np.asarray(a, dtype=np.float64)
    if sigma <= 0:
        return a
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.zeros_like(a)
    for i, wgt in enumerate(k):
        out += wgt * _shift(a, i - r, 0, 0.0)
    a, out = out, np.zeros_like(a)
    for i, wgt in enumerate(k):
        out += wgt * _shift(a, 0, i - r, 0.0)
    return out


def lineart_image(mask_fine, factor, long_side):
    """Anti-aliased strokes from a line mask rendered ``factor`` times finer than the
    output: each line is widened to LINEART_WIDTH_AT_512 * long_side / 512 output pixels
    and averaged down, so stroke edges are grey. With ``factor`` 1 a light blur gives the
    anti-aliasing instead."""
    width = LINEART_WIDTH_AT_512 * long_side / 512.0
    fine = dilate(mask_fine, max(0.0, (width * factor - 1.0) / 2.0)).astype(np.float64)
    if factor == 1:
        fine = np.maximum(fine, gaussian_blur(fine, 0.5) * 1.5)
    return _to_uint8(np.clip(box_reduce(fine, factor), 0.0, 1.0))


def softedge_image(mask_fine, factor, long_side):
    """Soft, wide edges: the lines blurred with a Gaussian of SOFTEDGE_SIGMA_AT_512 *
    long_side / 512 output pixels, scaled so an isolated straight line peaks at white."""
    sigma_out = SOFTEDGE_SIGMA_AT_512 * long_side / 512.0
    fine = gaussian_blur(np.asarray(mask_fine, dtype=np.float64), sigma_out * factor)
    out = box_reduce(fine, factor)
    # Peak of an isolated straight line one fine pixel wide after the blur; the square
    # root widens the soft falloff the way HED edges fade.
    peak = 1.0 / (math.sqrt(2.0 * math.pi) * sigma_out * factor)
    return _to_uint8(np.sqrt(np.clip(out / peak, 0.0, 1.0)))


def _components(mask):
    """8-connected components of a bool mask as lists of (row, col) index arrays."""
    h, w = mask.shape
    flat = mask.ravel()
    seen = np.zeros(flat.shape, dtype=bool)
    comps = []
    for start in np.flatnonzero(flat):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [int(start)], []
        while stack:
            p = stack.pop()
            members.append(p)
            r, c = divmod(p, w)
            for dr in (-1, 0, 1):
                rr = r + dr
                if rr < 0 or rr >= h:
                    continue
                for dc in (-1, 0, 1):
                    cc = c + dc
                    if 0 <= cc < w:
                        q = rr * w + cc
                        if flat[q] and not seen[q]:
                            seen[q] = True
                            stack.append(q)
        comps.append(np.array(members))
    return comps


def _draw_runs(centre, direction, t, min_length, out, max_gap=7.0):
    """Draw the straight line ``centre + t * direction`` over the runs of ``t`` (pixel
    positions along it) that have no gap over ``max_gap`` and are ``min_length`` long."""
    t = np.sort(t)
    breaks = np.flatnonzero(np.diff(t) > max_gap)
    for lo, hi in zip(np.r_[0, breaks + 1], np.r_[breaks, len(t) - 1]):
        if t[hi] - t[lo] + 1.0 < min_length:
            continue
        steps = np.arange(t[lo], t[hi] + 0.25, 0.25)
        xy = centre + steps[:, None] * direction
        x = np.clip(np.rint(xy[:, 0]).astype(int), 0, out.shape[1] - 1)
        y = np.clip(np.rint(xy[:, 1]).astype(int), 0, out.shape[0] - 1)
        out[y, x] = True


def _pca(pts):
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    return centre, vt[0], vt[1]


def _fit_segments(rows, cols, min_length, max_dev, out, depth=0):
    """Draw straight segments through one run of edge pixels of one orientation.

    A straight run is drawn along its fitted line. A run holding several parallel lines
    (the two edges of a rafter touch where the stair-stepping meets) is split by its
    offset across the common direction; a curve is split in halves until the pieces are
    straight or too short to keep."""
    if len(rows) < min_length or depth > 12:
        return
    pts = np.stack([cols, rows], axis=1).astype(np.float64)
    centre, direction, normal = _pca(pts)
    t = (pts - centre) @ direction
    rho = (pts - centre) @ normal
    if t.max() - t.min() + 1.0 < min_length:
        return
    if np.abs(rho).max() <= max_dev:
        _draw_runs(centre, direction, t, min_length, out)
        return
    # Parallel lines: peaks of the offset histogram.
    bins = np.rint(rho).astype(int)
    counts = np.bincount(bins - bins.min())
    used = np.zeros(len(rows), dtype=bool)
    for peak in np.argsort(counts)[::-1]:
        if counts[peak] < min_length:
            break
        offset = peak + bins.min()
        sel = ~used & (np.abs(rho - offset) <= 1.0)
        if sel.sum() < min_length:
            continue
        c2, d2, n2 = _pca(pts[sel])
        if np.abs((pts[sel] - c2) @ n2).max() <= max_dev:
            _draw_runs(c2, d2, (pts[sel] - c2) @ d2, min_length, out)
            used |= sel
    if used.any():
        rest = ~used
        if rest.sum() >= min_length:
            _fit_segments(rows[rest], cols[rest], min_length, max_dev, out, depth + 1)
        return
    if len(rows) < 2 * min_length:
        return
    cut = np.median(t)
    for side in (t <= cut, t > cut):
        _fit_segments(rows[side], cols[side], min_length, max_dev, out, depth + 1)


def mlsd_image(mask, long_side, min_length=None, bins=12):
    """Straight segments only, 1 px wide (what MLSD detectors give): the edge pixels are
    grouped by local orientation (structure tensor), each connected run of one
    orientation is fitted with straight segments, runs shorter than ``min_length``
    (MLSD_MIN_LENGTH_AT_512 scaled to ``long_side``) and curves are dropped."""
    mask = np.asarray(mask, dtype=bool)
    min_length = min_length or max(4, int(round(MLSD_MIN_LENGTH_AT_512 * long_side / 512.0)))
    m = gaussian_blur(mask.astype(np.float64), 1.0)
    gy, gx = np.gradient(m)
    jxx, jxy, jyy = (gaussian_blur(a, 2.0) for a in (gx * gx, gx * gy, gy * gy))
    # Direction of the line = perpendicular to the dominant gradient.
    theta = (0.5 * np.arctan2(2.0 * jxy, jxx - jyy) + np.pi / 2.0) % np.pi
    coherence = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy ** 2) / (jxx + jyy + 1e-12)
    straight = mask & (coherence > 0.6)
    out = np.zeros(mask.shape, dtype=bool)
    width = np.pi / bins
    for b in range(bins):
        centre = b * width
        diff = np.abs((theta - centre + np.pi / 2.0) % np.pi - np.pi / 2.0)
        sel = straight & (diff <= width * 0.75)
        for comp in _components(sel):
            rows, cols = np.divmod(comp, mask.shape[1])
            _fit_segments(rows, cols, min_length, 1.0, out)
    return out.astype(np.uint8) * 255


def styled_lines(style, mask, mask_fine, factor, long_side):
    """uint8 line image in ``style`` from the output-resolution mask and the mask
    rendered ``factor`` times finer."""
    style = check_line_style(style)
    if style == "canny":
        return mask.astype(np.uint8) * 255
    if style == "lineart":
        return lineart_image(mask_fine, factor, long_side)
    if style == "softedge":
        return softedge_image(mask_fine, factor, long_side)
    return mlsd_image(mask, long_side)


# ---------------------------------------------------------------- supersampling

def settle_coplanar_ids(z, world_normals, keys, radius=2, rounds=2, depth_rel=0.002, normal_cos=0.999):
    """Settle z-fighting in an id pass: where two objects share a surface (a rafter
    flush with a roof slab, real BIM models are full of them) each ray picks one at
    random, which speckles lines and seg. A pixel whose id differs from a neighbour on
    the same surface (depth within ``depth_rel``, normals within ``normal_cos``) takes
    the most common id of its (2 * radius + 1)^2 neighbours on that surface (its own id
    wins ties). Boundaries between flush objects (a door in its wall) stay where they
    are, up to corners rounded by ``radius`` pixels of the fine pass.
    Returns the settled keys (same shape, same dtype)."""
    z = np.asarray(z)
    n = np.asarray(world_normals)
    keys = np.array(keys, copy=True)
    hit = geometry_mask(z)
    h, w = z.shape
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    for _ in range(rounds):
        # Pixels whose right or lower neighbour has another id on the same surface (and
        # that neighbour): cheap id comparisons first, geometry only where ids differ.
        cand = np.zeros(z.shape, dtype=bool)
        for dy, dx in ((0, 1), (1, 0)):
            a = (slice(0, h - dy), slice(0, w - dx))
            b = (slice(dy, h), slice(dx, w))
            r, c = np.nonzero(hit[a] & hit[b] & (keys[a] != keys[b]))
            r2, c2 = r + dy, c + dx
            za, zb = z[r, c].astype(np.float64), z[r2, c2].astype(np.float64)
            same = (np.abs(za - zb) <= depth_rel * np.minimum(za, zb)) \
                & (np.sum(n[r, c].astype(np.float64) * n[r2, c2], axis=-1) >= normal_cos)
            cand[r[same], c[same]] = True
            cand[r2[same], c2[same]] = True
        rows, cols = np.nonzero(cand)
        if rows.size == 0:
            break
        votes_k = np.empty((rows.size, len(offsets)), dtype=keys.dtype)
        valid = np.empty((rows.size, len(offsets)), dtype=bool)
        zc, nc = z[rows, cols].astype(np.float64), n[rows, cols].astype(np.float64)
        for j, (dy, dx) in enumerate(offsets):
            rr, cc = np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)
            inside = (rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
            votes_k[:, j] = keys[rr, cc]
            valid[:, j] = inside & hit[rr, cc] & (np.abs(z[rr, cc] - zc) <= 2 * depth_rel * zc) \
                & (np.sum(n[rr, cc] * nc, axis=-1) >= normal_cos)
        own = keys[rows, cols]
        best = np.empty_like(own)
        for lo in range(0, rows.size, 20000):  # bounded memory: (chunk, k, k) votes
            vk, va, ow = votes_k[lo:lo + 20000], valid[lo:lo + 20000], own[lo:lo + 20000]
            counts = ((vk[:, :, None] == vk[:, None, :]) & va[:, None, :]).sum(axis=2) \
                + np.where(vk == ow[:, None], 0.5, 0.0)
            counts[~va] = -1
            best[lo:lo + 20000] = vk[np.arange(len(vk)), np.argmax(counts, axis=1)]
        if np.array_equal(best, own):
            break
        keys[rows, cols] = best
    return keys


def reduce_nearest(z, factor, *others):
    """Reduce passes rendered ``factor`` times finer to the output size, keeping in each
    block the sample nearest the camera (any geometry beats the background): a rail
    thinner than a pixel still owns the pixels it crosses, in depth, ids and normals
    alike. Returns (z, *others) at the output size."""
    z = np.asarray(z)
    if factor == 1:
        return (z, *others)
    h, w = z.shape[0] // factor, z.shape[1] // factor
    blocks = z[:h * factor, :w * factor].reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, -1)
    zz = np.where(geometry_mask(blocks), blocks, np.inf)
    pick = np.argmin(zz, axis=-1)
    rows = np.arange(h)[:, None] * factor + pick // factor
    cols = np.arange(w)[None, :] * factor + pick % factor
    return (z[rows, cols], *(np.asarray(o)[rows, cols] for o in others))


def toward_viewer(world_normals, camera_rotation, ray_dirs_camera):
    """World normals flipped where they point away from the camera (the back of a
    single-sided plane), so 'facing up' means the visible side faces up.
    ``ray_dirs_camera``: (h, w, 3) or (3,) directions of the pixel rays in camera space."""
    rot = np.asarray(camera_rotation, dtype=np.float64).reshape(3, 3)
    n = np.asarray(world_normals, dtype=np.float64)
    ray_world = np.asarray(ray_dirs_camera, dtype=np.float64) @ rot.T
    away = np.sum(n * ray_world, axis=-1) > 0.0
    return np.where(away[..., None], -n, n)


def pixel_rays(size, frame, orthographic=False):
    """(h, w, 3) camera-space ray directions through pixel centres. ``frame``: the
    camera's view frame corners (x, y, z) in camera space (Blender's view_frame)."""
    w, h = size
    f = np.asarray(frame, dtype=np.float64)
    if orthographic:
        return np.broadcast_to(np.array([0.0, 0.0, -1.0]), (h, w, 3)).copy()
    d = -f[:, 2].mean()
    x0, x1 = f[:, 0].min() / d, f[:, 0].max() / d
    y0, y1 = f[:, 1].min() / d, f[:, 1].max() / d
    xs = x0 + (np.arange(w) + 0.5) / w * (x1 - x0)
    ys = y1 - (np.arange(h) + 0.5) / h * (y1 - y0)
    out = np.empty((h, w, 3))
    out[..., 0] = xs[None, :]
    out[..., 1] = ys[:, None]
    out[..., 2] = -1.0
    return out


# ---------------------------------------------------------------- segmentation

def seg_image(labels, lut, hit, background_color):
    """uint8 (h, w, 3): ``lut[labels]`` where there is geometry, ``background_color`` elsewhere.
    ``labels`` index rows of ``lut`` (one palette colour per label)."""
    labels = np.asarray(labels)
    lut = np.asarray(lut, dtype=np.uint8)
    if labels[hit].size and (labels[hit].min() < 0 or labels[hit].max() >= len(lut)):
        raise PassError(f"seg labels range {labels[hit].min()}..{labels[hit].max()} outside the legend of {len(lut)} entries")
    img = np.empty(labels.shape + (3,), dtype=np.uint8)
    img[...] = background_color
    img[hit] = lut[labels[hit]]
    return img
