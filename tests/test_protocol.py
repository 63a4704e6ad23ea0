"""The wire format on its own: headers, versions, size limits, validation of uploads."""
from __future__ import annotations

import msgpack
import pytest

from fleet.wire import protocol as P
from fleet.wire import validation as V
from fleet.wire.records import encode
from server_helpers import make_attempt


def _code(fn, *args) -> P.ErrorCode:
    with pytest.raises(P.ProtocolError) as info:
        fn(*args)
    assert info.value.message  # every refusal names the problem
    return info.value.code


def test_header_round_trip_and_reply_parsing():
    frames = P.hello(5, "arm1", 3)
    header = P.parse_header(frames[0])
    assert header == {"v": P.PROTOCOL_VERSION, "type": P.MsgType.HELLO, "seq": 5,
                      "robot_id": "arm1", "policy_version": 3}
    assert P.parse_hello(header) == ("arm1", 3)
    reply = P.parse_reply(P.error(9, P.ErrorCode.BUSY, "disk full", retry_after=2.0))
    assert reply.type == P.MsgType.ERROR and reply.seq == 9 and reply.code == P.ErrorCode.BUSY
    assert reply.fields["retryable"] is True and reply.fields["retry_after"] == 2.0
    ack = P.parse_reply(P.ack(4, "abc", duplicate=True))
    assert ack.type == P.MsgType.ACK and ack.fields == {"attempt_id": "abc", "duplicate": True}


def test_message_types_are_grouped_and_replies_follow_requests():
    assert P.MsgType.WELCOME == P.MsgType.HELLO + 1
    assert P.MsgType.ACK == P.MsgType.UPLOAD + 1
    assert P.MsgType.COUNTERS_REPLY == P.MsgType.COUNTERS + 1
    assert {P.MsgType.POLICY_AVAILABLE, P.MsgType.FETCH_POLICY, P.MsgType.POLICY} <= set(
        t for t in P.MsgType if 40 <= t < 50)
    assert P.RETRYABLE == {P.ErrorCode.BUSY, P.ErrorCode.INTERNAL}


@pytest.mark.parametrize("frame, code", [
    (msgpack.packb({"v": 2, "type": 20, "seq": 1}), P.ErrorCode.BAD_VERSION),
    (msgpack.packb({"type": 20, "seq": 1}), P.ErrorCode.BAD_VERSION),
    (b"\xc1", P.ErrorCode.MALFORMED),
    (b"", P.ErrorCode.MALFORMED),
    (msgpack.packb("a string"), P.ErrorCode.MALFORMED),
    (msgpack.packb({"v": 1, "type": "UPLOAD", "seq": 1}), P.ErrorCode.MALFORMED),
    (msgpack.packb({"v": 1, "type": 20, "seq": -1}), P.ErrorCode.MALFORMED),
    (msgpack.packb({"v": 1, "type": True, "seq": 1}), P.ErrorCode.MALFORMED),
    (msgpack.packb({"v": 1, "type": 99, "seq": 1}), P.ErrorCode.UNKNOWN_TYPE),
    (msgpack.packb({1: 2}), P.ErrorCode.MALFORMED),  # non-string keys are refused
    (msgpack.packb({"v": 1, "type": 20, "pad": "x" * 70000}), P.ErrorCode.TOO_LARGE),
])
def test_bad_headers_are_refused_with_their_code(frame, code):
    assert _code(P.parse_header, frame) == code


def test_size_limits():
    limits = P.Limits(max_frames=4, max_frame_bytes=100, max_upload_bytes=250)
    P.check_sizes([b"x" * 100] * 2, limits)
    assert _code(P.check_sizes, [b"x"] * 5, limits) == P.ErrorCode.TOO_LARGE
    assert _code(P.check_sizes, [b"x" * 101], limits) == P.ErrorCode.TOO_LARGE
    assert _code(P.check_sizes, [b"x" * 100] * 3, limits) == P.ErrorCode.TOO_LARGE


