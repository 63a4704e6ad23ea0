"""The QT-Opt servo policy: every step, on the newest frame, the action that maximises Q(s, a).

The action space has a continuous part, the step's motion (dx, dy, dz, dyaw), and a discrete
part, close (which in this robot contract also ends the attempt). As in Kalashnikov et al. 2018
CEM (fleet/policy/cem.py) maximises Q over the motions; the close action is scored on its own
(with no motion: robot_node executes a close with a zero motion), and the policy closes when
closing is worth at least as much as the best motion: argmax over the whole action space, with
no hand-set ratio as in the Levine heuristics. The CEM box is one step's limits (StepLimits: at
most 5 cm per axis, 0.3 rad), narrowed so the tool point stays in the workspace; robot_node
clips again, whatever a policy asks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from fleet.methods.qtopt.encoding import encode_actions, encode_states
from fleet.methods.qtopt.network import AnyQNet
from fleet.policy.base import Decision, Observation, Policy, StepLimits, clip_to_workspace
from fleet.policy.cem import CEMConfig, cem_maximize
from fleet.policy.images import images_to_tensor

#: Motions (N, 4) -> Q (N,) as probabilities, for one observation.
MotionScore = Callable[[np.ndarray], np.ndarray]

#: The finger opening assumed when an observation does not report one (open while servoing).
OPEN_GRIPPER = 0.08


def step_cem(samples: int = 64, elites: int = 6, iterations: int = 2,
             limits: StepLimits = StepLimits()) -> CEMConfig:
    """CEM over one step's motion: the box is the step limits (the paper: 64 samples, 6 elites,
    2 iterations)."""
    t, y = limits.max_translation, limits.max_yaw
    return CEMConfig(samples=samples, elites=elites, iterations=iterations,
                     init_std=(t, t, t, y), min_std=(0.002, 0.002, 0.002, 0.02),
                     low=(-t, -t, -t, -y), high=(t, t, t, y))


@dataclass(frozen=True)
class QPolicyConfig:
    """Every tunable of the QT-Opt policy."""

    cem: CEMConfig = field(default_factory=step_cem)
    limits: StepLimits = field(default_factory=StepLimits)


def observation_tensors(obs: Observation, model: AnyQNet
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(image (1, 3, H, W), depth (1, 1, H, W) m or None, state (1, 5)) of an observation, as
    the network takes them; a clear error when the camera does not give what it needs."""
    cfg = model.config
    if obs.image.shape != (cfg.image_height, cfg.image_width, 3):
        raise ValueError(f"the policy's network takes {cfg.image_height}x{cfg.image_width}x3 "
                         f"images but the camera gave {obs.image.shape}: resize the image or "
                         f"load a bundle trained at this resolution")
    depth = None
    if cfg.use_depth:
        frame = obs.depth if obs.depth is not None else (
            obs.initial_depth if obs.step == 0 else None)
        if frame is None:
            raise ValueError("this network takes the newest frame's aligned depth: set "
                             "Observation.depth (robot_node: a depth_topic), or use a bundle "
                             "trained without depth")
        depth = torch.as_tensor(np.asarray(frame, np.float32))[None, None]
    opening = OPEN_GRIPPER if obs.gripper is None else float(obs.gripper)
    state = encode_states([opening], [obs.ee_pose], cfg)
    return images_to_tensor(obs.image), depth, state


class QScorer:
    """Q of one observation's actions, the image features computed once per decision."""

    def __init__(self, model: AnyQNet) -> None:
        self.model = model.eval()

    def prepare(self, obs: Observation) -> tuple[MotionScore, float, float]:
        """(Q of motions without closing, Q of closing here, Q of toggling the gripper here:
        NaN for a network without `regrasp`)."""
        model = self.model
        image, depth, state = observation_tensors(obs, model)
        scale = model.config.motion_scale
        with torch.inference_mode():
            features = model.image_features(image, depth)
            close = encode_actions(np.array([[0.0, 0.0, 0.0, 0.0, 1.0]]), scale)
            q_close = float(torch.sigmoid(model.score_features(features, state, close))[0])
            q_toggle = math.nan
            if model.config.regrasp:
                toggle = encode_actions(np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]), scale)
                q_toggle = float(torch.sigmoid(model.score_features(features, state,
                                                                    toggle))[0])

        def score(motions: np.ndarray) -> np.ndarray:
            actions = np.concatenate([motions, np.zeros((len(motions), 1))], 1)
            with torch.inference_mode():
                logits = model.score_features(features, state, encode_actions(actions, scale))
                return torch.sigmoid(logits).numpy().astype(np.float64)

        return score, q_close, q_toggle


