"""robot_node end to end: a real sim_bridge arm and a real robot_node process over DDS.

One simulated arm serves the whole module (a second, colour-only one serves one test); each test
starts its own robot_node (own spool) and stops it again. Done criteria of the robot_node issue:
attempts complete, are labelled, spooled (with each image's aligned depth) and agree with the
simulator's ground truth; a colour-only camera runs with depth_topic none (and without it, says
so); an e-stop halts motion and holds until released; a corrupt bundle is refused while
collection goes on; the workspace holds under a policy asking for absurd motions; `kill -9`
leaves only complete attempts in the spool; SIGINT exits cleanly.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Bool, String

from fleet.wire.depth_image import decode_depth_png
from fleet.wire.records import decode
from robot_node.node import STATUS_QOS
from robot_node.spool import Spool, unpack_frames
from ros_processes import RosTestNode, wait_for

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TESTS_DIR = Path(__file__).resolve().parent
NS = "/arm1"
CLOCK = {"/clock": f"{NS}/clock"}


@pytest.fixture(scope="module")
def sim_arm(ros_module_processes):
    proc = ros_module_processes.start_node("sim_bridge.node", "sim_arm", namespace=NS,
                                           params={"num_objects": 5, "seed": 3}, remaps=CLOCK)
    proc.wait_for_log("simulated arm ready", 90)
    return ros_module_processes


@pytest.fixture(scope="module")
def client(sim_arm):
    with RosTestNode("robot_node_test") as node:
        yield node


def start_robot(group, spool: Path, namespace: str = NS, **params):
    base = {"use_sim_time": True, "spool_dir": str(spool), "max_steps": 20, "seed": 7}
    env = dict(group.env, PYTHONPATH=os.pathsep.join(
        [str(TESTS_DIR), group.env.get("PYTHONPATH", "")]))
    return group.start_node("robot_node.node", "robot_node", namespace=namespace,
                            params={**base, **params}, remaps={"/clock": f"{namespace}/clock"},
                            env=env)


def spooled(spool: Path) -> list:
    """The attempts in a live robot's spool, read-only (a Spool() here would tidy its dir)."""
    return [decode(unpack_frames(p.read_bytes(), str(p))) for p in sorted(spool.glob("*.attempt"))]


def status_of(log) -> dict:
    msg = log.latest()
    return json.loads(msg.data) if msg else {}


def test_attempts_are_labelled_spooled_and_agree_with_ground_truth(sim_arm, tmp_path):
    spool = tmp_path / "spool"
    robot = start_robot(sim_arm, spool, max_attempts=20)
    robot.wait_for_log("state: idle", 150)  # idle = max_attempts reached
    result = robot.stop()
    assert result.signal == signal.SIGINT and result.returncode == 0, robot.log_text()
    attempts = spooled(spool)
    ran = [a for a in attempts if a.outcome != "aborted"]
    assert len(ran) >= 19, [a.extra.get("abort_reason") for a in attempts]
    agree = sum(a.label == bool(a.ground_truth["any_lifted"]) for a in ran)
    assert agree >= 0.95 * len(ran), [(a.outcome, a.gripper_after_lift, a.ground_truth["any_lifted"])
                                      for a in ran]
    assert any(a.outcome == "success" for a in ran)  # the check above compared both labels
    for a in ran:
        assert a.robot_id == "arm1" and a.policy_version == 0 and a.policy_kind == "scripted"
        assert 1 <= len(a.steps) <= 20 and a.steps[0].image_jpeg[:2] == b"\xff\xd8"
        assert a.image_height == a.image_width == 64
        stamps = [s.stamp for s in a.steps]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # fresh image/step
        # The sim's camera is RGB-D: every step carries its image's aligned depth (mm PNG).
        for step in a.steps:
            mm = decode_depth_png(step.depth_png)
            assert mm.shape == (64, 64) and (mm > 0).mean() > 0.95
            assert 700 <= np.median(mm) <= 1400, np.median(mm)  # the tray, ~0.9-1.4 m away
    assert "stopped after" in robot.log_text()


