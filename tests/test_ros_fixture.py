"""Proves the ROS test fixture: isolation (own domain, loopback only), clean and forced
teardown of whole process groups, and the in-test rclpy node."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from ros_processes import (FASTDDS_PROFILE, ProcessGroup, RosDomain, RosTestNode, claim_domain,
                           group_members, wait_for)

pytestmark = pytest.mark.ros

# A minimal talker: publishes a counter on /fixture_chatter, exits 0 on SIGINT or SIGTERM.
TALKER = r"""
import signal, sys
import rclpy
from rclpy.executors import ExternalShutdownException
from std_msgs.msg import String
rclpy.init()  # installs rclpy's SIGINT/SIGTERM handlers: shutdown, then spin returns
node = rclpy.create_node("fixture_talker")
pub = node.create_publisher(String, "/fixture_chatter", 10)
count = [0]
def tick():
    count[0] += 1
    pub.publish(String(data=f"hello {count[0]} {node.get_namespace()}"))
node.create_timer(0.05, tick)
print("talker up", flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
print(f"talker done after {count[0]}", flush=True)
"""

# Ignores SIGINT and SIGTERM, and so does the grandchild it forks: only SIGKILL ends them.
STUBBORN = r"""
import os, signal, subprocess, sys, time
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)"])
print(f"grandchild {child.pid}", flush=True)
time.sleep(600)
"""


def test_session_has_its_own_domain_and_loopback_profile(ros_domain: RosDomain) -> None:
    assert ros_domain.domain_id in range(100, 201)
    assert os.environ["ROS_DOMAIN_ID"] == str(ros_domain.domain_id)
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == str(FASTDDS_PROFILE)
    assert FASTDDS_PROFILE.is_file()
    # The profile confines DDS; the rmw's LOCALHOST mode would add non-loopback sockets.
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    # A second claim while this session holds its id gets a different one.
    other = claim_domain()
    try:
        assert other.domain_id != ros_domain.domain_id
    finally:
        other.release()


def test_talker_is_heard_in_the_session_domain_only(ros_processes: ProcessGroup,
                                                     ros_node: RosTestNode,
                                                     ros_domain: RosDomain) -> None:
    from std_msgs.msg import String

    talker = ros_processes.start([sys.executable, "-c", TALKER], "talker")
    heard = ros_node.subscribe(String, "/fixture_chatter")
    other_domain = claim_domain(exclude=[ros_domain.domain_id])
    try:
        with RosTestNode("outsider", domain_id=other_domain.domain_id) as outsider:
            overheard = outsider.subscribe(String, "/fixture_chatter")
            heard.wait(20.0, what="the talker's messages in the session domain")
            time.sleep(0.5)  # the outsider has had many chances to discover the talker
            assert len(overheard) == 0
    finally:
        other_domain.release()

    assert_udp_sockets_on_loopback(talker.pid)
    # The child went through the ROS wheels' bootstrapper (it re-executes in place: same pid,
    # so the process group we signal is still the talker's) and runs in the session's domain.
    environ = Path(f"/proc/{talker.pid}/environ").read_bytes().split(b"\0")
    assert b"_ROS_WHEELS_BOOTSTRAP_COMPLETE=1" in environ
    assert f"ROS_DOMAIN_ID={ros_domain.domain_id}".encode() in environ

    result = talker.stop()
    assert result.signal == signal.SIGINT and result.returncode == 0, talker.log_text()
    assert "talker done" in talker.log_text()
    assert not group_members(talker.pgid)


def assert_udp_sockets_on_loopback(pid: int) -> None:
    """Every UDP socket the process holds is bound to 127.0.0.1 (the loopback profile works)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    bound = []
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[9] in inodes:
            bound.append(cols[1].split(":")[0])
    assert bound, "the talker holds no UDP socket: is it really on DDS?"
    assert set(bound) == {"0100007F"}, f"UDP sockets not on loopback: {bound}"


def test_process_ignoring_sigint_and_sigterm_is_killed_with_its_children(
        ros_processes: ProcessGroup) -> None:
    stubborn = ros_processes.start([sys.executable, "-c", STUBBORN], "stubborn")
    stubborn.wait_for_log("grandchild ", 20.0)
    grandchild = int(stubborn.log_text().split("grandchild ")[1].split()[0])
    assert grandchild in group_members(stubborn.pgid)

    result = stubborn.stop(grace=0.5)

    assert result.signal == signal.SIGKILL
    assert result.returncode == -signal.SIGKILL
    assert result.leftover == []
    assert not group_members(stubborn.pgid)
    assert not Path(f"/proc/{grandchild}").exists() or \
        Path(f"/proc/{grandchild}/stat").read_text().split(") ")[1][0] == "Z"


def test_wait_for_reports_what_never_happened() -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, 0.1, "the impossible")
    assert wait_for(lambda: 42, 0.1) == 42
