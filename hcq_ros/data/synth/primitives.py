"""Drawable 2D primitives (projected from 3D) and the painter that rasterises them with cv2.

Coordinates handed to cv2 are fixed point with ``SHIFT`` fractional bits and pixel centres at integer
positions, i.e. cv2 = (continuous - 0.5) * 2**SHIFT, so a keypoint at continuous (x, y) lies in pixel
(floor(x), floor(y)).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SHIFT = 4
ONE = 1 << SHIFT

LINE, POLY, ELLIPSE, CIRCLE = 0, 1, 2, 3


class Prim:
    """One filled shape. ``depth`` sorts (far first), ``order`` breaks ties (lower first). ``geom`` is kind-
    specific fixed-point data; ``owner`` is the person slot (1..n, 0 = scenery), ``part`` a PART_NAMES label,
    ``kp_bits`` the COCO keypoints (bit k) that count as visible when this primitive is on top of them."""
    __slots__ = ("depth", "order", "kind", "geom", "color", "highlight", "part", "owner", "kp_bits")

    def __init__(self, depth, order, kind, geom, color, highlight=None, part=0, owner=0, kp_bits=0):
        self.depth, self.order, self.kind, self.geom = depth, order, kind, geom
        self.color, self.highlight = color, highlight
        self.part, self.owner, self.kp_bits = part, owner, kp_bits


def fixed(uv: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates [..., 2] -> cv2 fixed point int32 [..., 2]."""
    return np.rint((uv - 0.5) * ONE).astype(np.int32)


def shade(color, factor: float) -> tuple[int, int, int]:
    return (min(255, int(color[0] * factor)), min(255, int(color[1] * factor)), min(255, int(color[2] * factor)))


def line_prim(p0, p1, width_px: float, depth: float, color, light2d, part=0, owner=0, kp_bits=0, order=0,
              highlight: bool = True) -> Prim:
    """A capsule from p0 to p1 (continuous xy) of ``width_px``; optional light-side highlight stroke."""
    a, b = fixed(np.asarray(p0)), fixed(np.asarray(p1))
    return line_prim_fixed(int(a[0]), int(a[1]), int(b[0]), int(b[1]), width_px, depth, color, light2d, part, owner,
                           kp_bits, order, highlight)


def line_prim_fixed(ax: int, ay: int, bx: int, by: int, width_px: float, depth: float, color, light2d, part=0,
                    owner=0, kp_bits=0, order=0, highlight: bool = True) -> Prim:
    """``line_prim`` with end points already in cv2 fixed point."""
    thick = max(1, int(width_px + 0.5))
    hl = None
    if highlight and thick >= 4:
        off = (int(light2d[0] * 0.22 * thick * ONE), int(light2d[1] * 0.22 * thick * ONE))
        hl = (shade(color, 1.1), off, max(1, int(0.42 * thick + 0.5)))
    return Prim(depth, order, LINE, (ax, ay, bx, by, thick), shade(color, 0.95), hl, part, owner, kp_bits)


def poly_prim(points_uv: np.ndarray, depth: float, color, light2d, part=0, owner=0, kp_bits=0, order=0,
              highlight: bool = True) -> Prim | None:
    """The convex hull of points_uv [K, 2] (continuous xy); None if it has no area."""
    pts = fixed(points_uv)
    hull = cv2.convexHull(pts)
    if len(hull) < 3:
        return None
    hl = None
    lo, hi = points_uv.min(0), points_uv.max(0)
    size = float(max(hi - lo))
    if highlight and size >= 8:
        centre = hull.reshape(-1, 2).mean(0)
        inner = centre + 0.62 * (hull.reshape(-1, 2) - centre)
        inner += np.array(light2d) * 0.14 * size * ONE
        hl = (shade(color, 1.08), inner.astype(np.int32), 0)
    return Prim(depth, order, POLY, hull, shade(color, 0.96), hl, part, owner, kp_bits)


