"""QT-Opt (fleet/methods/qtopt): the Q-network's shapes, Bellman targets on hand-made
transitions, training through the real learner loop (Bellman updaters in a data worker) into a
bundle that robot_node's policy runtime runs, and a learning check whose label depends on an
earlier action only through the bootstrapped value."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fleet.cli import build_parser
from fleet.learner.api import online_fraction
from fleet.learner.checkpoint import load_checkpoint
from fleet.learner.cli import config_from_args
from fleet.learner.config import QLearningOptions
from fleet.learner.dataset import StoreBatches, stream_batches
from fleet.learner.loop import run
from fleet.methods.qtopt.learner import QTOptLearner, input_pool_for, make_learner
from fleet.methods.qtopt.gripper_network import GripperQConfig, GripperQNet
from fleet.methods.qtopt.network import QNet, QNetConfig, encode_actions, encode_states
from fleet.methods.qtopt.policy import QTOptPolicy
from fleet.policy.base import Observation
from fleet.policy.bundle import load_bundle
from fleet.policy.folder import read_pointer
from fleet.store.reader import StoreReader
from fleet.store.writer import Store, StoreConfig
from fleet.wire.depth_image import encode_depth_png
from fleet.wire.records import Attempt, Step, encode
from robot_node.params import NodeConfig
from robot_node.policy_runtime import PolicyRuntime
from test_qtopt_gripper_view import top_down_pose

OPTIONS = QLearningOptions()  # gamma 0.9, step cost 0.05
REPO = Path(__file__).resolve().parents[1]
STEPS = 600  # training steps of the learning check
LOW, HIGH = np.array([0.4, -0.15, 0.027]), np.array([0.7, 0.15, 0.4])


# -- a store of two-step attempts: move up or down, then close ----------------------------------

def _frame(rng: np.random.Generator, size: int) -> bytes:
    img = np.full((size, size, 3), 90, np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    cv2.circle(img, tuple(int(c) for c in rng.integers(8, size - 8, 2)), 6, colour, -1)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return jpeg.tobytes()


def descent_attempt(rng: np.random.Generator, size: int = 64, depth: bool = False,
                    moves: int = 0) -> Attempt:
    """From z = 0.25, `moves` (1 or 2 at random if 0) steps of 5 cm down or up, each with a
    random dx, dy, dyaw that does not matter, then a closing step. Success iff it closes below
    z = 0.22: the label depends on the moves only through where the gripper closes."""
    moves = moves or int(rng.integers(1, 3))
    x, y, z = float(rng.uniform(0.45, 0.65)), float(rng.uniform(-0.1, 0.1)), 0.25
    depth_png = encode_depth_png(np.full((size, size), 0.8, np.float32)) if depth else None
    steps = []
    for i in range(moves + 1):
        motion = (0.0, 0.0, 0.0, 0.0) if i == moves else (
            float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)),
            float(rng.choice([-0.05, 0.05])), float(rng.uniform(-0.3, 0.3)))
        pose = (x, y, z, 1.0, 0.0, 0.0, 0.0)
        steps.append(Step(_frame(rng, size), pose, motion, 0.08, 0.2 * i, depth_png))
        x, y, z = x + motion[0], y + motion[1], z + motion[2]
    now = time.time()
    ok = steps[-1].ee_pose[2] < 0.22
    return Attempt("arm-1", 0, "scripted", steps, "success" if ok else "failure",
                   steps[-1].ee_pose, 0.02 if ok else 0.0, now - 2, now, image_height=size,
                   image_width=size)


def build_store(root: Path, n: int, seed: int = 0, depth: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        attempts = [descent_attempt(rng, depth=depth) for _ in range(n)]
        store.append([(a, encode(a)) for a in attempts])
    return root


def _constant_q(probability: float, close_bonus: float = 0.0, toggle_bonus: float = 0.0,
                regrasp: bool = False) -> QNet:
    """A Q-network whose value is `probability` for every state and motion, its logit raised
    by close_bonus for the close action and by toggle_bonus for toggling (a regrasp net)."""
    net = QNet(QNetConfig(regrasp=regrasp or bool(toggle_bonus))).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        logit = float(np.log(probability / (1 - probability)))
        net.fc[-1].bias.fill_(logit)
        if close_bonus or toggle_bonus:  # close/toggle pass through the MLP and head
            net.action_mlp[0].weight[0, 2 + 5] = close_bonus  # hidden unit 0 reads "close"
            if toggle_bonus:
                net.action_mlp[0].weight[0, 2 + 6] = toggle_bonus  # ... and "toggle"
            net.action_mlp[2].weight[:, 0] = 1.0
            net.action_mlp[2].bias.fill_(0.0)
            net.head[0][0].weight[:, :, 1, 1] = torch.eye(32)[:32]
            net.head[1][0].weight[:, :, 1, 1] = torch.eye(32)
            net.fc[1].weight[0, :] = 1.0 / 16
            net.fc[-1].weight[0, 0] = 1.0 / 32
    return net


# -- the network --------------------------------------------------------------------------------

@pytest.mark.parametrize("size,depth,pool", [(64, False, 1), (128, True, 1), (128, True, 2)])
def test_network_shapes_and_the_broadcast_used_by_cem(size, depth, pool):
    net = QNet(QNetConfig(image_height=size, image_width=size, use_depth=depth,
                          input_pool=pool)).eval()
    image = torch.rand(3, 3, size, size)
    d = torch.rand(3, 1, size, size) if depth else None
    poses = [top_down_pose(0.5, 0, 0.1), top_down_pose(0.6, 0.1, 0.2),
             top_down_pose(0.5, -0.1, 0.3)]
    state = encode_states([0.08, 0.08, 0.0], poses, net.config)
    actions = encode_actions(np.array([[0.01, 0, -0.05, 0.3, 0], [0, 0, 0, 0, 1],
                                       [0.05, 0.05, 0.05, -0.3, 0]]), net.config.motion_scale)
    assert state.shape == (3, 5) and actions.shape == (3, 7)
    assert actions[:, 6].tolist() == [0.0] * 3, "no toggle column given: toggle 0"
    with torch.no_grad():
        logits = net(image, state, actions, d)
        assert logits.shape == (3,)
        features = net.image_features(image[:1], None if d is None else d[:1])
        assert features.shape == (1, 32, 8, 8)
        many = net.score_features(features, state[:1], actions.repeat(20, 1))
        assert many.shape == (60,)
        torch.testing.assert_close(many[:3], net(image[:1].expand(3, -1, -1, -1), state[:1]
                                                 .expand(3, -1), actions,
                                                 None if d is None else d[:1].expand(3, -1, -1,
                                                                                     -1)))
    assert ("depth" in net.input_spec()) == depth
    if depth:
        with pytest.raises(ValueError, match="takes the aligned depth image"):
            net.image_features(image)


def test_the_trunk_sees_a_large_camera_pooled_and_the_bundle_still_takes_its_size():
    """The 128x128 fleet camera is pooled to 64x64 before the trunk (measured 1.8-3.7 x the
    training throughput); the input spec stays the camera's, so robots feed it unchanged."""
    assert [input_pool_for(s) for s in (32, 64, 96, 128, 256)] == [1, 1, 2, 2, 4]
    pooled = QNet(QNetConfig(image_height=128, image_width=128, use_depth=True, input_pool=2))
    assert pooled.input_spec()["image_height"] == 128
    assert isinstance(pooled.pool, torch.nn.Identity), "64 px after 3 halvings is the merge size"
    image, depth = torch.rand(1, 3, 128, 128), torch.rand(1, 1, 128, 128)
    with torch.no_grad():  # pooling first is what the network computes
        x = torch.cat([image - 0.5, (depth / 2.0).clamp(0, 1) - 0.5], 1)
        torch.testing.assert_close(pooled.image_features(image, depth),
                                   pooled.trunk(torch.nn.functional.avg_pool2d(x, 2)))
    for bad in (0, 3, 16):
        with pytest.raises(ValueError, match="input_pool"):
            QNetConfig(image_height=128, image_width=128, input_pool=bad)


