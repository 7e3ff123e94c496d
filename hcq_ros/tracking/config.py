"""Tracker parameters (``TrackerConfig``); what each one does is described in ``tracker.py``'s docstring.

Defaults follow ByteTrack / BoT-SORT where they have a counterpart (high/low score split 0.5/0.1, new tracks
from 0.6, first-stage IoU >= 0.2 without ReID, second stage IoU >= 0.5, 1 s of motion-based recovery) and
were checked on the SynthHumans simulation (``simulate.py``, scene seed 100, not the reported seed).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass
class TrackerConfig:
    """Tracker parameters (times in seconds, distances are cosine distances of L2-normalised embeddings)."""
    high_score: float = 0.5
    low_score: float = 0.1
    new_track_score: float = 0.6
    min_hits: int = 3
    max_lost_s: float = 1.0
    match_cost: float = 0.8
    min_iou: float = 0.1
    iou_weight: float = 0.5
    appearance_gate: float = 0.5
    low_score_min_iou: float = 0.5
    feature_momentum: float = 0.9
    reid_distance: float = 0.3
    reid_window_s: float = 10.0
    reid_gate_heights: float = 1.0
    reid_gate_speed: float = 1.5
    reid_max_scale: float = 2.5
    use_reid: bool = True
    reidentify_lost: bool = True
    frame_rate: float = 25.0
    kalman_position_noise: float = 0.27
    kalman_velocity_noise: float = 1.0
    kalman_measurement_noise: float = 0.05
    kalman_initial_velocity_std: float = 2.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"TrackerConfig.{f.name} must be a bool, got {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"TrackerConfig.{f.name} must be an int, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                    raise ValueError(f"TrackerConfig.{f.name} must be a finite number, got {value!r}")
                if value < 0:
                    raise ValueError(f"TrackerConfig.{f.name} must be >= 0, got {value}")
                setattr(self, f.name, float(value))
        if not self.low_score <= self.high_score <= 1.0:
            raise ValueError(f"TrackerConfig needs 0 <= low_score <= high_score <= 1, got {self.low_score}, "
                             f"{self.high_score}")
        for name in ("iou_weight", "min_iou", "low_score_min_iou", "feature_momentum"):
            if getattr(self, name) > 1.0:
                raise ValueError(f"TrackerConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_hits < 1:
            raise ValueError(f"TrackerConfig.min_hits must be >= 1, got {self.min_hits}")
        for name in ("match_cost", "frame_rate", "reid_distance", "reid_max_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrackerConfig.{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "TrackerConfig":
        """From a YAML/ROS parameter mapping; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown tracker parameters {unknown}; known: {sorted(known)}")
        return cls(**params)
