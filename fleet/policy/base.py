"""What every policy is, as a robot calls it every servo step: observation in, decision out.

`Policy` is the interface robot_node's grasp loop drives (reset per attempt, decide per step);
`Observation` and `Decision` are what crosses it, in metres and radians in the arm's base frame;
`StepLimits` bounds one step. Learned policies live with their method (fleet/methods/<name>/
policy.py), exploration policies in fleet/policy/exploration.py. A policy never knows about
ROS: robot_node turns a Decision into commands.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Observation:
    """What the policy sees at one servo step. Units: m and rad, poses in the arm's base frame."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    ee_pose: np.ndarray  # (7,) x, y, z, qx, qy, qz, qw of the gripper tool point
    step: int  # 0-based servo step of this attempt
    max_steps: int  # the attempt closes at step max_steps - 1 at the latest
    workspace_min: np.ndarray  # (3,) lowest x, y, z the tool point may reach
    workspace_max: np.ndarray  # (3,) highest x, y, z
    initial_image: Optional[np.ndarray] = None  # pre-grasp image I_0, if the network takes it
    #: I_0's aligned depth image, (H, W) float32 m along the optical axis (0 = no return), if
    #: the arm's camera gives one (an RGB-D camera; the simulated arm's does).
    initial_depth: Optional[np.ndarray] = None
    #: This image's aligned depth, (H, W) float32 m, when the camera gives one: a closed-loop
    #: policy that takes depth looks at the newest frame, not only at I_0.
    depth: Optional[np.ndarray] = None
    #: The finger opening now, m (None: not reported; the gripper is open while servoing).
    gripper: Optional[float] = None

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.ee_pose[:3], dtype=np.float64)

    @property
    def is_last_step(self) -> bool:
        return self.step >= self.max_steps - 1


#: What `Decision.gripper` may ask for mid-attempt.
GRIPPER_COMMANDS = ("open", "close")


@dataclass
class Decision:
    """What to do this step: move by `motion` (dx, dy, dz, dyaw; m, rad, base frame), drive the
    gripper, or end the attempt.

    When `close` is true the attempt ends: the motion is zero and the robot closes the gripper,
    lifts and labels it (QT-Opt's terminate). `gripper` ("open" or "close") is a gripper
    command *within* the attempt instead of a motion: the fingers close (or reopen) and the
    policy decides again on the next frame, so it may close, lift a little, look, reopen and
    try again (re-grasping). A step that drives the gripper moves nothing; moving with closed
    fingers is an ordinary motion, within the same workspace and speed limits.
    `p_best`/`p_noop` are the network's success probabilities of the best motion and of doing
    nothing (NaN for policies without a network); they are worth recording.
    """

    motion: np.ndarray
    close: bool
    raise_: bool = False
    p_best: float = math.nan
    p_noop: float = math.nan
    gripper: Optional[str] = None  # "open" / "close" within the attempt; None: move

    def __post_init__(self) -> None:
        if self.gripper is not None and self.gripper not in GRIPPER_COMMANDS:
            raise ValueError(f"Decision.gripper must be one of {GRIPPER_COMMANDS} or None, got "
                             f"{self.gripper!r}")


@dataclass(frozen=True)
class StepLimits:
    """Per-step bounds on a commanded motion, so no decision moves the gripper far blind."""

    #: m, along any one axis. 5 cm is one twist of the sim arm (0.5 m/s for 0.1 s): with it
    #: T = 12 steps reach the floor from the start height, 1.4x the attempts per hour of
    #: 3 cm and T = 20 at the same success (docs/RESULTS.md, "Offline study").
    max_translation: float = 0.05
    max_yaw: float = 0.3  # rad

    def clip(self, motion: np.ndarray) -> np.ndarray:
        """Scale the translation down to the limit (keeping its direction), clip the yaw."""
        m = np.asarray(motion, dtype=np.float64).copy()
        biggest = float(np.max(np.abs(m[:3])))
        if biggest > self.max_translation:
            m[:3] *= self.max_translation / biggest
        m[3] = float(np.clip(m[3], -self.max_yaw, self.max_yaw))
        return m


def clip_to_workspace(position: np.ndarray, motion: np.ndarray, workspace_min: np.ndarray,
                      workspace_max: np.ndarray) -> np.ndarray:
    """The motion with its translation cut so that position + motion stays in the workspace."""
    m = np.asarray(motion, dtype=np.float64).copy()
    m[:3] = np.clip(position + m[:3], workspace_min, workspace_max) - position
    return m


class Policy(abc.ABC):
    """What every policy (learned or exploring) offers robot_node."""

    #: Recorded with each attempt as its policy_kind ("cem", "random", "scripted", ...).
    kind: str = "policy"
    #: The policy bundle version (0 = no trained network).
    version: int = 0

    @abc.abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Start a new attempt; all randomness of the attempt comes from `rng`."""

    @abc.abstractmethod
    def decide(self, obs: Observation) -> Decision:
        """The decision for this servo step."""
