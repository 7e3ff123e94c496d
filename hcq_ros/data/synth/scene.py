"""Single SynthHumans images: camera, background, 0..max_people posed people, objects, lighting -> Sample."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from hcq_ros.data.schema import Sample
from hcq_ros.data.synth.appearance import IdentityPool, sample_identity
from hcq_ros.data.synth.background import make_background, object_prims, seat_prims
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.primitives import Prim
from hcq_ros.data.synth.render import PlacedPerson, finish_image, render_scene, sample_lighting
from hcq_ros.data.synth.skeleton import POSE_KINDS, forward_kinematics, place, random_pose


@dataclass
class SceneConfig:
    """What a SynthHumans image looks like. Heights are full-body pixel heights before truncation; the
    default ``max_person_height`` (None) is 1.2 x the image height (close-ups cut by the borders); at most
    one person per image is taller than ``large_fraction`` x the image height."""
    width: int = 256
    height: int = 256
    min_people: int = 0
    max_people: int = 15
    min_person_height: float = 12.0
    max_person_height: float | None = None
    occluder_prob: float = 0.5          # chance that an image has foreground objects
    max_occluders: int = 3
    clutter: tuple[int, int] = (4, 14)  # number of background clutter shapes
    person_like_clutter: float = 0.35   # share of clutter in skin / garment colours and limb-like shapes
    group_prob: float = 0.35            # chance that a person stands next to the previous one (overlaps)
    blur_prob: float = 0.3
    noise_max: float = 10.0
    large_fraction: float = 0.6
    min_visible_area: int = 16          # people with fewer visible pixels are not annotated (see render.py)
    child_prob: float = 0.2
    pose_kinds: tuple[str, ...] | None = None   # restrict poses (subset of skeleton.POSE_KINDS)
    fov_deg: tuple[float, float] = (45.0, 80.0)
    camera_height: tuple[float, float] = (0.8, 4.5)

    def __post_init__(self):
        if self.width < 32 or self.height < 32:
            raise ValueError(f"SceneConfig width/height must be >= 32, got {self.width}x{self.height}")
        if not 0 <= self.min_people <= self.max_people:
            raise ValueError(f"SceneConfig needs 0 <= min_people <= max_people, got {self.min_people}, "
                             f"{self.max_people}")
        if self.min_person_height <= 0 or (self.max_person_height is not None
                                           and self.max_person_height < self.min_person_height):
            raise ValueError(f"SceneConfig person heights invalid: min {self.min_person_height}, "
                             f"max {self.max_person_height}")
        for kind in self.pose_kinds or ():
            if kind not in POSE_KINDS:
                raise ValueError(f"SceneConfig.pose_kinds: {kind!r} not in {POSE_KINDS}")

    @property
    def person_height_range(self) -> tuple[float, float]:
        top = self.max_person_height if self.max_person_height is not None else 1.2 * self.height
        return self.min_person_height, max(top, self.min_person_height)


def as_generator(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer, list, tuple)):
        return np.random.default_rng(rng_or_seed)
    raise ValueError(f"expected a numpy Generator or an integer seed, got {type(rng_or_seed).__name__}")


def sample_camera(rng: np.random.Generator, cfg: SceneConfig) -> Camera:
    """Random viewpoint: eye level to elevated, looking a few metres ahead (pitch follows the height)."""
    cam_h = float(rng.uniform(*cfg.camera_height))
    look = rng.uniform(4.0, 16.0)
    pitch = math.atan2(cam_h - 1.0, look) + rng.uniform(-0.08, 0.08)
    fov = float(rng.uniform(*cfg.fov_deg))
    yaw = float(rng.uniform(-math.pi, math.pi))
    return Camera.look(cfg.width, cfg.height, fov, cam_h, yaw, pitch, float(rng.uniform(-0.06, 0.06)))


def ground_axes(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Unit (forward, right) directions of the camera projected onto the ground plane."""
    fwd = camera.forward.copy()
    fwd[1] = 0.0
    fwd /= np.linalg.norm(fwd)
    right = camera.rotation[0].copy()
    right[1] = 0.0
    right /= np.linalg.norm(right)
    return fwd, right


def _place_people(rng: np.random.Generator, cfg: SceneConfig, camera: Camera, pool: IdentityPool | None,
                  light: np.ndarray) -> tuple[list[PlacedPerson], list[Prim]]:
    """Sample people on the ground (log-uniform pixel heights), with seats for sitting poses."""
    n = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    lo, hi = cfg.person_height_range
    fwd, right = ground_axes(camera)
    base = np.array([camera.position[0], 0.0, camera.position[2]])
    people, scenery = [], []
    previous = None
    for _ in range(n):
        if pool is not None:
            ident = pool.get(int(rng.integers(1, len(pool) + 1)))
        else:
            ident = sample_identity(rng, -1, cfg.child_prob)
        kinds = cfg.pose_kinds
        pose = random_pose(rng, None if not kinds else kinds[int(rng.integers(len(kinds)))])
        if previous is not None and rng.random() < cfg.group_prob:
            ground = previous + fwd * rng.uniform(-1.0, 1.0) + right * rng.uniform(-0.9, 0.9)
            distance = float(np.dot(ground - base, fwd))
            if distance < 0.8:
                ground += fwd * (0.8 - distance)
        else:
            px = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            if px > cfg.large_fraction * cfg.height:
                hi = max(lo, cfg.large_fraction * cfg.height)      # only one close-up per image
            distance = max(0.8, camera.focal * ident.body.height / px)
            u = rng.uniform(-0.1, 1.1) * camera.width
            ground = base + fwd * distance + right * ((u - 0.5 * camera.width) / camera.focal * distance)
        yaw = float(rng.uniform(-math.pi, math.pi))
        joints, frames = forward_kinematics(ident.body, pose)
        joints, frames = place(joints, frames, (float(ground[0]), float(ground[2])), yaw)
        elevation = _elevation(rng, camera, joints)
        joints[:, 1] += elevation
        people.append(PlacedPerson(ident, joints, frames, report_identity=pool is not None))
        previous = ground
        if pose.seated:
            seat_color = tuple(int(c) for c in rng.uniform(40, 200, 3))
            scenery += seat_prims(joints[0], frames["pelvis"][0], frames["pelvis"][2], ident.body.hip_half,
                                  ident.body.thigh_radius, camera, light, seat_color)
    return people, scenery


