"""Procedural backgrounds (wall/sky gradient, textured floor in perspective, clutter) and 3D scenery objects
(crates, poles, tables, seats) that take part in the depth sort and can hide people."""
from __future__ import annotations

import math

import cv2
import numpy as np

from hcq_ros.data.synth.appearance import COLOR_PROTOTYPES, SKIN_DARK, SKIN_LIGHT
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.primitives import ONE, SHIFT, Prim, box_prims, fixed

_COLOR_LIST = tuple(v[0] for v in COLOR_PROTOTYPES.values())


def _muted(rng: np.random.Generator, lo: float = 60, hi: float = 210) -> np.ndarray:
    """A plausible wall/floor colour: a grey level tinted slightly towards a random hue."""
    base = rng.uniform(lo, hi)
    return np.clip(base + rng.uniform(-28, 28, 3), 0, 255)


def _person_like_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """Skin or garment colours: clutter in these colours keeps detection from keying on colour alone."""
    if rng.random() < 0.4:
        t = rng.uniform(0, 1)
        c = SKIN_LIGHT * (1 - t) + SKIN_DARK * t
    else:
        c = np.asarray(_COLOR_LIST[int(rng.integers(len(_COLOR_LIST)))], dtype=np.float64)
    return tuple(int(v) for v in np.clip(c + rng.uniform(-15, 15, 3), 0, 255))


def horizon_row(camera: Camera, u: float) -> float:
    """Image row of the horizon at column u (rays parallel to the ground)."""
    r = camera.rotation
    # A ray d = R^T [x, y, 1] is horizontal when its world y is 0: solve for the image y.
    x = (u - 0.5 * camera.width) / camera.focal
    a, b, c = r[0, 1], r[1, 1], r[2, 1]
    if abs(b) < 1e-9:
        return -1e6 if (a * x + c) < 0 else 1e6
    return -(a * x + c) / b * camera.focal + 0.5 * camera.height