def test_a_colour_only_camera_needs_depth_topic_none_and_then_runs_without_depth(
        ros_processes, tmp_path):
    """A second arm whose camera has no depth (publish_depth:=false): robot_node's default
    depth topic never speaks, so no state is complete and the timeout says what to set; with
    depth_topic:=none attempts run and are recorded without depth."""
    ns = "/arm2"
    sim = ros_processes.start_node("sim_bridge.node", "sim_arm", namespace=ns,
                                   params={"num_objects": 3, "seed": 5, "publish_depth": False},
                                   remaps={"/clock": f"{ns}/clock"})
    sim.wait_for_log("simulated arm ready", 90)
    waiting = start_robot(ros_processes, tmp_path / "spool-a", namespace=ns, reset_timeout=2.0)
    waiting.wait_for_log("depth_topic:=none", 60)
    waiting.stop()
    log = waiting.log_text()
    assert "aborted" in log and "camera/aligned_depth_to_color/image_raw" in log, log
    assert not list((tmp_path / "spool-a").glob("*.attempt"))  # no step ran
    spool = tmp_path / "spool-b"
    robot = start_robot(ros_processes, spool, namespace=ns, depth_topic="none",
                        motion_mode="pose", max_steps=4, exploration_max_step=0.3,
                        max_attempts=3)
    robot.wait_for_log("state: idle", 90)
    robot.stop()
    attempts = spooled(spool)
    assert len(attempts) == 3 and all(a.outcome != "aborted" for a in attempts), \
        [a.extra.get("abort_reason") for a in attempts]
    assert all(not a.has_depth and a.steps for a in attempts)


def test_estop_halts_motion_and_holds_until_every_source_releases(sim_arm, client, tmp_path):
    poses = client.subscribe(PoseStamped, f"{NS}/ee_pose")
    status = client.subscribe(String, f"{NS}/status", STATUS_QOS)
    robot = start_robot(sim_arm, tmp_path / "spool")
    fleet_estop = client.publisher(Bool, "/estop")
    arm_estop = client.publisher(Bool, f"{NS}/estop")
    wait_for(lambda: status_of(status).get("phase") == "servo", 60, "robot_node servoing")

    def moved_since(t0: float, t1: float) -> float:
        """Largest position change among poses received in [t0, t1] (wall clock)."""
        pts = [p for (t, p) in received if t0 <= t <= t1]
        return max((np.linalg.norm(np.subtract(a, pts[0])) for a in pts), default=0.0)

    received: list = []
    client.node.create_subscription(
        PoseStamped, f"{NS}/ee_pose",
        lambda m: received.append((time.monotonic(), (m.pose.position.x, m.pose.position.y,
                                                      m.pose.position.z))), 10)
    time.sleep(0.3)
    fleet_estop.publish(Bool(data=True))
    t_stop = time.monotonic()
    wait_for(lambda: status_of(status).get("state") == "estopped", 5, "state estopped")
    time.sleep(1.5)
    # One control period (0.1 s of arm time, ~20 ms of wall time here) + DDS latency: after
    # that, nothing moves.
    assert moved_since(t_stop + 0.3, time.monotonic()) < 1e-4
    arm_estop.publish(Bool(data=True))
    wait_for(lambda: status_of(status).get("estop_sources", {}).get("estop"), 5,
             "the arm's e-stop registered")
    fleet_estop.publish(Bool(data=False))  # the arm's own e-stop still holds
    wait_for(lambda: status_of(status).get("estop_sources", {}).get("/estop") is False, 5,
             "the fleet e-stop released")
    t_half = time.monotonic()
    time.sleep(1.5)
    assert moved_since(t_half, time.monotonic()) < 1e-4
    assert status_of(status)["state"] == "estopped"
    arm_estop.publish(Bool(data=False))
    t_release = time.monotonic()
    wait_for(lambda: moved_since(t_release, time.monotonic()) > 0.005, 20, "motion after release")
    wait_for(lambda: status_of(status).get("state") == "collecting", 5, "collecting again")
    assert "e-stop ENGAGED on /estop" in robot.log_text()
    robot.stop()
    assert all(a.outcome in ("success", "failure", "aborted") for a in spooled(tmp_path / "spool"))


def _save_bundle(path: Path, version: int, corrupt: bool = False) -> None:
    from fleet.policy.bundle import WEIGHTS_FILE, save_bundle
    from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig

    import torch
    torch.manual_seed(version)
    save_bundle(path, GraspSuccessNet(NetworkConfig()), version=version)
    if corrupt:
        weights = path / WEIGHTS_FILE
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))


