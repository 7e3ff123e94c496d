"""LIP (Look Into Person): single-person crops with 20-label parsing maps and 16 MPII-order joints.

Layout (``split`` = "train" or "val"); the real archive nests one more folder level
(``TrainVal_images/TrainVal_images/...``, ``TrainVal_parsing_annotations/TrainVal_parsing_annotations/...``),
which the reader also accepts::

    LIP/
      TrainVal_images/{split}_images/77_471474.jpg ...       (+ TrainVal_images/{split}_id.txt)
      TrainVal_parsing_annotations/{split}_segmentations/77_471474.png ...   uint8 labels 0..19
      TrainVal_pose_annotations/lip_{split}_set.csv
        77_471474.jpg,x1,y1,o1,...,x16,y16,o16     no header; o = 1 occluded, 0 visible; "nan" = unlabelled

Joints map onto COCO-17 with ``mpii.mpii_to_coco`` (face points visibility 0; see mpii.py). Occluded ->
visibility 1, visible -> 2. Real LIP has joints outside the crop: they become visibility 0 and are
counted (per read) in ``skipped["joint_outside_image"]``. Each Sample holds ONE person: mask = parsing > 0
(None without a PNG), box = mask extent, else labelled joints' extent, else the whole crop.

LIP parsing labels -> schema.PART_NAMES (``lip_to_parts``):

| LIP                                  | ours                                                          |
|--------------------------------------|---------------------------------------------------------------|
| 0 Background                         | background                                                    |
| 1 Hat, 2 Hair, 13 Face               | hat, hair, face                                               |
| 4 Sunglasses                         | face                                                          |
| 5 UpperClothes, 6 Dress, 7 Coat, 11 Scarf | upper_clothes (a dress is counted as upper clothing)     |
| 9 Pants, 10 Jumpsuits, 12 Skirt      | lower_clothes                                                 |
| 14/15 Left/Right-arm                 | left_arm / right_arm (LIP arms include the hands)             |
| 16/17 Left/Right-leg                 | left_leg / right_leg                                          |
| 18/19 Left/Right-shoe                | left_shoe / right_shoe                                        |
| 3 Glove                              | left_hand / right_hand: side of the nearest arm pixel         |
| 8 Socks                              | left_leg / right_leg: side of the nearest leg or shoe pixel   |

(When no sided neighbour exists, a frontal view is assumed: pixels right of the person's centre = left.)
"bag" never occurs. The writer maps back (``parts_to_lip``): hands -> arms, lower_clothes -> Skirt (12)
inside persons whose attribute ``lower_type`` is "skirt", else Pants (9), bag -> background; the rest is
the inverse of the table. The pose row is written for one person (default: the largest) via
``mpii.coco_to_mpii`` (thorax/pelvis midpoints, head extrapolated; see mpii.py).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from hcq_ros.data.schema import PART_NAMES, PersonAnnotation, Sample

from . import mask_to_box, read_image, read_label_png, write_image, write_label_png
from .mpii import NUM_MPII_JOINTS, coco_to_mpii, mpii_to_coco

LIP_PARTS = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants",
    "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
    "Right-shoe",
)
_P = PART_NAMES.index
_L = LIP_PARTS.index
_AMBIGUOUS = 255  # marks glove/socks pixels until their side is decided
_LIP_TO_OURS = {
    "Background": "background", "Hat": "hat", "Hair": "hair", "Sunglasses": "face", "Face": "face",
    "UpperClothes": "upper_clothes", "Dress": "upper_clothes", "Coat": "upper_clothes", "Scarf": "upper_clothes",
    "Pants": "lower_clothes", "Jumpsuits": "lower_clothes", "Skirt": "lower_clothes",
    "Left-arm": "left_arm", "Right-arm": "right_arm", "Left-leg": "left_leg", "Right-leg": "right_leg",
    "Left-shoe": "left_shoe", "Right-shoe": "right_shoe",
}
LIP_TO_PART_LUT = np.zeros(256, dtype=np.uint8)  # labels > 19 (never in LIP) -> background
for _lip, _ours in _LIP_TO_OURS.items():
    LIP_TO_PART_LUT[_L(_lip)] = _P(_ours)
LIP_TO_PART_LUT[[_L("Glove"), _L("Socks")]] = _AMBIGUOUS
# (LIP label, our left/right result, LIP labels whose side decides it)
_SIDED = (
    ("Glove", ("left_hand", "right_hand"), (("Left-arm",), ("Right-arm",))),
    ("Socks", ("left_leg", "right_leg"), (("Left-leg", "Left-shoe"), ("Right-leg", "Right-shoe"))),
)
_OURS_TO_LIP = {
    "background": "Background", "hat": "Hat", "hair": "Hair", "face": "Face", "upper_clothes": "UpperClothes",
    "left_arm": "Left-arm", "right_arm": "Right-arm", "left_hand": "Left-arm", "right_hand": "Right-arm",
    "lower_clothes": "Pants", "left_leg": "Left-leg", "right_leg": "Right-leg", "left_shoe": "Left-shoe",
    "right_shoe": "Right-shoe", "bag": "Background",
}
PART_TO_LIP_LUT = np.zeros(256, dtype=np.uint8)
for _ours, _lip in _OURS_TO_LIP.items():
    PART_TO_LIP_LUT[_P(_ours)] = _L(_lip)


def lip_to_parts(lip: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]`` LIP labels -> ``uint8 [H, W]`` PART_NAMES labels (table in the module docstring)."""
    parts = LIP_TO_PART_LUT[lip]
    for lip_name, (left_name, right_name), (left_src, right_src) in _SIDED:
        todo = lip == _L(lip_name)
        if not todo.any():
            continue
        left = np.isin(lip, [_L(n) for n in left_src])
        right = np.isin(lip, [_L(n) for n in right_src])
        if left.any() and right.any():
            # distance from every pixel to the nearest left / right source pixel
            is_left = ndimage.distance_transform_edt(~left) <= ndimage.distance_transform_edt(~right)
        elif left.any() or right.any():
            is_left = np.full(lip.shape, left.any())
        else:  # frontal view: the person's left is on the image right
            centre_x = np.nonzero(lip)[1].mean()
            is_left = np.broadcast_to(np.arange(lip.shape[1]) >= centre_x, lip.shape)
        parts[todo & is_left] = _P(left_name)
        parts[todo & ~is_left] = _P(right_name)
    return parts


