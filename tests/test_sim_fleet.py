"""`fleet sim`, the README's main command, end to end as a user runs it: real processes over DDS
and ZeroMQ, the real learner.

Two simulated arms collect; the server stores and counts their attempts per robot; the learner
publishes a policy; the server pushes it; both robots swap it in between attempts and report
running it; Ctrl-C then stops everything cleanly and leaves no process behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from fleet.client.upload_client import ClientConfig, UploadClient
from fleet.server.keys import ClientKeys, create_robot_key
from ros_processes import REPO_ROOT, interrupt, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ros]

ARMS = ("arm1", "arm2")
#: Small learner settings so v1 is published within about a minute on a loaded 2-core host.
LEARNER_FLAGS = ["--learner-min-attempts", "20", "--learner-cycle-s", "20",
                 "--learner-cycle-steps", "100"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of_run(domain_id: int, data: Path) -> list[str]:
    """Live processes of this run: in its ROS domain (the arms' nodes) or naming its data
    directory on their command line (server, learner, which get no ROS environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X"):
            continue
        if f"ROS_DOMAIN_ID={domain_id}".encode() in env or str(data).encode() in cmdline:
            found.append(f"{proc.name}: {cmdline.decode(errors='replace')[:200]}")
    return found


def _served_version(data: Path) -> int:
    try:
        return int(json.loads((data / "learner" / "policies" / "latest.json").read_text())
                   ["version"])
    except (OSError, ValueError, KeyError):
        return 0


def _fleet_ready(client: UploadClient, data: Path, seen: dict[str, Any]) -> bool:
    """Both robots have attempts stored and counted, v>=1 is published, and both report
    running the served version in their HELLO (with a heartbeat status)."""
    try:
        counters = client.counters(timeout=3.0)
    except TimeoutError:
        return False
    served = _served_version(data)
    seen["counters"], seen["served"] = counters, served
    robots, sessions = counters.get("robots", {}), counters.get("sessions", {})
    return served >= 1 and all(
        robots.get(arm, {}).get("attempts", 0) > 0
        and sessions.get(arm, {}).get("policy_version") == served
        and (sessions[arm].get("status") or {}).get("attempts", 0) > 0
        for arm in ARMS)


def _log_tail(data: Path, name: str, chars: int = 2500) -> str:
    path = data / "logs" / f"{name}.log"
    return f"--- {name}:\n" + (path.read_text(errors="replace")[-chars:] if path.exists()
                               else "(no log)")


def _dashboard_shows_arms(port: int, seen: dict[str, Any]) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
            status = json.load(r)
    except OSError:
        return False
    rows = {row["robot_id"]: row for row in status.get("robots", [])}
    seen["dashboard"] = status
    return all((rows.get(arm) or {}).get("attempts") for arm in ARMS)


def test_fleet_sim_learns_pushes_switches_and_stops_cleanly(tmp_path: Path, ros_domain) -> None:
    data = tmp_path / "run"
    keys = data / "keys"
    create_robot_key(keys, "observer")  # the test's own key: asks the server for counters
    out = open(tmp_path / "fleet_sim.out", "w+")
    port, dashboard = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "sim", "--arms", "2", "--data", str(data),
         "--ros-domain-id", str(ros_domain.domain_id), "--port", str(port),
         "--metrics-port", str(_free_port()), "--dashboard-port", str(dashboard),
         *LEARNER_FLAGS],
        stdout=out, stderr=subprocess.STDOUT, env=ros_domain.env, cwd=REPO_ROOT)
    client: Optional[UploadClient] = None
    seen: dict[str, Any] = {}
    try:
        client = UploadClient(ClientConfig(f"tcp://127.0.0.1:{port}", "observer",
                                           ClientKeys.from_dir(keys, "observer")))
        started = time.monotonic()
        try:
            wait_for(lambda: proc.poll() is not None or _fleet_ready(client, data, seen),
                     timeout=180, what="both arms running the learner's published policy",
                     interval=2.0)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nlast counters: {seen.get('counters')}\nserved: "
                f"v{_served_version(data)}\n" + "\n".join(
                    _log_tail(data, n) for n in ("learner", "server", "arm1_robot_node",
                                                 "arm2_robot_node"))) from None
        assert proc.poll() is None, f"fleet sim exited early: {proc.returncode}"
        print(f"fleet ready after {time.monotonic() - started:.0f} s: {seen['counters']}")
        # The dashboard that `fleet sim` started shows both arms collecting on the served policy.
        wait_for(lambda: _dashboard_shows_arms(dashboard, seen), timeout=30, interval=1.0,
                 what="the dashboard's /api/status to list both arms with stored attempts")
    finally:
        if client is not None:
            client.close()
        code = interrupt(proc, timeout=25)
        out.seek(0)
        output = out.read()
        out.close()

    assert code == 0, f"fleet sim exited {code} after SIGINT:\n{output[-3000:]}"
    assert "restarts: {'server': 0, 'learner': 0, 'monitor': 0, 'arm1/sim_arm': 0, " \
           "'arm1/robot_node': 0, 'arm2/sim_arm': 0, 'arm2/robot_node': 0}" in output, \
        output[-3000:]
    try:
        wait_for(lambda: not _processes_of_run(ros_domain.domain_id, data), timeout=5,
                 what="every process of the run to exit", interval=0.2)
    except AssertionError:
        raise AssertionError("fleet sim left processes behind:\n"
                             + "\n".join(_processes_of_run(ros_domain.domain_id, data)))

    counters, served = seen["counters"], seen["served"]
    for arm in ARMS:
        session = counters["sessions"][arm]
        assert session["policy_version"] == served >= 1, session
        assert session["status"]["state"] in ("collecting", "idle", "paused"), session
        assert counters["robots"][arm]["attempts"] > 0
        log = (data / "logs" / f"{arm}_robot_node.log").read_text()
        assert f"v{served:06d}: version {served}" in log, \
            f"{arm} never logged loading v{served}:\n{log[-3000:]}"
        assert "Traceback" not in log, log[-3000:]
