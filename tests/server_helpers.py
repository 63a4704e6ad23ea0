"""Helpers for the data-server tests: real `fleet serve` processes, real keys, real attempts."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fleet.client.upload_client import ClientConfig, UploadClient
from fleet.server.keys import ClientKeys, create_robot_key
from fleet.wire.records import Attempt, Step, encode

REPO = Path(__file__).resolve().parents[1]
_RNG = np.random.default_rng(0)
_JPEGS = [cv2.imencode(".jpg", _RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
          for _ in range(8)]
POSE = (0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0)


def _die_with_parent() -> None:
    """In the child: get SIGTERM (a clean shutdown) if the test process dies, so that an
    aborted test run never leaves a server behind. (Linux sends it when the *thread* that
    started the server exits: start servers from the test's main thread.)"""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_attempt(robot_id: str, steps: int = 3, outcome: str = "success",
                 jpeg: Optional[bytes] = None) -> Attempt:
    now = time.time()
    return Attempt(
        robot_id=robot_id, policy_version=1, policy_kind="random",
        steps=[Step(jpeg or _JPEGS[i % len(_JPEGS)], POSE, (0.01, 0.0, -0.02, 0.1), 0.08,
                    float(i)) for i in range(steps)],
        outcome=outcome, final_pose=POSE, gripper_after_lift=0.02,
        started_at=now - 3.0, ended_at=now)


def make_keys(key_dir: Path, *robots: str) -> Path:
    for robot in robots:
        create_robot_key(key_dir, robot)
    return key_dir


class ServerProcess:
    """`python -m fleet.cli serve` as a child process; logs go to a file for failing tests."""

    def __init__(self, data: Path, keys: Path, port: Optional[int] = None,
                 extra: tuple[str, ...] = ()):
        self.data, self.keys, self.extra = data, keys, extra
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.log_path = data.parent / f"server-{self.port}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "serve", "--data", str(self.data), "--keys",
             str(self.keys), "--bind", self.endpoint, *self.extra],
            stdout=subprocess.PIPE, stderr=log, cwd=REPO, preexec_fn=_die_with_parent)
        log.close()
        end = time.monotonic() + timeout
        line = b""
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if b"ready" in line or not line:
                break
        if b"ready" not in line:
            self.kill()
            raise RuntimeError(f"server did not start:\n{self.log()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain stdout
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the server finishes its batch and closes the store."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def client(keys: Path, robot: str, endpoint: str, **kw) -> UploadClient:
    kw.setdefault("ack_timeout", 2.0)
    return UploadClient(ClientConfig(endpoint, robot, ClientKeys.from_dir(keys, robot), **kw))


def upload(c: UploadClient, attempts: list[Attempt], timeout: float = 30.0) -> dict:
    """Upload and return {attempt_id: Done}."""
    return {d.attempt_id: d for d in c.upload_all(((a.attempt_id, encode(a)) for a in attempts),
                                                 timeout=timeout)}


def stored_ids(data: Path) -> Counter:
    """attempt id -> how many times it is in the store (read without the server running)."""
    from fleet.store.reader import StoreReader

    ids = StoreReader(data).attempts().column("attempt_id").to_pylist()
    return Counter(ids)
