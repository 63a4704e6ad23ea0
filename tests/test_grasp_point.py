"""The grasp-point method: the learner on a real store with real worker processes, its
replay-ratio cap under a real signal, and the policy a robot builds from the bundle it
publishes (its patches' camera geometry and symmetries: tests/test_patches.py).

The synthetic store makes the label learnable from I_0 alone: each attempt's first image holds
one coloured disc on grey at a random place on the table, and the grasp succeeds iff the
gripper closed within 1 cm of it (failures: near misses 2.5-5 cm off, or anywhere else). Later steps' images are noise, so a learner that looked at
any step but the first could not learn the rule.
"""
from __future__ import annotations

import math
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fleet.policy.bundle import load_bundle
from fleet.learner.checkpoint import load_checkpoint
from fleet.learner.dataset import labelled_attempt_counts
from fleet.policy.geometry import TableCamera
from fleet.methods.grasp_point.network import GraspPointConfig
from fleet.methods.grasp_point.learner import GraspPointCollate, closing_grasps
from fleet.methods.grasp_point.policy import GraspPointPolicy
from fleet.learner.config import LearnerConfig
from fleet.learner.loop import run
from fleet.policy.factory import policy_for, policy_kind
from fleet.learner.publish_rule import fleet_record
from fleet.wire.records import Attempt, Step, encode
from fleet.store.writer import Store, StoreConfig
from fleet.store.reader import StoreReader
from robot_node.params import NodeConfig
from robot_node.policy_runtime import PolicyRuntime
from test_learner import PYTHON, REPO, rank_file

CFG = GraspPointConfig()
WS_LO, WS_HI = np.array([0.40, -0.15, 0.027]), np.array([0.70, 0.15, 0.40])


def top_down(x: float, y: float, z: float, yaw: float) -> tuple[float, ...]:
    """A pose pointing down, turned by yaw (the sim's and robot_node's convention)."""
    return (x, y, z, math.cos(yaw / 2), math.sin(yaw / 2), 0.0, 0.0)


def disc_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with one coloured disc, and the disc's (x, y) on the patch plane."""
    while True:
        row, col = (int(v) for v in rng.integers(20, size - 12, 2))
        xy = TableCamera().table_points(np.array([row]), np.array([col]), size, size,
                                        CFG.patch_planes[0])[0]
        if np.all((xy > WS_LO[:2] + 0.03) & (xy < WS_HI[:2] - 0.03)):
            break
    img = np.full((size, size, 3), 90, np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    cv2.circle(img, (col, row), 3, colour, -1)
    return img, xy


def jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def synthetic_attempt(rng: np.random.Generator) -> Attempt:
    img, disc = disc_image(rng)
    success = bool(rng.random() < 0.5)
    if success:
        grasp = disc + rng.uniform(-0.01, 0.01, 2)
    elif rng.random() < 0.5:  # a near miss: 2.5-5 cm off
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.025, 0.05)
        grasp = disc + radius * np.array([np.cos(angle), np.sin(angle)])
    else:
        while np.linalg.norm((grasp := rng.uniform(WS_LO[:2], WS_HI[:2])) - disc) < 0.05:
            pass
    yaw = float(rng.uniform(-np.pi / 2, np.pi / 2))
    steps = [Step(jpeg(img), top_down(0.55, 0.0, 0.3, 0.0), (0.0, 0.0, -0.05, 0.0), 0.08, 0.0)]
    for i in range(1, 4):
        noise = rng.integers(0, 256, img.shape, dtype=np.uint8)
        steps.append(Step(jpeg(noise), top_down(0.55, 0.0, 0.3 - 0.05 * i, 0.0),
                          (0.0, 0.0, -0.05, 0.0), 0.08, 0.1 * i))
    now = time.time()
    return Attempt(f"arm-{int(rng.integers(2))}", 0, "scripted", steps,
                   "success" if success else "failure",
                   top_down(float(grasp[0]), float(grasp[1]), 0.03, yaw), 0.02, now - 2, now,
                   image_height=64, image_width=64)


