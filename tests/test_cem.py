"""CEM on known functions, and the CEM servoing policy's heuristics and exploration policies.

The heuristics tests inject a scoring function (a MotionScorer) whose scores the test controls:
that is the only way to put the policy exactly on either side of the 90% / 50% thresholds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleet.policy.cem import CEMConfig, cem_maximize
from fleet.policy.exploration import MixedPolicy, RandomDescentPolicy, RandomPolicy
from fleet.methods.levine.network import GraspSuccessNet
from fleet.methods.levine.policy import GraspPolicy, GraspPolicyConfig, motion_bounds
from fleet.policy.base import Observation, StepLimits

WS_MIN = np.array([0.4, -0.2, 0.0])
WS_MAX = np.array([0.8, 0.2, 0.4])


def _obs(step: int = 0, max_steps: int = 10, pos=(0.6, 0.0, 0.3), image=None) -> Observation:
    img = np.zeros((64, 64, 3), np.uint8) if image is None else image
    return Observation(image=img, ee_pose=np.array([*pos, 1.0, 0.0, 0.0, 0.0]), step=step,
                       max_steps=max_steps, workspace_min=WS_MIN, workspace_max=WS_MAX)


# -- CEM -----------------------------------------------------------------------------------------

def _bump(center: np.ndarray, width: np.ndarray):
    return lambda a: np.exp(-0.5 * np.sum(((a - center) / width) ** 2, axis=1))


@pytest.mark.parametrize("iterations,tol_xyz,tol_yaw", [(3, 0.015, 0.1), (6, 0.004, 0.03)])
def test_cem_finds_a_gaussian_bump(iterations, tol_xyz, tol_yaw):
    center = np.array([0.05, -0.08, -0.12, 0.7])
    cfg = CEMConfig(iterations=iterations)
    errors = []
    for seed in range(10):
        res = cem_maximize(_bump(center, np.array([0.05, 0.05, 0.05, 0.5])), cfg,
                           np.random.default_rng(seed))
        errors.append(np.abs(res.best - center))
        assert res.evaluations == 64 * iterations
    err = np.median(errors, axis=0)
    assert np.all(err[:3] < tol_xyz) and err[3] < tol_yaw, err


def test_cem_paper_settings_beat_random_search_of_the_same_budget():
    center = np.array([0.1, 0.1, -0.2, -1.0])
    score = _bump(center, np.array([0.03, 0.03, 0.03, 0.3]))
    cfg = CEMConfig(init_std=(0.1, 0.1, 0.1, 1.0))
    cem, rand = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        cem.append(cem_maximize(score, cfg, rng).best_score)
        uniform = rng.uniform(cfg.low, cfg.high, (cfg.samples * cfg.iterations, 4))
        rand.append(score(uniform).max())
    assert np.median(cem) > np.median(rand)


def test_cem_respects_bounds_and_reports_the_best_seen():
    cfg = CEMConfig()
    low, high = np.array([0.0, 0.0, -0.05, -0.1]), np.array([0.02, 0.02, 0.0, 0.1])
    seen = []

    def score(a):
        seen.append(a.copy())
        return a.sum(axis=1)  # maximum at the upper corner

    res = cem_maximize(score, cfg, np.random.default_rng(0), low=low, high=high)
    allv = np.concatenate(seen)
    assert np.all(allv >= low) and np.all(allv <= high)
    assert res.best_score == pytest.approx(allv.sum(axis=1).max())
    np.testing.assert_allclose(res.best, high, atol=0.02)


def test_cem_refuses_bad_settings_and_bad_scores():
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(samples=4, elites=5)
    with pytest.raises(ValueError, match="one entry per action dimension"):
        CEMConfig(low=(0.0,))
    with pytest.raises(ValueError, match="3 scores for 64"):
        cem_maximize(lambda a: np.zeros(3), CEMConfig(), np.random.default_rng(0))


# -- the servoing heuristics (scores injected) ---------------------------------------------------

class FixedScorer:
    """p(noop) and p(any other motion) set by the test; the best motion is where `best` is."""

    def __init__(self, p_noop: float, p_best: float, best=(0.1, 0.0, -0.2, 0.0)) -> None:
        self.p_noop, self.p_best, self.best = p_noop, p_best, np.array(best)

    def prepare(self, obs):
        def score(m):
            d = np.linalg.norm((m - self.best) / [0.05, 0.05, 0.05, 0.5], axis=1)
            p = self.p_best * np.exp(-0.5 * d ** 2)
            return np.where(np.all(m == 0, axis=1), self.p_noop, p)
        return score


@pytest.mark.parametrize("p_noop,raise_below,close,raise_", [
    (0.60, 1.0, True, False),   # 0.60 / ~0.6 >= 0.9: close
    (0.45, 1.0, False, False),  # between 50% and 90%: keep servoing
    (0.20, 1.0, False, True),   # under 50%, near the table (0.3 m < raise_below): rise off it
    (0.20, 0.05, False, False),  # under 50% in open air (default raise_below): never climb
])
def test_heuristics_close_servo_or_raise(p_noop, raise_below, close, raise_):
    policy = GraspPolicy(FixedScorer(p_noop=p_noop, p_best=0.6),
                         GraspPolicyConfig(raise_below=raise_below))
    policy.reset(np.random.default_rng(0))
    d = policy.decide(_obs())
    assert (d.close, d.raise_) == (close, raise_)
    assert d.p_noop == pytest.approx(p_noop)
    assert 0.5 < d.p_best <= 0.6
    limits = policy.config.limits
    if close:
        np.testing.assert_array_equal(d.motion, np.zeros(4))
    elif raise_:
        assert d.motion[2] == pytest.approx(policy.config.raise_dz)
    else:  # one bounded step towards the best motion (+x, down)
        assert np.max(np.abs(d.motion[:3])) == pytest.approx(limits.max_translation)
        assert d.motion[0] > 0.005 and d.motion[2] < -0.02


def test_last_step_always_closes_and_workspace_is_never_left():
    policy = GraspPolicy(FixedScorer(p_noop=0.0, p_best=0.9, best=(0.0, 0.0, -0.5, 0.0)))
    policy.reset(np.random.default_rng(0))
    assert policy.decide(_obs(step=9, max_steps=10)).close
    # Near the floor, the best motion points through it: the step stops at the floor.
    d = policy.decide(_obs(pos=(0.6, 0.0, 0.01)))
    assert not d.close and d.motion[2] >= -0.01 - 1e-12
    lo, hi = motion_bounds(_obs(pos=(0.6, 0.0, 0.01)), policy.config.cem)
    assert lo[2] == pytest.approx(-0.01)


def test_policy_on_a_real_network_returns_bounded_decisions():
    torch.manual_seed(0)
    policy = GraspPolicy.from_model(GraspSuccessNet(), version=3)
    policy.reset(np.random.default_rng(1))
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for step in range(4):
        d = policy.decide(_obs(step=step, image=img))
        assert d.motion.shape == (4,) and np.all(np.isfinite(d.motion))
        assert np.max(np.abs(d.motion[:3])) <= StepLimits().max_translation + 1e-12
        assert 0.0 <= d.p_noop <= 1.0 and 0.0 <= d.p_best <= 1.0
    assert policy.kind == "cem" and policy.version == 3
    with pytest.raises(ValueError, match="camera gave"):
        policy.decide(_obs(image=np.zeros((32, 32, 3), np.uint8)))


def test_threshold_config_is_checked():
    with pytest.raises(ValueError, match="raise_ratio"):
        GraspPolicyConfig(close_ratio=0.5, raise_ratio=0.9)


# -- exploration ---------------------------------------------------------------------------------

def _run(policy, pos, max_steps=12, seed=0):
    """Integrate a policy's motions as a perfect arm would; return the path and decisions."""
    policy.reset(np.random.default_rng(seed))
    pos, path, decisions = np.array(pos, float), [], []
    for step in range(max_steps):
        d = policy.decide(_obs(step=step, max_steps=max_steps, pos=pos))
        decisions.append(d)
        if d.close:
            break
        pos = pos + d.motion[:3]
        path.append(pos.copy())
    return np.array(path), decisions


