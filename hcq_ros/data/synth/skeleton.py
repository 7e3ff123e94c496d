"""Articulated 3D skeleton: body proportions, pose families and forward kinematics.

Person-local frame (metres): x = the person's own left, y = up, z = forward (the way the pelvis faces); the
ground is y = 0. A pose is a handful of angles: every limb segment is a direction given by a forward swing
``phi`` (0 = hanging down, 90 deg = pointing forward, 180 deg = up) and an outward swing ``alpha`` (positive
= away from the body, negative = across it), expressed in the torso frame (arms) or the pelvis frame (legs).
That parametrisation covers walking and running cycles, raised and crossed arms, bending and sitting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

# Internal joints (the 17 COCO keypoints are a subset, see COCO_FROM_JOINT).
JOINT_NAMES = (
    "pelvis", "chest", "neck", "head", "head_top",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle", "left_toe", "right_toe",
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
J = {name: i for i, name in enumerate(JOINT_NAMES)}
NUM_JOINTS = len(JOINT_NAMES)
COCO_FROM_JOINT = np.array([J[n] for n in (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")])

POSE_KINDS = ("standing", "walking", "running", "arms_raised", "arms_crossed", "bending", "sitting")
DEG = math.pi / 180.0


@dataclass(frozen=True)
class BodyShape:
    """Segment lengths and radii in metres for one identity (children have a bigger head, shorter legs)."""
    height: float
    child: bool
    head_radius: float      # half the head height; the head is drawn as a 0.8:1 ellipse
    neck_length: float
    torso_length: float     # hip-joint centre to neck base
    shoulder_half: float    # half the distance between the shoulder joints
    hip_half: float         # half the distance between the hip joints
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    ankle_height: float
    torso_depth: float      # front-to-back thickness of the torso box
    waist_half: float
    arm_radius: float
    forearm_radius: float
    thigh_radius: float
    shin_radius: float
    neck_radius: float


def sample_body(rng: np.random.Generator, child: bool) -> BodyShape:
    """Random proportions: height 1.52-1.95 m (adults) or 0.95-1.45 m (children), build factor for widths."""
    h = rng.uniform(0.95, 1.45) if child else rng.uniform(1.52, 1.95)
    build = rng.uniform(0.85, 1.25)                 # slim .. heavy: scales widths and radii only
    head = (0.085 if child else 0.064) * h * rng.uniform(0.95, 1.05)
    leg = (0.44 if child else 0.49) * h * rng.uniform(0.97, 1.03)   # hip joint to ankle
    ankle = 0.04 * h
    neck = 0.035 * h
    torso = h - leg - ankle - neck - 2.0 * head      # the rest: hip-joint centre to neck base
    w = build * h
    return BodyShape(
        height=h, child=child, head_radius=head, neck_length=neck, torso_length=torso,
        shoulder_half=(0.105 if child else 0.112) * h * math.sqrt(build), hip_half=0.055 * w,
        upper_arm=0.18 * h, forearm=0.15 * h, hand=0.07 * h, thigh=leg * 0.51, shin=leg * 0.49,
        foot=0.14 * h, ankle_height=ankle, torso_depth=0.12 * w, waist_half=0.085 * w,
        arm_radius=0.026 * w, forearm_radius=0.021 * w, thigh_radius=0.043 * w, shin_radius=0.029 * w,
        neck_radius=0.03 * w)


@dataclass(frozen=True)
class Pose:
    """Joint angles in radians. Limb tuples are (phi, alpha) for the proximal then the distal segment."""
    kind: str = "standing"
    lean: float = 0.0           # torso pitch forward about the pelvis
    twist: float = 0.0          # torso yaw relative to the pelvis
    head_yaw: float = 0.0
    head_pitch: float = 0.0     # positive = looking down
    left_arm: tuple[float, float, float, float] = (0.0, 0.1, 0.1, 0.1)
    right_arm: tuple[float, float, float, float] = (0.0, 0.1, 0.1, 0.1)
    left_leg: tuple[float, float, float, float] = (0.0, 0.03, 0.0, 0.03)
    right_leg: tuple[float, float, float, float] = (0.0, 0.03, 0.0, 0.03)
    lift: float = 0.0           # extra height above the ground contact (running flight phase)
    seated: bool = False        # a seat is drawn under the pelvis


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi)) * DEG


def pose_standing(rng: np.random.Generator) -> Pose:
    arms = [(_u(rng, -8, 12), _u(rng, 3, 14), _u(rng, 0, 25), _u(rng, 2, 12)) for _ in range(2)]
    legs = []
    for _ in range(2):
        thigh = _u(rng, -6, 10)
        legs.append((thigh, _u(rng, 0, 8), thigh - _u(rng, 0, 12), _u(rng, 0, 6)))
    return Pose("standing", lean=_u(rng, -3, 6), twist=_u(rng, -10, 10), head_yaw=_u(rng, -35, 35),
                head_pitch=_u(rng, -10, 15), left_arm=arms[0], right_arm=arms[1], left_leg=legs[0],
                right_leg=legs[1])


def pose_gait(phase: float, running: bool, rng: np.random.Generator | None = None, stride: float = 1.0) -> Pose:
    """Walking or running cycle at ``phase`` (radians, one period = one stride). ``stride`` scales the swing."""
    hip_amp = (42.0 if running else 24.0) * DEG * stride
    legs, arms = [], []
    for side_phase in (phase, phase + math.pi):         # left leg leads at phase 0
        s = math.sin(side_phase)
        thigh = hip_amp * s + (12 * DEG if running else 3 * DEG)
        # The knee folds most early in the swing, as the thigh passes the vertical moving forward.
        swing = max(0.0, math.cos(side_phase - 0.45)) ** 2
        knee = ((20 + 90 * swing) if running else (5 + 50 * swing)) * DEG
        legs.append((thigh, 0.02, thigh - knee, 0.02))
        upper = -(0.8 if running else 0.65) * hip_amp * s        # arm swings against the same-side leg
        elbow = (88 + 10 * s) * DEG if running else (12 + 18 * max(0.0, -s)) * DEG
        arms.append((upper, 0.1, upper + elbow, 0.05))
    lift = (0.04 * abs(math.sin(phase))) if running else 0.0
    jitter = (lambda lo, hi: _u(rng, lo, hi)) if rng is not None else (lambda lo, hi: 0.5 * (lo + hi) * DEG)
    return Pose("running" if running else "walking", lean=(jitter(8, 16) if running else jitter(1, 6)),
                twist=-8 * DEG * stride * math.sin(phase), head_yaw=jitter(-20, 20), head_pitch=jitter(-5, 10),
                left_arm=arms[0], right_arm=arms[1], left_leg=legs[0], right_leg=legs[1], lift=lift)


def pose_arms_raised(rng: np.random.Generator) -> Pose:
    base = pose_standing(rng)
    raised = []
    for arm in (base.left_arm, base.right_arm):
        style = rng.integers(4)
        if style == 0:      # straight up
            raised.append((_u(rng, 150, 180), _u(rng, 5, 25), _u(rng, 160, 185), _u(rng, 0, 20)))
        elif style == 1:    # sideways, forearm up ("surrender" / waving)
            raised.append((_u(rng, -10, 20), _u(rng, 75, 100), _u(rng, 0, 30), _u(rng, 150, 175)))
        elif style == 2:    # pointing forward
            raised.append((_u(rng, 75, 100), _u(rng, -10, 20), _u(rng, 80, 105), _u(rng, -10, 20)))
        else:               # left down
            raised.append(arm)
    if raised[0] is base.left_arm and raised[1] is base.right_arm:
        raised[0] = (_u(rng, 150, 180), _u(rng, 5, 25), _u(rng, 160, 185), _u(rng, 0, 20))
    return replace(base, kind="arms_raised", left_arm=raised[0], right_arm=raised[1], head_pitch=_u(rng, -20, 5))


def pose_arms_crossed(rng: np.random.Generator) -> Pose:
    base = pose_standing(rng)
    arms = [(_u(rng, 8, 25), _u(rng, 2, 12), _u(rng, 75, 100), _u(rng, -70, -55)) for _ in range(2)]
    return replace(base, kind="arms_crossed", left_arm=arms[0], right_arm=arms[1])


def pose_bending(rng: np.random.Generator) -> Pose:
    base = pose_standing(rng)
    lean = _u(rng, 40, 85)
    knee = _u(rng, 0, 30)
    thigh = knee * 0.5
    arms = [(lean + _u(rng, -15, 20), _u(rng, 0, 15), lean + _u(rng, 0, 30), _u(rng, -5, 15)) for _ in range(2)]
    return replace(base, kind="bending", lean=lean, head_pitch=-0.6 * lean, left_arm=arms[0], right_arm=arms[1],
                   left_leg=(thigh, 0.05, thigh - knee, 0.04), right_leg=(thigh, 0.05, thigh - knee, 0.04))


def pose_sitting(rng: np.random.Generator) -> Pose:
    base = pose_standing(rng)
    legs = []
    for _ in range(2):
        thigh = _u(rng, 80, 95)
        legs.append((thigh, _u(rng, 2, 12), thigh - _u(rng, 75, 100), _u(rng, 0, 10)))
    arms = [(_u(rng, 10, 30), _u(rng, 5, 15), _u(rng, 60, 85), _u(rng, -15, 10)) for _ in range(2)]
    return replace(base, kind="sitting", lean=_u(rng, -12, 8), left_arm=arms[0], right_arm=arms[1],
                   left_leg=legs[0], right_leg=legs[1], seated=True)


def random_pose(rng: np.random.Generator, kind: str | None = None) -> Pose:
    """A pose of ``kind`` (one of POSE_KINDS) or of a random kind (walking and standing most often)."""
    if kind is None:
        kind = POSE_KINDS[int(rng.choice(len(POSE_KINDS), p=(0.22, 0.3, 0.12, 0.1, 0.08, 0.08, 0.1)))]
    if kind == "standing":
        return pose_standing(rng)
    if kind in ("walking", "running"):
        return pose_gait(float(rng.uniform(0, 2 * math.pi)), kind == "running", rng, float(rng.uniform(0.7, 1.2)))
    makers = {"arms_raised": pose_arms_raised, "arms_crossed": pose_arms_crossed, "bending": pose_bending,
              "sitting": pose_sitting}
    if kind not in makers:
        raise ValueError(f"pose kind {kind!r} not in {POSE_KINDS}")
    return makers[kind](rng)


_SIDES = np.array([[1.0], [-1.0]])          # left, right (the person's left is +x)
_SIDES4 = np.array([[1.0], [-1.0], [1.0], [-1.0], [1.0], [-1.0], [1.0], [-1.0]])
# Face points relative to the head centre, in head radii along (forward, up, left):
# nose, left eye, right eye, left ear, right ear.
_FACE = np.array([[0.95, -0.2, 0.0], [0.78, 0.1, 0.3], [0.78, 0.1, -0.3], [-0.05, 0.0, 0.8], [-0.05, 0.0, -0.8]])


def forward_kinematics(body: BodyShape, pose: Pose) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Joint positions for ``pose`` at the origin; the lowest ankle/toe joint sits 0.6 ankle heights above the
    ground (y = 0) so that the shoe touches it (running adds ``pose.lift``).

    Returns joints: float64 [NUM_JOINTS, 3] person-local metres, and the frames {name: float64 [3, 3]} with
    rows (left, up, forward) for "torso", "head" and "pelvis" (they orient the torso box, face, hair, bags).
    """
    ct, st = math.cos(pose.twist), math.sin(pose.twist)
    cl, sl = math.cos(pose.lean), math.sin(pose.lean)
    lt = np.array([ct, 0.0, -st])
    ut = np.array([sl * st, cl, sl * ct])
    ft = np.array([cl * st, -sl, cl * ct])
    cy, sy = math.cos(pose.head_yaw), math.sin(pose.head_yaw)
    fh0 = sy * lt + cy * ft
    lh = cy * lt - sy * ft
    cp, sp = math.cos(pose.head_pitch), math.sin(pose.head_pitch)
    fh = cp * fh0 - sp * ut
    uh = cp * ut + sp * fh0
    # All eight segment directions at once: rows = upper arm L/R, forearm L/R, thigh L/R, shin L/R.
    # Arms live in the torso frame, legs in the pelvis frame (identity axes).
    ang = np.array([pose.left_arm, pose.right_arm, pose.left_leg, pose.right_leg])        # [4, 4]
    phi = np.concatenate([ang[:2, 0], ang[:2, 2], ang[2:, 0], ang[2:, 2]])
    alpha = np.concatenate([ang[:2, 1], ang[:2, 3], ang[2:, 1], ang[2:, 3]])
    frame = np.concatenate([np.broadcast_to(np.stack([lt, ut, ft]), (4, 3, 3)),
                            np.broadcast_to(np.eye(3), (4, 3, 3))])                      # [8, 3 axes, 3]
    ca = np.cos(alpha)
    coef = np.stack([_SIDES4[:, 0] * np.sin(alpha), -ca * np.cos(phi), ca * np.sin(phi)], 1)   # [8, 3]
    dirs = np.einsum("ka,kad->kd", coef, frame)
    toe_phi = ang[2:, 2] + math.pi / 2
    toe_dir = np.stack([_SIDES[:, 0] * math.sin(0.1), -math.cos(0.1) * np.cos(toe_phi),
                        math.cos(0.1) * np.sin(toe_phi)], 1)

    b = body
    p = np.zeros((NUM_JOINTS, 3))
    neck = ut * b.torso_length
    p[J["chest"]] = ut * (0.6 * b.torso_length)
    p[J["neck"]] = neck
    head = neck + uh * (b.neck_length + 0.95 * b.head_radius) + fh * (0.15 * b.head_radius)
    p[J["head"]] = head
    p[J["head_top"]] = head + uh * b.head_radius
    p[J["nose"]:J["right_ear"] + 1] = head + (_FACE * b.head_radius) @ np.stack([fh, uh, lh])
    shoulder = (neck - ut * (0.12 * b.torso_length)) + _SIDES * lt * b.shoulder_half
    elbow = shoulder + dirs[0:2] * b.upper_arm
    fore = dirs[2:4]
    wrist = elbow + fore * b.forearm
    hip = _SIDES * np.array([b.hip_half, 0.0, 0.0])
    knee = hip + dirs[4:6] * b.thigh
    ankle = knee + dirs[6:8] * b.shin
    toe = ankle + toe_dir * (b.foot * 0.8)
    hand = wrist + fore * (0.5 * b.hand)
    for name, value in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist), ("hand", hand), ("hip", hip),
                        ("knee", knee), ("ankle", ankle), ("toe", toe)):
        p[J["left_" + name]], p[J["right_" + name]] = value
    feet = np.concatenate([ankle[:, 1], toe[:, 1]])
    p[:, 1] += (b.ankle_height * 0.6 - feet.min()) + pose.lift
    return p, {"torso": np.stack([lt, ut, ft]), "head": np.stack([lh, uh, fh]), "pelvis": np.eye(3)}


def place(joints: np.ndarray, frames: dict[str, np.ndarray], position: tuple[float, float],
          yaw: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Person-local joints [N, 3] and frames -> world: rotate by ``yaw`` about +y (yaw 0 faces +z, the person
    then faces (sin yaw, 0, cos yaw)), then move the ground origin to world (x, z) = ``position``."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    world = joints @ rot.T + np.array([position[0], 0.0, position[1]])
    return world, {name: axes @ rot.T for name, axes in frames.items()}
