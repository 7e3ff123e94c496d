"""MPII Human Pose in its common json form, and the MPII-16 <-> COCO-17 joint mapping (shared with LIP).

Expected layout (the HRNet / mmpose conversion of the official .mat file)::

    mpii/
      images/000001163.jpg ...
      annot/train.json, annot/valid.json
        [{"image": "000001163.jpg", "center": [x, y], "scale": s, "joints": [[x, y]] * 16,
          "joints_vis": [0|1] * 16}, ...]            one entry per annotated person

``center``/``joints`` are MATLAB 1-based pixel indices: the reader subtracts 1 (as HRNet does) and the
writer adds it back. ``scale`` is the person height / 200 px. ``joints_vis`` marks *labelled* joints
(the json does not keep MPII's occlusion flag), so labelled joints read as COCO visibility 2. Our writer
adds a ``"box"`` field (xyxy, 0-based) that the reader prefers; otherwise the box is the square of side
``200 * scale`` around ``center`` clipped to the image, or the joints' extent when ``scale <= 0``.
Entries are grouped by image: ``MpiiDataset[i]`` is one image with all its annotated people (no masks).

Joint mapping (MPII order: r_ankle, r_knee, r_hip, l_hip, l_knee, l_ankle, pelvis, thorax, upper_neck,
head_top, r_wrist, r_elbow, r_shoulder, l_shoulder, l_elbow, l_wrist):

| COCO                    | from MPII            | MPII (writer)  | from COCO                                   |
|-------------------------|----------------------|----------------|---------------------------------------------|
| nose, eyes, ears        | — (visibility 0)     | pelvis         | midpoint of the hips                        |
| shoulders/elbows/wrists | same joint           | thorax         | midpoint of the shoulders                   |
| hips/knees/ankles       | same joint           | upper_neck     | thorax + 0.5 (head - thorax)                |
|                         |                      | head_top       | thorax + 1.5 (head - thorax)                |

where head = the nose, or the mean of the labelled eyes/ears when the nose is unlabelled. A derived joint
is labelled only when all its sources are, with the lowest of their visibilities. Entries whose person
has no extent at all (no box, no scale, no labelled joint) are skipped and counted in ``skipped``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from hcq_ros.data.schema import KEYPOINT_NAMES, NUM_KEYPOINTS, PersonAnnotation, Sample

from . import load_json, read_image, save_json
from . import write_image as write_image_file  # add() has a write_image flag

MPII_JOINTS = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist",
)
NUM_MPII_JOINTS = len(MPII_JOINTS)
# COCO index -> MPII index for the 12 limb joints both skeletons share.
_SHARED = tuple((KEYPOINT_NAMES.index(name), MPII_JOINTS.index(name)) for name in KEYPOINT_NAMES
                if name in MPII_JOINTS)
_FACE = tuple(KEYPOINT_NAMES.index(n) for n in ("left_eye", "right_eye", "left_ear", "right_ear"))
_NOSE = KEYPOINT_NAMES.index("nose")
MPII_SCALE_PX = 200.0  # MPII's "scale" unit


def mpii_to_coco(mpii: np.ndarray) -> np.ndarray:
    """``[16, 3]`` MPII joints (x, y, COCO visibility) -> ``float32 [17, 3]`` COCO keypoints (face points 0)."""
    mpii = np.asarray(mpii, dtype=np.float32)
    if mpii.shape != (NUM_MPII_JOINTS, 3):
        raise ValueError(f"MPII joints must be [{NUM_MPII_JOINTS}, 3], got {list(mpii.shape)}")
    coco = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for c, m in _SHARED:
        coco[c] = mpii[m]
    coco[coco[:, 2] <= 0] = 0.0
    return coco


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a[2] <= 0 or b[2] <= 0:
        return np.zeros(3, dtype=np.float32)
    return np.array([(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2])], dtype=np.float32)


def coco_to_mpii(coco: np.ndarray) -> np.ndarray:
    """``[17, 3]`` COCO keypoints -> ``float32 [16, 3]`` MPII joints (x, y, COCO visibility); see module table."""
    coco = np.asarray(coco, dtype=np.float32)
    if coco.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"COCO keypoints must be [{NUM_KEYPOINTS}, 3], got {list(coco.shape)}")
    mpii = np.zeros((NUM_MPII_JOINTS, 3), dtype=np.float32)
    for c, m in _SHARED:
        if coco[c, 2] > 0:
            mpii[m] = coco[c]
    name = KEYPOINT_NAMES.index
    mpii[MPII_JOINTS.index("pelvis")] = _midpoint(coco[name("left_hip")], coco[name("right_hip")])
    thorax = _midpoint(coco[name("left_shoulder")], coco[name("right_shoulder")])
    mpii[MPII_JOINTS.index("thorax")] = thorax
    if coco[_NOSE, 2] > 0:
        head = coco[_NOSE]
    else:
        face = coco[list(_FACE)]
        face = face[face[:, 2] > 0]
        head = np.array([*face[:, :2].mean(0), face[:, 2].min()], dtype=np.float32) if len(face) else None
    if head is not None and thorax[2] > 0:
        up = head[:2] - thorax[:2]
        vis = min(head[2], thorax[2])
        mpii[MPII_JOINTS.index("upper_neck")] = (*(thorax[:2] + 0.5 * up), vis)
        mpii[MPII_JOINTS.index("head_top")] = (*(thorax[:2] + 1.5 * up), vis)
    return mpii


def _box_from_joints(joints: np.ndarray) -> Optional[np.ndarray]:
    labelled = joints[joints[:, 2] > 0, :2]
    if len(labelled) == 0:
        return None
    return np.array([*labelled.min(0), *labelled.max(0)], dtype=np.float32)


class MpiiWriter:
    """Writes ``root/images/<image_name>`` and, on ``close()``, the json list ``root/<ann_file>``."""

    def __init__(self, root: Path, ann_file: str = "annot/train.json", image_dir: str = "images",
                 jpeg_quality: int = 95):
        self.root = Path(root)
        self.ann_file = ann_file
        self.image_dir = image_dir
        self.jpeg_quality = jpeg_quality
        self.entries: list[dict] = []

    def add(self, sample: Sample, image_name: str, write_image: bool = True) -> int:
        """Record every person of ``sample`` that has a labelled MPII joint; returns how many were recorded."""
        if write_image:
            write_image_file(self.root / self.image_dir / image_name, sample.image, self.jpeg_quality)
        added = 0
        for person in sample.persons:
            joints = coco_to_mpii(person.keypoints)
            labelled = joints[:, 2] > 0
            if not labelled.any():
                continue
            x0, y0, x1, y1 = (float(v) for v in person.box)
            self.entries.append({
                "image": image_name,
                "center": [round((x0 + x1) / 2 + 1, 2), round((y0 + y1) / 2 + 1, 2)],
                "scale": round((y1 - y0) / MPII_SCALE_PX, 4),
                "joints": [[round(float(x) + 1, 2), round(float(y) + 1, 2)] if ok else [-1.0, -1.0]
                           for (x, y, _), ok in zip(joints, labelled)],
                "joints_vis": [int(ok) for ok in labelled],
                "box": [round(v, 2) for v in (x0, y0, x1, y1)],
            })
            added += 1
        return added

    def close(self) -> Path:
        path = self.root / self.ann_file
        save_json(path, self.entries)
        return path

    def __enter__(self) -> "MpiiWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MpiiDataset:
    """MPII images as Samples (persons: box + COCO-17 keypoints, no masks). ``ann_file`` absolute or under root."""

    def __init__(self, root: str | Path, ann_file: str | Path = "annot/train.json", image_dir: str = "images"):
        self.root = Path(root)
        self.ann_file = Path(ann_file) if Path(ann_file).is_absolute() else self.root / ann_file
        self.image_dir = self.root / image_dir
        entries = load_json(self.ann_file)
        if not isinstance(entries, list):
            raise ValueError(f"{self.ann_file}: expected a json list of person entries")
        self.skipped: dict[str, int] = {"no_extent": 0}
        self._by_image: "OrderedDict[str, list[dict]]" = OrderedDict()
        for k, entry in enumerate(entries):
            self._validate(k, entry)
            self._by_image.setdefault(entry["image"], []).append(entry)
        self.images: list[str] = list(self._by_image)

    def _validate(self, k: int, entry: dict) -> None:
        where = f"{self.ann_file}: entry {k} (image {entry.get('image')!r})"
        if "image" not in entry:
            raise ValueError(f"{where}: missing 'image'")
        if "joints" in entry:
            joints = np.asarray(entry["joints"], dtype=np.float32)
            vis = np.asarray(entry.get("joints_vis", []))
            if joints.shape != (NUM_MPII_JOINTS, 2) or vis.shape != (NUM_MPII_JOINTS,):
                raise ValueError(f"{where}: expected {NUM_MPII_JOINTS} joints [x, y] and {NUM_MPII_JOINTS} "
                                 f"joints_vis, got joints {list(joints.shape)}, joints_vis {list(vis.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        name = self.images[index]
        image = read_image(self.image_dir / name)
        height, width = image.shape[:2]
        persons = []
        for entry in self._by_image[name]:
            person = self._person(entry, width, height)
            if person is not None:
                persons.append(person)
        return Sample(image=image, persons=persons, image_id=index, file_name=name)

    def _person(self, entry: dict, width: int, height: int) -> Optional[PersonAnnotation]:
        mpii = np.zeros((NUM_MPII_JOINTS, 3), dtype=np.float32)
        if "joints" in entry:
            labelled = np.asarray(entry["joints_vis"]) > 0
            mpii[labelled, :2] = np.asarray(entry["joints"], dtype=np.float32)[labelled] - 1.0
            mpii[labelled, 2] = 2.0
        keypoints = mpii_to_coco(mpii)
        scale = float(entry.get("scale", -1))
        if "box" in entry:
            box = np.asarray(entry["box"], dtype=np.float32)
        elif scale > 0:
            cx, cy = (float(v) - 1.0 for v in entry["center"])
            half = scale * MPII_SCALE_PX / 2
            box = np.array([max(cx - half, 0), max(cy - half, 0), min(cx + half, width), min(cy + half, height)],
                           dtype=np.float32)
        else:
            box = _box_from_joints(mpii)  # all 16 joints, head included
            if box is None:
                self.skipped["no_extent"] += 1
                return None
        return PersonAnnotation(box=box, mask=None, keypoints=keypoints)