def parts_to_lip(parts: np.ndarray, persons: list[PersonAnnotation]) -> np.ndarray:
    """``uint8 [H, W]`` PART_NAMES labels -> LIP labels; lower clothes of skirt wearers become Skirt."""
    lip = PART_TO_LIP_LUT[parts]
    lower = parts == _P("lower_clothes")
    for person in persons:
        if person.mask is not None and person.attributes.get("lower_type") == "skirt":
            lip[lower & person.mask] = _L("Skirt")
    return lip


def _resolve(root: Path, top: str, leaf: str) -> Path:
    """``root/top/leaf`` or the real archive's ``root/top/top/leaf``."""
    for candidate in (root / top / leaf, root / top / top / leaf):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"LIP folder not found: {root / top / leaf} (nor {root / top / top / leaf})")


def _check_split(split: str) -> str:
    if split not in ("train", "val"):
        raise ValueError(f"LIP split must be 'train' or 'val', got {split!r}")
    return split


class LipWriter:
    """Writes LIP-layout images, parsing PNGs and the pose csv (``close()`` writes the csv and id list)."""

    def __init__(self, root: Path, split: str, jpeg_quality: int = 95):
        self.root = Path(root)
        self.split = _check_split(split)
        self.jpeg_quality = jpeg_quality
        self.rows: list[list[str]] = []

    def add(self, sample: Sample, name: Optional[str] = None, person: Optional[int] = None) -> str:
        """Write ``sample``; the pose row is for ``sample.persons[person]`` (default: the largest). Returns the stem."""
        stem = name or f"{len(self.rows) + 1:06d}"
        write_image(self.root / "TrainVal_images" / f"{self.split}_images" / f"{stem}.jpg", sample.image,
                    self.jpeg_quality)
        if sample.parts is not None:
            write_label_png(self.root / "TrainVal_parsing_annotations" / f"{self.split}_segmentations" / f"{stem}.png",
                            parts_to_lip(sample.parts, sample.persons))
        row = [f"{stem}.jpg"] + ["nan"] * (3 * NUM_MPII_JOINTS)
        if sample.persons:
            if person is None:
                person = max(range(len(sample.persons)), key=lambda i: sample.persons[i].area)
            joints = coco_to_mpii(sample.persons[person].keypoints)
            for j, (x, y, v) in enumerate(joints):
                if v > 0:
                    row[1 + 3 * j: 4 + 3 * j] = [f"{x:.2f}", f"{y:.2f}", "1" if v == 1 else "0"]
        self.rows.append(row)
        return stem

    def close(self) -> Path:
        path = self.root / "TrainVal_pose_annotations" / f"lip_{self.split}_set.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(self.rows)
        ids = self.root / "TrainVal_images" / f"{self.split}_id.txt"
        ids.write_text("".join(Path(row[0]).stem + "\n" for row in self.rows), encoding="utf-8")
        return path

    def __enter__(self) -> "LipWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_lip_pose_csv(path: Path) -> dict[str, np.ndarray]:
    """``{image stem: float32 [16, 3]}`` MPII joints with COCO visibility (0 unlabelled, 1 occluded, 2 visible)."""
    if not path.is_file():
        raise FileNotFoundError(f"LIP pose csv not found: {path}")
    poses: dict[str, np.ndarray] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) != 1 + 3 * NUM_MPII_JOINTS:
                raise ValueError(f"{path}: line {line_no} ({row[0]}): expected {1 + 3 * NUM_MPII_JOINTS} columns "
                                 f"(name + 16 joints x (x, y, occluded)), got {len(row)}")
            values = np.array([_parse_float(v) for v in row[1:]], dtype=np.float32).reshape(NUM_MPII_JOINTS, 3)
            joints = np.zeros((NUM_MPII_JOINTS, 3), dtype=np.float32)
            labelled = np.isfinite(values).all(axis=1)
            joints[labelled, :2] = values[labelled, :2]
            joints[labelled, 2] = np.where(values[labelled, 2] > 0, 1.0, 2.0)
            poses[Path(row[0].strip()).stem] = joints
    return poses


