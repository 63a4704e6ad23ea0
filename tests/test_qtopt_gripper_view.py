"""QT-Opt's gripper view (fleet/methods/qtopt/gripper_network.py): Q of a step is read from
the patch where the step leads, so it is an afterstate value; its patches mirror as the gripper
does; the learner trains with the mirrors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fleet.learner.config import QLearningOptions
from fleet.methods.qtopt.gripper_network import GripperQConfig
from fleet.methods.qtopt.learner import QTOptLearner
from fleet.methods.qtopt.network import QNetConfig, build_network, encode_actions, encode_states


def top_down_pose(x: float, y: float, z: float, yaw: float = 0.0) -> tuple[float, ...]:
    """A top-down tool pose with this yaw about base z (the sim arm's quaternion order)."""
    return (x, y, z, 0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2)))


@pytest.mark.parametrize("size,depth,patch", [(64, False, {}), (128, True, {}),
                                              (128, True, {"patch_size": 32, "first_stride": 2})])
def test_gripper_view_scores_where_a_step_leads(size, depth, patch):
    """The gripper view's Q is an afterstate value: a step from p by d scores the same as a
    step from p + e by d - e (same image, same height); the batched scoring the Bellman
    updaters use equals scoring one state at a time; the bundle config rebuilds it (a 32 px
    patch through a strided first conv too)."""
    cfg = GripperQConfig(image_height=size, image_width=size, use_depth=depth, **patch)
    net = build_network(cfg.to_dict()).eval()
    assert type(net).__name__ == "GripperQNet" and net.config == cfg
    image = torch.rand(2, 3, size, size)
    d = torch.rand(2, 1, size, size) + 0.5 if depth else None
    features = net.image_features(image, d)
    assert features.shape == (2, 4 if depth else 3, size, size)
    here = encode_states([0.08], [top_down_pose(0.55, 0.0, 0.2, 0.4)], cfg)
    there = encode_states([0.08], [top_down_pose(0.58, -0.02, 0.2, 0.1)], cfg)
    with torch.no_grad():
        a = net.score_features(features[:1], here, encode_actions(
            np.array([[0.04, 0.01, -0.03, 0.1, 0]]), cfg.motion_scale))
        b = net.score_features(features[:1], there, encode_actions(
            np.array([[0.01, 0.03, -0.03, 0.4, 0]]), cfg.motion_scale))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        lower = net.score_features(features[:1], here, encode_actions(
            np.array([[0.04, 0.01, -0.05, 0.1, 0]]), cfg.motion_scale))
        assert not torch.allclose(a, lower), "the height after the step is an input"
        actions = encode_actions(np.random.default_rng(0).uniform(-0.05, 0.05, (10, 5))
                                 * [1, 1, 1, 3, 0], cfg.motion_scale)
        states = torch.cat([here, there])
        batched = net.score_batched(features, states, actions.reshape(2, 5, 7))
        for i in range(2):
            torch.testing.assert_close(batched[i], net.score_features(
                features[i:i + 1], states[i:i + 1], actions[5 * i:5 * i + 5]),
                atol=1e-5, rtol=0)
        torch.testing.assert_close(net(image, states, actions[:2], d),
                                   net.score_features(features, states, actions[:2]))
    if depth:
        with pytest.raises(ValueError, match="takes the aligned depth image"):
            net.image_features(image)
    with pytest.raises(ValueError, match="unknown GripperQConfig fields"):
        build_network({**cfg.to_dict(), "wrist_camera": True})
    with pytest.raises(ValueError, match="first_stride must be 1 or 2"):
        GripperQConfig(first_stride=3)


def test_a_mirrored_patch_is_the_patch_of_the_gripper_turned_half_a_turn():
    """mirror (True, True) flips a patch both ways, which is what the sampler reads at yaw + pi
    (a parallel gripper turned half a turn is the same gripper): the two score the same, and a
    single flip scores differently on an asymmetric image. The learner flips the gripper
    view's patches in training, the whole-image network has none."""
    cfg = GripperQConfig(image_height=64, image_width=64, use_depth=True)
    net = build_network(cfg.to_dict()).eval()
    image = torch.rand(1, 3, 64, 64)
    depth = torch.rand(1, 1, 64, 64) + 0.5
    close = encode_actions(np.array([[0.0, 0.0, 0.0, 0.0, 1.0]]), cfg.motion_scale)
    state = encode_states([0.08], [top_down_pose(0.55, 0.03, 0.15, 0.3)], cfg)
    turned = encode_states([0.08], [top_down_pose(0.55, 0.03, 0.15, 0.3 + np.pi)], cfg)
    both, one = torch.tensor([[True, True]]), torch.tensor([[True, False]])
    with torch.no_grad():
        torch.testing.assert_close(net(image, state, close, depth, both),
                                   net(image, turned, close, depth), atol=1e-5, rtol=0)
        assert not torch.allclose(net(image, state, close, depth, one),
                                  net(image, state, close, depth), atol=1e-4)
    cpu = torch.device("cpu")
    assert QTOptLearner(cfg, QLearningOptions(), 1e-3, 0.0, cpu).mirror
    assert not QTOptLearner(QNetConfig(), QLearningOptions(), 1e-3, 0.0, cpu).mirror


def test_relative_height_makes_a_close_in_the_air_look_different_from_one_at_the_floor():
    """With relative_height the patch's height channel is the surface's height minus the
    gripper's: the same x, y at 0.3 m and at 0.02 m give the convs different inputs (the height
    channel shifted by exactly the height difference, the colours the same). Without it the
    convs see the same patch and only the scalar height differs."""
    size = 64
    image = torch.rand(1, 3, size, size)
    depth = torch.rand(1, 1, size, size) + 0.5
    close = encode_actions(np.array([[0.0, 0.0, 0.0, 0.0, 1]]), 0.05)
    for relative in (False, True):
        cfg = GripperQConfig(image_height=size, image_width=size, use_depth=True,
                             relative_height=relative)
        net = build_network(cfg.to_dict()).eval()
        assert net.config.relative_height is relative
        seen = []
        hook = net.trunk.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
        with torch.no_grad():
            features = net.image_features(image, depth)
            for z in (0.3, 0.02):
                net.score_features(features, encode_states(
                    [0.08], [top_down_pose(0.55, 0.0, z)], cfg), close)
        hook.remove()
        high, low = (p.reshape(len(cfg.patch_planes), 4, cfg.patch_size, cfg.patch_size)
                     for p in seen)
        torch.testing.assert_close(high[:, :3], low[:, :3])  # the colours: the same place
        if relative:
            shift = (0.3 - 0.02) / cfg.height_scale
            torch.testing.assert_close(low[:, 3] - high[:, 3], torch.full_like(low[:, 3], shift),
                                       atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(high, low)
    with pytest.raises(ValueError, match="relative_height needs use_depth"):
        GripperQConfig(relative_height=True)