def test_validate_upload_accepts_a_real_attempt():
    a = make_attempt("arm1", steps=4)
    got = V.validate_upload(encode(a), "arm1", max_steps=10)
    assert got.attempt_id == a.attempt_id and len(got.steps) == 4


def test_validate_upload_refusals_name_the_problem():
    a = make_attempt("arm1")
    assert _code(V.validate_upload, encode(a), "arm2", 10) == P.ErrorCode.FORBIDDEN
    assert _code(V.validate_upload, encode(make_attempt("arm1", steps=5)), "arm1", 4) == \
        P.ErrorCode.BAD_RECORD
    assert _code(V.validate_upload, encode(a)[:-1], "arm1", 10) == P.ErrorCode.BAD_RECORD
    bad_jpeg = make_attempt("arm1", jpeg=b"\xff\xd8not a jpeg at all")
    assert _code(V.validate_upload, encode(bad_jpeg), "arm1", 10) == P.ErrorCode.BAD_IMAGE
    wrong_size = make_attempt("arm1")
    wrong_size.image_width = 32
    assert _code(V.validate_upload, encode(wrong_size), "arm1", 10) == P.ErrorCode.BAD_IMAGE


def test_every_step_image_is_checked_not_only_the_decoded_sample():
    good = make_attempt("arm1").steps[0].image_jpeg
    assert V.jpeg_structure_error(good, 64, 64) is None
    sof = next(i for i in range(2, len(good)) if good[i] == 0xFF and good[i + 1] == 0xC0)
    sos = good.index(b"\xff\xda")
    broken = {
        "truncated": good[:len(good) // 2],
        "no SOS": good[:sos] + b"\xff\xd9",
        "segment past the end": good[:sof + 2] + b"\xff\xff" + good[sof + 4:],
        "no SOF": good[:sof] + good[sof + 19:],
    }
    for name, jpeg in broken.items():
        assert V.jpeg_structure_error(jpeg, 64, 64) is not None, name
        a = make_attempt("arm1", steps=9)
        a.steps[7].image_jpeg = jpeg  # one bad image among good ones: always refused
        assert _code(V.validate_upload, encode(a), "arm1", 10) == P.ErrorCode.BAD_IMAGE, name


def test_a_remembered_jpeg_header_gets_the_same_verdict_as_the_walk():
    """validation remembers headers that passed the marker walk; an image reusing one must still
    be refused for a wrong declared size or a missing EOI, as the walk would refuse it."""
    a = make_attempt("arm1", steps=4)
    V.validate_upload(encode(a), "arm1", 10)
    good = a.steps[0].image_jpeg
    assert V._CHECKED.known(good, 64, 64) and not V._CHECKED.known(good, 48, 64)
    wrong_size = make_attempt("arm1", jpeg=good)
    wrong_size.image_height = 48
    with pytest.raises(P.ProtocolError) as info:
        V.validate_upload(encode(wrong_size), "arm1", 10)
    assert info.value.code == P.ErrorCode.BAD_IMAGE and "64x48" in info.value.message
    for jpeg in (good[:-2], good[:-40] + b"\xff\xd9"[:1]):  # no EOI
        assert _code(V.validate_upload, encode(make_attempt("arm1", jpeg=jpeg)), "arm1",
                     10) == P.ErrorCode.BAD_IMAGE


@pytest.mark.parametrize("field, value", [
    ("started_at", 12.0), ("policy_version", 2**40), ("gripper_after_lift", 3.0),
    ("final_pose", (0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 5.0)), ("final_pose", (99, 0, 0, 0, 0, 0, 1)),
])
def test_absurd_values_are_refused(field, value):
    a = make_attempt("arm1")
    setattr(a, field, value)
    with pytest.raises(P.ProtocolError) as info:
        V.validate_upload(encode(a), "arm1", 10)
    assert info.value.code == P.ErrorCode.BAD_RECORD and field.split("_")[0] in info.value.message
