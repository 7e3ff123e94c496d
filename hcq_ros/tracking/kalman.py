"""Constant-velocity Kalman filter on image boxes, batched over tracks (SORT / ByteTrack / BoT-SORT family).

State per track (8): ``[cx, cy, w, h, vcx, vcy, vw, vh]`` in pixels and pixels per **second**; measurement (4):
``[cx, cy, w, h]``. Time is continuous: ``predict`` takes the elapsed seconds, so dropped frames or a variable
frame rate only mean a longer step. Noise scales with the box height (as in ByteTrack: a person's height is
its physical scale, the width changes with pose), so the same settings work for near and far people:

- process noise (random walk in position and velocity, variance grows linearly with dt):
  ``std_pos = position_noise * h * sqrt(dt)``, ``std_vel = velocity_noise * h * sqrt(dt)``;
  the defaults match ByteTrack's per-frame weights (1/20, 1/160 of the height) at 30 fps.
- measurement noise: ``std = measurement_noise * h`` of the measured box.
- a new track starts at the measurement with ``std = 2 * measurement_noise * h`` and zero velocity with
  ``std = initial_velocity_std * h`` per second.
"""
from __future__ import annotations

import numpy as np

STATE_DIM = 8
MEASURE_DIM = 4
MIN_SIZE = 1.0   # pixels; keeps noise and boxes non-degenerate for zero-size or shrinking boxes


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] xyxy -> [N, 4] (cx, cy, w, h)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + 0.5 * wh, wh], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] (cx, cy, w, h) -> [N, 4] xyxy."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    half = 0.5 * boxes[:, 2:]
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _size_scale(wh: np.ndarray) -> np.ndarray:
    """[N, 2] (w, h) -> [N, 4] per-component noise scale: the box height (at least MIN_SIZE) for every
    component. A person's height is its physical scale; the width swings with pose and arms."""
    h = np.maximum(wh[:, 1:2], MIN_SIZE)
    return np.repeat(h, 4, axis=1)


class BoxKalmanFilter:
    """Batched constant-velocity filter; every method takes and returns arrays over N tracks.

    mean: float64 [N, 8]; covariance: float64 [N, 8, 8]; measurements: [N, 4] (cx, cy, w, h).
    """

    def __init__(self, position_noise: float = 0.27, velocity_noise: float = 1.0,
                 measurement_noise: float = 0.05, initial_velocity_std: float = 2.0):
        for name, value in (("position_noise", position_noise), ("velocity_noise", velocity_noise),
                            ("measurement_noise", measurement_noise),
                            ("initial_velocity_std", initial_velocity_std)):
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"BoxKalmanFilter.{name} must be finite and > 0, got {value}")
        self.position_noise = float(position_noise)
        self.velocity_noise = float(velocity_noise)
        self.measurement_noise = float(measurement_noise)
        self.initial_velocity_std = float(initial_velocity_std)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at ``measurements`` [N, 4] with zero velocity -> (mean [N, 8], covariance [N, 8, 8])."""
        z = np.asarray(measurements, np.float64).reshape(-1, MEASURE_DIM)
        mean = np.concatenate([z, np.zeros_like(z)], axis=1)
        size = _size_scale(z[:, 2:])
        std = np.concatenate([2.0 * self.measurement_noise * size, self.initial_velocity_std * size], axis=1)
        return mean, _diag(std ** 2)

    def predict(self, mean: np.ndarray, covariance: np.ndarray, dt: float | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Advance every track by ``dt`` seconds (scalar or [N], >= 0) -> new (mean, covariance)."""
        mean = np.asarray(mean, np.float64)
        n = len(mean)
        dt = np.broadcast_to(np.asarray(dt, np.float64), (n,))
        if np.any(dt < 0) or not np.all(np.isfinite(dt)):
            raise ValueError(f"predict needs finite dt >= 0 seconds, got {dt}")
        transition = np.tile(np.eye(STATE_DIM), (n, 1, 1))
        transition[:, np.arange(MEASURE_DIM), MEASURE_DIM + np.arange(MEASURE_DIM)] = dt[:, None]
        new_mean = mean.copy()
        new_mean[:, :MEASURE_DIM] += dt[:, None] * mean[:, MEASURE_DIM:]
        new_mean[:, 2:4] = np.maximum(new_mean[:, 2:4], MIN_SIZE)
        size = _size_scale(mean[:, 2:4])
        q = np.concatenate([(self.position_noise * size) ** 2, (self.velocity_noise * size) ** 2], axis=1)
        new_cov = transition @ covariance @ transition.transpose(0, 2, 1) + _diag(q * dt[:, None])
        return new_mean, new_cov

    def project(self, mean: np.ndarray, covariance: np.ndarray, measured_wh: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Measurement-space prediction -> (z_mean [N, 4], innovation covariance S [N, 4, 4]).

        measured_wh: [N, 2] sizes that set the measurement noise (the measured boxes); default the state's.
        """
        wh = mean[:, 2:4] if measured_wh is None else np.asarray(measured_wh, np.float64).reshape(-1, 2)
        r = (self.measurement_noise * _size_scale(wh)) ** 2
        return mean[:, :MEASURE_DIM].copy(), covariance[:, :MEASURE_DIM, :MEASURE_DIM] + _diag(r)

    def update(self, mean: np.ndarray, covariance: np.ndarray, measurements: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Correct N tracks with one measurement each ([N, 4] cx, cy, w, h) -> new (mean, covariance)."""
        mean = np.asarray(mean, np.float64)
        z = np.asarray(measurements, np.float64).reshape(-1, MEASURE_DIM)
        if len(z) != len(mean):
            raise ValueError(f"update got {len(z)} measurements for {len(mean)} tracks")
        if len(z) == 0:
            return mean.copy(), np.asarray(covariance, np.float64).copy()
        z_mean, s = self.project(mean, covariance, z[:, 2:4])
        # Kalman gain K = P H^T S^-1; with H = [I 0] and P, S symmetric: K^T = S^-1 (H P).
        gain = np.linalg.solve(s, covariance[:, :MEASURE_DIM, :]).transpose(0, 2, 1)   # [N, 8, 4]
        new_mean = mean + (gain @ (z - z_mean)[:, :, None])[:, :, 0]
        new_mean[:, 2:4] = np.maximum(new_mean[:, 2:4], MIN_SIZE)
        new_cov = covariance - gain @ s @ gain.transpose(0, 2, 1)
        return new_mean, 0.5 * (new_cov + new_cov.transpose(0, 2, 1))   # keep it symmetric


def _diag(values: np.ndarray) -> np.ndarray:
    """[N, K] -> [N, K, K] diagonal matrices."""
    n, k = values.shape
    out = np.zeros((n, k, k))
    out[:, np.arange(k), np.arange(k)] = values
    return out
