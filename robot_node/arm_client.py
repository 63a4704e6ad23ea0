"""The arm over ROS 2 (docs/ros-interfaces.md): subscriptions, command publishers, the reset
service, and waiting for a command to complete by the contract's timing rule.

Timing rule: a command is stamped with the arm's current time (the newest stamp the arm has
published, or the simulated /clock when use_sim_time is on, whichever is later), and it is done
when `ee_pose` and `joint_states` arrive stamped at or after that stamp plus the command's
duration; the observation then uses the first image stamped at or after the same instant. Using
the arm's own stamps (not this node's clock) makes the rule hold for a simulated arm, whose time
stands still between commands, and for a real arm, whose stamps are wall-clock time. Every wait
is bounded on the steady clock and gives up early on an e-stop, a watchdog trip or shutdown.

With a depth topic (an RGB-D camera's aligned depth), an image counts only once its depth,
stamped like it and of its size, has arrived too: the observation is the first such pair.

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
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from robot_node.grasp_loop import AttemptAborted, ArmState, ArmTimeout
from robot_node.messages import LATCHED_1, RELIABLE_10, depth_to_array, image_to_array
from robot_node.messages import NS_PER_S as _NS
from robot_node.messages import stamp_ns
from robot_node.params import NodeConfig

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
        # Aligned depth images by stamp, when the camera gives them (depth_topic): a state's
        # image takes the depth stamped like it.
        self._depths: deque[tuple[int, np.ndarray]] = deque(maxlen=8)
        self.depth_topic: Optional[str] = config.depth_topic if config.has_depth else None
        self.bad_depths = 0  # of bad_images: depth images refused (encoding, size)
        self._last_bad_depth = ""
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
        if self.depth_topic is not None:
            node.create_subscription(Image, self.depth_topic, self._on_depth_msg,
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

    def _on_depth_msg(self, msg: Image) -> None:
        try:
            depth = depth_to_array(msg)
        except ValueError as exc:
            self._bad_depth(str(exc))
            return
        with self._cond:
            colour = self._images[-1][1].shape[:2] if self._images else depth.shape
            if depth.shape == colour:
                self._depths.append((stamp_ns(msg.header.stamp), depth))
                self._cond.notify_all()
                return
        self._bad_depth(f"depth image is {depth.shape[1]}x{depth.shape[0]}, the colour image "
                        f"{colour[1]}x{colour[0]}: publish the depth aligned to the colour "
                        "image (aligned_depth_to_color)")

    def _bad_depth(self, reason: str) -> None:
        with self._cond:
            self.bad_images += 1
            self.bad_depths += 1
            first = self._last_bad_depth != reason
            self._last_bad_depth = reason
        if first:  # once per distinct reason, not 30 times a second
            self.node.get_logger().warning(f"[{self.config.arm_id}] ignoring depth images on "
                                           f"{self.depth_topic}: {reason}")

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

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str,
              detail: Callable[[], str] = lambda: "") -> Any:
        """Wait (steady clock) until ready() returns something; abort early if interrupted.
        On a timeout the error says `what`, plus detail() (called with _cond held)."""
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
                    raise ArmTimeout(f"timed out after {timeout:.1f} s waiting for {what}"
                                     f"{detail()}")
                self._cond.wait(min(left, 0.05))

    def _state_at(self, t_ns: int) -> Optional[ArmState]:
        """The state once pose, joints and an image all reached t_ns, and, with a depth topic,
        the image's aligned depth (stamped like it) has arrived too (call with _cond held)."""
        t = t_ns - self._tol
        if not (self._pose and self._gripper and self._pose[0] >= t and self._gripper[0] >= t):
            return None
        image, depth = None, None
        for stamp, img in self._images:
            if stamp < t:
                continue
            if self.depth_topic is None:
                image = (stamp, img)
                break
            # With depth: the first image at or after t whose depth has arrived (best effort
            # may drop one of a pair; a later pair then serves).
            depth = self._depth_for(stamp, img.shape[:2])
            if depth is not None:
                image = (stamp, img)
                break
        if image is None:
            return None  # with depth: maybe not yet, it comes beside the colour image
        return ArmState(image=image[1], image_stamp=image[0] / _NS, ee_pose=self._pose[1],
                        gripper=self._gripper[1], stamp=self._pose[0] / _NS, depth=depth)

    def _depth_for(self, image_ns: int, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """The depth image stamped like the colour image (within _tol) and of its size."""
        return next((d for s, d in self._depths
                     if abs(s - image_ns) <= self._tol and d.shape == shape), None)

    def _inputs(self) -> str:
        """What a state is made of, for timeout messages."""
        depth = f", its aligned depth on {self.depth_topic}" if self.depth_topic else ""
        return f"ee_pose, joint_states and an image{depth}"

    def _depth_missing(self, t_ns: int) -> str:
        """Why the depth is what a state still lacks, if it is (call with _cond held)."""
        if self.depth_topic is None or not self._pose or not self._gripper:
            return ""
        t = t_ns - self._tol
        image = next(((s, img) for s, img in self._images if s >= t), None)
        if image is None or self._pose[0] < t or self._gripper[0] < t \
                or self._depth_for(image[0], image[1].shape[:2]) is not None:
            return ""
        same_stamp = [d for s, d in self._depths if abs(s - image[0]) <= self._tol]
        if same_stamp:
            h, w = same_stamp[-1].shape
            heard = (f"the one stamped so is {w}x{h}, the image "
                     f"{image[1].shape[1]}x{image[1].shape[0]}")
        elif self._depths:
            heard = f"newest depth stamped {self._depths[-1][0] / _NS:.3f}"
        else:
            heard = "no depth image received"
        bad = (f", {self.bad_depths} refused (last: {self._last_bad_depth})"
               if self.bad_depths else "")
        return (f"; no depth image on {self.depth_topic} stamped like the image "
                f"({image[0] / _NS:.3f}): {heard}{bad}. A camera without depth needs "
                f"depth_topic:=none")

    def _wait_done(self, t_ns: int, timeout: float, what: str) -> ArmState:
        return self._wait(lambda: self._state_at(t_ns), timeout,
                          f"the {what} to complete ({self._inputs()} stamped "
                          f">= {t_ns / _NS:.3f})", lambda: self._depth_missing(t_ns))

    def wait_ready(self, timeout: float) -> ArmState:
        """The current state, once the arm has published an image, a pose and joint states."""
        def ready() -> Optional[ArmState]:
            if not (self._pose and self._gripper and self._images):
                return None
            return self._state_at(max(self._pose[0], self._gripper[0]))

        def missing() -> str:
            if not (self._pose and self._gripper and self._images):
                return ""
            return self._depth_missing(max(self._pose[0], self._gripper[0]))
        return self._wait(ready, timeout, f"the arm's {self._inputs()} "
                                          f"(image on {self.config.image_topic})", missing)

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
                   f"the arm's state after the reset ({self._inputs()})",
                   lambda: self._depth_missing(before + 1))
        try:
            return json.loads(response.message) if response.message else {}
        except ValueError:
            return {"message": response.message}