def make_background(rng: np.random.Generator, camera: Camera, clutter: tuple[int, int] = (4, 14),
                    person_like: float = 0.35) -> np.ndarray:
    """uint8 [H, W, 3] RGB background for ``camera``: wall gradient above the horizon, floor below (tiles or
    noise), low-frequency texture, then ``clutter`` random shapes (a share ``person_like`` in skin/garment
    colours and limb/head-like shapes)."""
    w, h = camera.width, camera.height
    # The smooth layers are built at half resolution (cheaper) and upsampled once.
    ws, hs = max(16, w // 2), max(16, h // 2)
    column = np.stack([_muted(rng), _muted(rng)]).astype(np.float32)[:, None, :]            # [2, 1, 3]
    image = cv2.resize(column, (ws, hs), interpolation=cv2.INTER_LINEAR)
    y0, y1 = horizon_row(camera, 0.0), horizon_row(camera, float(w))
    has_floor = min(y0, y1) < h
    if has_floor:                                       # floor below the horizon, darker or lighter far away
        y0c, y1c = float(np.clip(y0, -4 * h, 4 * h)) * hs / h, float(np.clip(y1, -4 * h, 4 * h)) * hs / h
        floor = _muted(rng, 40, 200)
        column = np.stack([np.clip(floor * rng.uniform(0.7, 1.2), 0, 255), floor]).astype(np.float32)[:, None, :]
        hy = int(np.clip(min(y0c, y1c), 0, hs - 1))
        floor_img = np.empty_like(image)
        floor_img[hy:] = cv2.resize(column, (ws, hs - hy), interpolation=cv2.INTER_LINEAR)
        mask = np.zeros((hs, ws), np.uint8)
        poly = np.array([[0, y0c], [ws, y1c], [ws, hs + 1], [0, hs + 1]], dtype=np.float64)
        cv2.fillPoly(mask, [fixed(poly)], 1, cv2.LINE_8, SHIFT)
        cv2.copyTo(floor_img, mask, image)
    # Low-frequency texture: two octaves of upsampled noise, shared by the three channels.
    fine_rows = int(rng.integers(12, 48))
    fine_size = (max(2, fine_rows * w // h), fine_rows)
    fine = rng.uniform(-1.0, 1.0, fine_size[::-1]).astype(np.float32) * rng.uniform(0, 12)
    coarse_rows = int(rng.integers(3, 9))
    coarse = rng.uniform(-1.0, 1.0, (coarse_rows, max(2, coarse_rows * w // h))).astype(np.float32)
    fine += cv2.resize(coarse * rng.uniform(5, 25), fine_size, interpolation=cv2.INTER_CUBIC)
    image += cv2.resize(fine, (ws, hs), interpolation=cv2.INTER_CUBIC)[:, :, None]
    image = cv2.resize(np.clip(image, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    if has_floor and rng.random() < 0.6:
        _floor_tiles(image, rng, camera)
    _wall_shapes(image, rng, camera, min(y0, y1))
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        _clutter_shape(image, rng, person_like)
    return image


def _floor_tiles(image: np.ndarray, rng: np.random.Generator, camera: Camera) -> None:
    """Grid lines on the ground plane, projected (clipped 0.3 m in front of the camera), in one cv2 call."""
    size = rng.uniform(0.5, 2.0)
    angle = rng.uniform(0, math.pi / 2)
    floor_px = image[-1, image.shape[1] // 2].astype(np.float64)
    color = tuple(int(c) for c in np.clip(floor_px * rng.uniform(0.6, 0.85), 0, 255))
    extent = 30.0
    offsets = np.arange(-int(extent / size), int(extent / size) + 1) * size
    n = len(offsets)
    # Segment end points in a grid frame [2n, 2 ends, 2 (a, b)], then rotated into world x, z.
    grid = np.empty((2 * n, 2, 2))
    grid[:n, 0], grid[:n, 1] = np.stack([np.full(n, -extent), offsets], 1), np.stack([np.full(n, extent), offsets], 1)
    grid[n:, 0], grid[n:, 1] = np.stack([offsets, np.full(n, -extent)], 1), np.stack([offsets, np.full(n, extent)], 1)
    ca, sa = math.cos(angle), math.sin(angle)
    world = np.zeros((2 * n, 2, 3))
    world[..., 0] = camera.position[0] + ca * grid[..., 0] - sa * grid[..., 1]
    world[..., 2] = camera.position[2] + sa * grid[..., 0] + ca * grid[..., 1]
    pc = camera.to_camera(world.reshape(-1, 3)).reshape(2 * n, 2, 3)
    za, zb = pc[:, 0, 2], pc[:, 1, 2]
    keep = (za > 0.3) | (zb > 0.3)
    t = np.clip((0.3 - za) / np.where(np.abs(zb - za) < 1e-9, 1e-9, zb - za), 0.0, 1.0)
    start = np.where((za < 0.3)[:, None], pc[:, 0] + t[:, None] * (pc[:, 1] - pc[:, 0]), pc[:, 0])
    end = np.where((zb < 0.3)[:, None], pc[:, 0] + t[:, None] * (pc[:, 1] - pc[:, 0]), pc[:, 1])
    seg = np.stack([start, end], 1)[keep]
    if not len(seg):
        return
    uv = camera.focal * seg[..., :2] / seg[..., 2:3] + np.array([0.5 * camera.width, 0.5 * camera.height])
    cv2.polylines(image, list(fixed(uv)), False, color, 1, cv2.LINE_AA, SHIFT)


def _wall_shapes(image: np.ndarray, rng: np.random.Generator, camera: Camera, horizon: float) -> None:
    """Windows, doors, shelves and posts above the floor line."""
    h, w = image.shape[:2]
    limit = int(np.clip(horizon, 0, h))
    if limit < 8:
        return
    for _ in range(int(rng.integers(0, 6))):
        x0 = rng.uniform(-0.1 * w, w)
        y0 = rng.uniform(-0.1 * h, limit)
        ww, hh = rng.uniform(0.05, 0.4) * w, rng.uniform(0.05, 0.5) * h
        color = tuple(int(c) for c in _muted(rng, 30, 230))
        p0 = fixed(np.array([x0, y0]))
        p1 = fixed(np.array([x0 + ww, min(y0 + hh, limit)]))
        cv2.rectangle(image, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), color, -1, cv2.LINE_AA, SHIFT)
        if rng.random() < 0.5:                          # frame
            edge = tuple(int(c * 0.6) for c in color)
            cv2.rectangle(image, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), edge, 2, cv2.LINE_AA, SHIFT)


def _clutter_shape(image: np.ndarray, rng: np.random.Generator, person_like: float) -> None:
    h, w = image.shape[:2]
    color = _person_like_color(rng) if rng.random() < person_like else tuple(int(c) for c in _muted(rng, 10, 245))
    kind = int(rng.integers(5))
    size = rng.uniform(0.02, 0.25) * min(w, h)
    c = fixed(np.array([rng.uniform(0, w), rng.uniform(0, h)]))
    if kind == 0:                                       # limb-like capsule
        a = rng.uniform(0, math.pi)
        d = (int(math.cos(a) * size * ONE), int(math.sin(a) * size * ONE))
        cv2.line(image, (int(c[0] - d[0]), int(c[1] - d[1])), (int(c[0] + d[0]), int(c[1] + d[1])), color,
                 max(1, int(size * rng.uniform(0.15, 0.5))), cv2.LINE_AA, SHIFT)
    elif kind == 1:                                     # head-like or blob ellipse
        axes = (int(size * rng.uniform(0.3, 1.0) * ONE), int(size * rng.uniform(0.3, 1.0) * ONE))
        cv2.ellipse(image, (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360, color, -1,
                    cv2.LINE_AA, SHIFT)
    elif kind == 2:
        d = (int(size * ONE * rng.uniform(0.3, 1.5)), int(size * ONE * rng.uniform(0.3, 1.5)))
        cv2.rectangle(image, (int(c[0]), int(c[1])), (int(c[0] + d[0]), int(c[1] + d[1])), color, -1,
                      cv2.LINE_AA, SHIFT)
    elif kind == 3:                                     # random convex polygon
        angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
        pts = np.stack([np.cos(angles), np.sin(angles)], 1) * size * rng.uniform(0.5, 1.0, (len(angles), 1))
        cv2.fillConvexPoly(image, (pts * ONE).astype(np.int32) + c, color, cv2.LINE_AA, SHIFT)
    else:                                               # thin line (cables, edges)
        e = fixed(np.array([rng.uniform(0, w), rng.uniform(0, h)]))
        cv2.line(image, (int(c[0]), int(c[1])), (int(e[0]), int(e[1])), color, int(rng.integers(1, 3)),
                 cv2.LINE_AA, SHIFT)


OBJECT_KINDS = ("crate", "pole", "table", "bin")


def object_prims(rng: np.random.Generator, camera: Camera, ground_xz: np.ndarray, light: np.ndarray,
                 order: int = 0, kind: str | None = None) -> list[Prim]:
    """A foreground object standing on the ground at ``ground_xz`` (world x, z): a crate, a pole, a table or a
    bin (``kind``, random by default). Sorted by its nearest corner, so it hides the people behind it."""
    if kind is None:
        kind = OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
    elif kind not in OBJECT_KINDS:
        raise ValueError(f"object kind {kind!r} not in {OBJECT_KINDS}")
    x, zc = float(ground_xz[0]), float(ground_xz[1])
    yaw = rng.uniform(0, math.pi)
    ex = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    ey = np.array([0.0, 1.0, 0.0])
    ez = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    color = tuple(int(c) for c in _muted(rng, 40, 220)) if rng.random() < 0.7 else _person_like_color(rng)
    if kind == "crate":                                 # crate / cabinet
        sx, sy, sz = rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.3), rng.uniform(0.3, 0.8)
        return box_prims(np.array([x, sy / 2, zc]), np.stack([ex * sx / 2, ey * sy / 2, ez * sz / 2]), color,
                         camera, light, "min", order)
    if kind == "pole":                                  # pole / pillar
        t, height = rng.uniform(0.05, 0.35), rng.uniform(1.5, 4.0)
        return box_prims(np.array([x, height / 2, zc]), np.stack([ex * t / 2, ey * height / 2, ez * t / 2]), color,
                         camera, light, "min", order)
    if kind == "table":                                 # table: top slab + four legs, one depth
        sx, sz, height = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9), rng.uniform(0.7, 0.8)
        prims = []
        for lx in (-1, 1):
            for lz in (-1, 1):
                leg = np.array([x, height / 2, zc]) + ex * lx * (sx / 2 - 0.05) + ez * lz * (sz / 2 - 0.05)
                prims += box_prims(leg, np.stack([ex * 0.025, ey * height / 2, ez * 0.025]), color, camera, light,
                                   "min", order)
        prims += box_prims(np.array([x, height, zc]), np.stack([ex * sx / 2, ey * 0.03, ez * sz / 2]), color,
                           camera, light, "min", order + 1)
        if prims:
            depth = min(p.depth for p in prims)
            for p in prims:
                p.depth = depth
        return prims
    r, height = rng.uniform(0.2, 0.4), rng.uniform(0.6, 1.1)     # bin: a square box
    return box_prims(np.array([x, height / 2, zc]), np.stack([ex * r, ey * height / 2, ez * r]), color, camera,
                     light, "min", order)


def seat_prims(pelvis: np.ndarray, left: np.ndarray, forward: np.ndarray, hip_half: float, thigh_radius: float,
               camera: Camera, light: np.ndarray, color) -> list[Prim]:
    """A stool under a sitting person's thighs (sorted by its centre: legs in front of it stay visible)."""
    top = float(pelvis[1]) - thigh_radius
    if top <= 0.05:
        return []
    centre = pelvis + forward * 0.12 - np.array([0.0, thigh_radius + top / 2, 0.0])
    half = np.stack([left * (hip_half + thigh_radius + 0.05), np.array([0.0, top / 2, 0.0]), forward * 0.2])
    return box_prims(centre, half, color, camera, light, "centre")