def test_random_descent_reaches_the_floor_at_its_target_and_closes():
    policy = RandomDescentPolicy()
    targets = []
    for seed in range(5):
        path, decisions = _run(policy, (0.6, 0.0, 0.3), max_steps=20, seed=seed)
        assert decisions[-1].close and not any(d.close for d in decisions[:-1])
        target = policy.target
        targets.append(target)
        assert np.all(target[:2] >= WS_MIN[:2]) and np.all(target[:2] <= WS_MAX[:2])
        np.testing.assert_allclose(path[-1], target, atol=0.005)
        assert path[-1][2] < 0.01
        yaw = sum(d.motion[3] for d in decisions)
        assert abs(yaw) <= math.pi / 2 + 1e-9
    assert len({tuple(np.round(t, 4)) for t in targets}) == 5  # a new spot every attempt


def test_any_height_descent_closes_in_the_air_in_its_share_of_attempts():
    from fleet.policy.exploration import AnyHeightDescentPolicy, DescentConfig
    policy = AnyHeightDescentPolicy()
    assert policy.config.any_height_share == AnyHeightDescentPolicy.DEFAULT_SHARE
    heights = []
    for seed in range(200):
        path, decisions = _run(policy, (0.6, 0.0, 0.3), max_steps=20, seed=seed)
        # it closes where it aimed, once, and never above where it started
        assert decisions[-1].close and not any(d.close for d in decisions[:-1])
        np.testing.assert_allclose(path[-1], policy.target, atol=0.005)
        heights.append(path[-1][2])
    heights = np.array(heights)
    in_air = heights > 0.01
    assert 0.2 < in_air.mean() < 0.4  # the default 30% share
    assert heights.max() <= 0.3 + 1e-9 and np.ptp(heights[in_air]) > 0.15  # spread over 0-0.3 m
    # plain random descent never closes in the air, and the share is checked
    assert all(_run(RandomDescentPolicy(), (0.6, 0.0, 0.3), 20, s)[0][-1][2] < 0.01
               for s in range(20))
    with pytest.raises(ValueError, match="any_height_share"):
        DescentConfig(any_height_share=1.5)


