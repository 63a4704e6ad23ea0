"""The arm over ROS 2 (docs/ros-interfaces.md): subscriptions, command publishers, the reset
service, and waiting for a command to complete by the contract's timing rule.

Timing rule: a command is stamped with the arm's current time (the newest stamp the arm has
published, or the simulated /clock when use_sim_time is on, whichever is later), and it is done
when `ee_pose` and `joint_states` arrive stamped at or after that stamp plus the command's
duration; the observation then uses the first image stamped at or after the same instant. Using
the arm's own stamps (not this node's clock) makes the rule hold for a simulated arm, whose time
stands still between commands, and for a real arm, whose stamps are wall-clock time. Every wait
is bounded on the steady clock and gives up early on an e-stop, a watchdog trip or shutdown.

Callbacks run on the executor thread; the grasp loop calls the public methods from its own.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from robot_node.grasp_loop import AttemptAborted, ArmState, ArmTimeout
from robot_node.params import NodeConfig

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
LATCHED_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.TRANSIENT_LOCAL)
_NS = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * _NS + int(stamp.nanosec)


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 RGB copy."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"camera encoding {msg.encoding!r} is not supported; publish rgb8")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    img = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return (img[:, :, ::-1] if msg.encoding == "bgr8" else img).copy()


class RosArm:
    """Implements grasp_loop.Arm over the contract's topics."""

    def __init__(self, node: Node, config: NodeConfig,
                 interrupted: Callable[[], Optional[str]],
                 on_image: Callable[[], None] = lambda: None):
        self.node = node
        self.config = config
        self._interrupted = interrupted
        self._on_image = on_image
        self._cond = threading.Condition()
        self._cmd_lock = threading.Lock()
        self._images: deque[tuple[int, np.ndarray]] = deque(maxlen=8)
        self._pose: Optional[tuple[int, tuple[float, ...]]] = None
        self._idle_stamp = 0  # newest pose stamp seen twice (a simulated arm at rest)
        # An arm that re-publishes frozen stamps while idle publishes its state only when a
        # command ends (the simulation contract): then the first pose stamped after a command
        # is that command's end. A real arm streams fresh stamps and never sets this.
        self.event_driven = False
        self._gripper: Optional[tuple[int, float]] = None
        self._truths: deque[tuple[int, dict]] = deque(maxlen=8)
        self._ever_truth = False
        self.halted = False  # set by halt(): no command goes out until resume()
        self.bad_images = 0
        c = config
        # Tolerance for float rounding of stamps on the arm's side: far below one command.
        self._tol = min(2_000_000, int(c.command_duration * _NS) // 4)
        node.create_subscription(Image, c.image_topic, self._on_image_msg,
                                 qos_profile_sensor_data)
        node.create_subscription(PoseStamped, c.ee_pose_topic, self._on_pose, RELIABLE_10)
        node.create_subscription(JointState, c.joint_states_topic, self._on_joints, RELIABLE_10)
        node.create_subscription(String, c.ground_truth_topic, self._on_truth, LATCHED_1)
        self._twist_pub = node.create_publisher(TwistStamped, c.twist_topic, RELIABLE_10)
        self._pose_pub = node.create_publisher(PoseStamped, c.pose_topic, RELIABLE_10)
        self._gripper_pub = node.create_publisher(Float64MultiArray, c.gripper_topic, RELIABLE_10)
        self._reset = None
        if c.reset_service and c.reset_service.lower() != "none":
            self._reset = node.create_client(Trigger, c.reset_service)

    # ------------------------------------------------------------------ callbacks

    def _on_image_msg(self, msg: Image) -> None:
        try:
            img = image_to_array(msg)
        except ValueError:
            self.bad_images += 1
            return
        with self._cond:
            self._images.append((stamp_ns(msg.header.stamp), img))
            self._cond.notify_all()
        self._on_image()

    def _on_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        stamp = stamp_ns(msg.header.stamp)
        with self._cond:
            if self._pose and self._pose[0] == stamp:
                # re-published with a frozen stamp: an event-driven (simulated) arm, now idle
                self._idle_stamp = stamp
                self.event_driven = True
            self._pose = (stamp, (p.x, p.y, p.z, q.x, q.y, q.z, q.w))
            self._cond.notify_all()

    def _on_joints(self, msg: JointState) -> None:
        names = list(msg.name)
        try:
            opening = sum(msg.position[names.index(j)] for j in self.config.finger_joints)
        except (ValueError, IndexError):
            return  # a joint_states message without the fingers (e.g. a partial publisher)
        with self._cond:
            self._gripper = (stamp_ns(msg.header.stamp), float(opening))
            self._cond.notify_all()

    def _on_truth(self, msg: String) -> None:
        try:
            truth = json.loads(msg.data)
            stamp = int(round(float(truth.get("stamp", 0.0)) * _NS))
        except (ValueError, TypeError, AttributeError):
            return
        with self._cond:
            self._ever_truth = True
            self._truths.append((stamp, truth))
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter (an e-stop or shutdown wants the loop's attention now)."""
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ commands

    def now_ns(self) -> int:
        """The arm's current time: its newest stamp, or the sim clock if later."""
        with self._cond:
            stamps = [self._images[-1][0]] if self._images else []
            stamps += [self._pose[0]] if self._pose else []
            stamps += [self._gripper[0]] if self._gripper else []
        if self.node.get_parameter("use_sim_time").value:
            stamps.append(self.node.get_clock().now().nanoseconds)
        return max(stamps, default=0)

    def twist(self, velocity: Sequence[float], timeout: float) -> ArmState:
        msg = TwistStamped()
        msg.header.frame_id = "base_link"
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in velocity[:3])
        msg.twist.angular.z = float(velocity[3])
        start = self._publish(msg)
        return self._wait_done(start + int(self.config.command_duration * _NS), timeout, "motion")

    def move_to(self, pose: Sequence[float], duration: float, timeout: float) -> ArmState:
        """Send a pose target; done once the arm reports a pose stamped after the command that
        is within pose_tolerance of the target, or stamped at or after start + duration (the
        time at maximum speed). An event-driven (simulated) arm publishes only when a command
        ends, so there its first pose stamped after the command is the end; an arm that stops
        short of the target (blocked, stopped on contact) is thereby not waited for."""
        msg = PoseStamped()
        msg.header.frame_id = "base_link"
        p, q = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z, q.x, q.y, q.z, q.w = (float(v) for v in pose[:7])
        start = self._publish(msg)
        end = start + int(duration * _NS)
        target = np.asarray(pose[:3], float)
        tol = self.config.pose_tolerance

        def arrived() -> Optional[ArmState]:
            if not self._pose or self._pose[0] <= start:
                return None
            stamp, current = self._pose
            if stamp < end - self._tol and not self.event_driven \
                    and self._idle_stamp != stamp \
                    and np.linalg.norm(np.asarray(current[:3]) - target) > tol:
                return None
            return self._state_at(stamp)

        return self._wait(arrived, timeout, f"the pose target {tuple(round(v, 3) for v in pose[:3])}"
                                            f" to be reached (by stamp {end / _NS:.3f})")

    def gripper(self, per_finger: float, timeout: float) -> ArmState:
        msg = Float64MultiArray()
        msg.data = [float(per_finger)] * len(self.config.finger_joints)
        start = self._publish(msg)
        return self._wait_done(start + int(self.config.gripper_duration * _NS), timeout,
                               "gripper command")

    def _publish(self, msg: Any) -> int:
        """Stamp and send a command unless halted (e-stop); returns its stamp, ns."""
        with self._cmd_lock:
            reason = self._interrupted()
            if reason or self.halted:
                raise AttemptAborted(reason or "halted")
            start = self.now_ns()
            if isinstance(msg, TwistStamped):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(start, _NS)
                self._twist_pub.publish(msg)
            elif isinstance(msg, PoseStamped):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(start, _NS)
                self._pose_pub.publish(msg)
            else:
                self._gripper_pub.publish(msg)
            return start

    def stop(self) -> None:
        """Publish a zero twist now (an arm then halts; Servo also halts without commands)."""
        msg = TwistStamped()
        msg.header.frame_id = "base_link"
        with self._cmd_lock:
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self.now_ns(), _NS)
            self._twist_pub.publish(msg)

    def halt(self) -> None:
        """E-stop: zero twist at once, and no further command until resume()."""
        with self._cmd_lock:
            self.halted = True
        self.stop()
        self.wake()

    def resume(self) -> None:
        with self._cmd_lock:
            self.halted = False

    # ------------------------------------------------------------------ waiting

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait (steady clock) until ready() returns something; abort early if interrupted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = ready()
                if value is not None:
                    return value
                reason = self._interrupted()
                if reason:
                    raise AttemptAborted(reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ArmTimeout(f"timed out after {timeout:.1f} s waiting for {what}")
                self._cond.wait(min(left, 0.05))

    def _state_at(self, t_ns: int) -> Optional[ArmState]:
        """The state once pose, joints and an image all reached t_ns (call with _cond held)."""
        t = t_ns - self._tol
        if not (self._pose and self._gripper and self._pose[0] >= t and self._gripper[0] >= t):
            return None
        image = next(((s, img) for s, img in self._images if s >= t), None)
        if image is None:
            return None
        return ArmState(image=image[1], image_stamp=image[0] / _NS, ee_pose=self._pose[1],
                        gripper=self._gripper[1], stamp=self._pose[0] / _NS)

    def _wait_done(self, t_ns: int, timeout: float, what: str) -> ArmState:
        return self._wait(lambda: self._state_at(t_ns), timeout,
                          f"the {what} to complete (ee_pose, joint_states and an image stamped "
                          f">= {t_ns / _NS:.3f})")

    def wait_ready(self, timeout: float) -> ArmState:
        """The current state, once the arm has published an image, a pose and joint states."""
        def ready() -> Optional[ArmState]:
            if not (self._pose and self._gripper and self._images):
                return None
            return self._state_at(max(self._pose[0], self._gripper[0]))
        return self._wait(ready, timeout, "the arm's image, ee_pose and joint_states "
                                          f"({self.config.image_topic}, ...)")

    def ground_truth_after(self, stamp: float, timeout: float) -> Optional[dict[str, Any]]:
        if not self._ever_truth:
            return None  # a real arm: no simulator, nothing to wait for
        t = int(stamp * _NS) - self._tol

        def found() -> Optional[dict]:
            return next((truth for s, truth in reversed(self._truths) if s >= t), None)
        try:
            return self._wait(found, timeout, "ground truth")
        except ArmTimeout:
            return None

    def next_scene(self, timeout: float) -> Optional[dict[str, Any]]:
        if self._reset is None:
            return None
        deadline = time.monotonic() + timeout
        while not self._reset.service_is_ready():
            if self._interrupted():
                raise AttemptAborted(self._interrupted())
            if time.monotonic() > deadline:
                raise ArmTimeout(f"service {self._reset.srv_name} is not available after "
                                 f"{timeout:.1f} s")
            time.sleep(0.02)
        before = self.now_ns()
        done = threading.Event()
        future = self._reset.call_async(Trigger.Request())
        future.add_done_callback(lambda _f: (done.set(), self.wake()))
        self._wait(lambda: True if done.is_set() else None, max(0.0, deadline - time.monotonic()),
                   f"a response from {self._reset.srv_name}")
        response = future.result()
        if not response.success:
            raise AttemptAborted(f"{self._reset.srv_name} failed: {response.message}")
        # The arm's state after the reset: stamped later than anything before it.
        self._wait(lambda: self._state_at(before + 1), max(0.1, deadline - time.monotonic()),
                   "the arm's state after the reset")
        try:
            return json.loads(response.message) if response.message else {}
        except ValueError:
            return {"message": response.message}
