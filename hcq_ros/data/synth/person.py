"""One posed identity -> shaded, depth-sorted 2D primitives (body parts, clothes, hair, accessories).

Part labels follow schema.PART_NAMES (LIP convention): bare arms/legs are the *_arm/*_leg labels, sleeves are
upper_clothes, trousers/shorts/skirt are lower_clothes, the head skin and neck are face.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcq_ros.data.schema import PART_NAMES
from hcq_ros.data.synth.appearance import Identity
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.primitives import (Prim, angle_deg, box_prims, circle_prim, ellipse_prim, fixed,
                                           line_prim, line_prim_fixed, poly_prim, shade)
from hcq_ros.data.synth.skeleton import COCO_FROM_JOINT, J

P = {name: i for i, name in enumerate(PART_NAMES)}
FACE_BITS = 0b11111
SIDE_BITS = {  # COCO keypoint bits per side: shoulder, elbow, wrist, hip, knee, ankle
    "left": {"shoulder": 1 << 5, "elbow": 1 << 7, "wrist": 1 << 9, "hip": 1 << 11, "knee": 1 << 13, "ankle": 1 << 15},
    "right": {"shoulder": 1 << 6, "elbow": 1 << 8, "wrist": 1 << 10, "hip": 1 << 12, "knee": 1 << 14, "ankle": 1 << 16},
}
HIP_BITS = (1 << 11) | (1 << 12)
EYE_COLOR = (38, 30, 30)
_FACE_SLACK = np.array([0.05, 0.1, 0.1, -0.2, -0.2])     # cosine thresholds: nose, eyes, ears


@dataclass
class PersonView:
    """What the annotator needs about one rendered person: keypoints [17, 2] continuous xy, face_ok [17]
    (False for face points turned away from the camera), projected height in pixels."""
    slot: int
    identity: Identity
    keypoints_uv: np.ndarray
    face_ok: np.ndarray
    height_px: float
    track_id: int = -1


class _Points:
    """Collects 3D points so that one projection serves the whole person."""

    def __init__(self, joints: np.ndarray):
        self.chunks = [joints]
        self.count = len(joints)

    def add(self, *points: np.ndarray) -> int:
        """Append points; returns the index of the first one."""
        first = self.count
        self.chunks.append(np.array(points))
        self.count += len(points)
        return first

    def add_frame(self, origin: np.ndarray, axes: np.ndarray, offsets, scale: float = 1.0) -> int:
        """Append origin + offsets @ axes * scale for offsets [K, 3] in (left, up, forward) of ``axes``."""
        first = self.count
        self.chunks.append(origin + (np.array(offsets) * scale) @ axes)
        self.count += len(offsets)
        return first


def person_primitives(slot: int, ident: Identity, joints: np.ndarray, frames: dict[str, np.ndarray], camera: Camera,
                      light: np.ndarray) -> tuple[list[Prim], PersonView] | None:
    """Primitives of one person. joints: [NUM_JOINTS, 3] world; frames: {"torso"|"head"|"pelvis": [3, 3] rows
    (left, up, forward) world}; light: [3] unit vector towards the light. Returns None if any point is behind
    or too close to the camera."""
    b, a = ident.body, ident.appearance
    lt, ut, ft = frames["torso"]
    lh, _, fh = frames["head"]
    lp, up, fp = frames["pelvis"]
    tl, d, r = b.torso_length, 0.5 * b.torso_depth, b.head_radius
    pelvis, head = joints[J["pelvis"]], joints[J["head"]]
    torso_axes, pelvis_axes, head_axes = frames["torso"], frames["pelvis"], frames["head"]
    P3 = _Points(joints)
    # Torso box: 3 levels (neck base, shoulders, waist) x 4 corners, as (left, up, forward) offsets from the pelvis.
    sw, ww = b.shoulder_half + 0.7 * b.arm_radius, b.waist_half
    i_torso = P3.add_frame(pelvis, torso_axes, [
        (sl * hw, lev * tl, sf * hd) for lev, hw, hd in ((0.98, 0.6 * b.shoulder_half, 0.7 * d), (0.88, sw, d),
                                                         (0.3, ww, 0.9 * d)) for sl in (-1, 1) for sf in (-1, 1)])
    hb = b.hip_half + 0.9 * b.thigh_radius
    i_pelvis = P3.add_frame(pelvis + ut * (0.25 * tl), pelvis_axes, [(sl * ww, 0.0, sf * 0.9 * d) for sl in (-1, 1)
                                                                      for sf in (-1, 1)])
    P3.add_frame(pelvis, pelvis_axes, [(sl * hb, -0.6 * b.thigh_radius, sf * 0.85 * d) for sl in (-1, 1)
                                       for sf in (-1, 1)])
    # Head-frame points (left, up, forward) in head radii: face centre, head top, neck top, long hair, hat.
    head_pts = [(0.0, -0.12, 0.5), (0.0, 1.0, 0.0), (0.0, -0.6, 0.0)]
    if a.hair_long:
        i_hair = P3.count + len(head_pts)
        low = -(1.1 * r + b.neck_length + 0.2 * tl) / r
        head_pts += [(0.95, 0.25, -0.25), (-0.95, 0.25, -0.25), (1.05, low, -0.5), (-1.05, low, -0.5),
                     (0.0, 0.0, -0.95)]
    if a.hat:
        i_hat = P3.count + len(head_pts)
        head_pts += [(0.0, 0.45, 0.0), (0.6, 0.42, 0.55), (-0.6, 0.42, 0.55), (0.45, 0.3, 1.45), (-0.45, 0.3, 1.45)]
    i_face = P3.add_frame(head, head_axes, head_pts, scale=r)
    if a.lower_type == "skirt":
        at = joints[J["left_hip"]:J["right_hip"] + 1] + 0.72 * (joints[J["left_knee"]:J["right_knee"] + 1] -
                                                                 joints[J["left_hip"]:J["right_hip"] + 1])
        offsets = np.array([(sl, 0.0, sf) for sl in (-1, 1) for sf in (-1, 1)]) @ pelvis_axes * (1.6 * b.thigh_radius)
        i_skirt = P3.add(*(at[:, None, :] + offsets[None]).reshape(-1, 3))
    if a.backpack:
        i_straps = P3.add_frame(pelvis, torso_axes, [(sl * b.shoulder_half * 0.55, 0.94 * tl, 1.05 * d) if top else
                                                     (sl * 0.7 * ww, 0.55 * tl, 1.05 * d)
                                                     for sl in (1, -1) for top in (True, False)])
    scale = b.height / 1.75
    bag_hand = J["left_hand" if a.handbag_left else "right_hand"]
    bag_centre = joints[bag_hand] - up * (0.14 * scale)
    if a.handbag:
        i_bag = P3.add(bag_centre + up * (0.1 * scale))
    pts = np.concatenate(P3.chunks)
    uv, z = camera.project(pts)
    if (z < 0.15).any():
        return None
    fx = fixed(uv)
    f = camera.focal
    cam = camera.position
    light2d = camera.direction_2d(light)
    jx = len(joints)
    height_px = float(uv[:jx, 1].max() - uv[:jx, 1].min())
    detail = height_px >= 24
    prims: list[Prim] = []
    n_order = [0]

    def order() -> int:
        n_order[0] += 1
        return n_order[0]

    def hull(first: int, count: int, depth: float, color, part: int, bits: int, factor: float = 1.0, extra=None):
        points = uv[first:first + count] if extra is None else np.vstack([uv[first:first + count], uv[extra]])
        p = poly_prim(points, depth, shade(color, factor), light2d, part, slot, bits, order(), detail)
        if p is not None:
            prims.append(p)

    def line(i0: int, i1: int, width_m: float, depth: float, color, part: int, bits: int = 0):
        zm = 0.5 * float(z[i0] + z[i1])
        prims.append(line_prim_fixed(int(fx[i0, 0]), int(fx[i0, 1]), int(fx[i1, 0]), int(fx[i1, 1]), width_m * f / zm,
                                     depth if depth else zm, color, light2d, part, slot, bits, order(), False))

    skin, upper, lower = a.skin, a.upper_color, a.lower_color
    facing = float(np.dot(ft, cam - joints[J["chest"]])) > 0.0
    torso_z = float(np.mean(z[i_torso:i_torso + 12]))
    # Torso and pelvis (the shirt is tucked over the waistband), stripes across the visible width.
    hull(i_pelvis, 8, float(np.mean(z[i_pelvis:i_pelvis + 8])), lower, P["lower_clothes"], HIP_BITS)
    torso_lit = 0.9 + 0.15 * max(0.0, float(np.dot(ft if facing else -ft, light)))
    shoulders = SIDE_BITS["left"]["shoulder"] | SIDE_BITS["right"]["shoulder"]
    hull(i_torso, 12, torso_z - 0.005, upper, P["upper_clothes"], shoulders | HIP_BITS, torso_lit)
    if a.striped and detail:
        n = a.stripe_count
        ring_top, ring_low = uv[i_torso + 4:i_torso + 8], uv[i_torso + 8:i_torso + 12]
        span = float(np.linalg.norm(ring_top.mean(0) - ring_low.mean(0)))
        color = shade(a.stripe_color, torso_lit)
        for k in range(n):
            t = 0.12 + 0.8 * (k + 0.5) / n
            ring = (1 - t) * ring_top + t * ring_low
            prims.append(line_prim(ring[np.argmin(ring[:, 0])], ring[np.argmax(ring[:, 0])], 0.3 * span / n,
                                   torso_z - 0.006, color, light2d, P["upper_clothes"], slot, 0, order(), False))
    # Limb segments: (start, end, radius, colour, part, keypoint bits, fraction of the segment, depth bias, widen).
    caps = []
    for side in ("left", "right"):
        bits = SIDE_BITS[side]
        js, je, jw = J[side + "_shoulder"], J[side + "_elbow"], J[side + "_wrist"]
        jp, jk, ja, jt = J[side + "_hip"], J[side + "_knee"], J[side + "_ankle"], J[side + "_toe"]
        arm, leg, cloth = P[side + "_arm"], P[side + "_leg"], P["upper_clothes"]
        if a.long_sleeves:
            caps += [(js, je, b.arm_radius, upper, cloth, bits["shoulder"] | bits["elbow"], 1.0, 0.0, 1.1),
                     (je, jw, b.forearm_radius, upper, cloth, bits["elbow"] | bits["wrist"], 1.0, 0.0, 1.1)]
        else:
            caps += [(js, je, b.arm_radius, skin, arm, bits["shoulder"] | bits["elbow"], 1.0, 0.0, 1.0),
                     (js, je, b.arm_radius, upper, cloth, bits["shoulder"], 0.45, 0.001, 1.25),
                     (je, jw, b.forearm_radius, skin, arm, bits["elbow"] | bits["wrist"], 1.0, 0.0, 1.0)]
        if a.lower_type == "trousers":
            caps += [(jp, jk, b.thigh_radius, lower, P["lower_clothes"], bits["hip"] | bits["knee"], 1.0, 0.0, 1.05),
                     (jk, ja, b.shin_radius, lower, P["lower_clothes"], bits["knee"] | bits["ankle"], 1.0, 0.0, 1.1)]
        else:
            caps += [(jp, jk, b.thigh_radius, skin, leg, bits["hip"] | bits["knee"], 1.0, 0.0, 0.9),
                     (jk, ja, b.shin_radius, skin, leg, bits["knee"] | bits["ankle"], 1.0, 0.0, 0.9)]
            if a.lower_type == "shorts":
                caps.append((jp, jk, b.thigh_radius, lower, P["lower_clothes"], bits["hip"], 0.55, 0.001, 1.15))
        caps.append((ja, jt, b.shin_radius, a.shoe_color, P[side + "_shoe"], bits["ankle"], 1.0, 0.002, 1.05))
    i0 = np.array([c[0] for c in caps])
    i1 = np.array([c[1] for c in caps])
    frac = np.array([c[6] for c in caps])
    p0, seg = pts[i0], (pts[i1] - pts[i0]) * frac[:, None]
    axis = seg / (np.linalg.norm(seg, axis=1, keepdims=True) + 1e-9)
    view = cam - (p0 + 0.5 * seg)
    view -= axis * np.einsum("ij,ij->i", view, axis)[:, None]
    view /= np.linalg.norm(view, axis=1, keepdims=True) + 1e-9
    lit = 0.86 + 0.2 * np.maximum(0.0, view @ light)
    zm = z[i0] + 0.5 * frac * (z[i1] - z[i0])
    width = (2.0 * f) * np.array([c[2] * c[8] for c in caps]) / zm
    ends = fixed(uv[i0] + frac[:, None] * (uv[i1] - uv[i0])).tolist()
    starts = fx[i0].tolist()
    for k, c in enumerate(caps):
        prims.append(line_prim_fixed(starts[k][0], starts[k][1], ends[k][0], ends[k][1], float(width[k]),
                                     float(zm[k]) - c[7], shade(c[3], float(lit[k])), light2d, c[4], slot, c[5],
                                     order(), detail))
    for side in ("left", "right"):
        jh = J[side + "_hand"]
        zh = float(z[jh])
        prims.append(circle_prim(uv[jh], 0.42 * b.hand * f / zh, zh, shade(skin, 0.95), P[side + "_hand"], slot,
                                 SIDE_BITS[side]["wrist"], order()))
    if a.handbag:
        half = np.stack([lp * 0.045 * scale, up * 0.1 * scale, fp * 0.14 * scale])
        prims += box_prims(bag_centre, half, a.handbag_color, camera, light, "centre", order(), slot, P["bag"])
        line(bag_hand, i_bag, 0.015, float(z[bag_hand]) + 0.001, a.handbag_color, P["bag"])
    if a.lower_type == "skirt":
        depth = 0.5 * float(np.mean(z[i_skirt:i_skirt + 8]) + np.mean(z[i_pelvis:i_pelvis + 4])) - 0.04
        hull(i_pelvis, 4, depth, lower, P["lower_clothes"], HIP_BITS | SIDE_BITS["left"]["knee"] |
             SIDE_BITS["right"]["knee"], extra=slice(i_skirt, i_skirt + 8))
    # Neck, head (hair-coloured), face, eyes, long hair behind, hat.
    line(J["neck"], i_face + 2, 2 * b.neck_radius, 0.5 * float(z[J["neck"]] + z[i_face + 2]) - 0.02,
         shade(skin, 0.85), P["face"])
    zhd = float(z[J["head"]])
    r_px = r * f / zhd
    head_angle = angle_deg(uv[i_face + 1] - uv[J["head"]]) + 90.0
    view_h = cam - head
    c_face = float(np.dot(fh, view_h)) / float(np.linalg.norm(view_h))
    if a.hair_long:
        hull(i_hair, 5, float(z[i_hair + 4]) + 0.2 * r, a.hair_color, P["hair"], FACE_BITS)
    head_depth = zhd - 0.04
    prims.append(ellipse_prim(uv[J["head"]], (0.8 * r_px, r_px), head_angle, head_depth, a.hair_color, P["hair"],
                              slot, FACE_BITS, order()))
    if c_face > -0.25:
        width_f = 0.62 * r_px * (0.45 + 0.55 * max(0.0, c_face))
        prims.append(ellipse_prim(uv[i_face], (width_f, 0.74 * r_px), head_angle, head_depth - 0.001, skin,
                                  P["face"], slot, FACE_BITS, order()))
        if detail and c_face > 0.3 and r_px >= 5:
            for eye in ("left_eye", "right_eye"):
                prims.append(circle_prim(uv[J[eye]], max(0.6, 0.09 * r_px), head_depth - 0.002, EYE_COLOR,
                                         P["face"], slot, FACE_BITS, order()))
    if a.hat:
        prims.append(ellipse_prim(uv[i_hat], (0.88 * r_px, 0.6 * r_px), head_angle, head_depth - 0.003, a.hat_color,
                                  P["hat"], slot, FACE_BITS, order()))
        if a.hat_cap:
            hull(i_hat + 1, 4, head_depth - 0.004, a.hat_color, P["hat"], FACE_BITS, factor=0.8)
    # Backpack behind the torso; straps in front (visible only when facing the camera, by depth order).
    if a.backpack:
        centre = joints[J["chest"]] - ut * (0.12 * tl) - ft * (d + 0.07)
        half = np.stack([lt * 0.72 * b.shoulder_half, ut * 0.38 * tl, ft * 0.07])
        prims += box_prims(centre, half, a.backpack_color, camera, light, "centre", order(), slot, P["bag"])
        if detail:
            line(i_straps, i_straps + 1, 0.035, 0.0, a.backpack_color, P["bag"])
            line(i_straps + 2, i_straps + 3, 0.035, 0.0, a.backpack_color, P["bag"])
    kp_uv = uv[COCO_FROM_JOINT].astype(np.float32)
    # Face points are visible only from the side they face (nose/eyes forward, ears sideways, with slack).
    face_ok = np.ones(17, dtype=bool)
    view_f = cam - pts[COCO_FROM_JOINT[:5]]
    normals = np.stack([fh, fh, fh, lh, -lh])
    face_ok[:5] = np.einsum("ij,ij->i", normals, view_f) > _FACE_SLACK * np.linalg.norm(view_f, axis=1)
    return prims, PersonView(slot, ident, kp_uv, face_ok, height_px)
