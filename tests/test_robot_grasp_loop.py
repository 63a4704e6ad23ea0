"""The grasp loop's logic against a kinematic stand-in arm (no ROS, no physics).

The stand-in implements grasp_loop.Arm, the interface arm_client.RosArm implements over ROS 2;
the end-to-end behaviour over real DDS with the real simulated arm is in test_robot_node.py.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import pytest

from fleet.policy.base import Decision, Policy
from fleet.wire.records import decode, encode
from robot_node.grasp_loop import ArmState, ArmTimeout, GraspLoop
from robot_node.params import NodeConfig
from robot_test_helpers import gradient_image

CFG = NodeConfig(arm_id="arm9", max_steps=6)


class KinematicArm:
    """Moves exactly as commanded (no clipping of its own); grasps an object at `obj` when the
    fingers close within 2 cm of it below 5 cm height."""

    def __init__(self, obj=(0.55, 0.0), fail_on: Optional[str] = None):
        self.pos = np.array([0.55, 0.0, 0.30])
        self.opening = 0.08
        self.t = 100.0
        self.obj = np.array(obj)
        self.holding = False
        self.visited = [self.pos.copy()]
        self.fail_on = fail_on
        self.stops = 0
        self.commands: list[str] = []

    def _state(self) -> ArmState:
        return ArmState(gradient_image(64), self.t, (*self.pos, 0.0, 0.0, 0.0, 1.0),
                        self.opening, self.t)

    def wait_ready(self, timeout):
        return self._state()

    def twist(self, v, timeout):
        self.commands.append("twist")
        if self.fail_on == "twist":
            raise ArmTimeout("timed out after 5.0 s waiting for the motion to complete")
        self.pos = self.pos + np.array(v[:3]) * CFG.command_duration
        self.t += CFG.command_duration
        self.visited.append(self.pos.copy())
        return self._state()

    def gripper(self, per_finger, timeout):
        self.commands.append(f"gripper {per_finger}")
        self.t += CFG.gripper_duration
        if per_finger == 0.0:
            self.holding = self.pos[2] < 0.05 and np.linalg.norm(self.pos[:2] - self.obj) < 0.02
            self.opening = 0.02 if self.holding else 0.0005
        else:
            self.opening, self.holding = 2 * per_finger, False
        return self._state()

    def stop(self):
        self.stops += 1

    def ground_truth_after(self, stamp, timeout):
        return {"stamp": self.t, "any_lifted": bool(self.holding and self.pos[2] > 0.15)}

    def next_scene(self, timeout):
        self.commands.append("scene")
        return {"objects": ["cube"]}


class GoTo(Policy):
    """Straight to a point, then close."""

    kind = "test-goto"

    def __init__(self, target):
        self.target = np.array(target)

    def reset(self, rng):
        pass

    def decide(self, obs):
        d = self.target - obs.position
        if np.linalg.norm(d) < 1e-3:
            return Decision(np.zeros(4), close=True)
        return Decision(np.array([*d, 0.0]), close=False)


class Absurd(Policy):
    kind = "absurd"

    def reset(self, rng):
        self.rng = rng

    def decide(self, obs):
        return Decision(self.rng.choice([-1, 1], 4) * 1e3 * self.rng.random(4), close=False)


def run(arm, policy, cfg=CFG):
    stored = []
    loop = GraspLoop(cfg, arm, stored.append)
    attempt = loop.run_attempt(policy, np.random.default_rng(1))
    return loop, attempt, stored


def test_successful_grasp_is_labelled_by_the_gripper_and_stored():
    arm = KinematicArm()
    loop, attempt, stored = run(arm, GoTo((0.55, 0.0, 0.03)))
    assert attempt.outcome == "success" and stored == [attempt]
    assert attempt.ground_truth["any_lifted"] is True
    assert arm.commands[0] == "scene" and arm.commands[-1] == "twist"  # the scene reset opens
    assert attempt.gripper_after_lift == pytest.approx(0.02)
    assert attempt.final_pose[2] == pytest.approx(0.03)
    assert arm.pos[2] == pytest.approx(CFG.lift_height)  # lifted
    assert decode(encode(attempt)).steps[0].motion[2] == pytest.approx(-0.27)
    assert loop.stats.successes == 1 and loop.stats.ground_truth_agree == 1


def test_missed_grasp_is_a_failure():
    _, attempt, stored = run(KinematicArm(obj=(0.65, 0.1)), GoTo((0.50, 0.0, 0.03)))
    assert attempt.outcome == "failure" and attempt.ground_truth["any_lifted"] is False


def test_closes_at_T_when_the_policy_never_does():
    arm = KinematicArm()
    _, attempt, _ = run(arm, Absurd())
    assert len(attempt.steps) == CFG.max_steps


def test_absurd_motions_stay_in_the_workspace_and_within_speed():
    arm = KinematicArm()
    for _ in range(5):
        run(arm, Absurd())
    lo, hi = np.array(CFG.workspace_min), np.array(CFG.workspace_max)
    visited = np.array(arm.visited)
    assert np.all(visited >= lo - 1e-9) and np.all(visited <= hi + 1e-9)
    assert np.ptp(visited, axis=0).max() > 0.1  # it did move


def test_timeout_aborts_the_attempt_and_it_is_counted_apart():
    arm = KinematicArm(fail_on="twist")
    loop, attempt, stored = run(arm, GoTo((0.55, 0.0, 0.03)))
    assert attempt.outcome == "aborted" and attempt.label is None
    assert "timed out" in attempt.extra["abort_reason"]
    assert attempt.extra["abort_phase"] == "servo"
    assert arm.stops == 1 and stored == [attempt]  # it ran a step, so it is kept
    assert loop.stats.aborted == 1 and loop.stats.failures == 0


def test_interrupt_stops_before_the_next_motion():
    arm = KinematicArm()
    calls = []
    loop = GraspLoop(CFG, arm, calls.append, interrupted=lambda: "e-stop engaged")
    attempt = loop.run_attempt(GoTo((0.55, 0.0, 0.03)), np.random.default_rng(0))
    assert attempt.outcome == "aborted" and "twist" not in arm.commands
    assert calls == []  # no step ran: nothing worth storing


def test_broken_policy_aborts_instead_of_crashing():
    class Broken(GoTo):
        def decide(self, obs):
            raise FloatingPointError("network returned NaN")

    _, attempt, _ = run(KinematicArm(), Broken((0, 0, 0)))
    assert attempt.outcome == "aborted" and "NaN" in attempt.extra["abort_reason"]


def test_lift_height_is_clipped_to_the_workspace():
    cfg = replace(CFG, lift_height=5.0)
    arm = KinematicArm()
    run(arm, GoTo((0.55, 0.0, 0.03)), cfg)
    assert arm.pos[2] == pytest.approx(cfg.workspace_max[2])


def test_without_a_scene_service_the_gripper_releases_after_storing():
    arm = KinematicArm()
    stored = []

    def sink(attempt):
        stored.append(list(arm.commands))

    loop = GraspLoop(replace(CFG, reset_service="none"), arm, sink)
    loop.run_attempt(GoTo((0.55, 0.0, 0.03)), np.random.default_rng(0))
    assert arm.commands[-1] == "gripper 0.04" and stored[0][-1] == "twist"  # stored, then release


class Regrasp(Policy):
    """Misses on purpose, closes on nothing, lifts a little, reopens, then grasps the object:
    the re-grasp a closed-loop policy may do within one attempt (Decision.gripper)."""

    kind = "test-regrasp"

    def reset(self, rng):
        self.script = [Decision(np.array([-0.05, 0.0, -0.27, 0.0]), close=False),  # -> the miss
                       Decision(np.zeros(4), close=False, gripper="close"),
                       Decision(np.array([0.0, 0.0, 0.03, 0.0]), close=False),  # lift a little
                       Decision(np.zeros(4), close=False, gripper="open"),
                       Decision(np.array([0.05, 0.0, -0.03, 0.0]), close=False),  # onto it
                       Decision(np.zeros(4), close=True)]

    def decide(self, obs):
        return self.script[obs.step]


def test_a_policy_may_close_lift_reopen_and_grasp_again_within_one_attempt():
    arm = KinematicArm()
    _, attempt, stored = run(arm, Regrasp())
    assert attempt.outcome == "success" and stored == [attempt]
    assert arm.commands.count("gripper 0.0") == 2, arm.commands  # the miss, then the grasp
    back = decode(encode(attempt))  # the record's format is unchanged: the steps show it
    assert back.extra["gripper_steps"] == [[1, "close"], [3, "open"]]
    assert [s.motion for s in back.steps[1:4:2]] == [(0.0, 0.0, 0.0, 0.0)] * 2
    openings = [s.gripper for s in back.steps]
    assert openings[2] == openings[3] == pytest.approx(0.0005), "closed on nothing"
    assert openings[4] == pytest.approx(2 * CFG.gripper_open), "reopened"
    assert back.final_pose[:3] == pytest.approx((0.55, 0.0, 0.03))


def test_an_unknown_gripper_command_is_refused_by_name():
    with pytest.raises(ValueError, match="Decision.gripper must be one of"):
        Decision(np.zeros(4), close=False, gripper="squeeze")
