"""The data server end to end: a real `fleet serve` process, CURVE sockets on 127.0.0.1, a real
store on disk. One server serves the whole module (it starts in about a second)."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import msgpack
import pytest
import zmq
import zmq.auth

from fleet.wire import protocol as P
from fleet.server.keys import ClientKeys, create_robot_key
from fleet.wire.records import encode
from server_helpers import (ServerProcess, client, free_port, make_attempt, make_keys,
                            stored_ids, upload)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    keys = make_keys(root / "keys", "arm1", "arm2", "arm3")
    metrics_port = free_port()
    srv = ServerProcess(root / "data", keys, extra=("--metrics-port", str(metrics_port)))
    srv.metrics_port = metrics_port
    with srv:
        yield srv


def _raw_dealer(ctx: zmq.Context, endpoint: str, keys: ClientKeys | None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if keys is not None:
        keys.apply(s)
    s.connect(endpoint)
    return s


def _request(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = 5000) -> P.Reply | None:
    sock.sndtimeo = timeout_ms
    try:
        sock.send_multipart(frames)
    except zmq.Again:  # no connection ever came up: a refused handshake looks like this
        return None
    if not sock.poll(timeout_ms):
        return None
    return P.parse_reply(sock.recv_multipart())


def test_round_trip_counts_per_robot(server):
    c1, c2 = (client(server.keys, r, server.endpoint) for r in ("arm1", "arm2"))
    try:
        a1 = [make_attempt("arm1", outcome="success" if i % 3 else "failure") for i in range(30)]
        a2 = [make_attempt("arm2", outcome="aborted") for _ in range(12)]
        d1, d2 = upload(c1, a1), upload(c2, a2)
        assert all(d.acked and not d.duplicate for d in [*d1.values(), *d2.values()])
        assert set(d1) == {a.attempt_id for a in a1}
        counters = c1.counters()["robots"]
        assert counters["arm1"]["attempts"] >= 30  # other tests of the module add to arm1
        assert counters["arm2"]["attempts"] == 12 and counters["arm2"]["aborted"] == 12
        assert c1.stats.welcome["limits"]["max_frames"] == P.Limits().max_frames
    finally:
        c1.close(), c2.close()


def test_duplicate_is_acked_again_and_stored_once(server):
    c = client(server.keys, "arm3", server.endpoint)
    try:
        a = make_attempt("arm3")
        first = upload(c, [a])[a.attempt_id]
        again = upload(c, [a, a])[a.attempt_id]
        assert first.acked and not first.duplicate
        assert again.acked and again.duplicate
        robots = c.counters()["robots"]
        assert robots["arm3"]["attempts"] == 1 and robots["arm3"]["duplicates"] >= 1
    finally:
        c.close()


def test_unknown_or_missing_key_never_reaches_the_server(server, tmp_path):
    ctx = zmq.Context()
    try:
        before = client(server.keys, "arm1", server.endpoint).counters()["robots"]
        pub, sec = zmq.auth.create_certificates(tmp_path, "stranger")
        stranger = ClientKeys.from_files(sec, server.keys / "server.key")
        plain = _raw_dealer(ctx, server.endpoint, None)  # no CURVE at all
        curve = _raw_dealer(ctx, server.endpoint, stranger)
        for sock, robot in ((plain, "arm1"), (curve, "stranger")):
            frames = P.upload(1, encode(make_attempt(robot)))
            assert _request(sock, frames, timeout_ms=1500) is None, "got a reply without a key"
        after = client(server.keys, "arm1", server.endpoint).counters()["robots"]
        assert "stranger" not in after
        assert "unknown CURVE key" in server.log()  # refused by the authenticator
        assert after.get("arm1", {}).get("attempts", 0) == before.get("arm1", {}).get("attempts", 0)
    finally:
        ctx.destroy(linger=0)


def test_admitted_robot_cannot_upload_as_another(server):
    c = client(server.keys, "arm1", server.endpoint)
    try:
        forged = make_attempt("arm2")
        done = upload(c, [forged])[forged.attempt_id]
        assert not done.acked and done.code == P.ErrorCode.FORBIDDEN
        assert "arm1" in done.message and "arm2" in done.message
        ctx = zmq.Context.instance()
        s = _raw_dealer(ctx, server.endpoint, ClientKeys.from_dir(server.keys, "arm1"))
        reply = _request(s, P.hello(7, "arm2", 3))
        s.close()
        assert reply.type == P.MsgType.ERROR and reply.code == P.ErrorCode.FORBIDDEN
        assert reply.seq == 7
    finally:
        c.close()


@pytest.mark.parametrize("frames, code", [
    ([msgpack.packb({"v": 99, "type": 20, "seq": 1})], P.ErrorCode.BAD_VERSION),
    ([b"\xc1\x00 not msgpack"], P.ErrorCode.MALFORMED),
    ([msgpack.packb([1, 20, 1])], P.ErrorCode.MALFORMED),
    ([msgpack.packb({"v": 1, "type": 77, "seq": 1})], P.ErrorCode.UNKNOWN_TYPE),
    ([msgpack.packb({"v": 1, "seq": 1})], P.ErrorCode.MALFORMED),
    ([P.pack(P.MsgType.ACK, 1)], P.ErrorCode.UNKNOWN_TYPE),
    ([P.pack(P.MsgType.UPLOAD, 1), b"\x00" * 10], P.ErrorCode.BAD_RECORD),
    ([P.pack(P.MsgType.UPLOAD, 1)] + [b"x"] * 600, P.ErrorCode.TOO_LARGE),
])
def test_malformed_requests_get_a_named_error(server, frames, code):
    s = _raw_dealer(zmq.Context.instance(), server.endpoint,
                    ClientKeys.from_dir(server.keys, "arm2"))
    try:
        reply = _request(s, frames)
        assert reply is not None and reply.type == P.MsgType.ERROR
        assert reply.code == code, reply.fields
        assert reply.fields["message"] and reply.fields["retryable"] is False
    finally:
        s.close()


def test_bad_images_and_absurd_values_refused_and_not_stored(server):
    c = client(server.keys, "arm2", server.endpoint)
    try:
        not_jpeg = make_attempt("arm2", jpeg=b"\xff\xd8" + b"garbage" * 50)
        wrong_size = make_attempt("arm2")
        wrong_size.image_height = 480
        absurd = make_attempt("arm2")
        absurd.final_pose = (1e6, 0, 0, 0, 0, 0, 1)
        done = upload(c, [not_jpeg, wrong_size, absurd])
        assert done[not_jpeg.attempt_id].code == P.ErrorCode.BAD_IMAGE
        assert done[wrong_size.attempt_id].code == P.ErrorCode.BAD_IMAGE
        assert "480" in done[wrong_size.attempt_id].message
        assert done[absurd.attempt_id].code == P.ErrorCode.BAD_RECORD
        assert "final_pose" in done[absurd.attempt_id].message
        good = make_attempt("arm2")  # and the server goes on serving
        assert upload(c, [good])[good.attempt_id].acked
    finally:
        c.close()


def test_new_robot_key_admitted_while_running(server):
    create_robot_key(server.keys, "arm9")
    c = client(server.keys, "arm9", server.endpoint)
    try:
        a = make_attempt("arm9")
        assert upload(c, [a], timeout=20)[a.attempt_id].acked
    finally:
        c.close()


def test_metrics_endpoint_counts_per_robot(server):
    c = client(server.keys, "arm1", server.endpoint)
    try:
        upload(c, [make_attempt("arm1")])
    finally:
        c.close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    text = text.decode()
    assert 'fleet_attempts_acked_total{robot="arm1"}' in text
    assert 'fleet_requests_refused_total{code="FORBIDDEN",robot="arm1"}' in text
    assert "fleet_commit_group_attempts_bucket" in text


def test_sigterm_exits_cleanly_and_everything_acked_is_stored(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1")
    srv = ServerProcess(tmp_path / "data", keys).start()
    c = client(keys, "arm1", srv.endpoint)
    try:
        attempts = [make_attempt("arm1") for _ in range(20)]
        acked = [aid for aid, d in upload(c, attempts).items() if d.acked]
    finally:
        c.close()
    t0 = time.monotonic()
    assert srv.stop() == 0, srv.log()
    assert time.monotonic() - t0 < 10
    assert "stopped: 20 attempts committed" in srv.log()
    stored = stored_ids(tmp_path / "data")
    assert all(stored[aid] == 1 for aid in acked) and len(acked) == 20


def test_second_server_on_the_same_port_says_why(server, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fleet.cli", "serve", "--data", str(tmp_path / "d"),
                        "--keys", str(server.keys), "--bind", server.endpoint],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot bind" in r.stderr, r.stderr


def test_client_refuses_an_oversized_attempt_locally_and_keeps_the_link(server):
    c = client(server.keys, "arm1", server.endpoint)
    try:
        huge = make_attempt("arm1", jpeg=b"\xff\xd8" + b"\0" * (3 * 2**20))
        good = make_attempt("arm1")
        done = upload(c, [huge, good])
        assert done[huge.attempt_id].code == P.ErrorCode.TOO_LARGE
        assert done[good.attempt_id].acked and c.stats.sent == 1
    finally:
        c.close()