def _elevation(rng: np.random.Generator, camera: Camera, joints: np.ndarray) -> float:
    """0 when the person standing on the ground is (at least partly) in view; otherwise lift or lower the
    person (stairs, balconies, a step down) so that the body centre lands inside the image."""
    centre = joints.mean(0)
    uv, z = camera.project(centre[None])
    v = float(uv[0, 1])
    if z[0] <= 0 or -0.25 * camera.height < v < 1.25 * camera.height:
        return 0.0
    target = rng.uniform(0.15, 0.85) * camera.height
    pc = camera.to_camera(centre[None])[0]
    # Move along world y by dy so that the projected row becomes ``target`` (solve the linear equation).
    down_y = camera.rotation[:, 1]           # camera-frame change per metre of world y
    want = (target - 0.5 * camera.height) / camera.focal
    denom = down_y[1] - want * down_y[2]
    if abs(denom) < 1e-6:
        return 0.0
    return float((want * pc[2] - pc[1]) / denom)


def _occluders(rng: np.random.Generator, cfg: SceneConfig, camera: Camera, people: list[PlacedPerson],
               light: np.ndarray) -> list[Prim]:
    """0..max_occluders objects, most placed between the camera and a random person."""
    prims: list[Prim] = []
    if rng.random() >= cfg.occluder_prob or cfg.max_occluders <= 0:
        return prims
    fwd, right = ground_axes(camera)
    base = np.array([camera.position[0], 0.0, camera.position[2]])
    for k in range(int(rng.integers(1, cfg.max_occluders + 1))):
        if people and rng.random() < 0.8:
            target = people[int(rng.integers(len(people)))].joints[0]
            target = np.array([target[0], 0.0, target[2]])
            to_cam = base - target
            dist = float(np.linalg.norm(to_cam))
            step = min(dist - 0.6, rng.uniform(0.4, 1.6))
            if step <= 0.1:
                continue
            ground = target + to_cam / dist * step + right * rng.uniform(-0.5, 0.5)
        else:
            ground = base + fwd * rng.uniform(1.5, 12.0) + right * rng.uniform(-4.0, 4.0)
        prims += object_prims(rng, camera, np.array([ground[0], ground[2]]), light, order=1000 + 10 * k)
    return prims


def generate_image(rng_or_seed, cfg: SceneConfig, image_id: int = 0, pool: IdentityPool | None = None) -> Sample:
    """One random SynthHumans image with full ground truth.

    rng_or_seed: numpy Generator (advanced in place) or an int seed (same seed -> identical Sample bytes).
    pool: draw people from this identity pool (then ``identity`` is set); by default fresh anonymous people
    (identity -1). Returns Sample(image uint8 [H, W, 3] RGB, persons, parts uint8 [H, W], image_id).
    """
    rng = as_generator(rng_or_seed)
    camera = sample_camera(rng, cfg)
    lighting = sample_lighting(rng, cfg.blur_prob, cfg.noise_max)
    canvas = make_background(rng, camera, cfg.clutter, cfg.person_like_clutter)
    people, scenery = _place_people(rng, cfg, camera, pool, lighting.direction)
    scenery += _occluders(rng, cfg, camera, people, lighting.direction)
    canvas, persons, parts = render_scene(canvas, people, scenery, camera, lighting.direction, cfg.min_visible_area)
    image = finish_image(canvas, lighting, rng)
    return Sample(image=image, persons=persons, parts=parts, image_id=image_id)


def measure_speed(n: int = 200, size: int = 256, seed: int = 0) -> dict[str, float]:
    """Generate ``n`` images of ``size`` x ``size`` in memory on one thread; returns images/s (wall and CPU)."""
    if n < 1:
        raise ValueError(f"measure_speed needs n >= 1, got {n}")
    cv2.setNumThreads(1)
    cfg = SceneConfig(width=size, height=size)
    generate_image(seed, cfg)                                   # warm-up (imports, caches)
    persons = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        persons += len(generate_image(np.random.default_rng([seed, i]), cfg, image_id=i).persons)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images": n, "size": size, "persons": persons, "seconds": wall, "cpu_seconds": cpu,
            "images_per_s": n / wall, "images_per_cpu_s": n / max(cpu, 1e-9)}