class LipDataset:
    """LIP images as single-person Samples with part maps (PART_NAMES labels) and COCO-17 keypoints."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = _check_split(split)
        self.image_dir = _resolve(self.root, "TrainVal_images", f"{split}_images")
        try:
            self.parsing_dir: Optional[Path] = _resolve(self.root, "TrainVal_parsing_annotations",
                                                        f"{split}_segmentations")
        except FileNotFoundError:
            self.parsing_dir = None  # pose-only copy of LIP
        self.poses = read_lip_pose_csv(self.root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv")
        self.names: list[str] = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        self.skipped: dict[str, int] = {"joint_outside_image": 0}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        stem = self.names[index]
        image = read_image(self.image_dir / f"{stem}.jpg")
        height, width = image.shape[:2]
        parts = mask = None
        if self.parsing_dir is not None and (self.parsing_dir / f"{stem}.png").is_file():
            lip = read_label_png(self.parsing_dir / f"{stem}.png")
            if lip.shape != (height, width):
                raise ValueError(f"{self.parsing_dir / f'{stem}.png'}: parsing is {lip.shape[1]}x{lip.shape[0]}, "
                                 f"image is {width}x{height}")
            parts = lip_to_parts(lip)
            mask = lip > 0
        joints = self.poses.get(stem, np.zeros((NUM_MPII_JOINTS, 3), dtype=np.float32)).copy()
        outside = (joints[:, 2] > 0) & ((joints[:, 0] < 0) | (joints[:, 1] < 0) |
                                        (joints[:, 0] > width) | (joints[:, 1] > height))
        self.skipped["joint_outside_image"] += int(outside.sum())
        joints[outside] = 0.0
        keypoints = mpii_to_coco(joints)
        box = mask_to_box(mask) if mask is not None else None
        if box is None:
            labelled = joints[joints[:, 2] > 0, :2]
            box = (np.array([*labelled.min(0), *labelled.max(0)]) if len(labelled)
                   else np.array([0, 0, width, height]))
        persons = [PersonAnnotation(box=box, mask=mask, keypoints=keypoints)]
        return Sample(image=image, persons=persons, parts=parts, image_id=index, file_name=f"{stem}.jpg")
