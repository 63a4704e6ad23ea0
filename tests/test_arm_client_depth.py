"""RosArm with an RGB-D camera, over real DDS in this process: an in-test node plays the arm
(colour image, aligned depth, ee_pose, joint_states), robot_node's RosArm pairs each image with
the depth stamped like it. The end-to-end path against the simulated arm is in
test_robot_node.py; this one covers what the simulator never sends (32FC1, wrong sizes, a depth
that does not come)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import pytest

from ros_processes import RosTestNode, wait_for

pytestmark = pytest.mark.ros

from geometry_msgs.msg import PoseStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from robot_node.arm_client import RosArm
from robot_node.grasp_loop import ArmTimeout
from robot_node.params import NodeConfig

NS = "/arm6"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
H, W = 12, 16
T0 = 1_700_000_000 * 10**9


def stamped(msg, stamp_ns: int, frame: str = "camera_color_optical_frame"):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = frame
    return msg


def colour(stamp_ns: int) -> Image:
    msg = Image(height=H, width=W, encoding="rgb8", step=W * 3)
    msg.data = np.full((H, W, 3), 80, np.uint8).tobytes()
    return stamped(msg, stamp_ns)


def depth_32fc1(stamp_ns: int, metres: np.ndarray) -> Image:
    h, w = metres.shape
    msg = Image(height=h, width=w, encoding="32FC1", step=w * 4)
    msg.data = np.asarray(metres, "<f4").tobytes()
    return stamped(msg, stamp_ns)


def depth_16uc1(stamp_ns: int, mm: np.ndarray) -> Image:
    msg = Image(height=H, width=W, encoding="16UC1", step=W * 2)
    msg.data = np.asarray(mm, "<u2").tobytes()
    return stamped(msg, stamp_ns)


class FakeArm:
    """Publishes one arm state (its depth first, as a camera driver may) until stopped."""

    def __init__(self, node: RosTestNode):
        self.image = node.publisher(Image, f"{NS}/camera/image_raw", qos_profile_sensor_data)
        self.depth = node.publisher(Image, f"{NS}/{DEPTH_TOPIC}", qos_profile_sensor_data)
        self.pose = node.publisher(PoseStamped, f"{NS}/ee_pose")
        self.joints = node.publisher(JointState, f"{NS}/joint_states")

    @contextmanager
    def streaming(self, stamp_ns: int, depth: Optional[Image]) -> Iterator[None]:
        """Re-publish the state every 30 ms (best effort may drop a message) while inside."""
        stop = threading.Event()
        joints = stamped(JointState(name=["panda_finger_joint1", "panda_finger_joint2"],
                                    position=[0.04, 0.04]), stamp_ns, "")
        pose = stamped(PoseStamped(), stamp_ns, "base_link")
        pose.pose.position.x, pose.pose.position.z, pose.pose.orientation.x = 0.55, 0.3, 1.0

        def run() -> None:
            while not stop.is_set():
                if depth is not None:
                    self.depth.publish(depth)
                self.image.publish(colour(stamp_ns))
                self.joints.publish(joints)
                self.pose.publish(pose)
                stop.wait(0.03)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def pose_arrived(arm: RosArm, stamp_ns: int) -> None:
    """Wait until the arm heard the new state's ee_pose and joint_states (wait_ready returns
    the current state, which until then is the previous one)."""
    wait_for(lambda: arm._pose and arm._pose[0] == stamp_ns and arm._gripper
             and arm._gripper[0] == stamp_ns, 10.0, "the new state's pose and joints")


@pytest.fixture(scope="module")
def rig(ros_domain):
    with RosTestNode("robot_node", namespace=NS) as host, RosTestNode("fake_arm") as player:
        config = NodeConfig(arm_id="arm6", reset_service="none", image_height=H, image_width=W)
        arm = RosArm(host.node, config, interrupted=lambda: None)
        colour_only = RosArm(host.node, NodeConfig(arm_id="arm6", depth_topic="none"),
                             interrupted=lambda: None)
        yield arm, colour_only, FakeArm(player)


def test_the_image_takes_the_depth_stamped_like_it(rig) -> None:
    arm, colour_only, fake = rig
    metres = np.linspace(0.6, 1.5, H * W, dtype=np.float32).reshape(H, W)
    metres[0, 0] = np.nan  # no return
    stamp = T0 + 100_000_000
    with fake.streaming(stamp, depth_32fc1(stamp, metres)):
        state = arm.wait_ready(10.0)
        plain = colour_only.wait_ready(10.0)
    assert state.image.shape == (H, W, 3) and state.depth.shape == (H, W)
    assert state.depth.dtype == np.float32 and round(state.image_stamp * 1e9) == stamp
    assert state.depth[0, 0] == 0.0 and np.array_equal(state.depth.ravel()[1:], metres.ravel()[1:])
    assert plain.depth is None  # depth_topic none: the colour image alone makes the state
    stamp += 100_000_000
    mm = np.full((H, W), 1234, np.uint16)
    with fake.streaming(stamp, depth_16uc1(stamp, mm)):
        pose_arrived(arm, stamp)
        state = arm.wait_ready(10.0)
    assert round(state.image_stamp * 1e9) == stamp and np.allclose(state.depth, 1.234)


def test_no_state_without_its_depth_and_the_timeout_names_the_depth_topic(rig) -> None:
    arm, _, fake = rig
    stamp = T0 + 1_000_000_000
    # a depth stamped 50 ms off (another frame's) does not pair
    with fake.streaming(stamp, depth_32fc1(stamp + 50_000_000, np.ones((H, W), np.float32))):
        pose_arrived(arm, stamp)
        with pytest.raises(ArmTimeout) as error:
            arm.wait_ready(1.0)
    message = str(error.value)
    assert DEPTH_TOPIC in message and "depth_topic:=none" in message, message
    # wrong size, right stamp: counted bad and ignored
    stamp += 100_000_000
    bad_before = arm.bad_images
    with fake.streaming(stamp, depth_32fc1(stamp, np.ones((H // 2, W // 2), np.float32))):
        pose_arrived(arm, stamp)
        wait_for(lambda: arm.bad_images > bad_before, 10.0, "the wrong-size depth counted bad")
        with pytest.raises(ArmTimeout, match="aligned_depth_to_color"):
            arm.wait_ready(0.5)
    # another encoding: counted bad too
    stamp += 100_000_000
    bad_before = arm.bad_images
    mono = depth_16uc1(stamp, np.ones((H, W), np.uint16))
    mono.encoding = "mono16"
    with fake.streaming(stamp, mono):
        wait_for(lambda: arm.bad_images > bad_before, 10.0, "the mono16 depth counted bad")
    assert "16UC1" in arm._last_bad_depth
    # and the right one, at last, makes the state
    stamp += 100_000_000
    with fake.streaming(stamp, depth_32fc1(stamp, np.full((H, W), 2.0, np.float32))):
        pose_arrived(arm, stamp)
        state = arm.wait_ready(10.0)
    assert round(state.image_stamp * 1e9) == stamp and (state.depth == 2.0).all()
