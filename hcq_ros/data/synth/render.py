"""Render posed people and scenery into an image and read the exact ground truth back from the index map.

Annotation rules (documented here because every reader relies on them):
- The visible instance mask of a person is the set of pixels where one of its primitives was drawn last; the
  box is the tight xyxy box of that mask (continuous pixels: [x0, y0, x1 + 1, y1 + 1]).
- A keypoint is v=0 (x = y = 0) when it projects outside the image, v=2 when the primitive drawn last at its
  pixel belongs to the same person *and* to a body part adjacent to that joint (so a wrist behind the torso
  or behind the other arm is v=1) and, for face points, the point faces the camera; otherwise v=1.
- People whose visible area is below ``min_visible_area`` pixels are dropped from the annotations and their
  pixels are set to background (0) in the part map, so parts > 0 exactly on annotated people.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hcq_ros.data.schema import PersonAnnotation
from hcq_ros.data.synth.appearance import Identity
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.person import PersonView, person_primitives
from hcq_ros.data.synth.primitives import Prim, paint, prim_tables, sort_prims


@dataclass
class Lighting:
    """Light direction (world unit vector towards the light), global gain, per-channel colour cast (RGB
    multipliers), Gaussian blur sigma in pixels (0 = none) and uniform noise amplitude in grey levels."""
    direction: np.ndarray
    gain: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur_sigma: float = 0.0
    noise: float = 0.0


def sample_lighting(rng: np.random.Generator, blur_prob: float = 0.3, noise_max: float = 10.0) -> Lighting:
    """Moderate lighting: gain 0.85-1.12 and casts within +-5% keep the colour names recognisable."""
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = rng.uniform(0.35, 1.3)
    direction = np.array([math.cos(elevation) * math.cos(azimuth), math.sin(elevation),
                          math.cos(elevation) * math.sin(azimuth)])
    cast = tuple(float(c) for c in rng.uniform(0.95, 1.05, 3))
    blur = float(rng.uniform(0.4, 1.2)) if rng.random() < blur_prob else 0.0
    return Lighting(direction, float(rng.uniform(0.85, 1.12)), cast, blur, float(rng.uniform(0, noise_max)))


def finish_image(image: np.ndarray, lighting: Lighting, rng: np.random.Generator) -> np.ndarray:
    """Apply gain/cast (one LUT), blur and noise to an RGB uint8 [H, W, 3] image; returns a new image."""
    ramp = np.arange(256, dtype=np.float32)
    lut = np.stack([np.clip(ramp * lighting.gain * c, 0, 255) for c in lighting.cast], axis=-1)
    out = cv2.LUT(image, lut.astype(np.uint8).reshape(256, 1, 3))
    if lighting.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), lighting.blur_sigma)
    amp = int(round(lighting.noise))
    if amp > 0:
        # Uniform noise in [-amp, amp] from random bytes mapped through a LUT (fast), added with saturation.
        raw = np.frombuffer(rng.bytes(out.size), dtype=np.uint8).reshape(out.shape)
        to_range = (np.arange(256) * (2 * amp + 1) // 256).astype(np.uint8)
        out = cv2.subtract(cv2.add(out, cv2.LUT(raw, to_range)), (amp, amp, amp, 0))
    return out


@dataclass
class PlacedPerson:
    """A posed identity in the world. joints: [NUM_JOINTS, 3] world metres; frames from skeleton.place."""
    identity: Identity
    joints: np.ndarray
    frames: dict[str, np.ndarray]
    track_id: int = -1
    report_identity: bool = True    # False: identity is written as -1 (anonymous single images)


def render_scene(canvas: np.ndarray, people: list[PlacedPerson], scenery: list[Prim], camera: Camera,
                 light: np.ndarray, min_visible_area: int = 16
                 ) -> tuple[np.ndarray, list[PersonAnnotation], np.ndarray]:
    """Paint people and scenery primitives, all depth-sorted together, onto ``canvas`` (uint8 [H, W, 3], modified
    in place) and extract the annotations.

    Returns (canvas, persons, parts uint8 [H, W]). Persons keep the order of ``people`` (dropped ones removed).
    """
    h, w = canvas.shape[:2]
    if len(people) > 255:
        raise ValueError(f"at most 255 people per image, got {len(people)}")
    prims = list(scenery)
    views: list[tuple[PersonView, PlacedPerson]] = []
    for slot, person in enumerate(people, start=1):
        built = person_primitives(slot, person.identity, person.joints, person.frames, camera, light)
        if built is None:
            continue
        person_prims, view = built
        kp = view.keypoints_uv
        if kp[:, 0].max() < -0.5 * view.height_px or kp[:, 0].min() > w + 0.5 * view.height_px or \
                kp[:, 1].max() < -0.3 * view.height_px or kp[:, 1].min() > h + 0.3 * view.height_px:
            continue                                            # far outside the image: skip drawing
        prims.extend(person_prims)
        views.append((view, person))
    prims = sort_prims(prims)
    prim_map = paint(canvas, prims)
    owner_lut, part_lut, bits_lut = prim_tables(prims)
    owner_map = np.take(owner_lut, prim_map)
    parts = np.take(part_lut, prim_map)
    annotations = []
    for view, person in views:
        mask = owner_map == view.slot
        rows = np.flatnonzero(mask.any(1))
        if len(rows) == 0:
            continue
        area = int(np.count_nonzero(mask))
        if area < min_visible_area:
            parts[mask] = 0
            continue
        cols = np.flatnonzero(mask.any(0))
        box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
        keypoints = _keypoints(view, prim_map, owner_lut, bits_lut, w, h)
        annotations.append(PersonAnnotation(
            box=box, mask=mask, keypoints=keypoints,
            identity=person.identity.identity if person.report_identity else -1,
            track_id=person.track_id, attributes=person.identity.attributes))
    return canvas, annotations, parts


def _keypoints(view: PersonView, prim_map: np.ndarray, owner_lut: np.ndarray, bits_lut: np.ndarray, w: int,
               h: int) -> np.ndarray:
    """float32 [17, 3] with COCO visibility (see the module docstring)."""
    kp = np.zeros((17, 3), dtype=np.float32)
    uv = view.keypoints_uv
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    for k in np.flatnonzero(inside):
        x, y = float(uv[k, 0]), float(uv[k, 1])
        index = prim_map[int(y), int(x)]
        visible = owner_lut[index] == view.slot and (int(bits_lut[index]) >> int(k)) & 1 and view.face_ok[k]
        kp[k] = (x, y, 2.0 if visible else 1.0)
    return kp
