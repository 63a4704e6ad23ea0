"""Exploration policies: how a robot grasps before any network exists, and now and then after.

A robot knows no object positions, so a "scripted" grasp on a real arm is what QT-Opt's
scripted exploration amounts to: pick a random spot on the tray and a random yaw, go there, go
down to the floor and close. With a few objects in the tray that already succeeds often enough
to bootstrap the first network, far more often than random motions do. `MixedPolicy` keeps
exploring for a configurable share of attempts once a network is in charge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from fleet.policy.base import Decision, Observation, Policy, StepLimits, clip_to_workspace
from fleet.policy.geometry import TableCamera, half_turn, yaw_of_pose


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
    #: Share of attempts that close at a uniform random height between the floor and the
    #: height the attempt started at, instead of at the floor. Closes above the objects fail;
    #: without them a Q-learner never sees a close in the air and may score one as highly as
    #: a close on the floor (qtopt run 6 closed at the start height for five versions).
    any_height_share: float = 0.0
    limits: StepLimits = field(default_factory=StepLimits)

    def __post_init__(self) -> None:
        if not 0.0 <= self.any_height_share <= 1.0:
            raise ValueError(f"any_height_share must be in [0, 1], got {self.any_height_share}")


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
        if cfg.any_height_share > 0.0 and self._rng.random() < cfg.any_height_share:
            z = self._rng.uniform(z, max(z, min(float(obs.position[2]), hi[2])))
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


@dataclass(frozen=True)
class AimConfig:
    """Where the aimed descent looks for objects: colourful pixels over a grey tray."""

    camera: TableCamera = field(default_factory=TableCamera)
    #: HSV saturation (0-255) above which a pixel counts as object, not tray/arm/floor.
    min_saturation: int = 90
    #: ... and brightness above which (dark pixels have unreliable hue and saturation).
    min_value: int = 40
    #: Aim at this height above the workspace floor when back-projecting (objects' middle), m.
    aim_height: float = 0.015
    #: Gaussian noise added to the aimed x, y, m (explores around the object, not only on it).
    aim_noise: float = 0.01
    #: Share of attempts that still pick a uniformly random spot (keeps failures diverse).
    random_share: float = 0.1
    #: Aim at the centre of the picked pixel's blob (else at the pixel itself) ...
    blob_centre: bool = True
    #: ... and turn the fingers to close across the blob's narrow side (else a random yaw).
    align_yaw: bool = True


class AnyHeightDescentPolicy(RandomDescentPolicy):
    """Random descent that, in a share of attempts, closes at a random height on the way down
    (DescentConfig.any_height_share): exploration for a closed-loop Q-learner, which must learn
    that closing above the objects fails. Its attempts record their own kind."""

    kind = "scripted_any_height"

    #: Share of attempts closing at a random height (robot_node's any_height_descent).
    DEFAULT_SHARE = 0.3

    def __init__(self, config: Optional[DescentConfig] = None) -> None:
        super().__init__(config or DescentConfig(any_height_share=self.DEFAULT_SHARE))


class AimedDescentPolicy(RandomDescentPolicy):
    """Random descent that aims at what the camera sees: a random colourful pixel of the
    first image, back-projected onto the table. A heuristic a real robot can run with its
    camera calibration; it roughly doubles the positives exploration feeds the learner
    (docs/RESULTS.md, "Offline study"). Its attempts record their own kind, "aimed", so the
    store tells them from the uniform scripted ones (both are exploration for the learner)."""

    kind = "aimed"

    def __init__(self, config: Optional[DescentConfig] = None,
                 aim: Optional[AimConfig] = None) -> None:
        super().__init__(config)
        self.aim = aim or AimConfig()

    def _choose_target(self, obs: Observation) -> np.ndarray:
        target = super()._choose_target(obs)  # random spot: the fallback, same draw order
        a = self.aim
        if self._rng.random() < a.random_share:
            return target
        image = obs.initial_image if obs.initial_image is not None else obs.image
        rows, cols = object_pixels(image, a.min_saturation, a.min_value)
        if rows.size == 0:
            return target
        lo = np.asarray(obs.workspace_min, float)
        hi = np.asarray(obs.workspace_max, float)
        xy = a.camera.table_points(rows, cols, image.shape[0], image.shape[1],
                                   lo[2] + a.aim_height)
        inside = np.all((xy >= lo[:2]) & (xy <= hi[:2]), axis=1)
        if not inside.any():
            return target
        rows, cols, xy = rows[inside], cols[inside], xy[inside]
        k = int(self._rng.integers(len(xy)))
        pick = xy[k]
        if a.blob_centre or a.align_yaw:
            blob = xy[blob_of(image.shape[:2], rows, cols, k)]
            if a.blob_centre:
                pick = blob.mean(axis=0)
            if a.align_yaw and len(blob) >= 3:
                self._yaw_left = half_turn(long_axis_angle(blob) - yaw_of_pose(obs.ee_pose))
        pick = pick + self._rng.normal(0.0, a.aim_noise, 2)
        target[:2] = np.clip(pick, lo[:2], hi[:2])
        return target


def blob_of(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Indices (into rows/cols) of the 8-connected blob that pixel k belongs to.

    A flood fill in plain Python (a 64x64 mask has a few hundred set pixels): OpenCV's version
    would start its thread pool in the robot's process, and a later fork (the learner's
    DataLoader in the same process, as in the tests) can then deadlock on it."""
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols))}
    seen, todo = {k}, [k]
    while todo:
        r, c = int(rows[todo[-1]]), int(cols[todo.pop()])
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                j = index.get((r + dr, c + dc))
                if j is not None and j not in seen:
                    seen.add(j)
                    todo.append(j)
    return np.array(sorted(seen))


