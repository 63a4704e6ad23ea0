"""robot_node's parameters: declared the ROS 2 way (with descriptions), read into NodeConfig,
validated with messages that say what to fix; config/robot_node.yaml parses and applies."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import rclpy
import yaml

from robot_node.params import ConfigError, NodeConfig, declare_config, unknown_parameters

CONFIG = Path(__file__).resolve().parents[1] / "config" / "robot_node.yaml"


def _node(namespace: str = "/arm3", overrides=()):
    from rclpy.parameter import Parameter

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("robot_node", namespace=namespace, context=ctx,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides])
    return ctx, node


def test_every_field_is_a_described_parameter_and_overrides_apply():
    ctx, node = _node(overrides=[("max_steps", 7), ("lift_height", 1),
                                 ("workspace_min", [0.45, -0.1, 0.05]), ("max_stpes", 3),
                                 ("use_sim_time", True)])
    try:
        # a misspelt name is reported (rclpy itself drops it), the ROS-defined ones are not
        assert unknown_parameters(node) == ["max_stpes"]
        config = declare_config(node)
        assert config.arm_id == "arm3"  # from the namespace
        assert config.max_steps == 7 and config.lift_height == 1.0
        assert config.workspace_min == [0.45, -0.1, 0.05]
        for f in fields(NodeConfig):
            d = node.describe_parameter(f.name)
            assert len(d.description) > 10, f.name
    finally:
        node.destroy_node()
        ctx.try_shutdown()


@pytest.mark.parametrize("change, fragment", [
    ({"max_steps": 0}, "max_steps"),
    ({"exploration_share": 1.5}, "exploration_share"),
    ({"workspace_min": [0.8, 0.0, 0.0]}, "workspace_min"),
    ({"motion_mode": "teleport"}, "motion_mode"),
    ({"jpeg_quality": 0}, "jpeg_quality"),
    ({"command_duration": float("nan")}, "command_duration"),
])
def test_bad_values_are_refused_by_name(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        NodeConfig(**change).validate()


def test_depth_topic_none_or_empty_means_no_depth_and_bad_names_are_refused():
    assert NodeConfig().has_depth
    assert NodeConfig().depth_topic == "camera/aligned_depth_to_color/image_raw"
    for off in ("", "none", "None", " none "):
        config = NodeConfig(depth_topic=off)
        config.validate()
        assert not config.has_depth, off
    NodeConfig(depth_topic="/camera/camera/aligned_depth_to_color/image_raw").validate()
    with pytest.raises(ConfigError, match="depth_topic"):
        NodeConfig(depth_topic="camera/image_raw").validate()  # the colour topic
    with pytest.raises(ConfigError, match="depth_topic"):
        NodeConfig(depth_topic="camera/aligned depth").validate()


def test_yaml_has_a_shared_block_and_per_arm_blocks_of_known_parameters():
    data = yaml.safe_load(CONFIG.read_text())
    assert "/**" in data and "/arm1/robot_node" in data
    known = {f.name for f in fields(NodeConfig)}
    for block in data.values():
        params = block["ros__parameters"]
        assert set(params) <= known, set(params) - known
        NodeConfig(**{**params}).validate()


def test_yaml_exploration_reaches_the_floor_within_T_steps():
    """T and the step limit shipped together: the fleet's exploration must get from the start
    height to the tray floor and close there (a short T with small steps closes in the air)."""
    import numpy as np
    from fleet.policy.base import Observation
    from robot_node.policy_runtime import make_exploration
    params = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    c = NodeConfig(**params)
    policy = make_exploration(c.exploration_policy, c.exploration_max_step)
    lo, hi = np.array(c.workspace_min), np.array(c.workspace_max)
    image = np.full((c.image_height, c.image_width, 3), 90, np.uint8)
    for seed in range(5):
        policy.reset(np.random.default_rng(seed))
        pos = np.array([0.55, 0.0, 0.30])
        for step in range(c.max_steps):
            d = policy.decide(Observation(image, np.array([*pos, 1.0, 0, 0, 0]), step,
                                          c.max_steps, lo, hi))
            if d.close:
                break
            pos = pos + d.motion[:3]
        assert pos[2] < lo[2] + 0.01, (seed, pos)
