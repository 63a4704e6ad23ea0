"""The Levine et al. 2016 servo policy: CEM over the grasp success network, every step.

`GraspPolicy` is Levine et al. 2016's servoing: the cross-entropy method picks the motion v*
that the grasp success network scores highest, then two heuristics decide what to do with it:

- close the gripper when doing nothing (v = 0) scores at least 90% of v*: moving no longer
  promises a better grasp than closing right here;
- raise the gripper a little when doing nothing scores under 50% of v*: the gripper is in a
  bad spot (often pressing on objects), so it backs off while it moves towards v*. "Off the
  table", as the paper puts it: only within `raise_below` of the workspace floor. Applied at
  any height, the rule fires on every step at the start height (closing in open air scores
  nothing) and walks the gripper to the workspace ceiling: a learning run measured 0/40 on
  unseen objects with it and 9/40 without it, same network (docs/RESULTS.md).

Otherwise it moves one bounded step towards v* and asks again at the next image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from fleet.methods.levine.network import GraspSuccessNet, encode_motions
from fleet.policy.images import images_to_tensor
from fleet.policy.base import Decision, Observation, Policy, StepLimits, clip_to_workspace
from fleet.policy.cem import CEMConfig, cem_maximize

#: A batch of motions (N, 4) -> success probabilities (N,), for one observation.
MotionScore = Callable[[np.ndarray], np.ndarray]


class MotionScorer(Protocol):
    """Turns one observation into a motion scoring function (the network's view of it)."""

    def prepare(self, obs: Observation) -> MotionScore: ...


class NetworkScorer:
    """Scores motions with a grasp success network, computing the image features once.

    This is what makes a CEM decision cheap: the conv trunk runs on the image once, and each of
    the CEM's batched calls runs only the motion MLP and the head against the cached features.
    """

    def __init__(self, model: GraspSuccessNet) -> None:
        self.model = model.eval()

    def prepare(self, obs: Observation) -> MotionScore:
        cfg = self.model.config
        if obs.image.shape != (cfg.image_height, cfg.image_width, cfg.image_channels):
            raise ValueError(
                f"the policy's network takes {cfg.image_height}x{cfg.image_width}x"
                f"{cfg.image_channels} images but the camera gave {obs.image.shape}: "
                f"resize the image or load a bundle trained at this resolution")
        initial = None
        if cfg.use_initial_image:
            if obs.initial_image is None:
                raise ValueError("this network needs the pre-grasp image: set "
                                 "Observation.initial_image")
            initial = images_to_tensor(obs.initial_image)
        with torch.inference_mode():
            features = self.model.image_features(images_to_tensor(obs.image), initial)

        def score(motions: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                logits = self.model.score_features(
                    features, encode_motions(motions, cfg.motion_scale))
                return torch.sigmoid(logits).numpy().astype(np.float64)

        return score


@dataclass(frozen=True)
class GraspPolicyConfig:
    """Every tunable of the CEM servoing policy; defaults are the paper's."""

    cem: CEMConfig = field(default_factory=CEMConfig)
    #: Close when p(noop) >= close_ratio * p(best motion).
    close_ratio: float = 0.9
    #: Raise when p(noop) < raise_ratio * p(best motion).
    raise_ratio: float = 0.5
    #: How far a raise lifts the gripper in one step, m.
    raise_dz: float = 0.02
    #: Raise only while the tool point is within this height above the workspace floor, m.
    raise_below: float = 0.05
    limits: StepLimits = field(default_factory=StepLimits)
    #: Start each CEM from the previous step's best motion minus what was executed since.
    warm_start: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.raise_ratio <= self.close_ratio:
            raise ValueError(f"need 0 <= raise_ratio ({self.raise_ratio}) <= close_ratio "
                             f"({self.close_ratio})")


def motion_bounds(obs: Observation, cem: CEMConfig) -> tuple[np.ndarray, np.ndarray]:
    """The CEM search box: the config's bounds, narrowed so p_t + v stays in the workspace."""
    pos = obs.position
    ws_lo = np.asarray(obs.workspace_min, float) - pos
    ws_hi = np.asarray(obs.workspace_max, float) - pos
    lo, hi = np.array(cem.low, float), np.array(cem.high, float)
    lo[:3], hi[:3] = np.maximum(lo[:3], ws_lo), np.minimum(hi[:3], ws_hi)
    # Outside the workspace (or a box narrower than the config allows): search only the motion
    # that brings the gripper back to the nearest point of the workspace.
    empty = lo > hi
    back = np.clip(0.0, ws_lo, ws_hi)
    lo[:3] = np.where(empty[:3], back, lo[:3])
    hi[:3] = np.where(empty[:3], back, hi[:3])
    return lo, hi


class GraspPolicy(Policy):
    """CEM servoing on a grasp success network with the paper's close/raise heuristics."""

    kind = "cem"

    def __init__(self, scorer: MotionScorer, config: Optional[GraspPolicyConfig] = None,
                 version: int = 0) -> None:
        self.scorer = scorer
        self.config = config or GraspPolicyConfig()
        self.version = version
        self._rng = np.random.default_rng(0)
        self._warm: Optional[np.ndarray] = None

    @classmethod
    def from_model(cls, model: GraspSuccessNet, config: Optional[GraspPolicyConfig] = None,
                   version: int = 0) -> "GraspPolicy":
        return cls(NetworkScorer(model), config, version)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._warm = None

    def decide(self, obs: Observation) -> Decision:
        cfg = self.config
        score = self.scorer.prepare(obs)
        lo, hi = motion_bounds(obs, cfg.cem)
        mean = self._warm if cfg.warm_start else None
        result = cem_maximize(score, cfg.cem, self._rng, mean=mean, low=lo, high=hi)
        p_noop = float(score(np.zeros((1, cfg.cem.dims)))[0])
        p_best = result.best_score
        if not (math.isfinite(p_noop) and math.isfinite(p_best)):
            raise FloatingPointError("the network returned a non-finite score: the policy "
                                     "bundle is broken; fall back to exploration")
        ratio = p_noop / max(p_best, 1e-12)
        zero = np.zeros(4)
        if obs.is_last_step or ratio >= cfg.close_ratio:
            self._warm = None
            return Decision(zero, close=True, p_best=p_best, p_noop=p_noop)
        step = cfg.limits.clip(result.best)
        near_floor = obs.position[2] - float(obs.workspace_min[2]) < cfg.raise_below
        raise_ = near_floor and ratio < cfg.raise_ratio
        if raise_:
            step[2] = cfg.raise_dz
        step = clip_to_workspace(obs.position, step, obs.workspace_min, obs.workspace_max)
        self._warm = result.best - step
        return Decision(step, close=False, raise_=raise_, p_best=p_best, p_noop=p_noop)


#: The Levine policy's CEM iterations per step when the robot leaves it to the method (the
#: paper's 3: its Q is a grasp-success probability over the whole remaining motion, so a
#: sharper maximum per decision pays).
LEVINE_CEM_ITERATIONS = 3


def make_policy(model: GraspSuccessNet, version: int, settings) -> GraspPolicy:
    """The registry's factory: CEM servoing with the robot's CEM settings (ServoSettings)."""
    cem = CEMConfig(samples=settings.cem_samples, elites=settings.cem_elites,
                    iterations=settings.cem_iterations or LEVINE_CEM_ITERATIONS)
    return GraspPolicy.from_model(model, GraspPolicyConfig(cem=cem), version)
