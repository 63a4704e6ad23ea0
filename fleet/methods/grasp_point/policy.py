"""The grasp-point policy: pick where and at which angle to grasp from I_0, then descend.

At the first step of an attempt the cross-entropy method (fleet/policy/cem.py, the same optimiser
Levine et al. servo with) searches top-down grasps (x, y, yaw) over the workspace for the one
the grasp-point network (fleet/methods/grasp_point/network.py) scores highest on the pre-grasp
image. The gripper then goes there exactly as the scripted exploration does
(fleet/policy/exploration.py `RandomDescentPolicy`): over the point at the start height while
turning, down to the tray floor, close on arrival. Why decide once: from the over-the-shoulder
camera the descending hand hides the objects it approaches, so later images say less about the grasp
than I_0 does; and the scene does not move until the fingers touch it.

Exploration inside the learned policy (beside MixedPolicy's share of scripted attempts): with
probability `explore_top` the grasp is drawn among the best CEM samples in proportion to their
scores rather than taken as the best, so near-ties are tried and their labels correct the
network where it is over-confident.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from fleet.policy.cem import CEMConfig, cem_maximize
from fleet.policy.exploration import DescentConfig, RandomDescentPolicy
from fleet.policy.geometry import half_turn, yaw_of_pose
from fleet.methods.grasp_point.network import GraspPointNet
from fleet.policy.images import images_to_tensor
from fleet.policy.base import Observation

#: Recorded as the attempts' policy_kind.
KIND = "grasp_point"


@dataclass(frozen=True)
class GraspPointPolicyConfig:
    """Every tunable of the grasp-point policy."""

    #: CEM over (x, y, yaw): a wide first draw (the score landscape has one mode per graspable
    #: spot), refitted to the best few.
    cem: CEMConfig = field(default_factory=lambda: CEMConfig(
        samples=128, elites=8, iterations=3, init_std=(0.12, 0.12, 1.2),
        min_std=(0.003, 0.003, 0.05), low=(-1.0, -1.0, -math.pi / 2),
        high=(1.0, 1.0, math.pi / 2)))
    #: Keep grasp centres this far inside the workspace's x/y edges, m.
    xy_margin: float = 0.02
    #: Share of attempts whose grasp is drawn from the top samples rather than the best one.
    explore_top: float = 0.0
    #: How many of the best-scored samples such a draw (or the robust choice) chooses among.
    top_k: int = 16
    #: Robust choice: score each of the top_k samples again at this many small perturbations
    #: (+-robust_xy m, +-robust_yaw rad) and take the best mean. The best of a few hundred
    #: noisy scores is the most over-estimated one; a grasp that still scores well a few mm
    #: off also survives the arm's landing error and objects shifting on contact. 0: off.
    robust_samples: int = 0
    robust_xy: float = 0.005
    robust_yaw: float = 0.15
    descent: DescentConfig = field(default_factory=DescentConfig)


class GraspPointScorer:
    """Scores grasps (N, 3) on one observation's image with the network (image tensor once)."""

    def __init__(self, model: GraspPointNet) -> None:
        self.model = model.eval()

    def prepare(self, image: np.ndarray, depth: Optional[np.ndarray] = None
                ) -> Callable[[np.ndarray], np.ndarray]:
        """A scoring function for this observation: grasps (N, 3) -> p(success) (N,). The
        image (and depth) tensors are built once, since CEM scores hundreds of grasps on it."""
        cfg = self.model.config
        if image.shape != (cfg.image_height, cfg.image_width, 3):
            raise ValueError(
                f"the policy's network takes {cfg.image_height}x{cfg.image_width}x3 images but "
                f"the camera gave {image.shape}: resize the image or load a bundle trained at "
                f"this resolution")
        tensor = images_to_tensor(image)
        depth_tensor = None
        if cfg.use_depth:
            if depth is None or depth.shape != (cfg.image_height, cfg.image_width):
                got = "none" if depth is None else f"{depth.shape}"
                raise ValueError(
                    f"the policy's network needs the camera's aligned depth image "
                    f"({cfg.image_height}x{cfg.image_width}, m) beside the colour image, got "
                    f"{got}: give the arm an RGB-D camera (robot_node's depth_topic) or load a "
                    f"bundle trained without depth")
            depth_tensor = torch.as_tensor(np.asarray(depth, np.float32))[None, None]

        def score(grasps: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                logits = self.model(tensor, torch.as_tensor(grasps, dtype=torch.float32),
                                    depth=depth_tensor)
                return torch.sigmoid(logits).numpy().astype(np.float64)

        return score


class GraspPointPolicy(RandomDescentPolicy):
    """CEM over top-down grasps scored by a grasp-point network, then the scripted descent."""

    kind = KIND

    def __init__(self, model: GraspPointNet, config: Optional[GraspPointPolicyConfig] = None,
                 version: int = 0) -> None:
        self.policy_config = config or GraspPointPolicyConfig()
        super().__init__(self.policy_config.descent)
        self.scorer = GraspPointScorer(model)
        self.version = version
        #: The chosen grasp and its score (after the first decision of an attempt).
        self.grasp: Optional[np.ndarray] = None
        self.p_best = math.nan

    @classmethod
    def from_model(cls, model: GraspPointNet, config: Optional[GraspPointPolicyConfig] = None,
                   version: int = 0) -> "GraspPointPolicy":
        return cls(model, config, version)

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self.grasp, self.p_best = None, math.nan

    def choose_grasp(self, image: np.ndarray, workspace_min: np.ndarray,
                     workspace_max: np.ndarray, depth: Optional[np.ndarray] = None
                     ) -> tuple[np.ndarray, float]:
        """The grasp (x, y, yaw) to make on this pre-grasp image (and its depth image), and its
        success probability."""
        c = self.policy_config
        lo = np.asarray(workspace_min, float)[:2] + c.xy_margin
        hi = np.asarray(workspace_max, float)[:2] - c.xy_margin
        low = np.array([lo[0], lo[1], c.cem.low[2]])
        high = np.array([hi[0], hi[1], c.cem.high[2]])
        score = self.scorer.prepare(image, depth)
        seen: list[tuple[np.ndarray, np.ndarray]] = []

        def recorded(grasps: np.ndarray) -> np.ndarray:
            s = score(grasps)
            seen.append((grasps, s))
            return s

        result = cem_maximize(recorded, c.cem, self._rng, mean=(low + high) / 2, low=low,
                              high=high)
        best, p = result.best, result.best_score
        grasps = np.concatenate([g for g, _ in seen])
        scores = np.concatenate([s for _, s in seen])
        top = np.argsort(-scores)[:c.top_k]
        if c.explore_top > 0 and self._rng.random() < c.explore_top:
            k = int(self._rng.choice(top, p=scores[top] / scores[top].sum()))
            best, p = grasps[k], float(scores[k])
        elif c.robust_samples > 0:
            best, p = self._robust_choice(score, grasps[top], scores[top], low, high)
        if not math.isfinite(p):
            raise FloatingPointError("the network returned a non-finite score: the policy "
                                     "bundle is broken; fall back to exploration")
        return best, p

    def _robust_choice(self, score, candidates: np.ndarray, scores: np.ndarray,
                       low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, float]:
        """The candidate whose score, averaged with its perturbed copies, is highest."""
        c = self.policy_config
        k, m = len(candidates), c.robust_samples
        spread = np.array([c.robust_xy, c.robust_xy, c.robust_yaw])
        jitter = self._rng.uniform(-1.0, 1.0, (k, m, 3)) * spread
        copies = candidates[:, None, :] + jitter
        copies[..., :2] = np.clip(copies[..., :2], low[:2], high[:2])
        around = score(copies.reshape(k * m, 3)).reshape(k, m)
        mean = (scores + around.sum(axis=1)) / (m + 1)
        best = int(np.argmax(mean))
        return candidates[best], float(mean[best])

    def _choose_target(self, obs: Observation) -> np.ndarray:
        target = super()._choose_target(obs)  # the floor height; x, y replaced below
        image = obs.initial_image if obs.initial_image is not None else obs.image
        grasp, self.p_best = self.choose_grasp(image, obs.workspace_min, obs.workspace_max,
                                               obs.initial_depth)
        self.grasp = grasp
        target[:2] = grasp[:2]
        self._yaw_left = half_turn(float(grasp[2]) - yaw_of_pose(obs.ee_pose))
        return target

    def decide(self, obs: Observation):
        decision = super().decide(obs)
        decision.p_best = self.p_best
        return decision


def make_policy(model: GraspPointNet, version: int, settings) -> GraspPointPolicy:
    """The registry's factory: the robot's settings (ServoSettings) that this policy takes."""
    return GraspPointPolicy(model, GraspPointPolicyConfig(explore_top=settings.explore_top),
                            version)
