"""The over-the-shoulder camera: a fixed pinhole camera behind the arm looking into the tray,
rendered with PyBullet's TinyRenderer (CPU, works in DIRECT mode, no display needed).

The same geometry gives the pinhole intrinsics published as CameraInfo and the pose of
`camera_color_optical_frame` (z forward, x right, y down) in base_link, so a consumer can project
points into the image exactly as on a real calibrated camera.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet as p


@dataclass(frozen=True)
class CameraGeometry:
    """Where the camera is and what it sees. Positions in base_link, m; fov in degrees."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    vertical_fov_deg: float
    width: int
    height: int
    near: float = 0.05
    far: float = 3.0


class Camera:
    """Renders RGB frames from a fixed `CameraGeometry` (matrices computed once)."""

    def __init__(self, geometry: CameraGeometry, client: int):
        self.geometry = geometry
        self._client = client
        g = geometry
        self._view = p.computeViewMatrix(g.eye, g.target, (0, 0, 1), physicsClientId=client)
        projection = list(p.computeProjectionMatrixFOV(
            g.vertical_fov_deg, g.width / g.height, g.near, g.far, physicsClientId=client))
        # TinyRenderer samples pixel (r, c) along the ray through (c + 1, r + 1) of a pinhole
        # with its principal point at (W/2, H/2) (measured: ray casts against the rendered
        # depth), half a pixel off the model intrinsics() states, where pixel c covers
        # [c, c + 1) and is seen through its centre c + 0.5. An off-centre frustum (the clip
        # matrix's third column, column-major [8], [9]) moves the image by half a pixel on both
        # axes, so that the images follow intrinsics() exactly.
        projection[8] += 1.0 / g.width
        projection[9] += 1.0 / g.height
        self._projection = projection

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB. No segmentation mask: it would cost time nobody uses."""
        return self.render_rgbd()[0]

    def render_rgbd(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and the aligned (H, W) float32 depth: metres along the optical
        axis (z of camera_color_optical_frame), as an RGB-D camera's aligned depth image. The
        renderer fills its depth buffer for every frame anyway: depth costs one conversion."""
        g = self.geometry
        _, _, rgba, zbuffer, _ = p.getCameraImage(
            g.width, g.height, self._view, self._projection, renderer=p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self._client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(g.height, g.width, 4)[:, :, :3].copy()
        z = np.asarray(zbuffer, dtype=np.float64).reshape(g.height, g.width)
        # OpenGL's non-linear depth buffer in [0, 1] -> distance along the optical axis
        depth = g.far * g.near / (g.far - (g.far - g.near) * z)
        return rgb, depth.astype(np.float32)

    def intrinsics(self) -> tuple[float, float, float, float]:
        """fx, fy, cx, cy in pixels of the pinhole model the rendered images follow (square
        pixels: the FOV is vertical and the aspect ratio is W/H). Pixel c covers [c, c + 1), as
        in robot_node's camera model, so the principal point (W/2, H/2) is the image centre."""
        g = self.geometry
        fy = g.height / (2.0 * math.tan(math.radians(g.vertical_fov_deg) / 2.0))
        return fy, fy, g.width / 2.0, g.height / 2.0

    def optical_frame_pose(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """Pose of camera_color_optical_frame in base_link: position, quaternion (x, y, z, w)."""
        eye = np.asarray(self.geometry.eye, dtype=float)
        forward = np.asarray(self.geometry.target, dtype=float) - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, (0.0, 0.0, 1.0))
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.column_stack([right, down, forward])
        return tuple(eye.tolist()), _quaternion_from_matrix(rotation)


def _quaternion_from_matrix(m: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a proper rotation matrix (Shepperd's method, numerically stable)."""
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s)
    return tuple(float(v) for v in q)
