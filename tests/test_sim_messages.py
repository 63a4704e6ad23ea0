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
    for name in ("arm_id", "idle_publish_rate", "diagnostics_period", "publish_depth"):
        assert params.pop(name) == getattr(own, name), name
    assert not params, f"parameters the node does not declare: {sorted(params)}"


def test_depth_image_is_16uc1_millimetres_and_robot_node_reads_it_back() -> None:
    """The aligned depth as the sim publishes it (REP 118 16UC1: uint16 mm, 0 = no return) and
    as robot_node reads it (float32 m), both sides of the contract."""
    from robot_node.messages import depth_to_array

    depth = np.full((3, 4), 0.9567, np.float32)
    depth[0, :] = [math.nan, math.inf, -1.0, 70.0]  # no return: NaN, inf, negative, > 65.535 m
    msg = messages.depth_image_msg(depth, messages.ns_to_time_msg(1_700_000_000_123_456_789))
    assert (msg.width, msg.height, msg.encoding, msg.step, msg.is_bigendian) == \
        (4, 3, "16UC1", 8, 0)
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert messages.time_msg_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    mm = np.frombuffer(bytes(msg.data), "<u2").reshape(3, 4)
    assert (mm[0] == 0).all() and (mm[1:] == 957).all()
    back = depth_to_array(msg)
    assert back.dtype == np.float32 and back.shape == (3, 4)
    assert (back[0] == 0).all() and np.allclose(back[1:], 0.957)


def test_robot_node_reads_32fc1_big_endian_and_padded_rows_and_refuses_other_encodings() -> None:
    from robot_node.messages import depth_to_array
    from sensor_msgs.msg import Image

    metres = np.array([[1.25, math.nan, 0.5], [0.0, -2.0, 2.5]], ">f4")
    msg = Image(height=2, width=3, encoding="32FC1", is_bigendian=1, step=16)  # 4 bytes padding
    msg.data = b"".join(row.tobytes() + b"\xff" * 4 for row in metres)
    assert depth_to_array(msg).tolist() == [[1.25, 0.0, 0.5], [0.0, 0.0, 2.5]]
    little = Image(height=1, width=2, encoding="16UC1", is_bigendian=0, step=4)
    little.data = np.array([1500, 0], "<u2").tobytes()
    assert depth_to_array(little).tolist() == [[1.5, 0.0]]
    for bad in (Image(height=1, width=2, encoding="mono16", step=4, data=bytes(4)),
                Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(4))):  # short
        with pytest.raises(ValueError, match="depth"):
            depth_to_array(bad)
