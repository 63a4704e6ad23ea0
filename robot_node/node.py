"""robot_node: the ROS 2 node on every arm controller.

Runs grasp attempts back to back on one arm (grasp_loop.GraspLoop over arm_client.RosArm),
spools every attempt durably (spool.Spool), obeys the e-stops and the watchdog (safety), swaps
in new policy bundles between attempts (policy_runtime), uploads the spool when a server is
configured (uploader), and reports on /diagnostics and its `status` topic.

Threads: rclpy's executor spins callbacks (sensors, e-stop, timers) on a background thread;
the grasp loop runs on the main thread and blocks only in bounded waits. SIGINT/SIGTERM set a
stop flag: the attempt in progress is aborted at its next wait, stored if it ran a step (a
complete spool file, never half of one), the arm is sent a zero twist, and the node exits 0.

    python -m robot_node.node --ros-args -r __ns:=/arm1 -p use_sim_time:=true \
        -r /clock:=/arm1/clock --params-file config/robot_node.yaml
"""
from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Optional

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Bool, String

from fleet.wire.protocol import RobotStatus
from fleet.wire.records import Attempt, encode
from robot_node.spin import spin_in_background
from robot_node.arm_client import RosArm
from robot_node.messages import RELIABLE_10
from robot_node.diagnostics import NodeStatus, diagnostic_array
from robot_node.grasp_loop import GraspLoop
from robot_node.params import ConfigError, NodeConfig, declare_config
from robot_node.policy_runtime import PolicyRuntime, set_torch_threads
from robot_node.safety import EStop, Watchdog
from robot_node.spool import Spool, SpoolError

WATCHED_PHASES = ("servo", "close", "lift", "label")
#: Node states as the server's HELLO status knows them (docs/protocol.md); others as is.
HEARTBEAT_STATES = {"stopping": "idle"}
#: This many aborted attempts in a row (a dead arm, a broken policy) report `error`.
ERROR_AFTER_ABORTS = 3
STATUS_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)


class _RosLogHandler(logging.Handler):
    """Python logging (grasp_loop, policy_runtime, uploader) -> the node's rcl logger."""

    def __init__(self, node: Node):
        super().__init__()
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        # rclpy remembers the severity of each call site and raises if it changes, so every
        # level needs its own call line.
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)


