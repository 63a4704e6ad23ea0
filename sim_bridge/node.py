"""The `sim_arm` ROS 2 node: one simulated arm (sim_bridge.core.SimArm) behind exactly the
topics, services and QoS of docs/ros-interfaces.md, so robot_node cannot tell it from a real arm.

Run it the way `ros2 launch` does:
    python -m sim_bridge.node --ros-args -r __ns:=/arm1 -r /clock:=/arm1/clock \
        --params-file config/sim_arm.yaml -p num_objects:=3
(or the console script `sim_arm`).

Concurrency design (why a command that arrives during a reset is rejected, not queued):
commands run one at a time, in arrival order, on the node's own single-threaded executor; the
reset service is served by a second small node in the same process (`<name>_reset`, same
namespace, so the service is still `sim/reset`) on a second single-threaded executor in its
own thread, so while a reset holds the arm, incoming commands are still taken, and rejected
with a WARN (they were aimed at a tray that no longer exists). A command stamped before the
start of the last reset is dropped as stale for the same reason; a zero stamp means "now".
PyBullet is not thread-safe, so one lock guards the simulator.

Why two single-threaded executors and not rclpy's MultiThreadedExecutor (which this node used
until 2026-12-04): in rclpy 9.1.2 (Kilted wheels) its spin loop re-yields callbacks already
handed to the thread pool and holds the GIL while the pool waits (rclpy issues #1452, #1223;
fixed upstream by PR #1547). Measured here: a servo command's round trip had a median of
150-500 ms with stalls of 2-2.7 s (robot_node's 2 s camera watchdog then aborted a third of
the attempts), against ~10 ms with single-threaded executors.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from fractions import Fraction
from typing import Any, Callable, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.clock import Clock as RosClock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from . import messages as m
from .core import CommandReport, SimArm
from .node_params import NodeSettings, declare_settings

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
# rclpy's TimeSource subscribes to /clock best effort, depth 1: a reliable publisher serves
# both best-effort and reliable subscribers.
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"


class SimArmNode(Node):
    """A simulated arm as a ROS 2 driver: publishes its state after every motion, takes
    servo twists, pose targets and gripper commands, and resets on `sim/reset`."""

    def __init__(self, **node_kwargs: Any):
        super().__init__("sim_arm", **node_kwargs)
        self.settings: NodeSettings = declare_settings(self)
        ns = self.get_namespace()
        self.arm_id = self.settings.arm_id or ns.strip("/").replace("/", "_") or "sim"
        self.status_name = f"{self.get_name()}: {ns}"
        self.counts = {"commands": 0, "clamped": 0, "rejected": 0, "resets": 0}
        self._warned_since_status: list[str] = []
        self._last_warning = ""

        self._arm_lock = threading.Lock()  # PyBullet is not thread-safe
        self._diag_lock = threading.Lock()
        self._resetting = threading.Event()
        self._reset_started = 0  # stamp (ns) at which the last reset began
        self._cached: list[tuple[Any, Any]] = []  # (publisher, msg) of the last state, for idle
        self._last_publish = 0.0  # wall clock, time.monotonic()

        self._wall_ns_at_start = time.time_ns()
        self.arm = SimArm(self.settings.sim)

        self._pub_image = self.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        # An RGB-D camera's aligned depth (realsense-ros: aligned_depth_to_color/image_raw):
        # same QoS, stamp and frame as the colour image, from the same render.
        self._pub_depth = self.create_publisher(
            Image, DEPTH_TOPIC, qos_profile_sensor_data) if self.settings.publish_depth else None
        self._pub_info = self.create_publisher(CameraInfo, "camera/camera_info",
                                               qos_profile_sensor_data)
        self._pub_joints = self.create_publisher(JointState, "joint_states", RELIABLE_10)
        self._pub_pose = self.create_publisher(PoseStamped, "ee_pose", RELIABLE_10)
        self._pub_truth = self.create_publisher(String, "sim/ground_truth", LATCHED)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_10)
        self._pub_clock = self.create_publisher(Clock, "/clock", CLOCK_QOS)  # remap per arm

        # One SingleThreadedExecutor runs these one at a time: no callback groups needed.
        self.create_subscription(TwistStamped, "servo_node/delta_twist_cmds",
                                 self._wrap(m.twist_command, "twist"), RELIABLE_10)
        self.create_subscription(PoseStamped, "servo_node/pose_target_cmds",
                                 self._wrap(m.pose_command, "pose target"), RELIABLE_10)
        self.create_subscription(Float64MultiArray, "gripper_controller/commands",
                                 self._wrap(m.finger_command, "gripper command"), RELIABLE_10)
        # Its own node, spun by its own executor thread (main()): see "Concurrency design".
        # No global arguments: the launch's `-r __node:=sim_arm` would rename it to this node's
        # name; the namespace is this node's, so the service resolves to <ns>/sim/reset.
        self.reset_node = Node(f"{self.get_name()}_reset", namespace=self.get_namespace(),
                               context=self.context, use_global_arguments=False,
                               start_parameter_services=False)
        self.reset_node.create_service(Trigger, "sim/reset", self._on_reset)
        # Wall-clock timers even if someone sets use_sim_time: simulated time stands still
        # while the arm is idle, which is exactly when these must keep firing.
        steady = RosClock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0 / self.settings.idle_publish_rate, self._on_idle,
                          clock=steady)
        self.create_timer(self.settings.diagnostics_period, self._publish_status,
                          clock=steady)

        names = self._reset_arm()
        self.get_logger().info(
            f"arm {self.arm_id}: simulated arm ready ({self.settings.sim.image_width}x"
            f"{self.settings.sim.image_height} camera"
            f"{' with aligned depth' if self.settings.publish_depth else ', no depth'}, "
            f"{self.settings.sim.split} split, "
            f"seed {self.settings.sim.seed}), objects {names}")

    # ------------------------------------------------------------------------------- time

    def sim_stamp_ns(self) -> int:
        """Simulated time as ns since the epoch: wall time at start + simulated time.

        Counted in whole physics steps with exact integer arithmetic, so that a twist held for
        command_duration moves the stamp by exactly command_duration (24 steps at 240 Hz are
        100,000,000 ns, not 99,999,999): clients compare stamps for "at or after"."""
        steps = Fraction(self.arm.physics_steps) * 10**9 / Fraction(self.settings.sim.physics_hz)
        return self._wall_ns_at_start + round(steps)

    # ------------------------------------------------------------------------------ commands

    def _wrap(self, parse: Callable[[Any], m.Command], what: str) -> Callable[[Any], None]:
        """A subscription callback: validate, gate against resets, run, publish the outcome."""

        def callback(msg: Any) -> None:
            try:
                self._handle(msg, parse, what)
            except Exception as error:  # never let one command take the driver down
                self.get_logger().error(f"arm {self.arm_id}: {what} failed: {error!r}")
                self._warn(f"{what} failed inside the simulator: {error}", "rejected")

        return callback

    def _handle(self, msg: Any, parse: Callable[[Any], m.Command], what: str) -> None:
        self.counts["commands"] += 1
        try:
            command = parse(msg)
        except m.CommandRejected as error:
            self._warn(f"{what} rejected: {error}", "rejected")
            return
        stamp = m.time_msg_ns(msg.header.stamp) if hasattr(msg, "header") else 0
        if self._resetting.is_set():
            self._warn(f"{what} rejected: it arrived during a reset; wait for the sim/reset "
                       "response before commanding", "rejected")
            return
        with self._arm_lock:
            if self._resetting.is_set():
                self._warn(f"{what} rejected: it arrived during a reset", "rejected")
                return
            if 0 < stamp < self._reset_started:
                self._warn(f"{what} rejected as stale: stamped {stamp * 1e-9:.3f}, before the "
                           f"last reset began at {self._reset_started * 1e-9:.3f}", "rejected")
                return
            try:
                report = self._run(command)
            except ValueError as error:  # SimArm's own validation: nothing moved
                self._warn(f"{what} rejected: {error}", "rejected")
                return
            self._publish_state()
        for warning in command.warnings:
            self._warn(f"{what}: {warning}", "clamped")
        if report.clamped:
            self._warn(f"{what}: " + "; ".join(report.reasons), "clamped")
        elif report.reasons:  # e.g. a yaw taken modulo a half turn: fine, worth a note
            self.get_logger().info(f"arm {self.arm_id}: {what}: " + "; ".join(report.reasons))

    def _run(self, command: m.Command) -> CommandReport:
        if command.kind == "servo":
            return self.arm.servo(*command.args)
        if command.kind == "move_to":
            return self.arm.move_to(*command.args)
        return self.arm.set_fingers(*command.args)

    # ------------------------------------------------------------------------------ reset

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        self._resetting.set()
        try:
            with self._arm_lock:
                names = self._reset_arm()
            response.success = True
            response.message = json.dumps({"objects": names})
        except Exception as error:
            self.get_logger().error(f"arm {self.arm_id}: reset failed: {error!r}")
            self._warn(f"reset failed: {error}", None)
            response.success = False
            response.message = f"reset failed: {error}"
        finally:
            self._resetting.clear()
        return response

    def _reset_arm(self) -> list[str]:
        """Reset the simulator and publish the new state (caller holds the arm, or is init)."""
        self._reset_started = self.sim_stamp_ns()
        names = self.arm.reset()
        self.counts["resets"] += 1
        self._publish_state()
        self.get_logger().info(f"arm {self.arm_id}: reset #{self.counts['resets']} at sim "
                               f"{self.arm.sim_time:.2f} s, objects {names} "
                               f"({self._count_summary()})")
        return names

    # ------------------------------------------------------------------------------ state

    def _publish_state(self) -> None:
        """Publish everything the arm shows, stamped with the simulated time now.

        Order matters to clients: the clock first (a client's sim clock is current when it
        sees the state), the image before ee_pose (a client waits for ee_pose, then takes the
        first image stamped at or after it), and the depth image before the colour image (a
        client that takes that image finds its depth too). Colour and depth come from one
        render, so they show the same instant."""
        stamp_ns = self.sim_stamp_ns()
        stamp = m.ns_to_time_msg(stamp_ns)
        c = self.settings.sim
        names, positions, velocities = self.arm.joint_state()
        position, orientation = self.arm.ee_pose()
        state: list[tuple[Any, Any]] = [(self._pub_clock, Clock(clock=stamp))]
        if self._pub_depth is not None:
            rgb, depth = self.arm.render_rgbd()
            state.append((self._pub_depth, m.depth_image_msg(depth, stamp)))
        else:
            rgb = self.arm.render()
        state += [
            (self._pub_image, m.image_msg(rgb, stamp)),
            (self._pub_info, m.camera_info_msg(self.arm.camera_intrinsics(), c.image_width,
                                               c.image_height, stamp)),
            (self._pub_joints, m.joint_state_msg(names, positions, velocities, stamp)),
        ]
        truth = m.ground_truth_json(self.arm.ground_truth(), self.arm.object_boxes(),
                                     stamp_ns * 1e-9)
        pose = (self._pub_pose, m.pose_msg(position, orientation, stamp))
        for publisher, msg in state:
            publisher.publish(msg)
        self._pub_truth.publish(String(data=truth))
        pose[0].publish(pose[1])
        self._cached = state + [pose]
        self._last_publish = time.monotonic()

    def _on_idle(self) -> None:
        """Re-publish the last state, with its frozen stamp, when nothing moved for a while."""
        if time.monotonic() - self._last_publish < 1.0 / self.settings.idle_publish_rate:
            return
        if not self._arm_lock.acquire(blocking=False):
            return  # a command or a reset is running and will publish
        try:
            for publisher, msg in self._cached:
                publisher.publish(msg)
            self._last_publish = time.monotonic()
        finally:
            self._arm_lock.release()

    # ------------------------------------------------------------------------------ diagnostics

    def _warn(self, reason: str, counter: Optional[str]) -> None:
        """Log a warning and raise it on /diagnostics at once (diagnostic_updater's
        force_update, in effect)."""
        if counter:
            self.counts[counter] += 1
        self.get_logger().warning(f"arm {self.arm_id}: {reason}")
        with self._diag_lock:
            self._last_warning = reason
            self._warned_since_status.append(reason)
        self._publish_diagnostic(DiagnosticStatus.WARN, reason)

    def _publish_status(self) -> None:
        """The periodic status: WARN while warnings came in since the last one, else OK."""
        with self._diag_lock:
            warned, self._warned_since_status = self._warned_since_status, []
        if warned:
            self._publish_diagnostic(DiagnosticStatus.WARN,  # the reason: in last_warning
                                     f"{len(warned)} warning(s) since the last status")
        else:
            self._publish_diagnostic(DiagnosticStatus.OK, "running")

    def _publish_diagnostic(self, level: bytes, message: str) -> None:
        values = {"arm_id": self.arm_id, "sim_time": f"{self.arm.sim_time:.3f}",
                  **self.counts, "last_warning": self._last_warning}
        status = m.diagnostic_status(level, self.status_name, self.arm_id, message, values)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        with self._diag_lock:
            self._pub_diag.publish(array)

    def _count_summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())

    # ------------------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Wait for the running command (if any), then disconnect PyBullet."""
        acquired = self._arm_lock.acquire(timeout=10.0)
        try:
            self.arm.close()
        finally:
            if acquired:
                self._arm_lock.release()
        # Not the node's logger: the context is shut down, rosout cannot take it any more.
        rclpy.logging.get_logger(f"{self.get_logger().name}.exit").info(
            f"arm {self.arm_id}: shut down ({self._count_summary()})")


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `sim_arm` / `python -m sim_bridge.node`; exits 0 on SIGINT/SIGTERM."""
    rclpy.init(args=args)  # installs rclpy's SIGINT/SIGTERM handlers: shutdown, spin returns
    try:
        node = SimArmNode()
    except (ValueError, ParameterException) as error:
        rclpy.logging.get_logger("sim_arm").fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 2
    except Exception:
        if not rclpy.ok():  # SIGINT/SIGTERM during start-up shut the context down under us
            return 0
        raise
    executor, reset_executor = SingleThreadedExecutor(), SingleThreadedExecutor()
    executor.add_node(node)
    reset_executor.add_node(node.reset_node)
    resets = threading.Thread(target=_spin_quietly, args=(reset_executor,), name="sim-reset",
                              daemon=True)
    resets.start()
    try:
        _spin_quietly(executor)
    finally:
        rclpy.try_shutdown()  # ends the reset thread's spin too
        resets.join(timeout=10.0)
        executor.shutdown(timeout_sec=10.0)
        reset_executor.shutdown(timeout_sec=10.0)
        node.close()
        node.reset_node.destroy_node()
        node.destroy_node()
    return 0


def _spin_quietly(executor: SingleThreadedExecutor) -> None:
    """Spin until the context shuts down: a signal's shutdown is a clean end."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal's shutdown can land while the executor builds its wait set, which then
        # fails with "context is not valid" instead of ExternalShutdownException.
        if rclpy.ok():
            raise


if __name__ == "__main__":
    sys.exit(main())