def append_attempts(store: Store, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store.append([(a, encode(a)) for a in (synthetic_attempt(rng) for _ in range(n))])


@pytest.fixture(scope="module")
def disc_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disc_store")
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        append_attempts(store, 400, seed=0)
    return root


# -- the collate and the learner --------------------------------------------------------------

def test_collate_takes_the_first_step_and_the_closing_pose(disc_store):
    reader = StoreReader(disc_store)
    samples = reader.sample_steps(8, np.random.default_rng(1), first_step_only=True)
    assert {s.step for s in samples} == {0}
    batch = GraspPointCollate(64, 64)(samples)
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.uint8
    np.testing.assert_allclose(batch["grasp"].numpy(),
                               closing_grasps(np.stack([s.final_pose for s in samples])))
    later = reader.sample_steps(50, np.random.default_rng(2))
    with pytest.raises(ValueError, match="first step"):
        GraspPointCollate(64, 64)([s for s in later if s.step > 0][:2])
    reader.close()


# -- the learner and the policy it publishes ---------------------------------------------------

@pytest.mark.slow
def test_learner_learns_where_to_grasp_and_robots_run_its_bundle(disc_store, tmp_path):
    cfg = LearnerConfig(data=disc_store, out=tmp_path / "run", steps=300, batch_size=32,
                        min_attempts=10, cycle_every_steps=100, log_every_steps=50,
                        tensorboard=False, progress=False)
    assert cfg.method == "grasp_point"  # the default method
    summary = run(cfg)
    assert summary["step"] == 300 and summary["published_version"] >= 1
    model, meta = load_bundle(cfg.out / "policies" / f"v{summary['published_version']}",
                              {"image_height": 64, "image_width": 64})
    assert meta.architecture == "grasp_point_cnn" and meta.metrics["val_auc"] > 0.9
    assert meta.metrics["learner"] == "grasp_point_supervised"
    # the policy a robot builds from it aims at the disc in a scene it has never seen
    policy = policy_for(model, meta.version)
    assert isinstance(policy, GraspPointPolicy) and policy.kind == policy_kind(meta.architecture)
    rng = np.random.default_rng(99)
    misses = []
    for _ in range(5):
        img, disc = disc_image(rng)
        policy.reset(rng)
        grasp, p = policy.choose_grasp(img, WS_LO, WS_HI)
        misses.append(float(np.linalg.norm(grasp[:2] - disc)))
    assert np.median(misses) < 0.02, misses
    # robot_node's runtime loads the same bundle and records the attempts' kind
    rt = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(cfg.out / "policies"),
                                  exploration_share=0.0))
    assert "version" in rt.poll(force=True)
    assert rt.current().kind == "grasp_point" and rt.version == meta.version


@pytest.mark.slow
def test_replay_ratio_cap_waits_for_the_fleet_then_trains_on_and_stops_on_sigterm(tmp_path):
    root, out = tmp_path / "store", tmp_path / "run"
    store = Store(StoreConfig(root=root, min_free_bytes=0, shard_max_seconds=0.3,
                              roll_interval=0.1))
    ratio, batch = 8, 16
    proc = None

    def training_attempts(total: int) -> int:
        """Training attempts once the store shows `total` (rolled into shards)."""
        deadline = time.monotonic() + 30
        while True:
            reader = StoreReader(root)
            try:
                if reader.num_attempts() == total:
                    return labelled_attempt_counts(reader, 0.1)[0]
            finally:
                reader.close()
            assert time.monotonic() < deadline, f"store never showed {total} attempts"
            time.sleep(0.1)

    try:
        append_attempts(store, 40, seed=1)
        first = training_attempts(40)
        proc = subprocess.Popen(
            [PYTHON, "-m", "fleet.learner", "--data", str(root), "--out", str(out),
             "--batch-size", str(batch), "--samples-per-attempt", str(ratio),
             "--min-attempts", "30", "--cycle-every-steps", "1000",
             "--cycle-every-seconds", "1", "--poll-seconds", "0.2",
             "--refresh-seconds", "0.5", "--no-tensorboard", "--no-progress"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                         daemon=True).start()

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 90
            while not any(text in line for line in lines):
                assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)

        wait_for(f"{math.ceil(ratio * first / batch) * batch} samples drawn for {first} "
                 f"training attempts")
        append_attempts(store, 40, seed=2)
        second = training_attempts(80)
        # it trains on to the new cap; the cycle it runs while waiting checkpoints that step
        deadline = time.monotonic() + 90
        while (load_checkpoint(out) or {}).get("step") != math.ceil(ratio * second / batch):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        time.sleep(1.0)  # it stays put while no data comes
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "SIGTERM received" in log
    # it trained exactly up to the cap: the first step with steps * batch >= ratio * attempts
    assert load_checkpoint(out)["step"] == rank_file(out)["step"] == \
        math.ceil(ratio * second / batch)


def test_publish_rule_counts_any_learned_kind(tmp_path):
    rng = np.random.default_rng(3)
    attempts = []
    for kind, version, n, wins in (("grasp_point", 1, 20, 15), ("scripted", 1, 10, 2),
                                   ("cem", 2, 5, 1)):
        for i in range(n):
            a = synthetic_attempt(rng)
            a.policy_kind, a.policy_version = kind, version
            a.outcome = "success" if i < wins else "failure"
            attempts.append(a)
    with Store(StoreConfig(root=tmp_path, min_free_bytes=0)) as store:
        store.append([(a, encode(a)) for a in attempts])
    reader = StoreReader(tmp_path)
    r1, r2 = fleet_record(reader, 1), fleet_record(reader, 2)
    assert (r1.learned_attempts, r1.learned_successes) == (20, 15)
    assert (r1.exploration_attempts, r1.exploration_successes) == (10, 2)
    assert (r2.learned_attempts, r2.learned_successes) == (5, 1)
    reader.close()


