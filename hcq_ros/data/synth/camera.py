"""Pinhole camera over a y-up world with the ground at y = 0."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Camera:
    """Pinhole camera. rotation: float64 [3, 3] world -> camera with rows (right, down, forward) (OpenCV
    axes); position: float64 [3] world metres. Image coordinates are continuous pixels, (0, 0) at the top-left
    corner of the top-left pixel, principal point at the image centre."""
    width: int
    height: int
    focal: float
    position: np.ndarray
    rotation: np.ndarray

    @classmethod
    def look(cls, width: int, height: int, fov_deg: float, cam_height: float, yaw: float, pitch: float,
             roll: float = 0.0, x: float = 0.0, z: float = 0.0) -> "Camera":
        """Camera at (x, cam_height, z) turned by ``yaw`` about +y (0 = looking along +z), tilted down by
        ``pitch`` and rolled by ``roll`` (radians). ``fov_deg`` is the horizontal field of view."""
        if width < 8 or height < 8:
            raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
        if not 5.0 <= fov_deg <= 170.0:
            raise ValueError(f"fov_deg must be in [5, 170], got {fov_deg}")
        forward = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        c, s = math.cos(roll), math.sin(roll)
        right, down = c * right + s * down, -s * right + c * down
        focal = 0.5 * width / math.tan(0.5 * math.radians(fov_deg))
        return cls(width, height, focal, np.array([x, cam_height, z], dtype=np.float64),
                   np.stack([right, down, forward]))

    @property
    def forward(self) -> np.ndarray:
        return self.rotation[2]

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points [N, 3] -> camera coordinates [N, 3] (z = depth along the optical axis)."""
        return (points - self.position) @ self.rotation.T

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> (uv [N, 2] continuous pixels, depth [N]). Depth <= 0 is behind the camera."""
        pc = self.to_camera(points)
        z = pc[:, 2]
        zs = np.where(z > 1e-6, z, 1e-6)
        uv = np.empty((len(points), 2))
        uv[:, 0] = self.focal * pc[:, 0] / zs + 0.5 * self.width
        uv[:, 1] = self.focal * pc[:, 1] / zs + 0.5 * self.height
        return uv, z

    def direction_2d(self, vector: np.ndarray) -> tuple[float, float]:
        """Unit image-plane direction (dx, dy) of a world direction (a rough, depth-free projection)."""
        v = self.rotation @ vector
        n = math.hypot(v[0], v[1])
        return (0.0, -1.0) if n < 1e-6 else (v[0] / n, v[1] / n)

    def ground_point(self, u: float, v: float) -> np.ndarray | None:
        """World point on the ground (y = 0) seen at pixel (u, v), or None above the horizon."""
        ray = self.rotation.T @ np.array([(u - 0.5 * self.width) / self.focal,
                                          (v - 0.5 * self.height) / self.focal, 1.0])
        if ray[1] >= -1e-6:
            return None
        t = -self.position[1] / ray[1]
        return self.position + t * ray
