"""The camera model and the angle helpers, once for all of fleet.

The fleet's camera is a fixed look-at pinhole in base_link: an eye, the point it looks at (image
up = +z) and a vertical field of view, with square pixels and the principal point at the image
centre (pixel i covers [i, i+1)). The simulated arm renders with exactly this model
(sim_bridge SimConfig.camera_*, which cannot import fleet and so states the same defaults; a
test checks they agree); a real arm writes its calibration into config/arms.yaml camera_*.
Everything that looks through the camera takes it from here: the grasp-point network's patch
sampler and height channel, the aimed exploration's back-projection, `fleet eval`'s check that a
bundle was trained for this camera.

Angles: poses are (x, y, z, qx, qy, qz, qw); a top-down gripper's yaw is its rotation about
base z, and a parallel gripper is symmetric under a half turn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The camera settings of config/arms.yaml, SimConfig and the grasp-point network config.
CAMERA_KEYS = ("camera_eye", "camera_target", "camera_fov_deg")

#: The default camera (the simulated arm's): behind the right shoulder, looking at the tray.
DEFAULT_EYE: tuple[float, float, float] = (0.05, -0.45, 0.70)
DEFAULT_TARGET: tuple[float, float, float] = (0.55, 0.0, 0.10)
DEFAULT_FOV_DEG: float = 45.0


def default_camera() -> dict[str, Any]:
    """The default camera as camera_* settings."""
    return {"camera_eye": DEFAULT_EYE, "camera_target": DEFAULT_TARGET,
            "camera_fov_deg": DEFAULT_FOV_DEG}


def camera_model(overrides: dict[str, Any]) -> dict[str, Any]:
    """The full camera model: the defaults with the given camera_* settings
    (fleet.ops.plan.fleet_camera) over them."""
    return {**default_camera(), **overrides}


def camera_mismatch(network: dict[str, Any], camera: dict[str, Any]) -> str:
    """'' when a network config (a bundle's) samples through this camera, or has no camera
    model (an architecture that takes none); else what differs, for the error message."""
    wrong = [f"{key} {network[key]} here {value}" for key, value in camera.items()
             if key in network and not np.allclose(network[key], value, atol=1e-6)]
    return ", ".join(wrong)


def camera_axes(eye: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unit forward, right and down vectors of a look-at camera with +z up (optical frame)."""
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right = right / np.linalg.norm(right)
    return forward, right, np.cross(forward, right)


def focal_px(image_height: int, fov_deg: float) -> float:
    """Focal length in pixels of a pinhole with this vertical field of view."""
    return image_height / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


@dataclass(frozen=True)
class TableCamera:
    """The camera model as a tool: where a pixel's ray meets a horizontal plane."""

    eye: tuple[float, float, float] = DEFAULT_EYE
    target: tuple[float, float, float] = DEFAULT_TARGET
    vertical_fov_deg: float = DEFAULT_FOV_DEG

    def table_points(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int,
                     plane_z: float) -> np.ndarray:
        """(N, 2) x, y in the base frame where pixels (row, col) of an HxW image look at
        the plane z = plane_z (pixel i covers [i, i+1))."""
        eye = np.asarray(self.eye, float)
        forward, right, down = camera_axes(eye, np.asarray(self.target, float))
        f = focal_px(height, self.vertical_fov_deg)
        u = (np.asarray(cols, float) + 0.5 - width / 2.0) / f
        v = (np.asarray(rows, float) + 0.5 - height / 2.0) / f
        rays = forward[None] + u[:, None] * right[None] + v[:, None] * down[None]
        t = (plane_z - eye[2]) / rays[:, 2]
        return eye[None, :2] + t[:, None] * rays[:, :2]


# -- angles ----------------------------------------------------------------------------------

def quaternion_yaw(q: np.ndarray) -> np.ndarray:
    """Yaw (rotation about base z) of (..., 4) quaternions (qx, qy, qz, qw)."""
    q = np.asarray(q, dtype=np.float64)
    qx, qy, qz, qw = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))


def yaw_of_pose(pose: np.ndarray) -> float:
    """Yaw about the base z axis of a (x, y, z, qx, qy, qz, qw) pose."""
    return float(quaternion_yaw(np.asarray(pose, dtype=np.float64)[3:7]))


def half_turn(angle: float) -> float:
    """The angle wrapped to [-pi/2, pi/2) (a parallel gripper is symmetric under a half turn)."""
    return float((angle + np.pi / 2) % np.pi - np.pi / 2)