# -- the learner loop, a bundle, the robot's runtime ------------------------------------------

def test_fleet_learn_method_qtopt_publishes_a_bundle_a_robot_runs(tmp_path):
    store = build_store(tmp_path / "store", 60, depth=True)
    reader = StoreReader(store)
    pairs = reader.sample_steps(20, np.random.default_rng(0), with_next=True)
    assert all((s.next_step is None) == (s.step == s.num_steps - 1) for s in pairs)
    assert all(s.next_step.step == s.step + 1 and s.next_step.attempt_id == s.attempt_id
               for s in pairs if s.next_step is not None)
    args = build_parser().parse_args([
        "learn", "--method", "qtopt", "--data", str(store), "--out", str(tmp_path / "run"),
        "--steps", "24", "--batch-size", "16", "--min-attempts", "10", "--cycle-every-steps",
        "12", "--workers", "1", "--depth", "--target-lag-steps", "5", "--discount", "0.8",
        "--no-tensorboard", "--no-progress"])
    cfg = config_from_args(args)
    assert cfg.q_learning_options().discount == 0.8 and cfg.bellman_updaters
    learner = make_learner(cfg, torch.device("cpu"))
    # QT-Opt's online/offline mix unless --online-fraction says otherwise
    assert cfg.online_fraction is None and online_fraction(learner, None) == 0.5
    assert online_fraction(learner, 0.0) == 0.0
    summary = run(cfg, learner=learner)
    assert learner.targets_from_updaters == 24  # every batch labelled in the data worker
    assert summary["step"] == 24 and summary["published_version"] >= 1
    assert load_checkpoint(cfg.out)["learner_name"] == "qtopt_q_learning"
    pointer = read_pointer(cfg.out)
    model, meta = load_bundle(cfg.out / "policies" / f"v{pointer['version']}")
    assert isinstance(model, GripperQNet) and model.config.use_depth  # the default view
    assert np.isfinite(meta.metrics["val_loss"]) and "val_mc_loss" in meta.metrics

    rt = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(cfg.out / "policies"),
                                  image_height=64, image_width=64))
    assert "loaded policy bundle" in rt.poll(force=True)
    policy = rt.learned
    assert isinstance(policy, QTOptPolicy) and policy.kind == "qtopt"
    policy.reset(np.random.default_rng(0))
    image = np.full((64, 64, 3), 90, np.uint8)
    depth = np.full((64, 64), 0.8, np.float32)
    d = policy.decide(Observation(image, np.array([0.55, 0.0, 0.25, 1.0, 0, 0, 0]), 0, 12,
                                  LOW, HIGH, depth=depth, gripper=0.08))
    assert d.close or (np.all(np.abs(d.motion[:3]) <= 0.05 + 1e-9)
                       and abs(d.motion[3]) <= 0.3 + 1e-9)
    assert np.isfinite(d.p_best) and np.isfinite(d.p_noop)
    last = policy.decide(Observation(image, np.array([0.55, 0.0, 0.25, 1.0, 0, 0, 0]), 11, 12,
                                     LOW, HIGH, depth=depth))
    assert last.close  # the attempt's last step always closes


