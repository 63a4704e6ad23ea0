"""The policy runtime: newest good bundle wins, bad ones are refused once with their reason,
an operator's pin wins over newer bundles, exploration policies by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleet.policy.bundle import WEIGHTS_FILE, save_bundle
from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig
from robot_node.params import ConfigError, NodeConfig
from fleet.policy.exploration import EXPLORATION_KINDS
from robot_node.policy_runtime import PIN_FILE, PolicyRuntime, make_exploration


def bundle(path: Path, version: int, corrupt: bool = False, size: int = 64) -> None:
    torch.manual_seed(version)
    save_bundle(path, GraspSuccessNet(NetworkConfig(image_height=size, image_width=size)),
                version=version)
    if corrupt:
        w = path / WEIGHTS_FILE
        data = bytearray(w.read_bytes())
        data[-5] ^= 0x55
        w.write_bytes(bytes(data))


def runtime(tmp_path: Path) -> PolicyRuntime:
    return PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(tmp_path),
                                    exploration_share=0.0))


def test_exploration_until_a_bundle_then_the_newest_good_one(tmp_path):
    rt = runtime(tmp_path)
    assert rt.poll(force=True) is None and rt.current() is rt.exploration and rt.version == 0
    bundle(tmp_path / "a", 1)
    bundle(tmp_path / "b", 2)
    assert "version 2" in rt.poll(force=True) and rt.version == 2
    assert rt.current().kind == "cem"
    bundle(tmp_path / "c", 3, corrupt=True)
    msg = rt.poll(force=True)
    assert "refused" in msg and "checksum mismatch" in msg and rt.version == 2
    assert rt.poll(force=True) is None  # refused once, not again on every poll


def test_wrong_camera_size_is_refused(tmp_path):
    rt = runtime(tmp_path)
    bundle(tmp_path / "v1", 1, size=32)
    assert "input spec" in rt.poll(force=True) and rt.version == 0


def test_a_depth_network_is_refused_on_a_node_without_depth(tmp_path):
    """A bundle whose network takes the aligned depth image (input_spec 'depth') cannot run on
    an arm whose camera gives none: refused, naming the parameter to set; the previous policy
    keeps running. With a depth topic the same bundle loads."""
    from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet

    def depth_bundle(path: Path, version: int) -> None:
        torch.manual_seed(version)
        save_bundle(path, GraspPointNet(GraspPointConfig(image_height=64, image_width=64,
                                                         use_depth=True)), version=version)

    rt = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(tmp_path), depth_topic="none",
                                  exploration_share=0.0))
    bundle(tmp_path / "v1", 1)  # colour only: runs anywhere
    assert "version 1" in rt.poll(force=True) and rt.version == 1
    depth_bundle(tmp_path / "v2", 2)
    msg = rt.poll(force=True)
    assert msg.startswith("refused policy bundle") and "depth_topic" in msg, msg
    assert "still running policy version 1" in msg and rt.version == 1
    assert rt.current().kind == "cem" and rt.poll(force=True) is None  # logged once
    with_depth = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(tmp_path)))
    assert "loaded" in with_depth.poll(force=True) and with_depth.version == 2


def test_a_pin_rolls_back_to_an_older_bundle(tmp_path):
    rt = runtime(tmp_path)
    bundle(tmp_path / "v1", 1)
    bundle(tmp_path / "v2", 2)
    rt.poll(force=True)
    (tmp_path / PIN_FILE).write_text("v1\n")
    assert "pinned" in rt.poll(force=True) and rt.version == 1
    (tmp_path / PIN_FILE).unlink()
    assert "version 2" in rt.poll(force=True) and rt.version == 2


def test_exploration_by_name_or_import_path():
    assert make_exploration("random_descent").kind == "scripted"
    assert make_exploration("random").kind == "random"
    assert make_exploration("robot_test_policies:HugeMotions").kind == "huge"
    assert make_exploration("fleet.policy.exploration:AimedDescentPolicy").kind == "aimed"
    aimed = make_exploration("aimed_descent", 0.03)
    assert type(aimed).__name__ == "AimedDescentPolicy" and aimed.config.limits.max_translation == 0.03
    # the store tells the two scripted explorations apart, and the learner counts both as
    # exploration (its publish rule) and `fleet eval` takes either as a baseline
    assert aimed.kind != make_exploration("random_descent").kind
    assert make_exploration("any_height_descent").kind == "scripted_any_height"
    assert {"random", "scripted", "aimed", "scripted_any_height"} == EXPLORATION_KINDS
    with pytest.raises(ConfigError, match="exploration_policy"):
        make_exploration("teleport")
    with pytest.raises(ConfigError, match="cannot be imported"):
        make_exploration("no_such_module:Thing")
