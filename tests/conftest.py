"""Project-wide pytest fixtures: an isolated ROS 2 domain per test session, real ROS processes
that are always torn down, and an in-test rclpy node. The implementation is ros_processes.py.

Fixtures:
- `ros_domain` (session, autouse): claims a free ROS_DOMAIN_ID in 100-200 and puts it, with the
  Fast DDS loopback profile, into os.environ, so in-test rclpy and every child process use it.
- `ros_processes` / `ros_module_processes`: a ProcessGroup (`.start_node(module, name,
  namespace=, params_file=, params=, remaps=)`, `.start(argv, name)`), stopped at the end of the
  test / module: SIGINT, SIGTERM, SIGKILL to each process group, then no process may be left.
- `ros_node`: a RosTestNode (own rclpy context, background executor) for the test.
When a test fails, the logs of the processes still running are attached to its report.
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from ros_processes import LIVE_PROCESSES, ProcessGroup, RosDomain, RosTestNode, claim_domain

_ROS_ENV_KEYS = ("ROS_DOMAIN_ID", "FASTDDS_DEFAULT_PROFILES_FILE",
                 "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION")


@pytest.fixture(scope="session", autouse=True)
def ros_domain() -> Iterator[RosDomain]:
    domain = claim_domain()
    saved = {key: os.environ.get(key) for key in _ROS_ENV_KEYS}
    os.environ.update({key: domain.env[key] for key in _ROS_ENV_KEYS})
    try:
        yield domain
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        domain.release()


@pytest.fixture
def ros_processes(ros_domain: RosDomain, tmp_path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path / "ros-logs", ros_domain.env)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture(scope="module")
def ros_module_processes(ros_domain: RosDomain, tmp_path_factory) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path_factory.mktemp("ros-logs"), ros_domain.env)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def ros_node(ros_domain: RosDomain) -> Iterator[RosTestNode]:
    with RosTestNode("test_client") as node:
        yield node


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in LIVE_PROCESSES:
            report.sections.append(
                (f"ROS process {proc.name} (pid {proc.pid}) log: {proc.log_path}",
                 proc.log_text(8000)))
