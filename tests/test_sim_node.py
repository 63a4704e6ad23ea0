"""The sim_arm node over real DDS: one sim_bridge process per module (namespace /arm1, its clock
remapped to /arm1/clock, as fleet/ops/plan.py starts it), driven from an in-test rclpy client."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest

from ros_processes import REPO_ROOT, ProcessGroup, RosProcess, RosTestNode, wait_for
from sim_messages import pose_target, twist

pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from sim_bridge.core import SimArm, SimConfig
from sim_bridge.messages import from_time_msg, time_msg_ns
from sim_bridge.objects import is_test_object

NS = "/arm1"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
PARAMS_FILE = REPO_ROOT / "config" / "sim_arm.yaml"
WIDTH, HEIGHT = 48, 40  # not the default: proves the parameters reach the camera
FOV_DEG = 37.0  # likewise (camera_info's focal length follows it)
CFG = SimConfig()
LO, HI = np.array(CFG.workspace_min), np.array(CFG.workspace_max)
POSITION_TOLERANCE = 0.01  # m: commanded vs read-back tool point
YAW_TOLERANCE = 0.05  # rad
TIMEOUT = 20.0  # s, wall clock


class SimClient:
    """The test's view of one sim arm: subscriptions to all it publishes, its command topics."""

    def __init__(self, node: RosTestNode, process: RosProcess):
        self.node = node
        self.process = process
        self.images = node.subscribe(Image, f"{NS}/camera/image_raw", qos_profile_sensor_data)
        self.depths = node.subscribe(Image, f"{NS}/{DEPTH_TOPIC}", qos_profile_sensor_data)
        self.infos = node.subscribe(CameraInfo, f"{NS}/camera/camera_info",
                                    qos_profile_sensor_data)
        self.joints = node.subscribe(JointState, f"{NS}/joint_states")
        self.poses = node.subscribe(PoseStamped, f"{NS}/ee_pose")
        self.truths = node.subscribe(String, f"{NS}/sim/ground_truth", QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.diagnostics = node.subscribe(DiagnosticArray, "/diagnostics")
        self.twist = node.publisher(TwistStamped, f"{NS}/servo_node/delta_twist_cmds")
        self.pose = node.publisher(PoseStamped, f"{NS}/servo_node/pose_target_cmds")
        self.gripper = node.publisher(Float64MultiArray, f"{NS}/gripper_controller/commands")

    def latest_pose(self) -> PoseStamped:
        return self.poses.wait(TIMEOUT, what="an ee_pose")

    def send(self, publisher, msg) -> PoseStamped:
        """Publish a command; return the first ee_pose stamped after the one before it."""
        before = time_msg_ns(self.latest_pose().header.stamp)
        publisher.publish(msg)
        return self.poses.wait(TIMEOUT, lambda p: time_msg_ns(p.header.stamp) > before,
                               "an ee_pose after the command")

    def move_to(self, xyz, yaw: float = 0.0) -> PoseStamped:
        return self.send(self.pose, pose_target(xyz, yaw))

    def servo(self, linear, yaw_rate: float = 0.0) -> PoseStamped:
        return self.send(self.twist, twist(linear, yaw_rate))

    def fingers(self, a: float, b: float) -> PoseStamped:
        return self.send(self.gripper, Float64MultiArray(data=[a, b]))

    def reset(self) -> list[str]:
        response = self.node.call(Trigger, f"{NS}/sim/reset", timeout=TIMEOUT)
        assert response.success, response.message
        return json.loads(response.message)["objects"]

    def truth(self) -> dict:
        return json.loads(self.truths.wait(TIMEOUT, what="ground truth").data)

    def expect_warning(self, needle: str) -> DiagnosticStatus:
        def warned(array: DiagnosticArray):
            return any(s.level == DiagnosticStatus.WARN and needle in s.message
                       for s in array.status)

        array = self.diagnostics.wait(TIMEOUT, warned, f"a WARN on /diagnostics with {needle!r}")
        status = array.status[0]
        assert status.name == f"sim_arm: {NS}" and status.hardware_id == "arm1"
        return status


def xyz(pose: PoseStamped) -> np.ndarray:
    p = pose.pose.position
    return np.array([p.x, p.y, p.z])


def yaw_of(pose: PoseStamped) -> float:
    o = pose.pose.orientation  # tool x axis heading of a top-down orientation
    return math.atan2(2 * (o.x * o.y + o.z * o.w), 1 - 2 * (o.y * o.y + o.z * o.z))


def assert_inside_workspace(pose: PoseStamped) -> None:
    p = xyz(pose)
    assert np.all(p >= LO - POSITION_TOLERANCE) and np.all(p <= HI + POSITION_TOLERANCE), \
        f"tool point {p} outside the workspace {LO}..{HI}"


@pytest.fixture(scope="module")
def sim_process(ros_module_processes: ProcessGroup):
    proc = ros_module_processes.start_node(
        "sim_bridge.node", "sim_arm", namespace=NS, params_file=PARAMS_FILE,
        params={"image_width": WIDTH, "image_height": HEIGHT, "num_objects": 1, "seed": 7,
                "camera_fov_deg": FOV_DEG},
        remaps={"/clock": f"{NS}/clock"})
    yield proc
    result = proc.stop()
    assert result.signal == signal.SIGINT and result.returncode == 0, proc.log_text()
    assert "shut down" in proc.log_text()


@pytest.fixture(scope="module")
def sim(sim_process) -> SimClient:
    with RosTestNode("sim_test_client") as node:
        client = SimClient(node, sim_process)
        sim_process.wait_for_log("simulated arm ready", 60.0)
        client.latest_pose()
        yield client
    assert sim_process.alive(), "the sim node died during the tests:\n" + sim_process.log_text()


def test_publishes_images_camera_info_and_joint_states(sim: SimClient) -> None:
    image = sim.images.wait(TIMEOUT, what="an image")
    assert (image.width, image.height, image.encoding) == (WIDTH, HEIGHT, "rgb8")
    assert image.step == WIDTH * 3 and len(image.data) == WIDTH * HEIGHT * 3
    assert image.header.frame_id == "camera_color_optical_frame"
    pixels = np.frombuffer(bytes(image.data), np.uint8)
    assert pixels.std() > 5, "the image is blank"
    info = sim.infos.wait(TIMEOUT, lambda i: i.header.stamp == image.header.stamp,
                          "camera_info with the image's stamp")
    assert (info.width, info.height, info.distortion_model) == (WIDTH, HEIGHT, "plumb_bob")
    assert info.k[4] == pytest.approx(HEIGHT / (2 * math.tan(math.radians(FOV_DEG) / 2)))
    assert info.k[0] == info.k[4] and info.k[8] == 1.0
    joints = sim.joints.wait(TIMEOUT, what="joint states")
    assert list(joints.name) == [f"panda_joint{i}" for i in range(1, 8)] + \
        ["panda_finger_joint1", "panda_finger_joint2"]
    assert len(joints.position) == len(joints.velocity) == 9


def test_publishes_the_aligned_depth_with_the_colour_images_stamp(sim: SimClient) -> None:
    """An RGB-D camera's aligned depth, as realsense-ros publishes it: 16UC1 mm along the
    optical axis, the colour image's size, frame, stamp and QoS; rendered with it."""
    before = time_msg_ns(sim.latest_pose().header.stamp)
    sim.reset()  # the arm home, fingers open, one object in the tray
    pose = sim.poses.wait(TIMEOUT, lambda p: time_msg_ns(p.header.stamp) > before,
                          "the state after the reset")
    stamp = pose.header.stamp
    image = sim.images.wait(TIMEOUT, lambda m: m.header.stamp == stamp, "the state's image")
    depth = sim.depths.wait(TIMEOUT, lambda m: m.header.stamp == stamp, "the image's depth")
    assert (depth.width, depth.height, depth.encoding) == (WIDTH, HEIGHT, "16UC1")
    assert depth.is_bigendian == 0 and depth.step == WIDTH * 2
    assert depth.header.frame_id == image.header.frame_id == "camera_color_optical_frame"
    mm = np.frombuffer(bytes(depth.data), "<u2").reshape(HEIGHT, WIDTH).astype(int)
    assert (mm > 0).all(), "no-return pixels in a closed scene"
    assert 900 <= np.median(mm) <= 1400, f"the tray is 0.9-1.4 m away, median {np.median(mm)} mm"
    # The same camera in this process, empty tray, arm home: every pixel but the object's
    # agrees to the millimetre (a flip, a transpose or metres for millimetres would not).
    reference = SimArm(SimConfig(image_width=WIDTH, image_height=HEIGHT, num_objects=0,
                                 camera_fov_deg=FOV_DEG))
    try:
        reference.reset()
        _, ref_m = reference.render_rgbd()
    finally:
        reference.close()
    same = np.abs(mm - np.rint(ref_m * 1000)) <= 2
    assert same.mean() > 0.8, f"only {same.mean():.0%} of pixels match SimArm.render_rgbd"
    # Same QoS as the colour image (sensor data: best effort, volatile).
    qos = {topic: sim.node.node.get_publishers_info_by_topic(f"{NS}/{topic}")[0].qos_profile
           for topic in ("camera/image_raw", DEPTH_TOPIC)}
    a, b = qos.values()
    assert (a.reliability, a.durability, a.history) == (b.reliability, b.durability, b.history)
    # After a motion, the depth of the state's image comes with it (published before it).
    pose = sim.servo([0.0, 0.0, -0.05])
    sim.depths.wait(5.0, lambda m: m.header.stamp == pose.header.stamp, "the motion's depth")


def test_idle_state_is_republished_with_a_frozen_stamp(sim: SimClient) -> None:
    sim.move_to([0.55, 0.0, 0.25])
    last = sim.latest_pose().header.stamp
    count = len(sim.poses)
    wait_for(lambda: len(sim.poses) >= count + 2, 5.0, "two idle re-publications")
    assert all(p.header.stamp == last for p in sim.poses.messages[count:])


def test_pose_target_puts_the_gripper_where_commanded(sim: SimClient) -> None:
    for target, yaw in (([0.60, 0.05, 0.20], 0.3), ([0.48, -0.08, 0.12], -0.6)):
        pose = sim.move_to(target, yaw)
        assert np.linalg.norm(xyz(pose) - target) < POSITION_TOLERANCE, (xyz(pose), target)
        assert abs(yaw_of(pose) - yaw) < YAW_TOLERANCE, (yaw_of(pose), yaw)


def test_twists_move_the_gripper_by_velocity_times_duration(sim: SimClient) -> None:
    start = sim.move_to([0.55, 0.0, 0.20], 0.0)
    for _ in range(5):
        end = sim.servo([0.1, -0.05, 0.04], yaw_rate=0.5)
    expected = xyz(start) + 5 * CFG.command_duration * np.array([0.1, -0.05, 0.04])
    assert np.linalg.norm(xyz(end) - expected) < POSITION_TOLERANCE, (xyz(end), expected)
    assert abs(yaw_of(end) - 5 * CFG.command_duration * 0.5) < YAW_TOLERANCE
    # Stamps advance by exactly the held durations (integer ns: clients compare "at or after").
    elapsed_ns = time_msg_ns(end.header.stamp) - time_msg_ns(start.header.stamp)
    assert elapsed_ns == 5 * round(CFG.command_duration * 1e9)


def test_arm_clock_drives_rclpy_time_through_the_remap(sim: SimClient) -> None:
    """rclpy's TimeSource subscribes to the absolute /clock: `-r /clock:=/arm1/clock` on the
    client redirects it, and use_sim_time then follows the arm's simulated time."""
    sim_time = [Parameter("use_sim_time", Parameter.Type.BOOL, True)]
    with RosTestNode("clock_follower", parameter_overrides=sim_time,
                     cli_args=["--ros-args", "-r", f"/clock:={NS}/clock"]) as follower, \
            RosTestNode("clock_deaf", parameter_overrides=sim_time) as deaf:
        wait_for(lambda: follower.node.count_publishers(f"{NS}/clock") > 0, TIMEOUT,
                 "the arm's clock publisher")
        pose = sim.servo([0.0, 0.0, 0.05])
        stamp = time_msg_ns(pose.header.stamp)
        now = wait_for(lambda: (t := follower.node.get_clock().now().nanoseconds) >= stamp
                       and t, TIMEOUT, "the follower's clock to reach the motion's end")
        assert now == stamp
        assert deaf.node.get_clock().now().nanoseconds == 0, "un-remapped /clock heard the arm"


def test_reset_brings_new_train_objects(sim: SimClient) -> None:
    seen = []
    for _ in range(6):
        names = sim.reset()
        assert len(names) == 1
        truth = wait_for(lambda: (t := sim.truth())["objects"][0]["name"] == names[0] and t,
                         TIMEOUT, "ground truth of the new objects")
        assert not truth["any_lifted"] and len(truth["objects"][0]["position"]) == 3
        seen.append(names[0])
    assert len(set(seen)) >= 5, f"resets keep bringing the same objects: {seen}"
    assert not [n for n in seen if is_test_object(n)], f"test objects in train mode: {seen}"


BAD_COMMANDS = {
    "twist NaN": ("twist", lambda: twist([math.nan, 0, 0]), "NaN or inf", False),
    "twist inf": ("twist", lambda: twist([0, 0, 0], yaw_rate=math.inf), "NaN or inf", False),
    "pose NaN": ("pose", lambda: pose_target([0.5, math.nan, 0.2]), "NaN or inf", False),
    "pose inf": ("pose", lambda: pose_target([-math.inf, 0, 0.2]), "NaN or inf", False),
    "twist frame": ("twist", lambda: twist([0.1, 0, 0], frame="world"), "unknown frame", False),
    "pose frame": ("pose", lambda: pose_target([0.5, 0, 0.2], frame="map"), "unknown frame",
                   False),
    "gripper 3 values": ("gripper", lambda: Float64MultiArray(data=[0.01, 0.01, 0.01]),
                         "exactly 2", False),
    "gripper empty": ("gripper", lambda: Float64MultiArray(data=[]), "exactly 2", False),
    "gripper range": ("gripper", lambda: Float64MultiArray(data=[0.5, -1.0]), "clamped", True),
    "absurd speed": ("twist", lambda: twist([0, 300.0, -900.0], yaw_rate=80.0), "clamped", True),
    "far target": ("pose", lambda: pose_target([5.0, -5.0, -3.0]), "clamped to workspace", True),
    "angular x/y": ("twist", lambda: twist([0, 0, 0], angular_xy=(0.3, -0.2)), "zeroed", True),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_command_is_rejected_or_clamped_and_the_node_serves_on(sim: SimClient,
                                                                    case: str) -> None:
    topic, make, needle, moves = BAD_COMMANDS[case]
    publisher = {"twist": sim.twist, "pose": sim.pose, "gripper": sim.gripper}[topic]
    sim.move_to([0.55, 0.0, 0.2])
    sim.diagnostics.clear()
    if moves:
        pose = sim.send(publisher, make())
    else:
        publisher.publish(make())
    sim.expect_warning(needle)
    if topic == "gripper" and moves:
        joints = sim.joints.latest()
        fingers = joints.position[7:]
        assert all(-1e-3 <= f <= 0.04 + 1e-3 for f in fingers), fingers
    if not moves:
        pose = sim.latest_pose()
    assert_inside_workspace(pose)
    # Still serving: the next good command runs (sim.move_to waits for its new ee_pose).
    assert_inside_workspace(sim.move_to([0.5, 0.02, 0.18]))
    assert sim.process.alive()


def test_commands_during_a_reset_are_rejected(sim: SimClient) -> None:
    sim.diagnostics.clear()
    stop = threading.Event()

    def spam() -> None:
        while not stop.is_set():
            sim.twist.publish(twist([0.0, 0.0, 0.0]))
            time.sleep(0.002)

    spammer = threading.Thread(target=spam)
    spammer.start()
    try:
        time.sleep(0.05)
        sim.reset()
    finally:
        stop.set()
        spammer.join()
    sim.expect_warning("during a reset")
    assert_inside_workspace(sim.move_to([0.55, 0.0, 0.2]))


def test_commands_stamped_before_the_last_reset_are_dropped(sim: SimClient) -> None:
    # Stamped a motion before the reset: stale. (One stamped exactly at the reset's start is
    # accepted: a client whose clock has not yet seen the post-reset time stamps so.)
    before = sim.latest_pose().header.stamp
    sim.servo([0.0, 0.0, 0.01])
    sim.reset()
    sim.diagnostics.clear()
    sim.twist.publish(twist([0.1, 0.0, 0.0], stamp=before))
    sim.expect_warning("stale")


def test_scripted_top_down_grasp_over_ros(sim: SimClient) -> None:
    """Grasp the one object in the tray, found through ground truth, with ROS commands only
    (approach with a pose target, descend with twists, close, lift): the gripper's reading and
    the simulator's ground truth both say it was lifted. A few fresh objects are allowed, since
    some random_urdfs shapes do not fit the gripper."""
    outcomes = []
    for _ in range(4):
        names = sim.reset()
        truth = wait_for(lambda: (t := sim.truth())["objects"][0]["name"] == names[0] and t,
                         TIMEOUT, "ground truth of the new object")
        obj = truth["objects"][0]
        x, y, z = obj["position"]
        sx, sy, sz = obj["size"]
        top = z + sz / 2
        yaw = 0.0 if sy <= sx else math.pi / 2 - 1e-3  # close across the narrow side
        sim.move_to([x, y, top + 0.06], yaw)
        grasp_z = max(top - 0.025, LO[2])
        while xyz(sim.latest_pose())[2] - grasp_z > 0.002:
            dz = min(CFG.max_linear_speed * CFG.command_duration,
                     xyz(sim.latest_pose())[2] - grasp_z)
            sim.servo([0.0, 0.0, -dz / CFG.command_duration])
        sim.fingers(0.0, 0.0)
        sim.move_to([x, y, truth["tray_height"] + 0.25], yaw)
        joints = sim.joints.latest()
        opening = joints.position[7] + joints.position[8]
        lifted = wait_for(lambda: (t := sim.truth())["stamp"] >= from_time_msg(
            sim.latest_pose().header.stamp) - 1e-6 and t, TIMEOUT, "ground truth after lift")
        outcomes.append((names[0], round(opening, 4), lifted["any_lifted"]))
        if opening > 0.01 and lifted["any_lifted"]:
            print(f"grasped after {len(outcomes)} attempt(s): {outcomes}")
            return
    pytest.fail(f"no grasp succeeded: (object, opening m, lifted) = {outcomes}")


def test_wrong_parameter_type_exits_with_a_clear_message(ros_processes: ProcessGroup) -> None:
    proc = ros_processes.start_node("sim_bridge.node", "bad_params", namespace="/arm9",
                                    params={"max_linear_speed": 1})
    wait_for(lambda: not proc.alive(), 30.0, "the node to exit")
    assert proc.popen.returncode == 2
    log = proc.log_text()
    assert "max_linear_speed" in log and "decimal point" in log, log


def test_sigterm_exits_cleanly(ros_processes: ProcessGroup, ros_node: RosTestNode) -> None:
    """(Started with publish_depth:=false: a colour-only camera has no depth publisher.)"""
    proc = ros_processes.start_node("sim_bridge.node", "sim_arm_term", namespace="/arm8",
                                    params={"num_objects": 0, "publish_depth": False})
    proc.wait_for_log("simulated arm ready", 60.0)
    images = ros_node.subscribe(Image, "/arm8/camera/image_raw", qos_profile_sensor_data)
    images.wait(TIMEOUT, what="an image of the colour-only camera")
    assert ros_node.node.count_publishers(f"/arm8/{DEPTH_TOPIC}") == 0
    assert "no depth" in proc.log_text()
    os.killpg(proc.pgid, signal.SIGTERM)
    wait_for(lambda: not proc.alive(), 10.0, "exit after SIGTERM")
    assert proc.popen.returncode == 0, proc.log_text()
    assert "shut down" in proc.log_text()


def test_servo_round_trip_latency(sim: SimClient) -> None:
    """Wall time from publishing a twist to receiving its ee_pose, over DDS (printed: the
    figure in docs/ros-interfaces.md; `pytest tests/test_sim_node.py -k latency -s`).

    The median is 21-25 ms on a quiet machine and reached 106 ms in a loaded CI run, so the
    bound (250 ms) is for what a bug looks like: a blocking wait, a timer-driven physics loop
    or a polled subscription adds a period of 0.5-1 s to every round trip."""
    sim.move_to([0.55, 0.0, 0.2])
    times = []
    for i in range(20):
        start = time.perf_counter()
        sim.servo([0.0, 0.0, 0.02 if i % 2 else -0.02])
        times.append(time.perf_counter() - start)
    median = float(np.median(times)) * 1e3
    print(f"servo round trip ({WIDTH}x{HEIGHT}): median {median:.1f} ms, "
          f"max {max(times) * 1e3:.1f} ms over {len(times)}")
    assert median < 250.0, f"median servo round trip {median:.0f} ms"
