"""One grasp attempt, after Levine et al. 2016: next scene, open, look, servo with the policy for
up to T steps, close, lift, label from the gripper's own reading, spool, release.

Free of rclpy on purpose: it drives an `Arm` (the small interface `arm_client.RosArm`
implements over ROS 2 topics), so the attempt logic is testable against any arm. Every wait in
an `Arm` has a steady-clock timeout; a timeout, an e-stop, a watchdog trip or a shutdown ends
the attempt as "aborted" (failed to run, never a grasp failure).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from fleet.policy.base import Observation, Policy
from fleet.wire.records import Attempt
from robot_node.params import NodeConfig
from robot_node.recorder import AttemptRecorder
from robot_node.safety import Workspace, split_motion, yaw_of

log = logging.getLogger(__name__)


def pose_target(pose: Sequence[float], motion: Sequence[float], c: NodeConfig
                ) -> tuple[tuple[float, ...], float]:
    """The tool pose after `motion` (gripper pointing down, turned by the new yaw), and the
    time the arm takes to get there at its speed limits plus the settle time."""
    yaw = yaw_of(pose) + motion[3]
    target = (pose[0] + motion[0], pose[1] + motion[1], pose[2] + motion[2],
              math.cos(yaw / 2), math.sin(yaw / 2), 0.0, 0.0)  # roll pi, then yaw about z
    duration = max(math.sqrt(sum(m * m for m in motion[:3])) / c.max_linear_speed,
                   abs(motion[3]) / c.max_yaw_rate) + c.pose_settle
    return target, duration


class AttemptAborted(Exception):
    """The attempt cannot go on (timeout, e-stop, watchdog, shutdown); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ArmTimeout(AttemptAborted):
    """The arm did not answer within its steady-clock timeout."""


@dataclass
class ArmState:
    """The arm as last seen: image and the readings stamped at or after a motion's end."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    image_stamp: float  # s, the arm's clock
    ee_pose: tuple[float, ...]  # x, y, z, qx, qy, qz, qw in base_link
    gripper: float  # finger opening, m
    stamp: float  # s, the arm's clock: stamp of ee_pose
    #: (H, W) float32 m, the image's aligned depth, when the camera gives one
    depth: Optional[np.ndarray] = None


class Arm(Protocol):
    """What the grasp loop needs from an arm (see arm_client.RosArm for the ROS 2 one)."""

    def wait_ready(self, timeout: float) -> ArmState: ...

    def twist(self, velocity: Sequence[float], timeout: float) -> ArmState:
        """Hold (vx, vy, vz, wz) for command_duration; return the state at or after its end."""

    def move_to(self, pose: Sequence[float], duration: float, timeout: float) -> ArmState:
        """Send a pose target (x, y, z, qx, qy, qz, qw); return the state once `duration`
        (the time it takes at maximum speed) has passed on the arm's clock."""

    def gripper(self, per_finger: float, timeout: float) -> ArmState:
        """Drive both fingers to `per_finger` m; return the state once the command ran."""

    def stop(self) -> None:
        """Command a halt now (zero twist)."""

    def ground_truth_after(self, stamp: float, timeout: float) -> Optional[dict[str, Any]]:
        """The simulator's ground truth stamped at or after `stamp`, or None (real arm)."""

    def next_scene(self, timeout: float) -> Optional[dict[str, Any]]:
        """Ask for a fresh scene (sim: clear the tray, drop objects, home); None if no step."""


#: The phases an attempt goes through, reported on /diagnostics and the status topic.
PHASES = ("scene", "open", "servo", "close", "lift", "label", "spool", "release")


