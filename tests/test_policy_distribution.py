"""Policy distribution end to end: a real `fleet serve --policies` process, real CURVE client
sockets on 127.0.0.1, real bundles written the way the learner writes them (fleet.learner.checkpoint),
rollback through the real `fleet policy` command."""
from __future__ import annotations

import hashlib
import time
import urllib.request
from pathlib import Path
from typing import Callable

import msgpack
import pytest
import torch
import zmq

from fleet.wire import protocol as P
from fleet.policy.bundle import pack_bundle, save_bundle, unpack_bundle
from fleet.store.durable import atomic_write_json
from fleet.policy.folder import write_policy
from fleet.client.upload_client import RobotStatus, UploadClient
from fleet.server.keys import load_server_keypair
from fleet.methods.levine.network import GraspSuccessNet
from fleet.cli import main as cli_main
from server_helpers import ServerProcess, client, free_port, make_keys

ROBOTS = ("arm1", "arm2", "arm3", "arm4")


@pytest.fixture()
def fleet_server(tmp_path):
    keys = make_keys(tmp_path / "keys", *ROBOTS)
    out = tmp_path / "learner"
    (out / "policies").mkdir(parents=True)
    metrics_port = free_port()
    srv = ServerProcess(tmp_path / "data", keys,
                        extra=("--policies", str(out / "policies"),
                               "--metrics-port", str(metrics_port)))
    srv.out, srv.policies, srv.metrics_port = out, out / "policies", metrics_port
    clients: list[UploadClient] = []
    srv.connect = lambda robot, version=0: clients.append(
        client(keys, robot, srv.endpoint, policy_version=version)) or clients[-1]
    with srv:
        try:
            yield srv
        finally:
            for c in clients:  # before the server stops, so it has no one to linger for
                c.close()


def publish(out: Path, version: int) -> None:
    torch.manual_seed(version)
    write_policy(out, GraspSuccessNet(), version=version, trained_on_attempts=100 * version,
                 metrics={"val_loss": 0.5})


