"""A small fleet whose numbers the monitor tests know: a real `fleet serve` (with a published
policy), real upload clients that upload known outcomes and heartbeat known status, and a real
`fleet monitor` process pointed at it."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from fleet.policy.folder import write_policy
from fleet.client.upload_client import RobotStatus, UploadClient
from fleet.methods.levine.network import GraspSuccessNet
from server_helpers import REPO, ServerProcess, _die_with_parent, client, make_attempt, \
    make_keys, upload

OFFLINE_AFTER = 3.0  # seconds: short, so the closed robot turns offline within the test
SERVED_VERSION = 3
LEARNER_METRICS = {"val_loss": 0.4213, "val_accuracy": 0.8125, "val_auc": 0.871,
                   "val_examples": 640, "step": 1200}


@dataclass(frozen=True)
class KnownRobot:
    robot_id: str
    outcomes: tuple[str, ...]
    policy_version: int
    state: Optional[str]  # what its heartbeat reports; None: it disconnects (-> offline)
    spool: tuple[int, int] = (0, 0)  # (attempts, bytes) waiting in its spool
    host: Optional[str] = "lab-pc-2"  # what its HELLOs say it runs on; None: not sent (older)

    @property
    def successes(self) -> int:
        return self.outcomes.count("success")

    @property
    def failures(self) -> int:
        return self.outcomes.count("failure")


ROBOTS = (
    KnownRobot("arm1", ("success",) * 9 + ("failure",) * 3, 3, "collecting", (2, 48_000)),
    KnownRobot("arm2", ("success",) + ("failure",) * 3 + ("aborted",), 2, "estopped",
               (5, 120_000), host=None),
    # a robot a scheduler placed: it reports the node id it was given
    KnownRobot("arm3", (), 3, "idle", host="ray-node-5f2c9a"),  # heard from, nothing stored yet
    KnownRobot("arm4", ("success", "failure") * 2, 1, None),  # uploads, then goes away
)
#: Uploaded after the monitor's first poll, so that arm1 has a measurable rate.
LATE = ("success", "success", "failure", "success")


class Heartbeats:
    """Polls the live robots' clients in one thread (UploadClient is single-threaded), so their
    HELLO heartbeats (every second) keep them online."""

    def __init__(self, clients: list[UploadClient]):
        self.clients, self.stop = clients, threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                for c in self.clients:
                    c.poll(0.02)
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _attempts(robot: KnownRobot, outcomes) -> list:
    return [dataclasses.replace(make_attempt(robot.robot_id, outcome=o),
                                policy_version=robot.policy_version) for o in outcomes]


class MonitorProcess:
    """`python -m fleet.cli monitor` as a child; `.url` once it printed that it is ready."""

    def __init__(self, server: ServerProcess, learner_dir: Path, interval: float = 0.5):
        self.log_path = server.data.parent / "monitor.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "monitor", "--server", server.endpoint,
             "--keys", str(server.keys), "--port", "0", "--interval", str(interval),
             "--offline-after", str(OFFLINE_AFTER), "--min-rate-span", "2",
             "--learner-dir", str(learner_dir)],
            stdout=subprocess.PIPE, stderr=log, cwd=REPO, preexec_fn=_die_with_parent)
        log.close()
        line = self.proc.stdout.readline().decode()
        match = re.search(r"ready on (http://\S+)", line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"monitor did not start ({line!r}):\n{self.log()}")
        self.url = match.group(1).rstrip("/")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class KnownFleet:
    server: ServerProcess
    learner_dir: Path
    live: dict[str, UploadClient]
    heartbeats: Heartbeats

    def upload_late(self) -> None:
        """arm1 uploads LATE (4 more attempts) through its live client."""
        with self.heartbeats.lock:
            done = upload(self.live["arm1"], _attempts(ROBOTS[0], LATE))
        assert all(d.acked for d in done.values())


def expected(robot: KnownRobot, late: bool = True) -> dict:
    outcomes = robot.outcomes + (LATE if late and robot.robot_id == "arm1" else ())
    return {"attempts": len(outcomes), "successes": outcomes.count("success"),
            "failures": outcomes.count("failure"), "aborted": outcomes.count("aborted")}


@contextmanager
def known_fleet(root: Path) -> Iterator[KnownFleet]:
    keys = make_keys(root / "keys", *(r.robot_id for r in ROBOTS), "monitor")
    learner = root / "learner"
    (learner / "policies").mkdir(parents=True)
    torch.manual_seed(0)
    write_policy(learner, GraspSuccessNet(), version=SERVED_VERSION, trained_on_attempts=321,
                 metrics=LEARNER_METRICS)
    server = ServerProcess(root / "data", keys, extra=("--policies", str(learner / "policies")))
    clients: list[UploadClient] = []
    heartbeats: Optional[Heartbeats] = None
    with server:
        try:
            live = {}
            for robot in ROBOTS:
                c = client(keys, robot.robot_id, server.endpoint, hello_interval=1.0,
                           policy_version=robot.policy_version, host=robot.host)
                clients.append(c)
                if robot.state is not None:
                    c.hello(status=RobotStatus(robot.state, spool_attempts=robot.spool[0],
                                               spool_bytes=robot.spool[1],
                                               attempts=len(robot.outcomes),
                                               successes=robot.successes))
                    live[robot.robot_id] = c
                done = upload(c, _attempts(robot, robot.outcomes))
                assert all(d.acked for d in done.values()), done
                if robot.state is None:
                    c.close()
                    clients.remove(c)
            heartbeats = Heartbeats(list(live.values()))
            yield KnownFleet(server, learner, live, heartbeats)
        finally:
            if heartbeats is not None:
                heartbeats.close()
            for c in clients:
                c.close()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def api_status(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/status", timeout=10) as resp:
        return json.loads(resp.read())


def _row(url: str, robot_id: str) -> dict:
    return {r["robot_id"]: r for r in api_status(url)["robots"]}.get(robot_id, {})


@contextmanager
def monitored_fleet(root: Path, waves: int = 0) -> Iterator[KnownFleet]:
    """known_fleet plus a `fleet monitor` process on it (`fleet.monitor`), once the monitor
    has seen arm1's late batch and shows arm4 offline. `waves` more batches of LATE, 3 s apart,
    give the plots some history (for the screenshot); they are not in `expected`."""
    with known_fleet(root) as fleet:
        monitor = MonitorProcess(fleet.server, fleet.learner_dir)
        try:
            wait_for(lambda: api_status(monitor.url)["server"]["polls"] >= 2, what="two polls")
            fleet.upload_late()
            for _ in range(waves):
                time.sleep(3.0)
                fleet.upload_late()
            wait_for(lambda: _row(monitor.url, "arm4").get("state") == "offline",
                     what="arm4 offline")
            want = expected(ROBOTS[0])["attempts"] + waves * len(LATE)
            wait_for(lambda: _row(monitor.url, "arm1").get("attempts") == want,
                     what="arm1's late attempts")
            wait_for(lambda: _row(monitor.url, "arm1").get("attempts_per_hour_5m"),
                     what="arm1's rate (after min_rate_span of history)")
            fleet.monitor = monitor
            yield fleet
        finally:
            code = monitor.stop()
            assert code == 0, f"monitor exited {code} on SIGTERM:\n{monitor.log()}"