@pytest.mark.slow
def test_two_rank_ddp_qtopt_run_keeps_ranks_identical(tmp_path):
    """The trainer still scales with DDP: each rank has its own Bellman updater (a data
    worker) and target networks, updated from identical weights; the ranks end identical."""
    store = build_store(tmp_path / "store", 60)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "fleet.learner", "--method", "qtopt", "--data", str(store), "--out",
           str(out), "--steps", "6", "--cycle-every-steps", "3", "--batch-size", "8",
           "--min-attempts", "10", "--target-lag-steps", "2", "--no-tensorboard",
           "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    assert "published policy v1" in done.stderr


def test_bellman_updaters_in_workers_read_the_trainers_target_networks(tmp_path):
    """With --workers the targets are computed in the data worker (a Bellman updater) and
    cross the shared-memory hand-over with the batch; the worker reads the target networks the
    trainer changes in place, so what it computes follows them."""
    store = build_store(tmp_path / "store", 40)
    learner = QTOptLearner(QNetConfig(), OPTIONS, 1e-3, 0.0, torch.device("cpu"), workers=1)
    assert learner.updaters_in_workers and learner.collate.updater is not None
    ds = StoreBatches(store, learner.collate, 8, seed=0, rank=0, start_batch=0,
                      val_fraction=0.0, with_next=True)
    stream = stream_batches(ds, workers=1, prefetch=2)
    try:
        it = iter(stream)
        assert "target" in next(it)  # the worker has started and labels batches
        with torch.no_grad():  # the trainer changes its target networks in place
            learner.target1.load_state_dict(_constant_q(0.8).state_dict())
            learner.target2.load_state_dict(_constant_q(0.6).state_dict())
        batches = [next(it) for _ in range(12)]  # past what was prefetched before the change
    finally:
        stream.close()
    last = batches[-1]
    expected = torch.where(last["terminal"].bool(), last["label"],
                           torch.tensor(-0.05 + 0.9 * 0.6))
    torch.testing.assert_close(last["target"], expected, atol=1e-5, rtol=0)