def long_axis_angle(points: np.ndarray) -> float:
    """Heading (rad) of the principal axis of (N, 2) points: the gripper's yaw that puts the
    fingers on either side of the blob's narrow width (fingers close across tool y)."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    major = vectors[:, -1]
    return float(np.arctan2(major[1], major[0]))


def object_pixels(image: np.ndarray, min_saturation: int, min_value: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of saturated (coloured) pixels of an RGB uint8 image."""
    rgb = np.asarray(image, dtype=np.int32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(hi > 0, (hi - lo) * 255 // np.maximum(hi, 1), 0)
    return np.nonzero((saturation > min_saturation) & (hi > min_value))


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


@dataclass(frozen=True)
class Exploration:
    """One exploration policy as the rest of fleet knows it: the name robot_node's
    `exploration_policy` parameter takes, and the policy_kind its attempts record (the learner's
    publish rule counts these kinds as exploration; `fleet eval --baselines` names them)."""

    name: str
    kind: str
    make: Callable[[StepLimits], Policy]


#: Every exploration policy, by robot_node parameter name. The one table: robot_node, the
#: publish rule and `fleet eval` all read it.
EXPLORATIONS: dict[str, Exploration] = {e.name: e for e in (
    Exploration("random", RandomPolicy.kind, lambda limits: RandomPolicy(limits)),
    Exploration("random_descent", RandomDescentPolicy.kind,
                lambda limits: RandomDescentPolicy(DescentConfig(limits=limits))),
    # random_descent that closes at a random height in 30% of attempts (qtopt's exploration:
    # grounds Q(close) in the air)
    Exploration("any_height_descent", AnyHeightDescentPolicy.kind,
                lambda limits: AnyHeightDescentPolicy(DescentConfig(
                    limits=limits, any_height_share=AnyHeightDescentPolicy.DEFAULT_SHARE))),
    # aims at a colourful blob of I_0 (the default camera's calibration), centred, fingers
    # across its narrow side: a scripted grasp that needs no privileged knowledge
    Exploration("aimed_descent", AimedDescentPolicy.kind,
                lambda limits: AimedDescentPolicy(DescentConfig(limits=limits))),
)}

#: The policy_kinds exploration attempts record.
EXPLORATION_KINDS: frozenset[str] = frozenset(e.kind for e in EXPLORATIONS.values())


def exploration_by_kind(kind: str) -> Exploration:
    """The exploration policy whose attempts record `kind` ("random", "scripted", "aimed",
    "scripted_any_height")."""
    for e in EXPLORATIONS.values():
        if e.kind == kind:
            return e
    raise KeyError(f"no exploration policy records kind {kind!r} (known: "
                   f"{sorted(EXPLORATION_KINDS)})")
