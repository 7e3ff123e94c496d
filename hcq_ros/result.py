"""The ROS-agnostic result contract (DESIGN.md §3): what the Perceptor returns for one frame.

Everything downstream (ROS messages, bags, overlays, evaluation of the pipeline) reads only these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from hcq_ros.data.schema import NUM_KEYPOINTS


@dataclass
class Person:
    """One person in one frame.

    track_id: 0 = not yet confirmed (tentative), else a positive id that is never reused.
    box: float32 [4] xyxy pixels of the input image.
    keypoints: float32 [17, 3] (x, y, confidence) in COCO order, pixels; confidence 0 = not predicted.
    mask: bool [h, w] and parts: uint8 [h, w] (schema.PART_NAMES labels), both on the box's pixel grid:
        row r, column c covers image pixel (floor(box[1]) + r, floor(box[0]) + c); see ``box_grid``.
    attributes: {name: (value, confidence)} with names/values of schema.ATTRIBUTES.
    embedding: float32 [D] L2-normalised ReID embedding (empty when PersonNet did not run).
    """
    track_id: int
    score: float
    box: np.ndarray
    keypoints: np.ndarray
    mask: Optional[np.ndarray] = None
    parts: Optional[np.ndarray] = None
    attributes: dict[str, tuple[str, float]] = field(default_factory=dict)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        if self.keypoints.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be [{NUM_KEYPOINTS}, 3], got {list(self.keypoints.shape)}")
        self.embedding = np.asarray(self.embedding, dtype=np.float32).reshape(-1)

    def box_grid(self) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) integer pixel rectangle that ``mask`` and ``parts`` cover (the sensor_msgs ROI)."""
        return box_grid(self.box)


def box_grid(box: np.ndarray) -> tuple[int, int, int, int]:
    """Integer pixel rectangle (x0, y0, w, h) covering an xyxy box: floor of the min corner, ceil of the max."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


@dataclass
class PersonFrame:
    """Everything known about one input frame.

    stamp_ns / frame_id: copied from the input (the ROS header); image_size: (w, h) of the input image.
    timings_ms: {stage: milliseconds} e.g. preprocess, detector, crops, person_net, tracker.
    dropped: None for a processed frame, else the reason it was rejected (persons is then empty).
    """
    stamp_ns: int
    frame_id: str
    image_size: tuple[int, int]
    persons: list[Person] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    dropped: Optional[str] = None
