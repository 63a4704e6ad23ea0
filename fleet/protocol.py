"""The data server's wire protocol: the one module that defines what crosses the network.

Every message, in either direction, is a ZeroMQ multipart message whose first frame (after the
ROUTER's routing identity, which the application never writes) is a msgpack map, the *header*:

    {"v": PROTOCOL_VERSION, "type": MsgType, "seq": int, ...type-specific fields}

followed by zero or more raw payload frames. An UPLOAD's payload is the attempt exactly as
`fleet.records.encode` writes it (record header, then one JPEG frame per step), so an attempt is
serialised once, on the robot, and never re-encoded on the way to the store.

Nothing here is ever unpickled: msgpack with `strict_map_key`, bytes frames, and explicit field
checks that raise `ProtocolError` carrying the `ErrorCode` to send back. docs/protocol.md is the
prose version of this file.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
import time
from typing import Any, Optional, Sequence

import cv2
import msgpack
import numpy as np

from fleet.records import Attempt, RecordError, decode

#: Bumped on any change an older peer could misread. A server answers a request of another
#: version with ERROR(BAD_VERSION) and serves everyone else on; it never guesses.
PROTOCOL_VERSION = 1


class MsgType(enum.IntEnum):
    """Message types, grouped in decades by concern so that new concerns get their own range.

    1x session, 2x attempt upload, 3x monitoring, 4x policy distribution (reserved for the
    learner: the server will announce new policies and robots will fetch them), 9x errors.
    A reply's type is its request's type + 1.
    """

    HELLO = 10  # robot -> server: who I am, which policy I run; also the heartbeat
    WELCOME = 11  # server -> robot: limits and server version
    UPLOAD = 20  # robot -> server: one attempt (payload: fleet.records.encode frames)
    ACK = 21  # server -> robot: the attempt is durable (or was already stored)
    COUNTERS = 30  # anyone admitted -> server: per-robot counters
    COUNTERS_REPLY = 31
    POLICY_AVAILABLE = 40  # reserved: server -> robot, a new policy version exists
    FETCH_POLICY = 42  # reserved: robot -> server, send me policy version N
    POLICY = 43  # reserved: server -> robot, the policy bundle
    ERROR = 90  # server -> robot: the request identified by seq was refused


class ErrorCode(enum.IntEnum):
    """Why a request was refused. `RETRYABLE` says whether re-sending the same bytes can work."""

    BAD_VERSION = 1  # header "v" is not PROTOCOL_VERSION: upgrade the older side
    MALFORMED = 2  # header is not a msgpack map or lacks/garbles a field: a client bug
    UNKNOWN_TYPE = 3  # "type" is not a request this server serves
    BAD_RECORD = 4  # the attempt's record fails validation: quarantine it, do not resend
    BAD_IMAGE = 5  # a step image does not decode as JPEG of the declared size
    TOO_LARGE = 6  # over max frames / bytes per frame / bytes per upload
    FORBIDDEN = 7  # the record's robot_id is not the robot this key belongs to
    BUSY = 8  # back-pressure (store slow, disk full): keep it spooled, retry after retry_after
    INTERNAL = 9  # the server failed unexpectedly: retry later


RETRYABLE = frozenset({ErrorCode.BUSY, ErrorCode.INTERNAL})


class ProtocolError(ValueError):
    """A request the server refuses; carries the code and a message naming the problem."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Size limits the server enforces (and announces in WELCOME so clients can check first)."""

    max_frames: int = 1 + 1 + 256  # protocol header + record header + up to 256 step images
    max_frame_bytes: int = 2 * 1024 * 1024  # also the socket's ZMQ_MAXMSGSIZE
    max_upload_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024

    def as_dict(self) -> dict[str, int]:
        return {"max_frames": self.max_frames, "max_frame_bytes": self.max_frame_bytes,
                "max_upload_bytes": self.max_upload_bytes,
                "max_header_bytes": self.max_header_bytes}


# ---------------------------------------------------------------------------------- encoding