# -- learning: the value of moving down is learned through the bootstrap ----------------------

@pytest.mark.parametrize("network", [QNetConfig(), GripperQConfig()], ids=["image", "gripper"])
def test_q_learns_that_moving_down_leads_to_success(tmp_path, network):
    """Success iff the gripper closes below z = 0.22 after one or two 5 cm moves from 0.25; a
    move's target is never the label itself, only -c + gamma * V(s_t+1), so Q(s_0, down) >
    Q(s_0, up) needs the Bellman backup (and V's maximisation over actions) to work."""
    torch.manual_seed(0)
    store = build_store(tmp_path / "store", 300, seed=5)
    options = QLearningOptions(target_polyak=0.9, target_lag_steps=10)
    learner = QTOptLearner(network, options, 3e-3, 0.0, torch.device("cpu"))
    reader = StoreReader(store)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        learner.train_step(learner.collate(reader.sample_steps(32, rng, with_next=True)))
    net = learner.network().eval()
    rng = np.random.default_rng(99)  # unseen images
    down, up, close_low, close_high = [], [], [], []
    for _ in range(8):
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(_frame(rng, 64), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        image = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            def q(z: float, action: list[float]) -> float:
                s = encode_states([0.08], [top_down_pose(0.55, 0.0, z)], net.config)
                a = encode_actions(np.array([action]), net.config.motion_scale)
                return float(torch.sigmoid(net(image, s, a)))
            down.append(q(0.25, [0, 0, -0.05, 0, 0]))
            up.append(q(0.25, [0, 0, 0.05, 0, 0]))
            close_low.append(q(0.20, [0, 0, 0, 0, 1]))
            close_high.append(q(0.30, [0, 0, 0, 0, 1]))
    assert min(close_low) > 0.8 and max(close_high) < 0.2, (close_low, close_high)
    # moving down from 0.25 reaches 0.20, where closing succeeds: -0.05 + 0.9 * 1 = 0.85.
    # Moving up reaches 0.30, from where the best is to come back down twice (the state holds
    # no step count, so the network cannot know the attempt's budget): one discount and one
    # step cost more, -0.05 + 0.9 * (-0.05 + 0.9 * 0.85) = 0.59; an untrained network gives
    # the same value (within 0.01) to every action.
    assert abs(float(np.mean(down)) - 0.85) < 0.07, down
    assert min(d - u for d, u in zip(down, up)) > 0.1, (down, up)
