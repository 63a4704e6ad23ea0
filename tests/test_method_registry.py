"""The method registry: built-in methods found by name and architecture, a third method added
from tests/ only (tests/tiny_method.py) trained through the real learner loop and run by
robot_node's policy runtime, `fleet learn` as a subcommand, and robots that never import
training code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_method
from fleet.cli import build_parser
from fleet.learner.checkpoint import load_checkpoint
from fleet.learner.config import LearnerConfig
from fleet.learner.loop import run
from fleet.registry import (DEFAULT_METHOD, Method, MethodError, by_architecture,
                                    get_method, method_names, methods, register, unregister)
from fleet.policy.base import Observation
from fleet.policy.bundle import load_bundle
from fleet.policy.factory import ServoSettings, policy_for, policy_kind
from fleet.policy.folder import read_pointer
from robot_node.params import NodeConfig
from robot_node.policy_runtime import PolicyRuntime
from test_learner import build_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny():
    register(tiny_method.TINY)
    try:
        yield tiny_method.TINY
    finally:
        unregister(tiny_method.TINY.name)


def test_builtin_methods_agree_with_their_networks_and_policies():
    assert {"grasp_point", "levine", "qtopt"} <= set(method_names())
    assert DEFAULT_METHOD == "grasp_point"
    for name, method in methods().items():
        net = method.build_network({})  # the config's defaults
        assert net.architecture == method.architecture, name
        assert by_architecture(method.architecture) is method
        assert policy_kind(method.architecture) == method.policy_kind
        policy = policy_for(net, 3, ServoSettings())
        assert policy.kind == method.policy_kind and policy.version == 3


def test_cem_iterations_zero_leaves_the_count_to_each_method():
    """robot_node's cem_iterations 0 (the default) is each paper's own count: Levine 3,
    QT-Opt 2; a robot's explicit count wins for both."""
    for name, own in (("levine", 3), ("qtopt", 2)):
        net = get_method(name).build_network({})
        assert policy_for(net, 1, ServoSettings()).config.cem.iterations == own, name
        assert policy_for(net, 1, ServoSettings(cem_iterations=4)).config.cem.iterations == 4
    assert NodeConfig(arm_id="a").cem_iterations == 0


def test_unknown_names_and_clashes_say_what_exists():
    with pytest.raises(ValueError,
                       match=r"unknown learning method 'no_such_method'.*grasp_point.*levine"):
        LearnerConfig(data=Path("d"), out=Path("o"), method="no_such_method")
    with pytest.raises(MethodError, match="unknown architecture 'nope'"):
        by_architecture("nope")
    clash = Method(name="other", architecture=get_method("levine").architecture,
                   policy_kind="x", network="a:b", policy="a:b", learner="a:b")
    with pytest.raises(MethodError, match="clashes with the registered 'levine'"):
        register(clash)
    register(get_method("levine"))  # the same method again: a no-op


def test_a_third_method_from_tests_trains_in_the_learner_loop_and_runs_on_a_robot(
        tiny, tmp_path):
    store = build_store(tmp_path / "store", 160)
    assert "tiny" in method_names()
    args = build_parser().parse_args(["learn", "--method", "tiny", "--data", str(store),
                                      "--out", str(tmp_path / "run")])
    assert args.method == "tiny"  # `fleet learn --method` offers every registered method
    cfg = LearnerConfig(method="tiny", data=store, out=tmp_path / "run", steps=300,
                        batch_size=32, lr=3e-3, min_attempts=10, cycle_every_steps=100,
                        tensorboard=False, progress=False)
    summary = run(cfg)
    assert summary["step"] == 300 and summary["published_version"] >= 1
    assert load_checkpoint(cfg.out)["learner_name"] == "tiny_supervised"
    pointer = read_pointer(cfg.out)
    model, meta = load_bundle(cfg.out / "policies" / f"v{pointer['version']}")
    assert isinstance(model, tiny_method.TinyNet) and meta.architecture == "test_tiny_mlp"
    assert meta.metrics["val_auc"] > 0.9, meta.metrics  # success iff closed below z = 0.1

    # robot_node's policy runtime picks the newest bundle and runs the method's policy
    rt = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(cfg.out / "policies"),
                                  depth_topic="none", image_height=64, image_width=64))
    assert "loaded policy bundle" in rt.poll(force=True)
    assert rt.version == pointer["version"] and rt.learned.kind == "tiny"
    policy = rt.learned
    policy.reset(np.random.default_rng(0))
    pose = np.array([0.5, 0.0, 0.25, 0.0, 0.0, 0.0, 1.0])
    lo, hi = np.array([0.3, -0.2, 0.0]), np.array([0.7, 0.2, 0.3])
    for step in range(12):
        d = policy.decide(Observation(np.full((64, 64, 3), 90, np.uint8), pose, step, 12, lo, hi))
        if d.close:
            break
        pose = pose.copy()
        pose[:3] += d.motion[:3]
    assert d.close and pose[2] < 0.1  # it learned to close low, where grasps succeed
    assert policy_kind(meta.architecture) == "tiny"  # what `fleet eval` expects it to record


def test_fleet_learn_is_a_subcommand_with_the_learners_flags(tmp_path):
    store = build_store(tmp_path / "store", 40)
    out = tmp_path / "run"
    r = subprocess.run([str(Path(sys.executable).parent / "fleet"), "learn", "--method",
                        "levine", "--data", str(store), "--out", str(out), "--steps", "20",
                        "--batch-size", "8", "--min-attempts", "10", "--no-tensorboard",
                        "--no-progress", "--workers", "0"],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_pointer(out)["version"] >= 1
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 20
    bad = subprocess.run([sys.executable, "-m", "fleet.cli", "learn", "--method",
                          "no_such_method", "--data", str(store), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'no_such_method'" in bad.stderr


@pytest.mark.parametrize("method,net,config", [("grasp_point", "GraspPointNet", "GraspPointConfig"),
                                                ("qtopt", "QNet", "QNetConfig")])
def test_a_robot_loading_a_bundle_imports_no_training_code(tmp_path, method, net, config):
    """LeRobot's rule: a factory keyed by name imports a method lazily, so robots never import
    training code (the learner loop, the supervised base, a method's learner.py, QT-Opt's
    Bellman updaters)."""
    script = f"""
import sys, torch
from fleet.methods.{method}.network import {net}, {config}
from fleet.policy.bundle import save_bundle
save_bundle({str(tmp_path / 'v1')!r}, {net}({config}()), version=1)
for name in list(sys.modules):
    if name.startswith("fleet.methods.{method}"):
        del sys.modules[name]
from robot_node.params import NodeConfig
from robot_node.policy_runtime import PolicyRuntime
rt = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path={str(tmp_path)!r}, depth_topic="none",
                              image_height=64, image_width=64))
print(rt.poll(force=True))
print(sorted(m for m in sys.modules if m.startswith("fleet.")))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded, modules = r.stdout.strip().splitlines()[-2:]
    assert "loaded policy bundle" in loaded
    imported = eval(modules)
    assert f"fleet.methods.{method}.policy" in imported
    training = [m for m in imported if m.startswith("fleet.learner") or m.endswith(
        (".learner", ".bellman"))]
    assert training == [], training
