"""QT-Opt's Bellman targets (fleet/methods/qtopt/bellman.py) on hand-made transitions: rewards,
clipped double Q, the close and toggle actions in V(s'), batched CEM, and the collate that
turns stored steps into transitions."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fleet.learner.dataset import samples_of_attempt
from fleet.methods.qtopt.bellman import (BellmanUpdater, bellman_targets, cem_maximize_batched,
                                         rewards)
from fleet.methods.qtopt.learner import QTOptCollate, monte_carlo_returns
from fleet.methods.qtopt.network import QNetConfig
from fleet.methods.qtopt.policy import QTOptPolicy
from fleet.policy.base import Observation
from fleet.policy.cem import CEMConfig
from fleet.wire.records import Attempt, Step

from test_qtopt import HIGH, LOW, OPTIONS, _constant_q, descent_attempt


# -- Bellman targets ----------------------------------------------------------------------------

def test_rewards_and_targets_of_hand_made_transitions():
    label = torch.tensor([1.0, 0.0, 1.0, 0.0])
    terminal = torch.tensor([1.0, 1.0, 0.0, 0.0])
    r = rewards(label, terminal, OPTIONS.step_cost)
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, -0.05, -0.05]))
    next_value = torch.tensor([0.3, 0.9, 0.8, 0.02])  # ignored where terminal
    target = bellman_targets(r, terminal, next_value, OPTIONS.discount)
    # closing steps: the label; others: -0.05 + 0.9 V, and never below 0
    torch.testing.assert_close(target, torch.tensor([1.0, 0.0, -0.05 + 0.9 * 0.8, 0.0]))
    mc = monte_carlo_returns(np.array([0, 1, 0]), np.array([2, 2, 3]), np.array([1, 1, 1.0]),
                             OPTIONS)
    np.testing.assert_allclose(mc, [0.9 - 0.05, 1.0, 0.81 - 0.05 * 1.9], rtol=1e-6)


def _transition_batch(n: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(3)
    attempts = [descent_attempt(rng) for _ in range(n)]
    samples = [samples_of_attempt(a)[0] for a in attempts]  # step 0: not terminal
    return QTOptCollate(QNetConfig(), OPTIONS)(samples)


def test_target_is_the_smaller_of_the_two_target_networks():
    batch = _transition_batch()
    assert batch["terminal"].sum() == 0 and "target" not in batch  # collated in this process
    for q1, q2 in ((0.8, 0.6), (0.6, 0.8)):
        updater = BellmanUpdater(_constant_q(q1), _constant_q(q2), OPTIONS)
        target = updater.targets(batch, torch.Generator().manual_seed(0))
        expected = -0.05 + 0.9 * min(q1, q2)
        torch.testing.assert_close(target, torch.full((4,), expected), atol=1e-5, rtol=0)


def test_next_value_takes_the_close_action_when_the_first_target_prefers_it():
    """Q_1 scores closing 0.3 -> logit + 3 (0.89), any motion 0.3: a* is close, and V is
    min(Q_1, Q_2) at a*, not Q_2's own maximum."""
    batch = _transition_batch()
    q_close = float(torch.sigmoid(torch.tensor(np.log(0.3 / 0.7) + 3.0)))
    for q2, expected in ((0.95, q_close), (0.5, 0.5)):
        updater = BellmanUpdater(_constant_q(0.3, close_bonus=3.0), _constant_q(q2), OPTIONS)
        value = updater.next_values(batch, torch.Generator().manual_seed(0))
        torch.testing.assert_close(value, torch.full((4,), expected), atol=1e-4, rtol=0)