def pack(msg_type: MsgType, seq: Optional[int] = None, **fields: Any) -> bytes:
    """One header frame."""
    header = {"v": PROTOCOL_VERSION, "type": int(msg_type), "seq": seq}
    header.update(fields)
    return msgpack.packb(header, use_bin_type=True)


def hello(seq: int, robot_id: str, policy_version: int, **extra: Any) -> list[bytes]:
    return [pack(MsgType.HELLO, seq, robot_id=robot_id, policy_version=policy_version, **extra)]


def upload(seq: int, record_frames: Sequence[bytes]) -> list[bytes]:
    return [pack(MsgType.UPLOAD, seq), *record_frames]


def counters_request(seq: int) -> list[bytes]:
    return [pack(MsgType.COUNTERS, seq)]


def ack(seq: Optional[int], attempt_id: str, duplicate: bool) -> list[bytes]:
    return [pack(MsgType.ACK, seq, attempt_id=attempt_id, duplicate=duplicate)]


def error(seq: Optional[int], code: ErrorCode, message: str, retry_after: float = 0.0,
          attempt_id: Optional[str] = None) -> list[bytes]:
    return [pack(MsgType.ERROR, seq, code=int(code), name=code.name, message=message[:1000],
                 retryable=code in RETRYABLE, retry_after=retry_after, attempt_id=attempt_id)]


# ---------------------------------------------------------------------------------- decoding


def _int_field(header: dict, key: str, lo: int = 0, hi: int = 2**63 - 1,
               optional: bool = False) -> Optional[int]:
    value = header.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"header field {key!r} must be an integer in [{lo}, {hi}], "
                            f"got {value!r:.60}")
    return value


def parse_header(frame: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    """Decode and check the common fields of a header frame; raise ProtocolError if bad.

    The version is checked before the type, so that a future client speaking v2 is told to
    upgrade the server rather than that its message type is unknown.
    """
    if len(frame) > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"header frame is {len(frame)} bytes, over {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(ErrorCode.MALFORMED, f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"header must be a msgpack map, got {type(header).__name__}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION,
                            f"protocol version {header.get('v')!r:.20} is not supported; this "
                            f"server speaks version {PROTOCOL_VERSION}: upgrade the older side")
    _int_field(header, "seq", optional=True)
    raw_type = _int_field(header, "type", 0, 255)
    try:
        header["type"] = MsgType(raw_type)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {raw_type}") from None
    return header


def check_sizes(frames: Sequence[bytes], limits: Limits, count: Optional[int] = None) -> None:
    """Refuse a message (header + payload frames) over the configured size limits.

    count is the number of frames that arrived, when the receiver kept only the first ones.
    """
    count = len(frames) if count is None else count
    if count > limits.max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"{count} frames is over the limit of {limits.max_frames}")
    total = 0
    for i, f in enumerate(frames):
        n = len(f)
        if n > limits.max_frame_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                f"frame {i} is {n} bytes, over {limits.max_frame_bytes}")
        total += n
    if total > limits.max_upload_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"message is {total} bytes, over {limits.max_upload_bytes}")


def parse_hello(header: dict[str, Any]) -> tuple[str, int]:
    robot_id = header.get("robot_id")
    if not isinstance(robot_id, str) or not 0 < len(robot_id) <= 128:
        raise ProtocolError(ErrorCode.MALFORMED, "HELLO needs robot_id, a non-empty string")
    return robot_id, _int_field(header, "policy_version", 0, 2**31 - 1)


@dataclass(frozen=True)
class Reply:
    """A server reply as the client sees it."""

    type: MsgType
    seq: Optional[int]
    fields: dict[str, Any]

    @property
    def code(self) -> Optional[ErrorCode]:
        try:
            return ErrorCode(self.fields.get("code"))
        except ValueError:
            return None


def parse_reply(frames: Sequence[bytes]) -> Reply:
    """Decode a reply (client side). Raises ProtocolError if the server speaks another version."""
    header = parse_header(frames[0], Limits(max_header_bytes=16 * 1024 * 1024))
    header.pop("v")
    return Reply(type=header.pop("type"), seq=header.pop("seq", None), fields=header)


# ---------------------------------------------------------------- validating an upload