def test_corrupt_bundle_is_refused_while_collection_continues(sim_arm, client, tmp_path):
    bundles, spool = tmp_path / "policies", tmp_path / "spool"
    bundles.mkdir()
    status = client.subscribe(String, f"{NS}/status", STATUS_QOS)
    robot = start_robot(sim_arm, spool, bundle_path=str(bundles), bundle_poll_s=0.2,
                        exploration_share=0.0, motion_mode="pose", max_steps=4,
                        exploration_max_step=0.3)
    wait_for(lambda: status_of(status).get("attempts", 0) >= 1, 60, "a first attempt")
    _save_bundle(bundles / "v5", 5, corrupt=True)
    robot.wait_for_log("refused policy bundle", 30)
    assert "checksum mismatch" in robot.log_text()
    seen = status_of(status)["attempts"]
    wait_for(lambda: status_of(status).get("attempts", 0) >= seen + 2, 30, "attempts go on")
    assert status_of(status)["policy_version"] == 0
    _save_bundle(bundles / "v6", 6)  # a good, newer bundle is swapped in between attempts
    robot.wait_for_log("loaded policy bundle", 30)
    wait_for(lambda: any(a.policy_version == 6 and a.policy_kind == "cem"
                         for a in spooled(spool)), 60, "an attempt run by policy v6")
    wait_for(lambda: status_of(status)["policy_version"] == 6, 5, "status policy_version 6")
    assert robot.log_text().count("refused policy bundle") == 1  # logged once, not per poll
    robot.stop()
    for a in spooled(spool):  # no attempt mixes policies
        assert (a.policy_version, a.policy_kind) in ((0, "scripted"), (6, "cem"))


def test_workspace_holds_under_a_policy_asking_for_absurd_motions(sim_arm, client, tmp_path):
    # A box well inside the simulated arm's own limits, so only robot_node's clipping holds it.
    lo, hi = np.array([0.47, -0.08, 0.08]), np.array([0.63, 0.08, 0.30])
    positions = client.subscribe(PoseStamped, f"{NS}/ee_pose")
    robot = start_robot(sim_arm, tmp_path / "spool", exploration_policy="robot_test_policies:HugeMotions",
                        workspace_min=lo.tolist(), workspace_max=hi.tolist(), max_steps=8,
                        lift_height=0.30, max_attempts=3)
    robot.wait_for_log("state: idle", 90)
    robot.stop()
    attempts = spooled(tmp_path / "spool")
    assert len(attempts) == 3 and all(a.policy_kind == "huge" for a in attempts)
    # Poses while the robot controlled the arm: between the first step and each lift's end.
    xyz = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z]
                    for m in positions.messages])
    for a in attempts:
        for s in a.steps:
            assert np.all(np.array(s.ee_pose[:3]) >= lo - 0.015), s.ee_pose
            assert np.all(np.array(s.ee_pose[:3]) <= hi + 0.015), s.ee_pose
        moved = np.ptp([s.ee_pose[:3] for s in a.steps], axis=0)
        assert moved.max() > 0.05  # it really was thrown around
    assert len(xyz) > 20


def test_kill_9_leaves_only_complete_attempts(sim_arm, tmp_path):
    spool = tmp_path / "spool"
    robot = start_robot(sim_arm, spool, motion_mode="pose", max_steps=4, exploration_max_step=0.3)
    wait_for(lambda: len(list(spool.glob("*.attempt"))) >= 4, 60, "4 spooled attempts")
    time.sleep(0.17)  # somewhere inside the next attempt
    os.killpg(robot.pgid, signal.SIGKILL)
    result = robot.stop()
    assert result.leftover == []
    files = list(spool.iterdir())
    reopened = Spool(spool, 1 << 40)  # removes a temporary a kill left behind, if any
    assert len(reopened) >= 4
    assert len(reopened) + reopened.removed_temporaries == len(files)
    for e in reopened.entries():
        attempt = decode(reopened.read(e.name))
        assert attempt.outcome in ("success", "failure", "aborted") and attempt.steps


def test_full_spool_pauses_collection_and_deletes_nothing(sim_arm, client, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    spool = tmp_path / "spool"
    status = client.subscribe(String, f"{NS}/status", STATUS_QOS)
    diags = client.subscribe(DiagnosticArray, "/diagnostics")
    robot = start_robot(sim_arm, spool, spool_max_bytes=40_000, motion_mode="pose", max_steps=4,
                        exploration_max_step=0.3)
    wait_for(lambda: status_of(status).get("state") == "paused", 60, "state paused")
    names = sorted(p.name for p in spool.glob("*.attempt"))
    assert names and sum((spool / n).stat().st_size for n in names) <= 40_000
    assert "spool full" in status_of(status)["paused_reason"]

    def robot_diag():
        for array in reversed(diags.messages):
            for s in array.status:
                if s.hardware_id == "arm1" and "robot_node" in s.name:
                    return s
        return None

    diag = wait_for(lambda: (d := robot_diag()) is not None and d.level == b"\x01" and d, 5,
                    "a WARN on /diagnostics")
    assert "spool full" in diag.message
    time.sleep(1.5)
    assert sorted(p.name for p in spool.glob("*.attempt")) == names  # none added, none deleted
    assert "collection paused: spool full" in robot.log_text()
    robot.stop()