def test_next_value_takes_toggling_the_gripper_when_a_regrasp_target_prefers_it():
    batch = _transition_batch()
    q_toggle = float(torch.sigmoid(torch.tensor(np.log(0.3 / 0.7) + 3.0)))
    updater = BellmanUpdater(_constant_q(0.3, close_bonus=1.0, toggle_bonus=3.0),
                             _constant_q(0.95, regrasp=True), OPTIONS)
    value = updater.next_values(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(value, torch.full((4,), q_toggle), atol=1e-4, rtol=0)
    plain = BellmanUpdater(_constant_q(0.3, close_bonus=1.0), _constant_q(0.95), OPTIONS)
    q_close = float(torch.sigmoid(torch.tensor(np.log(0.3 / 0.7) + 1.0)))
    torch.testing.assert_close(plain.next_values(batch, torch.Generator().manual_seed(0)),
                               torch.full((4,), q_close), atol=1e-4, rtol=0)


def test_a_regrasp_policy_closes_then_reopens_within_the_attempt_when_q_says_so():
    image = np.full((64, 64, 3), 90, np.uint8)
    pose = np.array([0.55, 0.0, 0.10, 1.0, 0, 0, 0])
    policy = QTOptPolicy(_constant_q(0.3, close_bonus=1.0, toggle_bonus=3.0), version=4)
    policy.reset(np.random.default_rng(0))
    first, second = (policy.decide(Observation(image, pose, t, 12, LOW, HIGH, gripper=g))
                     for t, g in ((3, 0.08), (4, 0.0005)))
    assert (first.gripper, first.close) == ("close", False) and not first.motion.any()
    assert (second.gripper, second.close) == ("open", False)
    last = policy.decide(Observation(image, pose, 11, 12, LOW, HIGH, gripper=0.08))
    assert last.close and last.gripper is None, "the last step always ends the attempt"
    plain = QTOptPolicy(_constant_q(0.3, close_bonus=1.0))  # no regrasp: never toggles
    plain.reset(np.random.default_rng(0))
    d = plain.decide(Observation(image, pose, 3, 12, LOW, HIGH, gripper=0.08))
    assert d.close and d.gripper is None


def test_collate_reads_a_regrasp_from_the_recorded_openings():
    """Down, close (zero motion; the opening drops), up a little, reopen (zero motion; it
    rises), then close and end: toggle marks the two gripper steps, terminal the last."""
    rng = np.random.default_rng(2)
    base = descent_attempt(rng, moves=1)
    frame = base.steps[0].image_jpeg
    plan = [((0.0, 0.0, -0.05, 0.0), 0.08), ((0.0, 0.0, 0.0, 0.0), 0.08),
            ((0.0, 0.0, 0.03, 0.0), 0.0005), ((0.0, 0.0, 0.0, 0.0), 0.0005),
            ((0.0, 0.0, 0.0, 0.0), 0.08)]
    steps = [Step(frame, (0.55, 0.0, 0.1, 1.0, 0.0, 0.0, 0.0), m, g, 0.2 * i)
             for i, (m, g) in enumerate(plan)]
    attempt = Attempt("arm-1", 0, "qtopt", steps, "failure", steps[-1].ee_pose, 0.0,
                      time.time() - 2, time.time())
    batch = QTOptCollate(QNetConfig(regrasp=True), OPTIONS)(samples_of_attempt(attempt))
    assert batch["action"][:, 6].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert batch["terminal"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_batched_cem_finds_each_states_own_maximum():
    cem = CEMConfig(samples=64, elites=6, iterations=4, init_std=(0.05,) * 4,
                    low=(-0.05,) * 4, high=(0.05,) * 4)
    best_at = torch.tensor([[0.02, -0.01, 0.03, 0.0], [-0.04, 0.04, 0.0, 0.01]])
    best, score = cem_maximize_batched(lambda a: -((a - best_at[:, None]) ** 2).sum(-1), cem, 2,
                                       torch.Generator().manual_seed(0))
    torch.testing.assert_close(best, best_at, atol=5e-3, rtol=0)
    assert score.shape == (2,) and bool((score <= 0).all())


def test_collate_marks_the_closing_step_and_pairs_each_step_with_the_next():
    attempt = descent_attempt(np.random.default_rng(1), moves=1)
    samples = samples_of_attempt(attempt)
    batch = QTOptCollate(QNetConfig(), OPTIONS)(samples)
    assert batch["terminal"].tolist() == [0.0, 1.0]
    assert batch["action"][:, 5].tolist() == [0.0, 1.0]  # the last recorded step closed
    assert torch.equal(batch["next_image"][0], batch["image"][1])
    torch.testing.assert_close(batch["next_state"][0], batch["state"][1])
    lone = samples[0]
    lone.next_step = None
    with pytest.raises(ValueError, match="with_next=True"):
        QTOptCollate(QNetConfig(), OPTIONS)([lone])