def ellipse_prim(centre_uv, axes_px, angle_deg: float, depth: float, color, part=0, owner=0, kp_bits=0,
                 order=0) -> Prim:
    c = fixed(np.asarray(centre_uv))
    ax = (max(ONE // 2, int(axes_px[0] * ONE)), max(ONE // 2, int(axes_px[1] * ONE)))
    return Prim(depth, order, ELLIPSE, (int(c[0]), int(c[1]), ax[0], ax[1], float(angle_deg)), color, None,
                part, owner, kp_bits)


def circle_prim(centre_uv, radius_px: float, depth: float, color, part=0, owner=0, kp_bits=0, order=0) -> Prim:
    c = fixed(np.asarray(centre_uv))
    return Prim(depth, order, CIRCLE, (int(c[0]), int(c[1]), max(ONE // 2, int(radius_px * ONE))), color, None,
                part, owner, kp_bits)


_BOX_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
# Corner indices of the 6 faces (-x, +x, -y, +y, -z, +z) of a box with corners _BOX_SIGNS.
_BOX_FACES = [np.flatnonzero(_BOX_SIGNS[:, axis] == sgn) for axis in range(3) for sgn in (-1.0, 1.0)]
_FACE_SIGNS = np.array([[-1.0], [1.0], [-1.0], [1.0], [-1.0], [1.0]])


def box_prims(centre: np.ndarray, half_axes: np.ndarray, color, camera, light: np.ndarray, depth_mode: str = "min",
              order: int = 0, owner: int = 0, part: int = 0) -> list[Prim]:
    """The camera-facing faces of a 3D box, each shaded by its normal against ``light``.

    centre: [3] world; half_axes: [3, 3] rows = half-extent vectors. depth_mode "min" sorts the whole box by its
    nearest corner (foreground objects), "centre" by its centre (furniture people interact with).
    """
    corners = centre + _BOX_SIGNS @ half_axes
    uv, z = camera.project(corners)
    if (z <= 0.05).any():
        return []
    depth = float(z.min()) if depth_mode == "min" else float(camera.to_camera(centre[None])[0, 2])
    normals = _FACE_SIGNS * np.repeat(half_axes, 2, axis=0)                     # [6, 3] outward, unnormalised
    facing = np.einsum("ij,ij->i", normals, camera.position - (centre + normals)) > 0
    lengths = np.linalg.norm(normals, axis=1) + 1e-12
    factors = 0.55 + 0.5 * np.maximum(0.0, normals @ light / lengths)
    prims = []
    for f in np.flatnonzero(facing):
        color_f = shade(color, float(factors[f]))
        p = poly_prim(uv[_BOX_FACES[f]], depth, color_f, (0, 0), part, owner, 0, order, highlight=False)
        if p is not None:
            p.color = color_f
            prims.append(p)
    return prims


def paint(image: np.ndarray, prims: list[Prim]) -> np.ndarray:
    """Draw ``prims`` far to near into ``image`` (uint8 [H, W, 3], in place) and a primitive index map.

    Returns prim_map: uint16 [H, W]; value i > 0 = the (i-1)-th primitive of the sorted list was drawn last
    there. The caller reads owners/parts/keypoint bits through that index (see ``prim_tables``).
    """
    if len(prims) >= 65535:
        raise ValueError(f"too many primitives for a uint16 index map: {len(prims)}")
    prim_map = np.zeros(image.shape[:2], dtype=np.uint16)
    aa = cv2.LINE_AA
    for index, p in enumerate(prims, start=1):
        g = p.geom
        if p.kind == LINE:
            cv2.line(image, (g[0], g[1]), (g[2], g[3]), p.color, g[4], aa, SHIFT)
            cv2.line(prim_map, (g[0], g[1]), (g[2], g[3]), index, g[4], cv2.LINE_8, SHIFT)
            if p.highlight is not None:
                color, off, thick = p.highlight
                cv2.line(image, (g[0] + off[0], g[1] + off[1]), (g[2] + off[0], g[3] + off[1]), color, thick, aa,
                         SHIFT)
        elif p.kind == POLY:
            cv2.fillConvexPoly(image, g, p.color, aa, SHIFT)
            cv2.fillConvexPoly(prim_map, g, index, cv2.LINE_8, SHIFT)
            if p.highlight is not None:
                cv2.fillConvexPoly(image, p.highlight[1], p.highlight[0], aa, SHIFT)
        elif p.kind == ELLIPSE:
            cv2.ellipse(image, (g[0], g[1]), (g[2], g[3]), g[4], 0, 360, p.color, -1, aa, SHIFT)
            cv2.ellipse(prim_map, (g[0], g[1]), (g[2], g[3]), g[4], 0, 360, index, -1, cv2.LINE_8, SHIFT)
        else:
            cv2.circle(image, (g[0], g[1]), g[2], p.color, -1, aa, SHIFT)
            cv2.circle(prim_map, (g[0], g[1]), g[2], index, -1, cv2.LINE_8, SHIFT)
    return prim_map


def sort_prims(prims: list[Prim]) -> list[Prim]:
    """Painter's order: far to near, ties by ``order``."""
    return sorted(prims, key=lambda p: (-p.depth, p.order))


def prim_tables(prims: list[Prim]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables indexed by prim_map values: owner uint8 [P+1] (slots <= 255), part uint8 [P+1], kp_bits
    int64 [P+1]."""
    owner = np.zeros(len(prims) + 1, dtype=np.uint8)
    part = np.zeros(len(prims) + 1, dtype=np.uint8)
    bits = np.zeros(len(prims) + 1, dtype=np.int64)
    for i, p in enumerate(prims, start=1):
        owner[i], part[i], bits[i] = p.owner, p.part, p.kp_bits
    return owner, part, bits


def angle_deg(vec2) -> float:
    return math.degrees(math.atan2(vec2[1], vec2[0]))
