"""The sim arm's message rules and its operator parameter file, checked without a process."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from ros_processes import REPO_ROOT
from sim_messages import pose_target, twist

pytestmark = pytest.mark.ros

from sim_bridge import messages
from sim_bridge.core import SimConfig
from sim_bridge.messages import top_down_quaternion
from sim_bridge.node_params import NodeSettings, SIM_PARAMETERS

PARAMS_FILE = REPO_ROOT / "config" / "sim_arm.yaml"


@pytest.mark.parametrize("yaw", [-1.5, -0.4, 0.0, 0.3, 1.2])
def test_top_down_quaternion_matches_the_simulator_and_reads_back(yaw: float) -> None:
    import pybullet

    ours = np.array(top_down_quaternion(yaw))
    theirs = np.array(pybullet.getQuaternionFromEuler((math.pi, 0.0, yaw)))
    assert min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max()) < 1e-9
    command = messages.pose_command(pose_target([0.5, 0.0, 0.2], yaw))
    assert command.args[1] == pytest.approx(yaw) and not command.warnings


def test_pose_rules() -> None:
    tilted = pose_target([0.5, 0.0, 0.2])
    tilted.pose.orientation.x, tilted.pose.orientation.w = 0.0, 1.0  # identity: pointing up
    assert "only its yaw" in messages.pose_command(tilted).warnings[0]
    zero = pose_target([0.5, 0.0, 0.2])
    zero.pose.orientation.x = 0.0
    with pytest.raises(messages.CommandRejected, match="zero quaternion"):
        messages.pose_command(zero)
    assert messages.twist_command(twist([0.1, 0, 0], frame="")).args == ([0.1, 0.0, 0.0], 0.0)


def test_default_parameter_file_matches_the_simulator_defaults() -> None:
    """config/sim_arm.yaml restates SimConfig's defaults for operators: they must not drift."""
    params = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    defaults, own = SimConfig(), NodeSettings(sim=SimConfig())
    for name in SIM_PARAMETERS:
        expected = getattr(defaults, name)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert params.pop(name) == expected, name
    for name in ("arm_id", "idle_publish_rate", "diagnostics_period"):
        assert params.pop(name) == getattr(own, name), name
    assert not params, f"parameters the node does not declare: {sorted(params)}"
