"""The spool uploader against a real `fleet serve` process: every spooled attempt reaches the
store, and a spool file is deleted only once acknowledged."""
from __future__ import annotations

import time

import pytest

from fleet.client.upload_client import ClientConfig, RobotStatus, UploadClient
from fleet.server.keys import ClientKeys
from fleet.wire.records import encode
from robot_node.spool import Spool
from robot_node.uploader import SpoolUploader, attempt_id_of
from robot_test_helpers import make_attempt
from ros_processes import wait_for
from server_helpers import ServerProcess, make_keys, stored_ids


def uploader_for(spool, keys, endpoint):
    cfg = ClientConfig(endpoint, "arm1", ClientKeys.from_dir(keys, "arm1"), ack_timeout=1.0)
    return SpoolUploader(spool, cfg, idle_poll=0.05)


def test_spool_drains_to_the_server_and_only_acked_files_go(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1")
    spool = Spool(tmp_path / "spool", 1 << 30)
    ids = []
    for _ in range(12):
        a = make_attempt(steps=3)
        spool.put(a.attempt_id, encode(a))
        ids.append(a.attempt_id)
    assert attempt_id_of(spool.entries()[0].name) == ids[0]
    server = ServerProcess(tmp_path / "data", keys)
    up = uploader_for(spool, keys, server.endpoint)
    up.start()
    try:
        time.sleep(1.0)  # no server yet: nothing may be deleted
        assert len(spool) == 12 and up.acked == 0
        with server:
            wait_for(lambda: len(spool) == 0, 30, "the spool to drain")
            assert up.acked == 12 and up.refused == 0
            later = make_attempt(steps=2)  # attempts spooled while running go up too
            spool.put(later.attempt_id, encode(later))
            wait_for(lambda: len(spool) == 0, 30, "the new attempt to go up")
    finally:
        up.stop()
    stored = stored_ids(tmp_path / "data")
    assert set(ids + [later.attempt_id]) <= set(stored) and max(stored.values()) == 1


def test_missing_keys_are_a_config_error_naming_the_fix(tmp_path):
    from robot_node.params import ConfigError, NodeConfig

    with pytest.raises(ConfigError, match="robot_secret_key"):
        SpoolUploader.from_config(NodeConfig(arm_id="arm1", server_address="tcp://127.0.0.1:1"),
                                  Spool(tmp_path, 1000))


def _session(observer: UploadClient, robot: str) -> dict:
    return observer.counters(timeout=5.0)["sessions"].get(robot, {})


def test_pushed_policy_is_installed_and_reported_only_once_in_service(tmp_path):
    """Install on push; the server hears the version at once when the node says it is in
    service (after its swap between attempts), not at download, and gets the status."""
    import torch

    from fleet.policy.folder import write_policy
    from fleet.methods.levine.network import GraspSuccessNet
    from robot_node.params import NodeConfig
    from robot_node.policy_runtime import PolicyRuntime

    keys = make_keys(tmp_path / "keys", "arm1", "observer")
    learner = tmp_path / "learner"
    (learner / "policies").mkdir(parents=True)
    torch.manual_seed(0)
    write_policy(learner, GraspSuccessNet(), version=4, trained_on_attempts=10,
                 metrics={"val_loss": 0.5})
    bundles = tmp_path / "bundles"
    spool = Spool(tmp_path / "spool", 1 << 30)
    # heartbeats 30 s apart: only the HELLO sent on the swap can tell the server in time
    cfg = ClientConfig("", "arm1", ClientKeys.from_dir(keys, "arm1"), ack_timeout=1.0,
                       hello_interval=30.0)
    with ServerProcess(tmp_path / "data", keys,
                       extra=("--policies", str(learner / "policies"))) as server:
        cfg.endpoint = server.endpoint
        observer = UploadClient(ClientConfig(server.endpoint, "observer",
                                             ClientKeys.from_dir(keys, "observer")))
        up = SpoolUploader(spool, cfg, idle_poll=0.05, bundle_dir=bundles)
        up.status = RobotStatus("starting")
        up.start()
        try:
            wait_for(lambda: up.policies_installed == 1, 30, "policy v4 installed")
            # downloaded and installed, not yet in service: the server still hears v0
            session = wait_for(lambda: _session(observer, "arm1"), 10, "arm1's HELLO")
            assert session["policy_version"] == 0 and session["status"]["state"] == "starting"
            runtime = PolicyRuntime(NodeConfig(arm_id="arm1", bundle_path=str(bundles)))
            assert "version 4" in runtime.poll(force=True) and runtime.version == 4
            up.status = RobotStatus("collecting", spool_attempts=0, spool_bytes=0, attempts=7,
                                    successes=2)
            swapped = time.monotonic()
            up.policy_version = runtime.version  # what the node does right after the swap
            wait_for(lambda: _session(observer, "arm1").get("policy_version") == 4, 10,
                     "the server to hear v4 in service", interval=0.05)
            assert time.monotonic() - swapped < 2.0
            assert _session(observer, "arm1")["status"] == {
                "state": "collecting", "spool_attempts": 0, "spool_bytes": 0, "attempts": 7,
                "successes": 2}
        finally:
            up.stop()
            observer.close()
