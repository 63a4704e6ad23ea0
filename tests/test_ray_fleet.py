"""The pieces of `fleet sim --ray` that need no cluster: ROS domains per arm, server addresses,
key files, the errors a user sees without Ray or without a head. (The cluster itself, with a
node dying: tests/test_ray_cluster.py.)"""
from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import pytest

from fleet.cli import build_parser
from fleet.ops.plan import PlanError
from fleet.ops.processes import SimFleetConfig, server_endpoints
from fleet.ops.ray_driver import _import_ray, check_head
from fleet.ops.ray_fleet import MAX_DOMAIN_ID, _write_private, arm_domain_id, count_spool


def test_each_arm_has_its_own_ros_domain_within_the_valid_range() -> None:
    assert [arm_domain_id(120, i) for i in range(3)] == [120, 121, 122]
    ids = [arm_domain_id(200, i) for i in range(100)]
    assert min(ids) == 200 and max(ids) == MAX_DOMAIN_ID and ids[33] == 200  # wraps
    with pytest.raises(PlanError, match="0-232"):
        arm_domain_id(233, 0)


def test_server_binds_and_local_dial_addresses() -> None:
    assert server_endpoints(SimFleetConfig(port=6000)) == ("tcp://127.0.0.1:6000",) * 2
    assert server_endpoints(SimFleetConfig(bind="0.0.0.0:7000")) == ("tcp://0.0.0.0:7000",
                                                                      "tcp://127.0.0.1:7000")
    assert server_endpoints(SimFleetConfig(bind="0.0.0.0", port=7001))[1] == \
        "tcp://127.0.0.1:7001"


def test_secret_written_for_its_owner_only(tmp_path: Path) -> None:
    secret = tmp_path / "arm1.key_secret"
    secret.write_bytes(b"old")
    secret.chmod(0o644)
    _write_private(secret, b"secret", 0o600)
    assert secret.read_bytes() == b"secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_spool_count(tmp_path: Path) -> None:
    assert count_spool(tmp_path / "missing") == 0
    for name in ("1-a.attempt", "2-b.attempt", "3-c.attempt.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert count_spool(tmp_path) == 2


def test_without_ray_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OSError, match=r"\.\[cluster\]"):
        _import_ray()


def test_no_head_at_the_address_fails_at_once_with_what_to_run() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(OSError, match=f"ray start --head --port {port}"):
        check_head(f"127.0.0.1:{port}")
    check_head("auto")  # left to Ray


def test_fleet_sim_takes_ray_flags() -> None:
    args = build_parser().parse_args(["sim", "--ray", "10.0.0.5:6379", "--bind", "0.0.0.0:5555",
                                      "--ray-server-host", "10.0.0.5", "--ray-cpus-per-arm",
                                      "0.5"])
    assert (args.ray, args.bind, args.ray_server_host, args.ray_cpus_per_arm) == \
        ("10.0.0.5:6379", "0.0.0.0:5555", "10.0.0.5", 0.5)
    assert build_parser().parse_args(["sim"]).ray is None
    assert build_parser().parse_args(["sim"]).ray_learner_gpus is None  # auto
    assert build_parser().parse_args(["sim", "--ray-learner-gpus", "0.5"]).ray_learner_gpus == 0.5
    assert build_parser().parse_args(["sim", "--ray-learner-gpus", "auto"]).ray_learner_gpus \
        is None
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["sim", "--ray-learner-gpus", bad])
