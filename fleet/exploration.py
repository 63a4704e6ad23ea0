"""Exploration policies: how a robot grasps before any network exists, and now and then after.

A robot knows no object positions, so a "scripted" grasp on a real arm is what QT-Opt's
scripted exploration amounts to: pick a random spot on the tray and a random yaw, go there, go
down to the floor and close. With a few objects in the tray that already succeeds often enough
to bootstrap the first network, far more often than random motions do. `MixedPolicy` keeps
exploring for a configurable share of attempts once a network is in charge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fleet.policy import Decision, Observation, Policy, StepLimits, clip_to_workspace


class RandomPolicy(Policy):
    """Random bounded motions, biased downwards, closing at the last step."""

    kind = "random"

    def __init__(self, limits: Optional[StepLimits] = None, down_bias: float = 0.5) -> None:
        self.limits = limits or StepLimits()
        #: Mean dz as a fraction of the per-step limit (negative = down): without it the gripper
        #: wanders at the start height and nearly every random attempt closes on air.
        self.down_bias = down_bias
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def decide(self, obs: Observation) -> Decision:
        if obs.is_last_step:
            return Decision(np.zeros(4), close=True)
        t, y = self.limits.max_translation, self.limits.max_yaw
        motion = self._rng.uniform([-t, -t, -t, -y], [t, t, t, y])
        motion[2] = np.clip(motion[2] - self.down_bias * t, -t, t)
        return Decision(clip_to_workspace(obs.position, motion, obs.workspace_min,
                                          obs.workspace_max), close=False)


@dataclass(frozen=True)
class DescentConfig:
    """The scripted top-down grasp: where it may aim and how it gets there."""

    #: Keep the random target this far inside the workspace's x/y edges, m.
    xy_margin: float = 0.02
    #: Close this far above the workspace floor, m.
    floor_offset: float = 0.005
    #: The random yaw change is uniform in [-yaw_range, yaw_range] (a parallel gripper is
    #: symmetric under a half turn, so pi/2 covers every grasp orientation).
    yaw_range: float = np.pi / 2
    #: Share of the attempt's steps spent moving over the target before going down, so the
    #: fingers come down on it from above rather than sweeping objects sideways.
    xy_fraction: float = 0.4
    #: Close as soon as the tool point is this close to the target, m.
    arrive_tolerance: float = 0.004
    limits: StepLimits = field(default_factory=StepLimits)


class RandomDescentPolicy(Policy):
    """Go to a random x/y and yaw, descend to the tray floor over the attempt's steps, close."""

    kind = "scripted"

    def __init__(self, config: Optional[DescentConfig] = None) -> None:
        self.config = config or DescentConfig()
        self._rng = np.random.default_rng(0)
        self._target: Optional[np.ndarray] = None  # x, y, z in the base frame
        self._yaw_left = 0.0

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._target = None
        self._yaw_left = float(rng.uniform(-self.config.yaw_range, self.config.yaw_range))

    @property
    def target(self) -> Optional[np.ndarray]:
        """The chosen grasp point (known after the first decision of an attempt)."""
        return None if self._target is None else self._target.copy()

    def _choose_target(self, obs: Observation) -> np.ndarray:
        cfg = self.config
        lo = np.asarray(obs.workspace_min, float)
        hi = np.asarray(obs.workspace_max, float)
        margin = np.minimum(cfg.xy_margin, (hi[:2] - lo[:2]) / 2)
        xy = self._rng.uniform(lo[:2] + margin, hi[:2] - margin)
        z = min(lo[2] + cfg.floor_offset, hi[2])
        return np.array([xy[0], xy[1], z])

    def decide(self, obs: Observation) -> Decision:
        cfg = self.config
        if self._target is None:
            self._target = self._choose_target(obs)
        delta = self._target - obs.position
        if obs.is_last_step or np.linalg.norm(delta) <= cfg.arrive_tolerance:
            return Decision(np.zeros(4), close=True)
        xy_steps = max(1, round((obs.max_steps - 1) * cfg.xy_fraction))
        if obs.step < xy_steps:  # over the target first, at the current height
            steps_left = xy_steps - obs.step
            motion = np.array([delta[0], delta[1], 0.0, self._yaw_left]) / steps_left
        else:  # then down, correcting x/y and yaw on the way
            steps_left = max(1, obs.max_steps - 1 - obs.step)
            motion = np.array([delta[0], delta[1], delta[2], self._yaw_left]) / steps_left
        motion = clip_to_workspace(obs.position, cfg.limits.clip(motion), obs.workspace_min,
                                   obs.workspace_max)
        self._yaw_left -= motion[3]
        return Decision(motion, close=False)


class MixedPolicy(Policy):
    """The learned policy, except for a share of attempts that explore (chosen per attempt)."""

    def __init__(self, learned: Policy, exploration: Policy, exploration_share: float) -> None:
        if not 0.0 <= exploration_share <= 1.0:
            raise ValueError(f"exploration_share must be in [0, 1], got {exploration_share}")
        self.learned = learned
        self.exploration = exploration
        self.exploration_share = exploration_share
        self._current: Policy = learned

    @property
    def version(self) -> int:  # type: ignore[override]
        """The learned policy's version: what this robot was running, explored or not."""
        return self.learned.version

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The kind of the policy running this attempt (what the attempt record should say)."""
        return self._current.kind

    def reset(self, rng: np.random.Generator) -> None:
        explore = rng.random() < self.exploration_share
        self._current = self.exploration if explore else self.learned
        self._current.reset(rng)

    def decide(self, obs: Observation) -> Decision:
        return self._current.decide(obs)
