"""Bellman targets for QT-Opt: r + gamma * V(s_t+1), V from CEM over the target networks.

Kalashnikov et al. 2018, with clipped double Q: the action a* that maximises the first target
network at s_t+1 (CEM over motions, and the close action scored on its own, as the policy
decides) is scored by both target networks and V is the smaller value. The first target network
is a Polyak average of the one being trained, the second is the first as it was
`target_lag_steps` ago (QLearningOptions). Rewards: the closing step's is the attempt's label
(1: an object lifted), every earlier step's is -step_cost; the target of a closing step is its
reward (nothing follows), the others' r + gamma * V(s_t+1), clipped to [0, 1] because Q is a
probability trained with cross-entropy, as in the paper.

`BellmanUpdater` computes them for a collated batch of transitions. It is the seam between the
trainer and the paper's Bellman updaters: in a data worker process (the learner's --workers) it
labels each batch with its targets before the batch crosses the shared-memory hand-over
(fleet/learner/handover.py), reading the target networks the trainer updates in shared memory;
in the training process it leaves the batch alone and the trainer calls it itself.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch
from torch.utils.data import get_worker_info

from fleet.learner.api import Batch
from fleet.learner.config import QLearningOptions
from fleet.methods.qtopt.encoding import encode_actions
from fleet.methods.qtopt.network import AnyQNet
from fleet.policy.base import StepLimits
from fleet.policy.cem import CEMConfig

#: (B, N, 4) motions -> (B, N) scores, one row of candidates per state.
BatchedScore = Callable[[torch.Tensor], torch.Tensor]


def rewards(label: torch.Tensor, terminal: torch.Tensor, step_cost: float) -> torch.Tensor:
    """The closing step's reward is the label; every step before it costs step_cost."""
    return torch.where(terminal.bool(), label.float(), torch.full_like(label.float(), -step_cost))


def bellman_targets(reward: torch.Tensor, terminal: torch.Tensor, next_value: torch.Tensor,
                    discount: float) -> torch.Tensor:
    """r at a closing step, r + discount * V(s_t+1) otherwise; clipped to [0, 1]."""
    target = torch.where(terminal.bool(), reward, reward + discount * next_value)
    return target.clamp(0.0, 1.0)


def cem_maximize_batched(score: BatchedScore, cem: CEMConfig, batch: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """fleet.policy.cem's algorithm for many states at once: per state, sample, clip to the
    box, refit a diagonal Gaussian to the elites; the best (B, D) action seen and its score."""
    lo, hi = torch.tensor(cem.low), torch.tensor(cem.high)
    mu = torch.zeros(batch, cem.dims).clamp(lo, hi)
    std = torch.tensor(cem.init_std).expand(batch, -1)
    min_std = torch.tensor(cem.min_std)
    best = mu.clone()
    best_score = torch.full((batch,), -float("inf"))
    rows = torch.arange(batch)
    for _ in range(cem.iterations):
        noise = torch.randn(batch, cem.samples, cem.dims, generator=generator)
        actions = torch.max(torch.min(mu[:, None] + std[:, None] * noise, hi), lo)
        scores = score(actions)
        top_scores, top = scores.max(1)
        better = top_scores > best_score
        best = torch.where(better[:, None], actions[rows, top], best)
        best_score = torch.where(better, top_scores, best_score)
        elites = actions.gather(1, scores.topk(cem.elites, 1).indices[..., None]
                                .expand(-1, -1, cem.dims))
        mu = elites.mean(1)
        std = torch.maximum(elites.std(1, unbiased=False), min_std)
    return best, best_score


def next_state_inputs(batch: Batch) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(image in [0, 1], depth in m or None, encoded state) of the batch's next states."""
    image = batch["next_image"].float().div(255.0)
    depth = batch["next_depth"].float().div(1000.0) if "next_depth" in batch else None
    return image, depth, batch["next_state"]


class BellmanUpdater:
    """Labels collated transitions with their Bellman targets, from two target networks."""

    def __init__(self, target1: AnyQNet, target2: AnyQNet, options: QLearningOptions,
                 limits: StepLimits = StepLimits()) -> None:
        self.target1, self.target2 = target1.eval(), target2.eval()
        self.options = options
        t, y = limits.max_translation, limits.max_yaw
        self.cem = CEMConfig(samples=options.target_cem_samples,
                             elites=options.target_cem_elites,
                             iterations=options.target_cem_iterations, init_std=(t, t, t, y),
                             min_std=(0.002, 0.002, 0.002, 0.02), low=(-t, -t, -t, -y),
                             high=(t, t, t, y))

    @torch.no_grad()
    def next_values(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """V(s_t+1) = min_i Q_i(s_t+1, a*), a* = argmax over {CEM motions, close} of Q_1."""
        image, depth, state = next_state_inputs(batch)
        b = image.shape[0]
        scale = self.target1.config.motion_scale
        f1 = self.target1.image_features(image, depth)
        f2 = self.target2.image_features(image, depth)

        def q(net: AnyQNet, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            """(B, N, 5 or 6) raw actions -> (B, N) probabilities of each state's candidates."""
            n = actions.shape[1]
            encoded = encode_actions(actions.reshape(b * n, -1), scale).reshape(b, n, -1)
            return torch.sigmoid(net.score_batched(features, state, encoded))

        def moves(motions: torch.Tensor) -> torch.Tensor:
            return q(self.target1, f1, torch.cat([motions, torch.zeros_like(motions[..., :1])],
                                                 -1))

        best_motion, q_move = cem_maximize_batched(moves, self.cem, b, generator)
        close = torch.zeros(b, 1, 6)
        close[..., 4] = 1.0
        q_close = q(self.target1, f1, close)[:, 0]
        chosen = torch.where((q_close >= q_move)[:, None], close[:, 0],
                             torch.cat([best_motion, torch.zeros(b, 2)], 1))
        if self.target1.config.regrasp:  # toggling the gripper is a candidate too
            toggle = torch.zeros(b, 1, 6)
            toggle[..., 5] = 1.0
            q_toggle = q(self.target1, f1, toggle)[:, 0]
            chosen = torch.where((q_toggle > torch.maximum(q_move, q_close))[:, None],
                                 toggle[:, 0], chosen)
        chosen = chosen[:, None]
        return torch.minimum(q(self.target1, f1, chosen), q(self.target2, f2, chosen))[:, 0]

    def targets(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The (B,) Bellman targets of a collated batch of transitions."""
        o = self.options
        terminal = batch["terminal"]
        reward = rewards(batch["label"], terminal, o.step_cost)
        if bool(terminal.bool().all()):
            return reward.clamp(0.0, 1.0)
        return bellman_targets(reward, terminal, self.next_values(batch, generator), o.discount)

    def label_in_worker(self, batch: Batch, seed_text: str) -> Batch:
        """In a data worker process (a Bellman updater): the batch with its "target". In the
        training process: unchanged (the trainer computes targets itself, so validation batches
        collated there cost nothing extra)."""
        if get_worker_info() is None:
            return batch
        seed = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big")
        batch["target"] = self.targets(batch, torch.Generator().manual_seed(seed % 2**63))
        return batch
