"""Where the data server may listen: bind addresses as an engineer types them, and a bind beyond
loopback refused by a real `fleet serve` (before it listens) unless CURVE keys are there and
the server's secret is readable by its owner only. Also the robot's side: a world-readable
robot secret is refused, and the host a robot reports reaches the server's sessions."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.server.binding import endpoint_host, is_loopback, normalize_endpoint
from fleet.server.keys import server_key_paths
from fleet.wire import protocol as P
from robot_node.spool import Spool
from robot_node.uploader import SpoolUploader
from server_helpers import REPO, ServerProcess, client, free_port, make_keys


@pytest.mark.parametrize("typed, endpoint", [
    ("0.0.0.0", "tcp://0.0.0.0:5555"),
    ("10.0.0.5:6000", "tcp://10.0.0.5:6000"),
    ("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7000"),  # what --bind took before, unchanged
    ("ipc:///tmp/fleet.sock", "ipc:///tmp/fleet.sock"),
    ("::1", "tcp://[::1]:5555"),
    ("[::]:6000", "tcp://[::]:6000"),
])
def test_a_bind_address_becomes_an_endpoint(typed, endpoint):
    assert normalize_endpoint(typed) == endpoint


def test_bad_ports_and_empty_binds_say_what_to_type():
    with pytest.raises(ValueError, match="port must be 1-65535"):
        normalize_endpoint("10.0.0.5:99999")
    with pytest.raises(ValueError, match="HOST:PORT"):
        normalize_endpoint("  ")


def test_only_addresses_this_machine_alone_reaches_count_as_loopback():
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "[::1]", None):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "*", "10.0.0.5", "[::]", "eth0", "robots.lab"):
        assert not is_loopback(host), host
    assert endpoint_host("tcp://10.0.0.5:5555") == "10.0.0.5"
    assert endpoint_host("ipc:///tmp/x") is None


def _serve(tmp_path: Path, keys: Path, bind: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", "serve", "--data", str(tmp_path / "data"), "--keys",
         str(keys), "--bind", bind], capture_output=True, text=True, timeout=60, cwd=REPO)


def _nobody_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_serving_beyond_loopback_without_keys_is_refused_before_it_listens(tmp_path):
    port = free_port()
    out = _serve(tmp_path, tmp_path / "no-keys", f"0.0.0.0:{port}")
    assert out.returncode == 2, out.stderr
    assert "refusing to bind tcp://0.0.0.0:" in out.stderr and "fleet keys create" in out.stderr
    assert _nobody_listens(port) and not (tmp_path / "data").exists(), "no store opened"


def test_serving_beyond_loopback_with_a_secret_anyone_reads_is_refused(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1")
    secret = server_key_paths(keys)[1]
    secret.chmod(0o644)
    port = free_port()
    out = _serve(tmp_path, keys, f"tcp://0.0.0.0:{port}")
    assert out.returncode == 2 and f"chmod 600 {secret}" in out.stderr, out.stderr
    assert _nobody_listens(port)


def test_on_loopback_a_readable_secret_is_only_warned_about(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1")
    server_key_paths(keys)[1].chmod(0o644)
    with ServerProcess(tmp_path / "data", keys) as server:
        pass
    assert "readable by every user" in server.log()


def test_a_robot_refuses_its_own_secret_when_anyone_can_read_it(tmp_path):
    from robot_node.params import ConfigError, NodeConfig

    keys = make_keys(tmp_path / "keys", "arm1")
    robot_secret = keys / "secrets" / "arm1.key_secret"
    robot_secret.chmod(0o644)
    config = NodeConfig(arm_id="arm1", server_address="tcp://127.0.0.1:1",
                        robot_secret_key=str(robot_secret),
                        server_public_key=str(server_key_paths(keys)[0]))
    with pytest.raises(ConfigError, match=f"chmod 600 {robot_secret}"):
        SpoolUploader.from_config(config, Spool(tmp_path / "spool", 1000))
    robot_secret.chmod(0o600)
    uploader = SpoolUploader.from_config(config, Spool(tmp_path / "spool", 1000))
    assert uploader.client_config.host == socket.gethostname(), "empty host: this machine"


def test_the_host_a_robot_reports_is_in_the_servers_sessions(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1", "arm2", "observer")
    with ServerProcess(tmp_path / "data", keys) as server:
        placed = client(keys, "arm1", server.endpoint, host="ray-node-5f2c9a")
        older = client(keys, "arm2", server.endpoint, host=None)  # sends no host, as before
        observer = client(keys, "observer", server.endpoint)
        try:
            for c in (placed, older):
                c.hello()
            sessions: dict = {}
            for _ in range(100):  # a HELLO goes out once the connection is up
                for c in (placed, older):
                    c.poll(0.05)
                sessions = observer.counters(timeout=5.0)["sessions"]
                if {"arm1", "arm2"} <= set(sessions):
                    break
        finally:
            for c in (placed, older, observer):
                c.close()
    assert sessions["arm1"]["host"] == "ray-node-5f2c9a"
    assert "host" not in sessions["arm2"]
    assert "robot arm1 connected on ray-node-5f2c9a" in server.log()


def test_a_host_that_is_not_a_printable_name_is_malformed():
    assert P.parse_host({}) is None
    for bad in ("", " lab", "a\nb", 7, "x" * 254):
        with pytest.raises(P.ProtocolError) as err:
            P.parse_host({"host": bad})
        assert err.value.code == P.ErrorCode.MALFORMED
