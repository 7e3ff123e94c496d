"""SynthHumans sequences: a static camera watching identities from a shared pool walk, run and stand around.

Each sequence is one "camera" (its own viewpoint, background, objects and lighting). People enter from the
borders (or start inside), follow smooth ground trajectories with walking/running animation whose cadence
follows their speed, cross and occlude each other and leave; every appearance gets a new ``track_id`` (unique
within the sequence, from 1). The same identities re-appear in other sequences, so ReID query and gallery can be
split by camera as in Market-1501.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from hcq_ros.data.schema import Sample
from hcq_ros.data.synth.appearance import Identity, IdentityPool
from hcq_ros.data.synth.background import make_background, object_prims, seat_prims
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.render import PlacedPerson, finish_image, render_scene, sample_lighting
from hcq_ros.data.synth.scene import SceneConfig, ground_axes
from hcq_ros.data.synth.skeleton import Pose, forward_kinematics, place, pose_gait, random_pose


@dataclass
class _Walker:
    """One appearance of an identity. Ground coordinates are camera-aligned: (lateral x, forward distance d)."""
    identity: Identity
    track_id: int
    x: float
    d: float
    heading: float              # direction of travel in the (x, d) plane, radians from +d towards +x
    speed: float                # m/s; 0 while standing
    running: bool
    target: tuple[float, float]
    phase: float
    head_yaw: float
    idle_pose: Pose | None      # stationary people keep a fixed pose (standing, arms crossed, sitting ...)
    idle_frames: int            # frames left standing before walking on (-1 = never moves)


@dataclass
class _Region:
    """The walkable ground area in view: distances [near, far] and half-width at distance d."""
    near: float
    far: float
    tan_half: float

    def half_width(self, d: float) -> float:
        return max(1.0, d * self.tan_half)

    def sample_distance(self, rng: np.random.Generator) -> float:
        """Uniform in 1/d: as many people per pixel row near the camera as far away (not crowded at the
        horizon, where a uniform ground distribution would put most of them)."""
        return 1.0 / float(rng.uniform(1.0 / self.far, 1.0 / self.near))

    def contains(self, x: float, d: float, margin: float) -> bool:
        return self.near - margin <= d <= self.far + margin and abs(x) <= self.half_width(d) + margin


def _sequence_camera(rng: np.random.Generator, cfg: SceneConfig) -> Camera:
    """Mostly elevated surveillance views, sometimes eye level."""
    if rng.random() < 0.7:
        cam_h = float(rng.uniform(2.2, 6.0))
        look = rng.uniform(6.0, 14.0)
    else:
        cam_h = float(rng.uniform(1.2, 1.9))
        look = rng.uniform(8.0, 20.0)
    pitch = math.atan2(cam_h - 1.0, look)
    return Camera.look(cfg.width, cfg.height, float(rng.uniform(50.0, 75.0)), cam_h,
                       float(rng.uniform(-math.pi, math.pi)), pitch, float(rng.uniform(-0.03, 0.03)))


def _region(camera: Camera, min_height_px: float) -> _Region:
    fwd, _ = ground_axes(camera)
    base = np.array([camera.position[0], 0.0, camera.position[2]])

    def ground_distance(v: float) -> float | None:
        g = camera.ground_point(0.5 * camera.width, v)
        return None if g is None else float(np.dot(g - base, fwd))

    bottom = ground_distance(float(camera.height))
    near = max(1.5, (bottom or 1.0) - 0.3)             # feet may dip below the bottom border
    far = camera.focal * 1.7 / max(min_height_px, 8.0)
    top = ground_distance(0.15 * camera.height)
    if top is not None:
        far = min(far, top + 2.0)
    far = min(max(far, near + 4.0), 40.0)
    return _Region(near, far, 0.5 * camera.width / camera.focal)


def _spawn(rng: np.random.Generator, region: _Region, identity: Identity, track_id: int, inside: bool) -> _Walker:
    """A new walker entering from a border (or already inside), heading for a point across the view."""
    d = region.sample_distance(rng)
    side = 1.0 if rng.random() < 0.5 else -1.0
    if inside:
        x = float(rng.uniform(-1, 1)) * region.half_width(d)
    else:
        x = side * (region.half_width(d) + 1.0)
    target_d = region.sample_distance(rng)
    target = (-side * (region.half_width(target_d) + 1.5), target_d)
    heading = math.atan2(target[0] - x, target[1] - d)
    running = bool(rng.random() < 0.15)
    speed = float(rng.uniform(2.5, 3.8) if running else rng.uniform(0.8, 1.7))
    idle_pose, idle = None, 0
    roll = rng.random()
    if inside and roll < 0.12:                          # stays put for the whole sequence
        idle_pose = random_pose(rng, ("standing", "arms_crossed", "sitting", "arms_raised")[int(rng.integers(4))])
        idle = -1
    elif roll < 0.25:                                   # pauses first, then walks on
        idle_pose, idle = random_pose(rng, "standing"), int(rng.integers(10, 90))
    return _Walker(identity, track_id, x, d, heading, speed, running, target, float(rng.uniform(0, 2 * math.pi)),
                   float(rng.uniform(-0.4, 0.4)), idle_pose, idle)


def _step(rng: np.random.Generator, w: _Walker, dt: float) -> None:
    """Advance one frame: steer smoothly towards the target, vary the speed slowly, advance the gait phase."""
    if w.idle_frames != 0:
        if w.idle_frames > 0:
            w.idle_frames -= 1
        w.head_yaw = float(np.clip(w.head_yaw + rng.normal(0, 0.03), -0.7, 0.7))
        return
    desired = math.atan2(w.target[0] - w.x, w.target[1] - w.d)
    error = (desired - w.heading + math.pi) % (2 * math.pi) - math.pi
    w.heading += float(np.clip(error, -0.8 * dt, 0.8 * dt)) + float(rng.normal(0, 0.01))
    w.speed = float(np.clip(w.speed * math.exp(rng.normal(0, 0.01)), 2.2 if w.running else 0.6,
                            4.0 if w.running else 1.9))
    w.x += w.speed * math.sin(w.heading) * dt
    w.d += w.speed * math.cos(w.heading) * dt
    stride = w.identity.body.height * (0.55 + 0.18 * w.speed)      # metres per gait cycle
    w.phase = (w.phase + 2 * math.pi * w.speed / stride * dt) % (2 * math.pi)


def _pose(w: _Walker) -> Pose:
    if w.idle_frames != 0 and w.idle_pose is not None:
        return replace(w.idle_pose, head_yaw=w.head_yaw)
    amplitude = min(1.2, max(0.8, w.speed / 3.0)) if w.running else min(1.25, max(0.6, w.speed / 1.3))
    return replace(pose_gait(w.phase, w.running, None, amplitude), head_yaw=w.head_yaw)


def generate_sequence(seed: int, cfg: SceneConfig, num_frames: int, camera: int, pool: IdentityPool, name: str,
                      identities: Sequence[int] | None = None, fps: float = 25.0,
                      first_image_id: int = 1) -> Iterator[Sample]:
    """Yield frames 1..num_frames of one sequence (one camera) as Samples with sequence/camera/frame set.

    seed, camera: together fix everything (same arguments -> identical bytes). identities: the pool ids this
    camera may show (default: a random subset of the pool); the least-shown one enters next, so every listed
    identity appears when the sequence is long enough. Persons carry identity and track_id (unique per sequence).
    image_id = first_image_id + frame - 1.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rng = np.random.default_rng([seed, camera, 0x5E9])
    most = max(1, cfg.max_people)
    target_count = int(rng.integers(max(1, cfg.min_people, most // 3), most + 1))
    if identities is None:
        count = min(len(pool), max(2 * target_count, 4))
        identities = [int(i) for i in rng.choice(pool.ids, size=count, replace=False)]
    for i in identities:
        pool.get(int(i))                                            # validates the ids early
    if not identities:
        raise ValueError("generate_sequence needs at least one identity")
    cam = _sequence_camera(rng, cfg)
    region = _region(cam, max(cfg.min_person_height, 0.15 * cfg.height))
    lighting = sample_lighting(rng, cfg.blur_prob, cfg.noise_max)
    background = make_background(rng, cam, cfg.clutter, cfg.person_like_clutter)
    fwd, right = ground_axes(cam)
    base = np.array([cam.position[0], 0.0, cam.position[2]])
    static = []
    if rng.random() < cfg.occluder_prob:
        for k in range(int(rng.integers(1, cfg.max_occluders + 1))):
            d = float(rng.uniform(region.near, 0.5 * (region.near + region.far)))
            x = float(rng.uniform(-1, 1)) * region.half_width(d)
            ground = base + fwd * d + right * x
            static += object_prims(rng, cam, np.array([ground[0], ground[2]]), lighting.direction, 1000 + 10 * k)
    shown = {int(i): 0 for i in identities}
    next_track = 1
    walkers: list[_Walker] = []

    def enter(inside: bool) -> None:
        nonlocal next_track
        active = {w.identity.identity for w in walkers}
        free = [i for i in shown if i not in active]
        if not free:
            return
        fewest = min(shown[i] for i in free)
        choices = [i for i in free if shown[i] == fewest]
        identity = choices[int(rng.integers(len(choices)))]
        shown[identity] += 1
        walkers.append(_spawn(rng, region, pool.get(identity), next_track, inside))
        next_track += 1

    for _ in range(target_count):
        enter(inside=True)
    spawn_prob = float(np.clip(len(identities) / num_frames, 0.02, 0.25))
    dt = 1.0 / fps
    for frame in range(1, num_frames + 1):
        if frame > 1:
            for w in walkers:
                _step(rng, w, dt)
            walkers = [w for w in walkers if region.contains(w.x, w.d, 2.5)
                       and math.hypot(w.target[0] - w.x, w.target[1] - w.d) > 0.3]
            if len(walkers) < target_count and rng.random() < spawn_prob:
                enter(inside=False)
        people, scenery = [], list(static)
        for w in walkers:
            pose = _pose(w)
            joints, frames = forward_kinematics(w.identity.body, pose)
            ground = base + fwd * w.d + right * w.x
            direction = right * math.sin(w.heading) + fwd * math.cos(w.heading)
            yaw = math.atan2(direction[0], direction[2])
            joints, frames = place(joints, frames, (float(ground[0]), float(ground[2])), yaw)
            people.append(PlacedPerson(w.identity, joints, frames, track_id=w.track_id))
            if pose.seated:
                scenery += seat_prims(joints[0], frames["pelvis"][0], frames["pelvis"][2], w.identity.body.hip_half,
                                      w.identity.body.thigh_radius, cam, lighting.direction, (70, 70, 90))
        canvas, persons, parts = render_scene(background.copy(), people, scenery, cam, lighting.direction,
                                              cfg.min_visible_area)
        image = finish_image(canvas, lighting, rng)
        yield Sample(image=image, persons=persons, parts=parts, image_id=first_image_id + frame - 1,
                     sequence=name, camera=camera, frame=frame)