def drive(clients: list[UploadClient], until: Callable[[], bool], timeout: float = 10.0,
          installed: dict | None = None) -> None:
    """Run the robots' loop: poll, install any policy update (report it), until `until()`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for c in clients:
            c.poll(0.02)
            update = c.take_policy()
            if update is not None:
                unpack_bundle(update.blob, {"image_height": 64, "image_width": 64})
                if installed is not None:
                    installed.setdefault(c.config.robot_id, []).append(update.version)
                c.hello(policy_version=update.version)
        if until():
            return
    raise AssertionError(f"timed out; robots run {[c.config.policy_version for c in clients]}")


def running(clients: list[UploadClient], version: int) -> Callable[[], bool]:
    return lambda: all(c.config.policy_version == version for c in clients)


def fleet_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The `fleet` command line, run in-process (a subprocess would spend seconds importing
    torch): (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_reaches_every_robot_and_a_late_one_and_status_is_reported(fleet_server):
    srv = fleet_server
    robots = [srv.connect(r) for r in ROBOTS[:3]]
    for i, c in enumerate(robots):
        c.hello(status=RobotStatus("collecting", spool_attempts=i, spool_bytes=1000 * i,
                                   attempts=10 + i, successes=i))
    drive(robots, lambda: all(c.stats.welcome for c in robots))
    assert all(c.served_policy is None for c in robots)  # nothing published yet
    installed: dict = {}
    publish(srv.out, 1)
    drive(robots, running(robots, 1), installed=installed)
    publish(srv.out, 2)
    drive(robots, running(robots, 2), installed=installed)
    assert installed == {r: [1, 2] for r in ROBOTS[:3]}

    late = srv.connect(ROBOTS[3])  # was offline during both publications
    drive([late], running([late], 2))

    reply = robots[0].counters()
    assert reply["policy"]["served_version"] == 2 and reply["policy"]["pinned"] is False
    drive(robots + [late], lambda: all(s["policy_version"] == 2
                                       for s in robots[0].counters()["sessions"].values()))
    sessions = robots[0].counters()["sessions"]
    assert set(sessions) == set(ROBOTS)
    assert sessions["arm2"]["status"] == {"state": "collecting", "spool_attempts": 1,
                                          "spool_bytes": 1000, "attempts": 11, "successes": 1}
    assert sessions["arm2"]["online"] is True and "status" not in sessions["arm4"]
    robots[0].set_status(RobotStatus("estopped", spool_attempts=7))  # kept for the heartbeat
    robots[0].hello()
    drive(robots, lambda: robots[1].counters()["sessions"]["arm1"]["status"]["state"]
          == "estopped")
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
    assert "fleet_policy_served_version 2.0" in body
    assert "fleet_policy_pinned 0.0" in body
    assert 'fleet_robot_policy_version{robot="arm4"} 2.0' in body
    assert 'fleet_robot_spool_bytes{robot="arm3"} 2000.0' in body
    assert 'fleet_robot_state{robot="arm1",state="estopped"} 1.0' in body


def test_pin_rolls_back_holds_newer_versions_and_unpin_serves_newest(fleet_server, capsys):
    srv = fleet_server
    publish(srv.out, 1)
    publish(srv.out, 2)
    robots = [srv.connect(r) for r in ROBOTS[:2]]
    drive(robots, running(robots, 2))

    code, _, err = fleet_cli(capsys, "policy", "pin", "--version", "1", "--policies",
                             str(srv.policies))
    assert code == 0, err
    installed: dict = {}
    drive(robots, running(robots, 1), installed=installed)
    assert installed == {"arm1": [1], "arm2": [1]}
    assert robots[0].served_policy["pinned"] is True

    publish(srv.out, 3)  # the learner goes on; the pin holds
    time.sleep(0.6)
    drive(robots, lambda: robots[0].counters()["policy"]["latest_version"] == 3)
    assert all(c.config.policy_version == 1 for c in robots)
    assert robots[0].counters()["policy"]["served_version"] == 1
    listing = fleet_cli(capsys, "policy", "list", "--policies", str(srv.policies))[1]
    assert "PINNED" in listing and "served: v1 (pinned)" in listing

    code, out, _ = fleet_cli(capsys, "policy", "unpin", "--policies", str(srv.policies))
    assert code == 0 and "unpinned" in out
    drive(robots, running(robots, 3))
    assert robots[0].counters()["policy"]["pinned"] is False


def test_corrupt_bundle_is_refused_never_announced_and_cannot_be_pinned(fleet_server,
                                                                        capsys):
    srv = fleet_server
    publish(srv.out, 1)
    robots = [srv.connect(r) for r in ROBOTS[:2]]
    drive(robots, running(robots, 1))

    torch.manual_seed(2)
    meta = save_bundle(srv.policies / "v2", GraspSuccessNet(), version=2)
    weights = srv.policies / "v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the weights: the checksum no longer matches
    weights.write_bytes(bytes(data))
    atomic_write_json(srv.policies / "latest.json", {"version": 2, "path": "v2",
                                                     "sha256": meta.sha256})
    drive(robots, lambda: "checksum mismatch" in (robots[0].counters()["policy"]["problem"]))
    end = time.monotonic() + 1.0
    drive(robots, lambda: time.monotonic() > end)
    assert all(c.served_policy["version"] == 1 and c.config.policy_version == 1 for c in robots)
    assert "policy v2 refused, not announced: checksum mismatch" in srv.log()

    code, _, err = fleet_cli(capsys, "policy", "pin", "--version", "2", "--policies",
                             str(srv.policies))
    assert code == 2 and "checksum mismatch" in err
    assert "CORRUPT" in fleet_cli(capsys, "policy", "list", "--policies", str(srv.policies))[1]

    publish(srv.out, 3)  # the learner's next good version goes out as usual
    drive(robots, running(robots, 3))


def _fake_server(ctx: zmq.Context, keys: Path) -> zmq.Socket:
    """A ROUTER holding the real server keys (a broken server, as far as policies go)."""
    s = ctx.socket(zmq.ROUTER)
    s.curve_server = True
    s.curve_publickey, s.curve_secretkey = load_server_keypair(keys)
    s.linger = 0
    s.bind("tcp://127.0.0.1:0")
    return s


def _serve_fake(s: zmq.Socket, policy: dict, blob: bytes, c: UploadClient,
                seconds: float) -> int:
    """Answer HELLO and FETCH_POLICY for `seconds` while polling the client; count fetches."""
    fetches, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        c.poll(0.02)
        assert c.take_policy() is None, "a corrupt policy was handed to the robot"
        while s.poll(0):
            identity, header, *_ = s.recv_multipart()
            h = msgpack.unpackb(header)
            if h["type"] == P.MsgType.HELLO:
                s.send_multipart([identity, P.pack(P.MsgType.WELCOME, h["seq"],
                                                   policy=policy)])
            elif h["type"] == P.MsgType.FETCH_POLICY:
                fetches += 1
                s.send_multipart([identity, P.pack(P.MsgType.POLICY, h["seq"], **policy),
                                  blob])
    return fetches


@pytest.mark.parametrize("damage", ["inner checksum", "transport"])
def test_corrupt_payload_is_refused_by_the_client(tmp_path, damage):
    keys = make_keys(tmp_path / "keys", "arm1")
    torch.manual_seed(0)
    save_bundle(tmp_path / "v5", GraspSuccessNet(), version=5)
    good = pack_bundle(tmp_path / "v5")
    unpacked = msgpack.unpackb(good)
    weights = bytearray(unpacked["model.safetensors"])
    weights[-100] ^= 0xFF
    unpacked["model.safetensors"] = bytes(weights)
    bad = msgpack.packb(unpacked)
    announced_sha = hashlib.sha256(bad if damage == "inner checksum" else good).hexdigest()
    policy = {"version": 5, "sha256": announced_sha, "size": len(bad), "pinned": False}
    ctx = zmq.Context()
    server = _fake_server(ctx, keys)
    c = client(keys, "arm1", server.getsockopt_string(zmq.LAST_ENDPOINT), policy_version=4)
    try:
        fetches = _serve_fake(server, policy, bad, c, 1.5)
        assert fetches == 1  # refused once, not fetched again in a loop
        assert c.config.policy_version == 4
        expected = "checksum mismatch" if damage == "inner checksum" else "corrupted"
        assert expected in c.stats.last_error
    finally:
        c.close()
        server.close()
        ctx.term()


@pytest.mark.parametrize("status, problem", [
    ("collecting", "must be a map"),
    ({"state": "dancing"}, "is not one of"),
    ({"state": "idle", "spool_bytes": -1}, "spool_bytes"),
    ({"state": "idle", "attempts": "many"}, "attempts"),
])
def test_a_malformed_status_is_refused_by_name(status, problem):
    with pytest.raises(P.ProtocolError, match=problem) as err:
        P.parse_status({"status": status})
    assert err.value.code == P.ErrorCode.MALFORMED
    assert P.parse_status({}) is None  # status is optional: older robots send none
