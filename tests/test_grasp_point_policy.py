"""The grasp-point policy as robots and tools use it: CEM over (x, y, yaw) and its choice
rules on a known score landscape, the kind the evaluation and the robot runtime give each
architecture, and benchmarks/grasp_failures.py run as a user runs it."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from fleet.policy.bundle import save_bundle
from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet
from fleet.methods.grasp_point.policy import GraspPointPolicy, GraspPointPolicyConfig
from fleet.methods.qtopt.gripper_network import GripperQConfig, GripperQNet
from fleet.policy.factory import policy_kind
from test_learner import PYTHON, REPO

CFG = GraspPointConfig()
WS_LO, WS_HI = np.array([0.40, -0.15, 0.027]), np.array([0.70, 0.15, 0.40])


def test_eval_and_runtime_know_the_kind_of_each_architecture(tmp_path):
    from fleet.evaluation.evaluate import EvalError, expand_policies

    torch.manual_seed(0)
    save_bundle(tmp_path / "v4", GraspPointNet(CFG), version=4)
    (run_,) = expand_policies([tmp_path / "v4"], 64)
    assert run_.kind == "grasp_point" and run_.version == 4
    camera = {"camera_eye": list(CFG.camera_eye), "camera_target": list(CFG.camera_target),
              "camera_fov_deg": CFG.camera_fov_deg}
    assert expand_policies([tmp_path / "v4"], 64, camera)  # its own camera: accepted
    with pytest.raises(EvalError, match="trained for another camera.*camera_fov_deg"):
        expand_policies([tmp_path / "v4"], 64, {**camera, "camera_fov_deg": 60.0})
    assert policy_kind("grasp_success_cnn") == "cem"
    with pytest.raises(ValueError, match="no servo policy"):
        policy_kind("qt_opt_q")


class _Landscape:
    """A known score landscape over (x, y, yaw) in place of the network (same interface as
    GraspPointScorer): a tall, needle-thin peak and a slightly lower broad hill."""

    needle, hill = np.array([0.45, -0.10]), np.array([0.62, 0.08])

    def prepare(self, image, depth=None):
        def score(grasps: np.ndarray) -> np.ndarray:
            xy = np.asarray(grasps)[:, :2]
            spike = 0.95 * np.exp(-np.sum((xy - self.needle) ** 2, 1) / (2 * 0.001 ** 2))
            broad = 0.85 * np.exp(-np.sum((xy - self.hill) ** 2, 1) / (2 * 0.03 ** 2))
            return np.maximum(spike, broad)
        return score


def test_cem_finds_a_peak_and_the_robust_choice_prefers_the_broad_one():
    policy = GraspPointPolicy(GraspPointNet(CFG), GraspPointPolicyConfig(robust_samples=8))
    policy.scorer = _Landscape()
    image = np.zeros((64, 64, 3), np.uint8)
    for seed in range(4):  # CEM climbs the broad hill from the workspace centre
        policy.reset(np.random.default_rng(seed))
        grasp, p = policy.choose_grasp(image, WS_LO, WS_HI)
        assert np.linalg.norm(grasp[:2] - _Landscape.hill) < 0.01 and p > 0.8
    # given both peaks as candidates, the best single score is the needle's; the robust
    # choice (mean over +-5 mm perturbations) takes the hill
    score = _Landscape().prepare(image)
    candidates = np.array([[*_Landscape.needle, 0.0], [*_Landscape.hill, 0.3]])
    scores = score(candidates)
    assert scores[0] > scores[1]
    best, mean = policy._robust_choice(score, candidates, scores, WS_LO, WS_HI)
    np.testing.assert_allclose(best, candidates[1])
    assert 0.7 < mean < scores[1]


def test_explore_top_draws_among_the_best_samples():
    policy = GraspPointPolicy(GraspPointNet(CFG), GraspPointPolicyConfig(explore_top=1.0))
    policy.scorer = _Landscape()
    picks = set()
    for seed in range(8):
        policy.reset(np.random.default_rng(seed))
        grasp, p = policy.choose_grasp(np.zeros((64, 64, 3), np.uint8), WS_LO, WS_HI)
        assert p > 0.5  # one of the top samples, never a poor one
        picks.add(tuple(np.round(grasp, 4)))
    assert len(picks) == 8  # and not always the same


@pytest.mark.parametrize("method", ["grasp_point", "qtopt"])
def test_failure_diagnostic_measures_a_bundle_against_the_planner(tmp_path, method):
    """benchmarks/grasp_failures.py as a user runs it, on a tiny budget: the bundle's grasps
    and the privileged planner's on the same test scenes, with the per-grasp geometry; for a
    QT-Opt bundle (closed loop) the grasp is where the gripper closed, and when it closed."""
    torch.manual_seed(0)
    net = GraspPointNet(GraspPointConfig(image_height=64, image_width=64)) \
        if method == "grasp_point" else \
        GripperQNet(GripperQConfig(image_height=64, image_width=64, use_depth=True))
    save_bundle(tmp_path / "v2", net, version=2)
    out = tmp_path / "failures.json"
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "grasp_failures.py"), "--policy", str(tmp_path / "v2"),
         "--attempts", "2", "--chunk", "1", "--workers", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "privileged planner on the same scenes" in done.stdout
    summary = json.loads(out.read_text())
    assert summary["attempts"] == summary["planner_attempts"] == 2
    assert sum(b["attempts"] for b in summary["by_distance_to_object_centre"]) == 2
    assert 0.0 <= summary["on_an_object_share"] <= 1.0
    closes = [k for k in summary if k.startswith("close_step_median")]
    assert len(closes) == (2 if method == "qtopt" else 0)
    assert ("closes: median step" in done.stdout) == (method == "qtopt")
    if method == "grasp_point":
        return
    bad = subprocess.run([PYTHON, str(REPO / "benchmarks" / "grasp_failures.py"), "--policy",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "pass a bundle directory" in bad.stderr
    # Without --policy only the planner runs, on the scene seeds a bundle run uses.
    alone = tmp_path / "planner.json"
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "grasp_failures.py"), "--image-size", "64",
         "--attempts", "2", "--chunk", "1", "--workers", "1", "--json", str(alone)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("privileged planner: success")
    planner = json.loads(alone.read_text())
    assert planner["planner_attempts"] == 2 and planner["policy"] is None
    assert planner["image_size"] == 64 and planner["num_objects"] == 5
    lo, hi = planner["planner_ci95"]
    assert lo <= planner["planner_success"] <= hi


@pytest.mark.slow
def test_grasp_point_study_quick_compares_variants_on_the_same_scenes(tmp_path):
    """benchmarks/grasp_point_study.py --quick as a user runs it: exploration data, then per
    variant train, evaluate on test objects, collect with its own policy; a table and the
    headline as the last line, and the JSON per variant and round."""
    out = tmp_path / "study.json"
    done = subprocess.run(
        [PYTHON, str(REPO / "benchmarks" / "grasp_point_study.py"), "--quick",
         "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("grasp_point_study: ") and last.endswith("(target > 1)"), last
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"rgb", "rgbd"}
    for rows in results.values():
        assert [r["attempts"] for r in rows] == sorted(r["attempts"] for r in rows)
        assert len(rows) == 2 and all(0 < r["n"] <= 10 for r in rows)
        assert all(r["ci95"][0] <= r["success"] <= r["ci95"][1] for r in rows)
    assert list((tmp_path / "cache").glob("explore-v2-40-1-128.npz"))