@dataclass
class LoopStats:
    """Counts since the node started (logged and published)."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    aborted: int = 0
    last_abort_reason: str = ""
    ground_truth_agree: int = 0
    ground_truth_known: int = 0

    def count(self, attempt: Attempt, reason: str = "") -> None:
        self.attempts += 1
        if attempt.outcome == "success":
            self.successes += 1
        elif attempt.outcome == "failure":
            self.failures += 1
        else:
            self.aborted += 1
            self.last_abort_reason = reason
        gt = attempt.ground_truth
        if gt is not None and attempt.label is not None and "any_lifted" in gt:
            self.ground_truth_known += 1
            self.ground_truth_agree += int(bool(gt["any_lifted"]) == attempt.label)


@dataclass
class GraspLoop:
    """Runs attempts on `arm` with the given config; `sink` stores each finished attempt."""

    config: NodeConfig
    arm: Arm
    sink: Callable[[Attempt], None]
    #: Called before every policy decision; returns a reason to abort (e-stop, watchdog...).
    interrupted: Callable[[], Optional[str]] = lambda: None
    #: Told when a policy decision starts/ends (the watchdog's policy-stall clock).
    on_decision: Callable[[bool], None] = lambda started: None
    #: Told every phase change (the node arms the camera watchdog only while servoing).
    on_phase: Callable[[str], None] = lambda phase: None
    stats: LoopStats = field(default_factory=LoopStats)
    phase: str = "idle"

    _rec: Optional[AttemptRecorder] = None
    _since: float = 0.0

    def __post_init__(self) -> None:
        c = self.config
        self.workspace = Workspace(tuple(c.workspace_min), tuple(c.workspace_max),
                                   c.yaw_limits[0], c.yaw_limits[1])

    # ------------------------------------------------------------------ one attempt

    def run_attempt(self, policy: Policy, rng: np.random.Generator) -> Attempt:
        """Run one attempt end to end; always returns the attempt (possibly aborted)."""
        c = self.config
        rec = AttemptRecorder(robot_id=c.arm_id, policy_version=int(policy.version),
                              policy_kind=str(policy.kind), jpeg_quality=c.jpeg_quality)
        self._rec = rec
        last: Optional[ArmState] = None
        try:
            self._phase("scene")
            scene = self.arm.next_scene(c.reset_timeout)
            if scene:
                rec.extra["scene"] = scene
            self._phase("open")
            last = self.arm.wait_ready(c.arm_ready_timeout)
            if last.gripper < 2 * c.gripper_open - 0.005:
                last = self.arm.gripper(c.gripper_open, c.motion_timeout)
            policy.reset(rng)
            rec.policy_kind = str(policy.kind)  # MixedPolicy knows its kind only after reset
            initial_image, initial_depth = last.image, last.depth
            self._phase("servo")
            for step in range(c.max_steps):
                decision = self._decide(policy, last, step, initial_image, initial_depth)
                still = decision.close or decision.gripper is not None
                motion = (0.0, 0.0, 0.0, 0.0) if still else \
                    self.workspace.clip_motion(last.ee_pose, decision.motion)
                rec.add_step(last.image, last.ee_pose, motion, last.gripper, last.image_stamp,
                             depth=last.depth)
                if decision.close:
                    break
                if decision.gripper is not None:
                    last = self._drive_gripper(rec, decision.gripper)
                else:
                    last = self._move(last, motion)
            self._phase("close")
            last = self.arm.gripper(0.0, c.motion_timeout)
            final_pose, closed = last.ee_pose, last.gripper
            self._phase("lift")
            lift_z = min(max(c.lift_height, last.ee_pose[2]), c.workspace_max[2])
            last = self._move(last, (0.0, 0.0, lift_z - last.ee_pose[2], 0.0))
            self._phase("label")
            outcome = "success" if last.gripper > c.success_threshold else "failure"
            truth = self.arm.ground_truth_after(last.stamp, c.ground_truth_wait)
            attempt = rec.finish(outcome, final_pose, last.gripper, truth,
                                 gripper_after_close=closed, lifted_pose=list(last.ee_pose))
            self._store(attempt)
        except AttemptAborted as exc:
            attempt = self._abort(rec, last, exc.reason)
            self._phase("idle")
            return attempt
        if self.arm_resets_scene():
            self._phase("idle")  # the next scene opens the gripper and sends the arm home
        else:
            self._release()
        self._phase("idle")
        return attempt

    def arm_resets_scene(self) -> bool:
        reset = self.config.reset_service
        return bool(reset) and reset.lower() != "none"

    def _release(self) -> None:
        """Open the gripper over the tray (a real arm drops what it holds back into the tray);
        a failure here does not undo the stored attempt."""
        self._phase("release")
        try:
            self.arm.gripper(self.config.gripper_open, self.config.motion_timeout)
        except AttemptAborted as exc:
            self.arm.stop()
            log.warning("[%s] release after the attempt failed: %s (the next scene reset "
                        "recovers)", self.config.arm_id, exc.reason)

    # ------------------------------------------------------------------ pieces

    def _decide(self, policy: Policy, last: ArmState, step: int, initial_image: np.ndarray,
                initial_depth: Optional[np.ndarray] = None):
        self._check()
        c = self.config
        obs = Observation(image=last.image, ee_pose=np.asarray(last.ee_pose, float), step=step,
                          max_steps=c.max_steps,
                          workspace_min=np.asarray(c.workspace_min, float),
                          workspace_max=np.asarray(c.workspace_max, float),
                          initial_image=initial_image, initial_depth=initial_depth,
                          depth=last.depth, gripper=float(last.gripper))
        self.on_decision(True)
        started = time.monotonic()
        try:
            decision = policy.decide(obs)
        except Exception as exc:  # a broken policy ends the attempt, never the node
            raise AttemptAborted(f"policy failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.on_decision(False)
            if self._rec is not None:  # policy time within "servo" (the rest is motion)
                timing = self._rec.extra.setdefault("timing", {})
                timing["decide"] = round(timing.get("decide", 0.0) + time.monotonic()
                                         - started, 4)
        self._check()  # a stall or e-stop during the decision: its motion must not go out
        return decision

    def _drive_gripper(self, rec: AttemptRecorder, command: str) -> ArmState:
        """A gripper command within the attempt (re-grasping). The record keeps the steps'
        format: the step has zero motion, and the next step's finger opening shows what the
        command did; extra["gripper_steps"] lists (step, command) for readers."""
        c = self.config
        rec.extra.setdefault("gripper_steps", []).append([len(rec.steps) - 1, command])
        return self.arm.gripper(0.0 if command == "close" else c.gripper_open, c.motion_timeout)

    def _move(self, last: ArmState, motion: Sequence[float]) -> ArmState:
        """Execute a motion as twists within the speed limits, never leaving the workspace
        (clipped here too, whoever asked: this is the one way a motion reaches the arm)."""
        c = self.config
        state = last
        motion = self.workspace.clip_motion(last.ee_pose, motion)
        if c.motion_mode == "pose":
            self._check()
            target, duration = pose_target(last.ee_pose, motion, c)
            return self.arm.move_to(target, duration, c.motion_timeout)
        for velocity in split_motion(motion, c.command_duration, c.max_linear_speed,
                                     c.max_yaw_rate):
            self._check()
            state = self.arm.twist(velocity, c.motion_timeout)
        return state

    def _check(self) -> None:
        reason = self.interrupted()
        if reason:
            raise AttemptAborted(reason)

    def _store(self, attempt: Attempt) -> None:
        self._phase("spool")
        self.stats.count(attempt)
        self.sink(attempt)

    def _abort(self, rec: AttemptRecorder, last: Optional[ArmState], reason: str) -> Attempt:
        self.arm.stop()
        pose = last.ee_pose if last else (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        self._account_phase_time()  # the phase it died in counts too
        attempt = rec.finish("aborted", pose, last.gripper if last else 0.0, None,
                             abort_reason=reason, abort_phase=self.phase)
        log.warning("[%s] attempt %s aborted in phase %s: %s", self.config.arm_id,
                    attempt.attempt_id[:8], self.phase, reason)
        self.stats.count(attempt, reason)
        if attempt.steps and self.config.spool_aborted:
            self.sink(attempt)
        return attempt

    def _phase(self, phase: str) -> None:
        """Enter a phase; wall seconds spent per phase go into the attempt's extra["timing"]."""
        self._account_phase_time()
        self.phase = phase
        self.on_phase(phase)

    def _account_phase_time(self) -> None:
        """Add the time since the last phase change to the current phase's total."""
        now = time.monotonic()
        if self._rec is not None and self.phase != "idle":
            timing = self._rec.extra.setdefault("timing", {})
            timing[self.phase] = round(timing.get(self.phase, 0.0) + now - self._since, 4)
        self._since = now