def motion_box(obs: Observation, cem: CEMConfig) -> tuple[np.ndarray, np.ndarray]:
    """CEM's box: one step's limits, narrowed so p_t + motion stays in the workspace (outside
    it, only the way back to its nearest point)."""
    pos = obs.position
    ws_lo = np.asarray(obs.workspace_min, float) - pos
    ws_hi = np.asarray(obs.workspace_max, float) - pos
    lo, hi = np.array(cem.low, float), np.array(cem.high, float)
    lo[:3], hi[:3] = np.maximum(lo[:3], ws_lo), np.minimum(hi[:3], ws_hi)
    empty = lo[:3] > hi[:3]
    back = np.clip(0.0, ws_lo, ws_hi)
    lo[:3], hi[:3] = np.where(empty, back, lo[:3]), np.where(empty, back, hi[:3])
    return lo, hi


class QTOptPolicy(Policy):
    """Closed-loop: argmax over {CEM's best motion, close} of Q, re-decided every step; with a
    `regrasp` network also over toggling the gripper (close or reopen, the attempt going on)."""

    kind = "qtopt"

    def __init__(self, model: AnyQNet, config: Optional[QPolicyConfig] = None,
                 version: int = 0) -> None:
        self.scorer = QScorer(model)
        self.config = config or QPolicyConfig()
        self.version = version
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._closed = False  # whether this policy closed the gripper within the attempt

    def decide(self, obs: Observation) -> Decision:
        cfg = self.config
        score, q_close, q_toggle = self.scorer.prepare(obs)
        lo, hi = motion_box(obs, cfg.cem)
        result = cem_maximize(score, cfg.cem, self._rng, low=lo, high=hi)
        q_move = result.best_score
        if not (math.isfinite(q_close) and math.isfinite(q_move)):
            raise FloatingPointError("the Q-network returned a non-finite value: the policy "
                                     "bundle is broken; fall back to exploration")
        best = max(q_move, q_close)
        if obs.is_last_step or q_close >= max(q_move, np.nan_to_num(q_toggle, nan=-1.0)):
            return Decision(np.zeros(4), close=True, p_best=best, p_noop=q_close)
        if q_toggle > q_move:  # NaN (no regrasp) compares False
            self._closed = not getattr(self, "_closed", False)
            return Decision(np.zeros(4), close=False, p_best=q_toggle, p_noop=q_close,
                            gripper="close" if self._closed else "open")
        step = clip_to_workspace(obs.position, cfg.limits.clip(result.best),
                                 obs.workspace_min, obs.workspace_max)
        return Decision(step, close=False, p_best=best, p_noop=q_close)


#: QT-Opt's CEM iterations per step when the robot leaves it to the method: the paper's 2.
#: A third iteration cost a third more per decision (84 ms at 64 x 3 on the 32 px gripper
#: view, run 5) and halved the fleet's collection rate against run 4 with the two updaters
#: on the same 2 cores; see docs/RESULTS.md.
QTOPT_CEM_ITERATIONS = 2


def make_policy(model: AnyQNet, version: int, settings) -> QTOptPolicy:
    """The registry's factory, with the robot's CEM settings (ServoSettings)."""
    cem = step_cem(settings.cem_samples, settings.cem_elites,
                   settings.cem_iterations or QTOPT_CEM_ITERATIONS)
    return QTOptPolicy(model, QPolicyConfig(cem=cem), version)