class RobotNode:
    """Wires config, arm, safety, policy, spool and status together; `run()` is the loop."""

    def __init__(self, node: Node, config: NodeConfig):
        self.node = node
        self.config = config
        self.log = node.get_logger()
        self.stop_event = threading.Event()
        self.spool = Spool(config.spool_dir, config.spool_max_bytes)
        self.watchdog = Watchdog(config.camera_stall, config.policy_stall)
        self.arm = RosArm(node, config, self.interrupted, on_image=self.watchdog.image_seen)
        self.estop = EStop(on_engage=self.arm.halt)
        set_torch_threads(config.torch_threads)  # a CEM decision 10x faster on a busy host
        self.runtime = PolicyRuntime(config)
        self.loop = GraspLoop(config, self.arm, self._store, interrupted=self.interrupted,
                              on_decision=self._on_decision, on_phase=self._on_phase)
        self.status = NodeStatus(arm_id=config.arm_id, spool_max_bytes=config.spool_max_bytes)
        self._unwritten: Optional[tuple[str, list[bytes]]] = None
        self._last_attempt_bytes = 0
        self._recent: deque[float] = deque(maxlen=20)
        self._consecutive_aborts = 0
        self.uploader = None
        for topic in (config.estop_topic, config.arm_estop_topic):
            node.create_subscription(Bool, topic, lambda m, t=topic: self._on_estop(t, m),
                                     RELIABLE_10)
        self._status_pub = node.create_publisher(String, config.status_topic, STATUS_QOS)
        self._diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_10)
        # Timers on the steady clock: with use_sim_time the node's clock is the arm's simulated
        # time, which stands still while the arm is idle (e-stopped, paused, waiting).
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        node.create_timer(config.status_period, self.publish_status, clock=steady)
        node.create_timer(0.05, self._check_watchdog, clock=steady)

    # ------------------------------------------------------------------ safety hooks

    def interrupted(self) -> Optional[str]:
        """Why the attempt in progress must stop now, or None."""
        if self.stop_event.is_set():
            return "node shutting down"
        if self.estop.engaged:
            return "e-stop engaged"
        return self.watchdog.tripped

    def _on_estop(self, topic: str, msg: Bool) -> None:
        was = self.estop.engaged
        self.estop.set(topic, msg.data)  # engaging publishes the zero twist right here
        if self.estop.engaged != was:
            self.log.warning(f"[{self.config.arm_id}] e-stop {'ENGAGED' if msg.data else 'released'}"
                             f" on {topic}; sources {self.estop.sources()}")
            self.publish_status()

    def _on_decision(self, started: bool) -> None:
        (self.watchdog.decision_started if started else self.watchdog.decision_ended)()

    def _on_phase(self, phase: str) -> None:
        # Watched while the arm should be streaming; not during a scene reset (which may
        # legitimately take seconds) nor between attempts.
        self.watchdog.set_active(phase in WATCHED_PHASES)

    def _check_watchdog(self) -> None:
        reason = self.watchdog.check()
        if reason:
            self.arm.stop()
            self.arm.wake()
            self.log.error(f"[{self.config.arm_id}] watchdog: {reason}; arm stopped")

    # ------------------------------------------------------------------ spool

    def _store(self, attempt: Attempt) -> None:
        frames = encode(attempt)
        self._last_attempt_bytes = sum(len(f) for f in frames) + 64
        try:
            self.spool.put(attempt.attempt_id, frames)
        except OSError as exc:
            self._unwritten = (attempt.attempt_id, frames)
            self.log.error(f"[{self.config.arm_id}] cannot write attempt "
                           f"{attempt.attempt_id} to the spool {self.spool.directory}: {exc}; "
                           f"collection paused until it can be written")

    def _retry_unwritten(self) -> bool:
        if self._unwritten is None:
            return True
        try:
            self.spool.put(*self._unwritten)
        except OSError as exc:
            self.status.paused_reason = f"spool write failed: {exc}"
            return False
        self._unwritten = None
        return True

    # ------------------------------------------------------------------ status

    def publish_status(self) -> None:
        s, st = self.status, self.loop.stats
        s.phase = self.loop.phase
        s.attempts, s.successes, s.failures, s.aborted = (st.attempts, st.successes,
                                                          st.failures, st.aborted)
        s.last_abort_reason = st.last_abort_reason
        s.ground_truth_agree, s.ground_truth_known = st.ground_truth_agree, st.ground_truth_known
        s.spool_backlog, s.spool_bytes = len(self.spool), self.spool.used_bytes
        s.policy_version = self.runtime.version
        s.estop_sources = self.estop.sources()
        s.watchdog = self.watchdog.tripped or ""
        if len(self._recent) >= 2 and self._recent[-1] > self._recent[0]:
            s.attempts_per_min = 60 * (len(self._recent) - 1) / (self._recent[-1] - self._recent[0])
        if self.uploader is not None:
            s.uploaded, s.upload_error = self.uploader.acked, self.uploader.last_error
        self._report_to_server()
        self._status_pub.publish(String(data=s.to_json()))
        self._diag_pub.publish(diagnostic_array(s, self.node.get_fully_qualified_name(),
                                                self.node.get_clock().now().to_msg()))

    def _report_to_server(self) -> None:
        """Hand the uploader the heartbeat status and the policy version in service."""
        if self.uploader is None:
            return
        st = self.loop.stats
        state = HEARTBEAT_STATES.get(self.status.state, self.status.state)
        if self._consecutive_aborts >= ERROR_AFTER_ABORTS:
            state = "error"
        self.uploader.status = RobotStatus(state, spool_attempts=len(self.spool),
                                           spool_bytes=self.spool.used_bytes,
                                           attempts=st.attempts, successes=st.successes)
        self.uploader.policy_version = self.runtime.version

    def _set_state(self, state: str, reason: str = "") -> None:
        if state != self.status.state or reason != self.status.paused_reason:
            self.status.state, self.status.paused_reason = state, reason
            if state == "paused":
                self.log.warning(f"[{self.config.arm_id}] collection paused: {reason}")
            else:
                self.log.info(f"[{self.config.arm_id}] state: {state}")
            self.publish_status()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        c = self.config
        rng = np.random.default_rng(c.seed or None)
        self.log.info(f"[{c.arm_id}] robot_node up: spool {self.spool.directory} "
                      f"({len(self.spool)} attempts waiting), T={c.max_steps}, exploration "
                      f"'{c.exploration_policy}', bundles from '{c.bundle_path or '-'}'")
        while not self.stop_event.is_set():
            if self.estop.engaged:
                self._set_state("estopped")
                self.estop.changed.wait(0.2)
                self.estop.changed.clear()
                if not self.estop.engaged:
                    self.arm.resume()
                continue
            if c.max_attempts and self.loop.stats.attempts >= c.max_attempts:
                self._set_state("idle")
                self.stop_event.wait(0.2)
                continue
            if not self._retry_unwritten():
                self._set_state("paused", self.status.paused_reason)
                self.stop_event.wait(1.0)
                continue
            if not self.spool.has_room(self._last_attempt_bytes):
                self._set_state("paused", f"spool full ({self.spool.used_bytes} of "
                                          f"{self.spool.max_bytes} bytes, {len(self.spool)} "
                                          f"attempts unsent); waiting for uploads")
                self.stop_event.wait(0.5)
                continue
            change = self.runtime.poll()
            if change and change.startswith("loaded"):
                self.log.info(f"[{c.arm_id}] {change}")
                self._report_to_server()  # the new version is in service from now on
            elif change:  # rclpy: one log call site, one severity
                self.log.error(f"[{c.arm_id}] {change}")
            policy = self.runtime.current()
            self._set_state("collecting")
            try:
                attempt = self.loop.run_attempt(policy, rng)
            except Exception:  # a bug must not leave the arm moving; say where, back off
                self.arm.stop()
                self.log.error(f"[{c.arm_id}] attempt failed unexpectedly (not counted):\n"
                               f"{traceback.format_exc()}")
                self._consecutive_aborts += 1
                self._back_off()
                continue
            self.status.policy_kind = attempt.policy_kind
            self._recent.append(time.monotonic())
            self._log_attempt(attempt)
            aborted = attempt.outcome == "aborted"
            self._consecutive_aborts = self._consecutive_aborts + 1 if aborted else 0
            self._back_off()
        self._set_state("stopping")
        self.arm.stop()

    def _back_off(self) -> None:
        """After consecutive aborts wait 0.2 s doubling to 5 s, so a dead arm does not spin
        the loop; no wait after a completed attempt."""
        if self._consecutive_aborts:
            self.stop_event.wait(min(5.0, 0.1 * 2 ** min(self._consecutive_aborts, 6)))

    def _log_attempt(self, a: Attempt) -> None:
        st = self.loop.stats
        truth = ""
        if a.ground_truth is not None:
            truth = f", truth {'lifted' if a.ground_truth.get('any_lifted') else 'nothing lifted'}"
        self.log.info(
            f"[{self.config.arm_id}] attempt {st.attempts} {a.attempt_id[:8]} {a.outcome} "
            f"({a.policy_kind} v{a.policy_version}, {len(a.steps)} steps, gripper "
            f"{a.gripper_after_lift * 1000:.1f} mm{truth}); totals: {st.successes} success, "
            f"{st.failures} failure, {st.aborted} aborted; spool {len(self.spool)}")


def main(args: Optional[list[str]] = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    node = Node("robot_node")
    try:
        config = declare_config(node)
        robot = RobotNode(node, config)
        if config.server_address:
            from robot_node.uploader import SpoolUploader
            robot.uploader = SpoolUploader.from_config(config, robot.spool)
    except (ConfigError, SpoolError, ValueError) as exc:  # fleet.server.keys.KeyFileError too
        node.get_logger().fatal(f"cannot start: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    handler = _RosLogHandler(node)
    for name in ("robot_node", "fleet"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)

    def on_signal(signum: int, _frame: object) -> None:
        robot.stop_event.set()
        robot.arm.wake()

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    executor, spinner = spin_in_background(node, "robot_node-spin")
    try:
        if robot.uploader is not None:
            robot.uploader.start()
        robot.run()
    finally:
        if robot.uploader is not None:
            robot.uploader.stop()
        robot.publish_status()
        node.get_logger().info(f"[{config.arm_id}] stopped after {robot.loop.stats.attempts} "
                               f"attempts; {len(robot.spool)} in the spool")
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
        spinner.join(timeout=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
