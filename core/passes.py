"""Control images from exact render passes, in the conventions of each ControlNet.

Inputs are float arrays as a renderer writes them: Z depth (distance along the camera
axis, huge where no geometry was hit), world-space normals, object and material ids.
Row 0 is the top of the image. Nothing here knows about Blender.
"""

import math
from dataclasses import dataclass

import numpy as np

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


def size_multiple(model: str) -> int:
    """The multiple a family's image sides must be: 16 for FLUX.1 (VAE 1/8 and 2x2 patches), else 8."""
    return 16 if "flux" in str(model).lower() else 8


@dataclass(frozen=True)
class DepthRange:
    near: float
    far: float
    source: str  # "scene bounds" or "user"

    def as_dict(self):
        return {"near": self.near, "far": self.far, "source": self.source}


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
    return DepthRange(near=near, far=far, source="scene bounds")


def user_depth_range(near, far):
    if not (math.isfinite(near) and math.isfinite(far)) or near <= 0.0 or far <= near:
        raise PassError(f"depth range needs 0 < near < far, got near={near!r}, far={far!r}")
    return DepthRange(near=float(near), far=float(far), source="user")


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


def _pair_edges(w, z, n, ids, hit, axis, crease_cos, depth_tolerance):
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

    a_nearer = np.where(both, sl(z, None, -1) <= sl(z, 1, None), ha)
    return edge, a_nearer


def line_image(z, camera_normals, ids=(), orthographic=False, crease_angle=30.0, depth_tolerance=0.02):
    """uint8 (h, w): white 1-px lines on black at silhouettes, depth jumps, creases
    sharper than ``crease_angle`` degrees and boundaries between ``ids`` (object and
    material id passes). Each line is drawn on the nearer side of the edge, so it
    follows the outline of the object in front; flat faces stay black."""
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
    for axis in (0, 1):
        edge, a_nearer = _pair_edges(w, z, n, ids, hit, axis, crease_cos, depth_tolerance)
        mark_a = edge & a_nearer
        mark_b = edge & ~a_nearer
        if axis == 0:
            lines[:-1, :] |= mark_a
            lines[1:, :] |= mark_b
        else:
            lines[:, :-1] |= mark_a
            lines[:, 1:] |= mark_b
    return lines.astype(np.uint8) * 255


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
