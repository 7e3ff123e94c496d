"""The data contract shared by the generator, the format readers/writers, training and evaluation.

Conventions (every module follows them):
- Images in memory are ``uint8 [H, W, 3]`` **RGB** (cv2 reads/writes BGR: convert at the file boundary).
- Pixel coordinates are continuous with (0, 0) at the top-left corner of the top-left pixel.
- Boxes in memory are ``xyxy`` float pixels; COCO files store ``xywh``.
- Keypoints are ``float32 [17, 3]`` = (x, y, visibility) in COCO order; visibility 0 = outside the image or
  unlabelled (x = y = 0 then), 1 = labelled but occluded, 2 = visible. "left" is the person's own left.
- Part label maps are ``uint8 [H, W]`` with the labels of ``PART_NAMES`` (0 = background).
- Attributes are ``{name: value}`` with values from ``ATTRIBUTES[name]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# COCO's 1-based skeleton, as in person_keypoints_*.json categories[0]["skeleton"].
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
# COCO keypoint OKS sigmas (pycocotools' defaults), needed by anyone computing OKS outside pycocotools.
COCO_KEYPOINT_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def _flip_index(names: tuple[str, ...]) -> tuple[int, ...]:
    """Index permutation that swaps every left_* name with its right_* partner."""
    out = []
    for n in names:
        if n.startswith("left_"):
            out.append(names.index("right_" + n[5:]))
        elif n.startswith("right_"):
            out.append(names.index("left_" + n[6:]))
        else:
            out.append(names.index(n))
    return tuple(out)


KEYPOINT_FLIP = _flip_index(KEYPOINT_NAMES)

PART_NAMES = (
    "background", "hat", "hair", "face", "upper_clothes", "left_arm", "right_arm", "left_hand",
    "right_hand", "lower_clothes", "left_leg", "right_leg", "left_shoe", "right_shoe", "bag",
)
NUM_PARTS = len(PART_NAMES)
PART_FLIP = _flip_index(PART_NAMES)
# Arms/legs are visible skin; sleeves belong to upper_clothes and trousers to lower_clothes (LIP convention).

COLORS = ("black", "white", "gray", "red", "yellow", "green", "blue", "purple", "pink", "brown")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "upper_color": COLORS,
    "lower_color": COLORS,
    "sleeve": ("short", "long"),
    "upper_pattern": ("plain", "striped"),
    "lower_type": ("trousers", "shorts", "skirt"),
    "hair": ("short", "long"),
    "hat": ("no", "yes"),
    "backpack": ("no", "yes"),
    "handbag": ("no", "yes"),
    "age": ("adult", "child"),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)


def attributes_to_indices(attrs: dict[str, str]) -> np.ndarray:
    """``{name: value}`` -> ``int64 [len(ATTRIBUTE_NAMES)]`` class indices, -1 where the attribute is absent."""
    out = np.full(len(ATTRIBUTE_NAMES), -1, dtype=np.int64)
    for i, name in enumerate(ATTRIBUTE_NAMES):
        if name in attrs:
            values = ATTRIBUTES[name]
            if attrs[name] not in values:
                raise ValueError(f"attribute {name!r}: value {attrs[name]!r} not in {values}")
            out[i] = values.index(attrs[name])
    return out


@dataclass
class PersonAnnotation:
    """Ground truth (or a prediction in the same shape) for one person in one image.

    box: float32 [4] xyxy pixels, tight around the *visible* pixels.
    mask: bool [H, W] visible instance mask at full image size.
    keypoints: float32 [17, 3] (x, y, visibility).
    """
    box: np.ndarray
    mask: Optional[np.ndarray]
    keypoints: np.ndarray
    identity: int = -1          # person identity across the dataset (ReID label); -1 unknown
    track_id: int = -1          # track id within a sequence (MOT); -1 none
    attributes: dict[str, str] = field(default_factory=dict)
    iscrowd: int = 0

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        if self.keypoints.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be [{NUM_KEYPOINTS}, 3], got {list(self.keypoints.shape)}")
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
            if self.mask.ndim != 2:
                raise ValueError(f"mask must be [H, W], got {list(self.mask.shape)}")

    @property
    def area(self) -> float:
        """Visible mask area in pixels (box area when there is no mask), as COCO's ``area``."""
        if self.mask is not None:
            return float(self.mask.sum())
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class Sample:
    """One image with everything known about it.

    image: uint8 [H, W, 3] RGB. parts: uint8 [H, W] PART_NAMES labels or None.
    sequence/camera/frame locate the image in a video (frame is 1-based as in MOTChallenge).
    """
    image: np.ndarray
    persons: list[PersonAnnotation]
    parts: Optional[np.ndarray] = None
    image_id: int = 0
    file_name: str = ""
    sequence: str = ""
    camera: int = 0
    frame: int = 0

    def __post_init__(self):
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3], got {self.image.dtype} {list(self.image.shape)}")
        h, w = self.image.shape[:2]
        if self.parts is not None and self.parts.shape != (h, w):
            raise ValueError(f"parts must be [{h}, {w}], got {list(self.parts.shape)}")
        for p in self.persons:
            if p.mask is not None and p.mask.shape != (h, w):
                raise ValueError(f"person mask must be [{h}, {w}], got {list(p.mask.shape)}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.image.shape[1], self.image.shape[0]
