"""Hypothesis throws malformed messages at a real server from an admitted (but hostile) robot,
while a well-behaved robot must keep being served after every single one of them."""
from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fleet.wire import protocol as P
from fleet.server.keys import ClientKeys
from fleet.wire.records import encode
from server_helpers import ServerProcess, client, make_attempt, make_keys, upload

HUGE = b"\xff\xd8" + b"\0" * (3 * 2**20)  # over max_frame_bytes: the socket drops the peer


def _evil_socket(ctx: zmq.Context, keys, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.immediate = True
    ClientKeys.from_dir(keys, "evil").apply(sock)
    sock.connect(endpoint)
    return sock


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    keys = make_keys(root / "keys", "good", "evil")
    with ServerProcess(root / "data", keys) as srv:
        ctx = zmq.Context()
        good = client(keys, "good", srv.endpoint)
        state = {"good_uploads": 0, "evil": _evil_socket(ctx, keys, srv.endpoint)}
        yield srv, good, state
        good.close()
        ctx.destroy(linger=0)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70).filter(
    lambda i: -2**63 <= i < 2**64), st.floats(), st.text(max_size=20), st.binary(max_size=20))
headers = st.fixed_dictionaries(
    {"v": st.one_of(st.just(P.PROTOCOL_VERSION), scalars),
     "type": st.one_of(st.sampled_from([int(t) for t in P.MsgType]), scalars),
     "seq": st.one_of(st.integers(0, 2**31), scalars)},
    optional={"robot_id": st.one_of(st.just("good"), scalars), "policy_version": scalars},
).map(lambda h: msgpack.packb(h, use_bin_type=True))


@st.composite
def mutated_uploads(draw):
    """A valid upload from `evil`, then one or two of: corrupt a frame, drop/add frames,
    rewrite a record field, claim to be another robot."""
    frames = P.upload(1, encode(make_attempt("evil", steps=draw(st.integers(0, 3)))))
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["flip", "truncate", "drop", "add", "field", "random_frame",
                                   "huge", "robot", "soi_garbage", "many_frames"]))
        i = draw(st.integers(0, len(frames) - 1))
        if op == "flip" and frames[i]:
            j = draw(st.integers(0, len(frames[i]) - 1))
            frames[i] = frames[i][:j] + bytes([frames[i][j] ^ 0xFF]) + frames[i][j + 1:]
        elif op == "truncate":
            frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
        elif op == "drop" and len(frames) > 1:
            del frames[i]
        elif op == "add":
            frames.insert(i, draw(st.binary(max_size=64)))
        elif op == "field" and len(frames) > 1:
            record = msgpack.unpackb(frames[1])
            record[draw(st.sampled_from(sorted(record)))] = draw(scalars)
            frames[1] = msgpack.packb(record, use_bin_type=True)
        elif op == "random_frame":
            frames[i] = draw(st.binary(max_size=200))
        elif op == "huge":
            frames[i] = HUGE
        elif op == "robot" and len(frames) > 1:
            record = msgpack.unpackb(frames[1])
            record["robot_id"] = "good"
            frames[1] = msgpack.packb(record, use_bin_type=True)
        elif op == "soi_garbage" and len(frames) > 2:  # an image frame that is no JPEG
            frames[draw(st.integers(2, len(frames) - 1))] = b"\xff\xd8" + draw(st.binary())
        elif op == "many_frames":
            frames += [b"\xff\xd8"] * draw(st.integers(500, 700))  # over max_frames (514)
    return frames or [b""]


messages = st.one_of(
    mutated_uploads(),
    mutated_uploads(),
    st.tuples(headers, st.lists(st.binary(max_size=50), max_size=3)).map(
        lambda t: [t[0], *t[1]]),
    st.lists(st.binary(max_size=100), min_size=1, max_size=5),
)


def _send_when_connected(sock: zmq.Socket, frames: list[bytes], timeout: float = 5.0) -> None:
    """With ZMQ_IMMEDIATE a send fails until the CURVE handshake is done: retry until then."""
    end = time.monotonic() + timeout
    while True:
        try:
            return sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


# Pinned examples, so that every check is exercised whatever the random draws do.
BAD_IMAGE = P.upload(1, encode(make_attempt("evil", jpeg=b"\xff\xd8" + b"\x00" * 64)))
IMPERSONATION = P.upload(1, encode(make_attempt("good")))
TOO_MANY_FRAMES = P.upload(1, encode(make_attempt("evil"))) + [b"\xff\xd8"] * 300


def _wait_until_served_again(sock: zmq.Socket, timeout: float = 10.0) -> None:
    """Probe with COUNTERS until a reply comes: probes sent into the dying connection are
    lost, the first one after the reconnection is answered."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            sock.send_multipart(P.counters_request(0), zmq.NOBLOCK)
        except zmq.Again:
            pass
        if sock.poll(300):
            while sock.poll(50):
                sock.recv_multipart()
            return
    raise AssertionError("the server never served the reconnected socket")


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(frames=messages)
@example(frames=BAD_IMAGE)
@example(frames=IMPERSONATION)
@example(frames=TOO_MANY_FRAMES)
@example(frames=[HUGE])
def test_malformed_frames_never_stop_service(rig, frames):
    srv, good, state = rig
    evil = state["evil"]
    _send_when_connected(evil, frames)
    if max(map(len, frames)) <= P.Limits().max_frame_bytes:
        assert evil.poll(5000), "no reply to a malformed message"
        while evil.poll(0):
            evil.recv_multipart()  # the ERROR (or, for a harmless mutation, ACK) reply
    else:  # the socket layer drops a connection that sends an oversized frame...
        _wait_until_served_again(evil)  # ...and the DEALER reconnects by itself
    a = make_attempt("good")
    done = upload(good, [a], timeout=15)[a.attempt_id]
    assert done.acked, done
    state["good_uploads"] += 1
    assert srv.proc.poll() is None, srv.log()


def test_after_fuzzing_the_good_robot_is_counted_exactly(rig):
    srv, good, state = rig
    robots = good.counters()["robots"]
    assert state["good_uploads"] > 0
    assert robots["good"]["attempts"] == state["good_uploads"]
    log = srv.log()
    reached = {code.name for code in P.ErrorCode
               if f"refused a message from evil: {code.name}" in log}
    assert reached >= {"MALFORMED", "BAD_VERSION", "BAD_RECORD", "BAD_IMAGE", "FORBIDDEN",
                       "TOO_LARGE"}, reached
    assert "internal error" not in log
