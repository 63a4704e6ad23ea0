"""Helpers shared by robot_node's tests: synthetic attempts and images."""
from __future__ import annotations

import time

import numpy as np

from fleet.wire.records import Attempt, Step
from robot_node.recorder import encode_jpeg


def gradient_image(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    return (img + rng.integers(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def make_attempt(steps: int = 2, image_size: int = 64, outcome: str = "failure") -> Attempt:
    jpeg = encode_jpeg(gradient_image(image_size), 90)
    return Attempt(
        robot_id="arm1", policy_version=0, policy_kind="scripted",
        steps=[Step(jpeg, (0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0), (0.01, 0.0, -0.02, 0.0), 0.08,
                    1000.0 + i) for i in range(steps)],
        outcome=outcome, final_pose=(0.5, 0.0, 0.03, 0.0, 0.0, 0.0, 1.0),
        gripper_after_lift=0.0, started_at=time.time(), ended_at=time.time(),
        image_height=image_size, image_width=image_size)