def _in_range(value: float, lo: float, hi: float, name: str) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ProtocolError(ErrorCode.BAD_RECORD, f"{name} = {value!r} is outside [{lo}, {hi}]")


def check_plausible(a: Attempt, now: Optional[float] = None) -> None:
    """Refuse values no arm can produce (they would poison training), naming the field."""
    now = time.time() if now is None else now
    _in_range(a.started_at, 946684800.0, now + 86400.0, "started_at (unix seconds)")
    _in_range(a.ended_at - a.started_at, 0.0, 3600.0, "ended_at - started_at (s)")
    _in_range(a.policy_version, 0, 2**31 - 1, "policy_version")
    _in_range(a.gripper_after_lift, -0.05, 1.0, "gripper_after_lift (m)")
    # one vectorised check over all steps (the per-value loop cost more than the fsync share)
    poses = np.array([a.final_pose] + [s.ee_pose for s in a.steps], dtype=np.float64)
    _rows_in_range(poses[:, :3], -10.0, 10.0, lambda r: _pose_name(r) + " position (m)")
    norms = np.sqrt((poses[:, 3:] ** 2).sum(axis=1))
    _rows_in_range(norms[:, None], 0.9, 1.1, lambda r: _pose_name(r) + " quaternion norm")
    if a.steps:
        motion = np.array([s.motion for s in a.steps], dtype=np.float64)
        _rows_in_range(motion, -10.0, 10.0, lambda r: f"step {r} motion")
        grip = np.array([[s.gripper] for s in a.steps], dtype=np.float64)
        _rows_in_range(grip, -0.05, 1.0, lambda r: f"step {r} gripper (m)")


def _pose_name(row: int) -> str:
    return "final_pose" if row == 0 else f"step {row - 1} ee_pose"


def _rows_in_range(values: np.ndarray, lo: float, hi: float, name) -> None:
    bad = ~((values >= lo) & (values <= hi))  # NaN compares False: refused too
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ProtocolError(ErrorCode.BAD_RECORD,
                            f"{name(row)} = {values[row, col]!r} is outside [{lo}, {hi}]")


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """(height, width) from a JPEG's frame header, or None if no SOF marker is found."""
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9],
                                                                             "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def check_images(a: Attempt) -> None:
    """Every step image must decode as a JPEG of the size the record declares.

    The size comes from the frame header; decoding at 1/8 scale still runs libjpeg over the
    whole entropy-coded stream (which is what catches corrupt data) at half the cost of a
    full decode.
    """
    declared = (a.image_height, a.image_width)
    for i, s in enumerate(a.steps):
        size = jpeg_size(s.image_jpeg)
        if size is not None and size != declared:
            raise ProtocolError(
                ErrorCode.BAD_IMAGE, f"step {i} image is {size[1]}x{size[0]}, the record "
                f"declares {a.image_width}x{a.image_height}")
        image = cv2.imdecode(np.frombuffer(s.image_jpeg, np.uint8),
                             cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if size is None or image is None:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"step {i} image does not decode as JPEG")


def validate_record(record_frames: Sequence[bytes], robot_id: str, max_steps: int) -> Attempt:
    """An UPLOAD's payload -> Attempt, checking everything but the images (check_images).

    robot_id is who the connection's CURVE key belongs to: a robot may upload only its own
    attempts, so one stolen key cannot forge another arm's data.
    """
    try:
        attempt = decode(list(record_frames), max_steps=max_steps)
    except RecordError as exc:
        raise ProtocolError(ErrorCode.BAD_RECORD, str(exc)) from None
    if attempt.robot_id != robot_id:
        raise ProtocolError(ErrorCode.FORBIDDEN,
                            f"this key belongs to robot {robot_id!r}, the attempt says "
                            f"{attempt.robot_id!r}: a robot uploads only its own attempts")
    check_plausible(attempt)
    return attempt


def validate_upload(record_frames: Sequence[bytes], robot_id: str, max_steps: int) -> Attempt:
    """Everything the server checks before it accepts an upload; ProtocolError if bad."""
    attempt = validate_record(record_frames, robot_id, max_steps)
    check_images(attempt)
    return attempt
