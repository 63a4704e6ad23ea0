"""The learner on real stores, real worker processes, real files and real signals.

The synthetic data set makes the label learnable: the gripper always starts 0.25 m up and the
grasp succeeds iff it closed below z = 0.1 m, so the label is a function of the target motion's
dz. Images are real JPEGs (a coloured blob on grey), decoded in DataLoader workers. These tests run
the Levine learner (`--method levine`): they test the machinery every method shares; the
grasp-point learner has its own tests (tests/test_grasp_point.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fleet.cli import main as cli_main
from fleet.policy.bundle import load_bundle, save_bundle
from fleet.learner.checkpoint import load_checkpoint
from fleet.policy.folder import read_pointer
from fleet.learner.dataset import (StoreBatches, ValidationSet, grasp_motions, is_validation,
                                   stream_batches)
from fleet.policy.geometry import quaternion_yaw
from fleet.learner.config import LearnerConfig
from fleet.methods.levine.learner import LevineCollate
from fleet.methods.levine.network import GraspSuccessNet
from fleet.learner.loop import run
from fleet.learner.api import binary_auc
from fleet.learner.publish_rule import fleet_record, losing_to_exploration, version_records
from fleet.wire.records import Attempt, Step, encode
from fleet.store.writer import Store, StoreConfig
from fleet.store.reader import StoreReader

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def synthetic_attempt(rng: np.random.Generator, size: int = 64, n_steps: int = 6) -> Attempt:
    z_final = float(rng.uniform(0.0, 0.2))
    final = (float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)), z_final,
             0.0, 0.0, 0.0, 1.0)
    steps = []
    for i in range(n_steps):
        img = np.full((size, size, 3), 90, np.uint8)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, tuple(int(c) for c in rng.integers(8, size - 8, 2)), 6, colour, -1)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        yaw = float(rng.uniform(-1.0, 1.0))
        pose = (float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)), 0.25,
                0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2)))
        steps.append(Step(jpeg.tobytes(), pose, (0.0, 0.0, -0.02, 0.0), 0.08, i * 0.2))
    now = time.time()
    return Attempt(f"arm-{int(rng.integers(3))}", 0, "scripted", steps,
                   "success" if z_final < 0.1 else "failure", final, 0.02, now - 2, now,
                   image_height=size, image_width=size)


def append_attempts(store: Store, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    attempts = [synthetic_attempt(rng) for _ in range(n)]
    store.append([(a, encode(a)) for a in attempts])


def build_store(root: Path, n: int, seed: int = 0, aborted: int = 0) -> Path:
    """A closed store of n labelled (+ aborted) synthetic attempts, all rolled into shards."""
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        append_attempts(store, n, seed)
        rng = np.random.default_rng(seed + 1000)
        extra = [synthetic_attempt(rng) for _ in range(aborted)]
        for a in extra:
            a.outcome = "aborted"
        if extra:
            store.append([(a, encode(a)) for a in extra])
    return root


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"), 240, aborted=10)


def learner_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "fleet.learner", "--data", str(data), "--out", str(out),
            "--method", "levine", "--batch-size", "16", "--min-attempts", "10", "--no-tensorboard", "--no-progress",
            *extra]


def rank_file(out: Path, rank: int = 0) -> dict:
    return json.loads((out / "ranks" / f"rank{rank}.json").read_text())


# -- pieces --------------------------------------------------------------------------------------

def test_targets_split_and_auc():
    half_turn = np.array([[0, 0, 0.3, 0, 0, np.sin(1.5), np.cos(1.5)]])  # yaw 3.0
    final = np.array([[0.1, -0.2, 0.05, 0, 0, np.sin(-1.5), np.cos(-1.5)]])  # yaw -3.0
    v = grasp_motions(half_turn, final)[0]
    np.testing.assert_allclose(v[:3], [0.1, -0.2, -0.25], atol=1e-6)
    assert v[3] == pytest.approx(2 * np.pi - 6.0, abs=1e-5)  # wrapped, not -6.0
    assert quaternion_yaw(np.array([0, 0, np.sin(0.4), np.cos(0.4)])) == pytest.approx(0.8)
    ids = [f"attempt-{i}" for i in range(4000)]
    held = sum(is_validation(i, 0.1) for i in ids)
    assert 300 < held < 500 and is_validation(ids[7], 0.1) == is_validation(ids[7], 0.1)
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert binary_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5  # a tie counts half
    assert np.isnan(binary_auc(np.array([1.0, 2.0]), np.array([1, 1])))


def fleet_evidence_store(root: Path) -> StoreReader:
    """v1 grasps 3/60 and closes high after 2 steps, v2 30/60 low after 6; exploration 15/60
    under v1 (8/30) and before it (7/30); one aborted v1 attempt."""
    rng = np.random.default_rng(5)
    attempts = []
    for kind, version, n, wins in (("cem", 1, 60, 3), ("scripted", 1, 30, 8),
                                   ("scripted", 0, 30, 7), ("cem", 2, 60, 30)):
        for i in range(n):
            a = synthetic_attempt(rng, n_steps=2 if version == 1 and kind == "cem" else 6)
            a.policy_kind, a.policy_version = kind, version
            a.outcome = "success" if i < wins else "failure"
            a.final_pose = (0.0, 0.0, 0.28 if version == 1 else 0.02, 0.0, 0.0, 0.0, 1.0)
            attempts.append(a)
    aborted = synthetic_attempt(rng)
    aborted.policy_kind, aborted.policy_version, aborted.outcome = "cem", 1, "aborted"
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        store.append([(a, encode(a)) for a in attempts + [aborted]])
    return StoreReader(root)


def test_a_version_grasping_less_than_exploration_is_flagged(tmp_path):
    """The publish rule's fleet evidence, counted from a real store's index."""
    reader = fleet_evidence_store(tmp_path)
    record = fleet_record(reader, 1)
    assert (record.learned_attempts, record.learned_successes) == (60, 3)  # aborted left out
    assert (record.exploration_attempts, record.exploration_successes) == (60, 15)
    assert "3/60" in losing_to_exploration(reader, 1, min_attempts=50)
    assert losing_to_exploration(reader, 1, min_attempts=61) is None  # too little evidence
    assert losing_to_exploration(reader, 1, min_attempts=0) is None  # rule off
    assert losing_to_exploration(reader, 2, min_attempts=50) is None  # 0.50 beats 0.25


def test_policy_list_shows_each_versions_fleet_record(tmp_path, capsys):
    """`fleet policy list --store`: what an operator reads before pinning, per version."""
    reader = fleet_evidence_store(tmp_path / "store")
    records = version_records(reader)
    assert sorted(records) == [0, 1, 2]
    v1, v2 = records[1], records[2]
    assert (v1.learned_attempts, v1.learned_successes, v1.median_steps) == (60, 3, 2.0)
    assert (v1.exploration_attempts, v1.exploration_successes) == (30, 8)  # its own hours
    assert v1.median_close_z == pytest.approx(0.28) and v2.median_close_z == pytest.approx(0.02)
    assert (v2.learned_attempts, v2.exploration_attempts, v2.median_steps) == (60, 0, 6.0)
    assert (records[0].learned_attempts, records[0].exploration_attempts) == (0, 30)

    policies = tmp_path / "policies"
    for version in (1, 2, 3):
        save_bundle(policies / f"v{version}", GraspSuccessNet(), version=version)
    code = cli_main(["policy", "list", "--policies", str(policies),
                     "--store", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert code == 0
    rows = {int(line.split()[0]): line.split() for line in out.splitlines()
            if line.split() and line.split()[0].isdigit()}
    assert rows[1][3:8] == ["60", "0.05", "0.27", "2", "0.280"]
    assert "BELOW-EXPLORATION" in rows[1]  # 0.05 against 0.25 over 60 each: the rule's evidence
    assert rows[2][3:8] == ["60", "0.50", "-", "6", "0.020"]
    assert "BELOW-EXPLORATION" not in rows[2]
    assert rows[3][3:8] == ["0", "-", "-", "-", "-"]  # published, never ran
    assert "before any policy: 30 exploration attempts, success 0.23" in out
    with pytest.raises(SystemExit, match="no attempts/ directory"):
        cli_main(["policy", "list", "--policies", str(policies), "--store", str(tmp_path)])


@pytest.mark.timeout(90)
def test_workers_forked_after_this_process_used_opencvs_pool_still_deliver(store_dir):
    """OpenCV's thread pool is not fork-safe: a worker forked after the parent used it hung in
    its first cv2 call (CI at 84b5521). The stream must stop the pool before it forks."""
    cv2.setNumThreads(2)
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for _ in range(3):  # starts the pool in this process
        cv2.resize(cv2.imdecode(cv2.imencode(".png", big)[1], cv2.IMREAD_COLOR), (1280, 960))
    batches = StoreBatches(store_dir, LevineCollate(64, 64, 0.1), 32, seed=3, rank=0,
                           start_batch=0, val_fraction=0.2)
    stream = stream_batches(batches, workers=2)
    try:
        got = [next(stream) for _ in range(2)]
    finally:
        stream.close()
    assert [b["image"].shape for b in got] == [(32, 3, 64, 64)] * 2


def test_stream_is_deterministic_per_rank_and_excludes_validation(store_dir):
    collate = LevineCollate(64, 64, 0.1)
    reader = StoreReader(store_dir)
    def batches(rank: int, start: int) -> StoreBatches:
        return StoreBatches(store_dir, collate, 32, seed=3, rank=rank, start_batch=start,
                            val_fraction=0.2)
    a = batches(0, 0).training_steps(reader, 5)
    assert [s.attempt_id for s in a] == [s.attempt_id for s in
                                         batches(0, 2).training_steps(reader, 5)]
    assert [s.attempt_id for s in a] != [s.attempt_id for s in
                                         batches(1, 0).training_steps(reader, 5)]
    assert not any(is_validation(s.attempt_id, 0.2) for s in a)
    stream = stream_batches(batches(0, 3), workers=2)  # real worker processes, in order
    got = [next(stream) for _ in range(3)]
    stream.close()
    for k, batch in zip((3, 4, 5), got):
        want = collate(batches(0, 0).training_steps(reader, k))
        assert batch.keys() == want.keys()
        assert all(torch.equal(batch[name], want[name]) for name in want)
    first = got[0]
    assert first["image"].dtype == torch.uint8 and first["image"].shape == (32, 3, 64, 64)
    assert first["motion"].shape == (32, 5) and set(first["label"].tolist()) <= {0.0, 1.0}
    val = ValidationSet(reader, collate, 0.2, max_attempts=1000, batch_size=64)
    val.update()
    assert val.attempt_ids and all(is_validation(i, 0.2) for i in val.attempt_ids)
    aborted = set(reader.attempts(outcome="aborted")["attempt_id"].to_pylist())
    assert aborted and not aborted & set(val.attempt_ids)
    assert val.examples == 6 * len(val.attempt_ids)


# -- training, publishing ------------------------------------------------------------------------

@pytest.mark.slow
def test_training_lowers_validation_loss_and_publishes_loadable_bundles(store_dir, tmp_path):
    published = []
    cfg = LearnerConfig(method="levine", data=store_dir, out=tmp_path / "run", steps=100, batch_size=32,
                        min_attempts=10, cycle_every_steps=10, log_every_steps=20,
                        progress=False)
    summary = run(cfg, publish_fn=lambda path, meta: published.append((path, meta)))
    assert summary["step"] == 100 and not summary["stopped_by_signal"]
    first, last = published[0][1], published[-1][1]
    assert first.version == 1 and last.version == len(published) >= 2
    assert last.metrics["val_loss"] < 0.5 * first.metrics["val_loss"]
    assert last.metrics["val_loss"] < 0.3 and last.metrics["val_auc"] > 0.95
    model, meta = load_bundle(published[-1][0])
    assert meta.sha256 == read_pointer(cfg.out)["sha256"] and meta.trained_on_attempts > 100
    # the network learned the rule: closing low (success) beats closing high (failure)
    from fleet.methods.levine.network import encode_motions
    from fleet.policy.images import images_to_tensor
    img = images_to_tensor(np.full((2, 64, 64, 3), 90, np.uint8))
    logits = model(img, encode_motions(np.array([[0, 0, -0.2, 0], [0, 0, -0.08, 0]]), 0.1))
    assert logits[0] > 0 > logits[1]
    assert any((cfg.out / "tensorboard").iterdir())


@pytest.mark.slow
def test_worse_model_is_not_published(store_dir, tmp_path):
    good = LearnerConfig(method="levine", data=store_dir, out=tmp_path / "good", steps=60, batch_size=32,
                         min_attempts=10, cycle_every_steps=60, tensorboard=False,
                         progress=False)
    run(good)
    out = tmp_path / "candidate"
    (out / "policies").mkdir(parents=True)
    os.symlink(good.out / "policies" / "v1", out / "policies" / "v1")
    (out / "policies" / "latest.json").write_bytes(
        (good.out / "policies" / "latest.json").read_bytes())
    published = []
    # lr 0: the candidate stays untrained, so it validates worse than the policy in service
    bad = LearnerConfig(method="levine", data=store_dir, out=out, steps=5, lr=0.0, batch_size=16,
                        min_attempts=10, cycle_every_steps=5, tensorboard=False,
                        progress=False)
    summary = run(bad, publish_fn=lambda path, meta: published.append(meta))
    assert summary["step"] == 5 and published == []
    assert read_pointer(out)["version"] == 1 and not (out / "policies" / "v2").exists()
    assert load_checkpoint(out)["step"] == 5  # checkpointed even though not published
    # same candidate with a tolerance that accepts anything: published as v2
    bad.steps, bad.publish_tolerance = 10, 100.0
    run(bad, publish_fn=lambda path, meta: published.append(meta))
    assert [m.version for m in published] == [2] and read_pointer(out)["version"] == 2
    load_bundle(out / "policies" / "v2")


# -- crash and signals ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_restart_continues_bit_identically(store_dir, tmp_path):
    args = ["--steps", "40", "--cycle-every-steps", "10", "--workers", "1"]
    straight = tmp_path / "straight"
    subprocess.run(learner_argv(store_dir, straight, *args), check=True, cwd=REPO,
                   capture_output=True, timeout=120)
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(learner_argv(store_dir, crashed, *args), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = crashed / "checkpoint.json"
            if info.exists() and json.loads(info.read_text())["step"] >= 20:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint at step 20 within 60 s")
        proc.kill()  # SIGKILL: no chance to checkpoint
    finally:
        proc.wait(timeout=10)
    state = load_checkpoint(crashed)
    assert 20 <= state["step"] < 40
    out = subprocess.run(learner_argv(store_dir, crashed, *args), check=True, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert f"resumed from {crashed} at step {state['step']}" in out.stderr
    # same step, optimiser state and data position => the same parameters, bit for bit
    assert rank_file(crashed)["step"] == rank_file(straight)["step"] == 40
    assert rank_file(crashed)["parameters_sha256"] == rank_file(straight)["parameters_sha256"]
    a, b = load_checkpoint(straight), load_checkpoint(crashed)
    opt_a, opt_b = a["learner"]["optimizer"]["state"], b["learner"]["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a[k][name], opt_b[k][name])


@pytest.mark.slow
def test_waits_for_data_takes_new_attempts_and_stops_cleanly_on_sigterm(tmp_path):
    root = tmp_path / "store"
    store = Store(StoreConfig(root=root, min_free_bytes=0, shard_max_seconds=0.3,
                              roll_interval=0.1))
    out = tmp_path / "run"
    try:
        append_attempts(store, 20, seed=1)
        proc = subprocess.Popen(
            learner_argv(root, out, "--min-attempts", "60", "--cycle-every-steps", "15",
                         "--poll-seconds", "0.2", "--refresh-seconds", "0.5"),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Wait (however long torch takes to import on a loaded machine) until the learner
        # says it found too few attempts; only then give it more.
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        deadline = time.monotonic() + 90
        while not any("waiting for 60 labelled attempts" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        assert not (out / "checkpoint.pt").exists()
        append_attempts(store, 100, seed=2)
        deadline = time.monotonic() + 60
        while read_pointer(out) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_pointer(out) is not None, "no policy published within 60 s"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        log = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()
    assert proc.returncode == 0, log
    assert "waiting for 60 labelled attempts" in log and "SIGTERM received" in log
    assert load_checkpoint(out)["step"] == rank_file(out)["step"] > 0
    meta = load_bundle(out / "policies" / "v1")[1]
    assert meta.trained_on_attempts > 20  # trained on what arrived while it waited
