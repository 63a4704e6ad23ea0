"""Records one grasp attempt as a `fleet.wire.records.Attempt`: JPEG images (and, from an RGB-D
camera, each image's aligned depth as a 16-bit PNG of mm), poses, commanded motions, gripper
readings, the label and (simulation only) the ground truth.

Images are JPEG-compressed as each step is recorded (OpenCV, configurable quality), so the
attempt in memory is already its wire form and `finish()` costs only the msgpack header.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from fleet.wire.depth_image import DepthImageError, encode_depth_png
from fleet.wire.records import Attempt, Step


class RecorderError(ValueError):
    """An image the recorder cannot encode (wrong shape or type), or a depth image that does
    not belong to its colour image."""


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB image (OpenCV wants BGR)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise RecorderError(f"expected an HxWx3 uint8 RGB image, got shape {image_rgb.shape} "
                            f"dtype {image_rgb.dtype}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RecorderError("OpenCV could not JPEG-encode the image")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB image from JPEG bytes (for tests and tools)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RecorderError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class AttemptRecorder:
    """Accumulates one attempt; `finish()` returns the `Attempt` to spool."""

    robot_id: str
    policy_version: int
    policy_kind: str
    jpeg_quality: int = 90
    started_at: float = field(default_factory=time.time)
    steps: list[Step] = field(default_factory=list)
    image_height: int = 0
    image_width: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add_step(self, image_rgb: np.ndarray, ee_pose: Sequence[float],
                 motion: Sequence[float], gripper: float, stamp: float,
                 depth: Optional[np.ndarray] = None) -> Step:
        """Record what the camera saw before a motion and the motion actually commanded.

        `depth`: the image's aligned depth, (H, W) float m (or uint16 mm) of the image's size,
        stored as a 16-bit PNG of mm (0 = no return); every step of an attempt has one or none
        does (fleet.wire.records)."""
        image_jpeg = encode_jpeg(image_rgb, self.jpeg_quality)
        depth_png = None
        if depth is not None:
            if np.shape(depth) != image_rgb.shape[:2]:
                raise RecorderError(f"depth image {np.shape(depth)} is not the colour image's "
                                    f"size {image_rgb.shape[:2]}")
            try:
                depth_png = encode_depth_png(depth)
            except DepthImageError as exc:
                raise RecorderError(str(exc)) from None
        if self.steps and (self.steps[0].depth_png is None) != (depth_png is None):
            raise RecorderError("a step with depth and one without in the same attempt: "
                                "every step of an attempt has a depth image or none does")
        self.image_height, self.image_width = int(image_rgb.shape[0]), int(image_rgb.shape[1])
        step = Step(image_jpeg=image_jpeg,
                    ee_pose=tuple(float(v) for v in ee_pose),
                    motion=tuple(float(v) for v in motion[:4]),
                    gripper=float(gripper), stamp=float(stamp), depth_png=depth_png)
        self.steps.append(step)
        return step

    def finish(self, outcome: str, final_pose: Sequence[float], gripper_after_lift: float,
               ground_truth: Optional[dict[str, Any]] = None, **extra: Any) -> Attempt:
        """The finished attempt (outcome: "success", "failure" or "aborted")."""
        self.extra.update(extra)
        return Attempt(
            robot_id=self.robot_id, policy_version=self.policy_version,
            policy_kind=self.policy_kind, steps=list(self.steps), outcome=outcome,
            final_pose=tuple(float(v) for v in final_pose),
            gripper_after_lift=float(gripper_after_lift), started_at=self.started_at,
            ended_at=time.time(), image_height=self.image_height or 0,
            image_width=self.image_width or 0, ground_truth=ground_truth,
            extra=dict(self.extra))