def test_random_policy_stays_bounded_and_closes_at_the_end():
    path, decisions = _run(RandomPolicy(), (0.6, 0.0, 0.3), max_steps=15)
    assert decisions[-1].close and len(decisions) == 15
    assert np.all(path >= WS_MIN - 1e-12) and np.all(path <= WS_MAX + 1e-12)
    assert path[-1][2] < 0.3  # the downward bias takes it towards the objects


def test_mixed_policy_explores_the_configured_share():
    learned = GraspPolicy(FixedScorer(p_noop=0.6, p_best=0.6), version=7)
    mixed = MixedPolicy(learned, RandomDescentPolicy(), exploration_share=0.25)
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(400):
        mixed.reset(rng)
        kinds.append(mixed.kind)
    assert 0.18 < kinds.count("scripted") / 400 < 0.32
    assert mixed.version == 7


def test_table_camera_centre_ray_meets_the_table_at_the_camera_target():
    from fleet.policy.geometry import TableCamera
    cam = TableCamera()
    xy = cam.table_points(np.array([31.5]), np.array([31.5]), 64, 64, cam.target[2])
    np.testing.assert_allclose(xy[0], cam.target[:2], atol=1e-9)
    # rows further down the image look nearer the camera (smaller x here)
    near, far = cam.table_points(np.array([60, 5]), np.array([32, 32]), 64, 64, 0.03)
    assert near[0] < far[0]


def test_aimed_descent_aims_at_the_coloured_object_else_at_random():
    from fleet.policy.exploration import AimConfig, AimedDescentPolicy
    from fleet.policy.geometry import TableCamera
    cam = TableCamera()
    image = np.full((64, 64, 3), 90, np.uint8)  # a grey tray
    image[40:43, 30:33] = (200, 30, 30)  # one red object
    floor = 0.0
    expected = cam.table_points(np.array([41]), np.array([31]), 64, 64, floor + 0.015)[0]
    policy = AimedDescentPolicy(aim=AimConfig(aim_noise=0.0, random_share=0.0))
    policy.reset(np.random.default_rng(0))
    policy.decide(_obs(pos=(0.6, 0.0, 0.3), image=image))
    np.testing.assert_allclose(policy.target[:2], expected, atol=0.02)
    grey = np.full((64, 64, 3), 90, np.uint8)
    spots = set()
    for seed in range(3):  # nothing coloured: a random spot, like RandomDescentPolicy
        policy.reset(np.random.default_rng(seed))
        policy.decide(_obs(pos=(0.6, 0.0, 0.3), image=grey))
        spots.add(tuple(np.round(policy.target[:2], 4)))
    assert len(spots) == 3