def test_weight_average_is_what_is_validated_published_and_checkpointed(disc_store):
    """ema_decay > 0: network() (what is validated and written into bundles) is the moving
    average of the weights, a different module from the one Adam steps; a checkpoint restores
    both, and an old checkpoint without the average starts it from its weights."""
    from fleet.learner.config import TrainingOptions
    from fleet.methods.grasp_point.learner import GraspPointLearner

    reader = StoreReader(disc_store)
    collate = GraspPointCollate(64, 64)
    batches = [collate(reader.sample_steps(16, np.random.default_rng(k), first_step_only=True))
               for k in range(6)]
    reader.close()

    def learner(decay: float) -> GraspPointLearner:
        torch.manual_seed(0)
        return GraspPointLearner(CFG, 1e-2, 0.0, torch.device("cpu"),
                                 TrainingOptions(ema_decay=decay))

    plain, averaged = learner(0.0), learner(0.9)
    assert plain.network() is plain.net and averaged.network() is not averaged.net
    for b in batches:
        plain.train_step(b)
        averaged.train_step(b)
    latest, mean = averaged.net.fc[-1].weight, averaged.network().fc[-1].weight
    torch.testing.assert_close(latest, plain.net.fc[-1].weight)  # same training either way
    assert not torch.allclose(latest, mean), "the average must lag the latest weights"
    assert averaged.evaluate(batches[:2]) == averaged.evaluate(batches[:2], averaged.network())
    resumed = learner(0.9)
    resumed.load_state_dict(averaged.state_dict())
    torch.testing.assert_close(resumed.network().fc[-1].weight, mean)
    upgraded = learner(0.9)
    upgraded.load_state_dict(plain.state_dict())
    torch.testing.assert_close(upgraded.network().fc[-1].weight, plain.net.fc[-1].weight)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingOptions(ema_decay=1.0)


def test_learner_flags_set_the_networks_camera_model():
    """`fleet learn --camera-*` (what fleet sim passes from arms.yaml) reaches the network."""
    import argparse

    from fleet.learner.cli import add_arguments, config_from_args
    from fleet.learner.loop import make_learner

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--image-size", "64",
                              "--camera-eye", "0.1", "-0.4", "0.8", "--camera-fov-deg", "31"])
    learner = make_learner(config_from_args(args), torch.device("cpu"))
    net = learner.net
    assert net.config.camera_eye == (0.1, -0.4, 0.8) and net.config.camera_fov_deg == 31.0
    assert net.config.camera_target == GraspPointConfig().camera_target
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--camera-eye", "0.1", "0.2"])


def test_validation_window_moves_with_the_fleet_or_stays_first(tmp_path):
    from fleet.learner.dataset import ValidationSet, is_validation

    store = Store(StoreConfig(root=tmp_path, min_free_bytes=0, shard_max_seconds=0.2,
                              roll_interval=0.05))
    try:
        append_attempts(store, 120, seed=4)
        deadline = time.monotonic() + 20
        reader = StoreReader(tmp_path)
        while reader.num_attempts() < 120:
            assert time.monotonic() < deadline
            time.sleep(0.1)
            reader.refresh()
        collate = GraspPointCollate(64, 64)
        newest = ValidationSet(reader, collate, 0.2, 8, 4, first_step_only=True, newest=True)
        first = ValidationSet(reader, collate, 0.2, 8, 4, first_step_only=True)
        held = lambda: [a for a in reader.attempts()["attempt_id"].to_pylist()  # noqa: E731
                        if is_validation(a, 0.2)]
        assert newest.update() == 8 and first.update() == 8
        assert newest.attempt_ids == held()[-8:] and first.attempt_ids == held()[:8]
        assert newest.examples == 8 and sum(len(b["label"]) for b in newest.batches()) == 8
        append_attempts(store, 120, seed=5)
        while reader.num_attempts() < 240:
            assert time.monotonic() < deadline + 20
            time.sleep(0.1)
            reader.refresh()
        assert newest.update() == 8 and newest.attempt_ids == held()[-8:]
        assert first.update() == 0 and first.attempt_ids == held()[:8]
        assert newest.update() == 0  # nothing new: nothing re-read
        reader.close()
    finally:
        store.close()
