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
import random
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
    POLICY_AVAILABLE = 40  # server -> robot, unsolicited: the fleet's policy is now version N
    FETCH_POLICY = 42  # robot -> server: send me the policy you serve
    POLICY = 43  # server -> robot: the packed bundle (fleet.bundle.pack_bundle) as one payload
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
    NO_POLICY = 10  # FETCH_POLICY while the server serves no policy (none published yet)


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


def fetch_policy(seq: int, version: Optional[int] = None) -> list[bytes]:
    return [pack(MsgType.FETCH_POLICY, seq, version=version)]


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


#: Robot states a HELLO may report (robot_node's grasp loop); others are refused as MALFORMED.
ROBOT_STATES = frozenset({"collecting", "idle", "estopped", "paused", "starting", "error"})
_STATUS_COUNTS = ("spool_attempts", "spool_bytes", "attempts", "successes")


@dataclass(frozen=True)
class RobotStatus:
    """The optional heartbeat a HELLO carries (field `status`): what the monitor shows per robot.

    Counts are since the robot process started; the spool backlog is what waits for an ack.
    """

    state: str = "idle"
    spool_attempts: int = 0
    spool_bytes: int = 0
    attempts: int = 0
    successes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, **{k: int(getattr(self, k)) for k in _STATUS_COUNTS}}


def parse_status(header: dict[str, Any]) -> Optional[dict[str, Any]]:
    """HELLO's optional `status` map, checked field by field (None when absent)."""
    status = header.get("status")
    if status is None:
        return None
    if not isinstance(status, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "HELLO status must be a map")
    state = status.get("state", "idle")
    if state not in ROBOT_STATES:
        raise ProtocolError(ErrorCode.MALFORMED, f"HELLO status.state {state!r:.40} is not one "
                            f"of {sorted(ROBOT_STATES)}")
    out: dict[str, Any] = {"state": state}
    for key in _STATUS_COUNTS:
        out[key] = _int_field(status, key, optional=True) or 0
    return out


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
    if not _steps_plausible(a):  # rare: find and name the bad value
        _name_implausible(a)


def _steps_plausible(a: Attempt) -> bool:
    """True if every pose, motion and gripper reading is in range (a fast, conservative test:
    False sends the attempt to _name_implausible, which decides). Plain Python min/max over
    ~100 numbers costs a fifth of the numpy version (five tiny arrays per attempt)."""
    poses = [a.final_pose] + [s.ee_pose for s in a.steps]
    position = [v for p in poses for v in p[:3]]
    quat_sq = [x * x + y * y + z * z + w * w for *_, x, y, z, w in poses]
    motion = [v for s in a.steps for v in s.motion] or [0.0]
    grip = [s.gripper for s in a.steps] or [0.0]
    return (-10.0 <= min(position) and max(position) <= 10.0
            and 0.8101 <= min(quat_sq) and max(quat_sq) <= 1.2099  # inside 0.9 .. 1.1
            and -10.0 <= min(motion) and max(motion) <= 10.0
            and -0.05 <= min(grip) and max(grip) <= 1.0
            and math.isfinite(sum(position) + sum(quat_sq) + sum(motion) + sum(grip)))


def _name_implausible(a: Attempt) -> None:
    """Raise BAD_RECORD naming the first out-of-range value, if there is one."""
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
_SOS, _EOI = 0xDA, b"\xff\xd9"


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


def jpeg_structure_error(data: bytes, height: int, width: int) -> Optional[str]:
    """Why `data` is not a whole JPEG of height x width pixels, or None if its structure is.

    Walks the marker segments up to the first scan: SOI first, every segment's length inside
    the data, one frame header (SOF) of the declared size with 1, 3 or 4 components before the
    first scan (SOS), and EOI as the last two bytes (a truncated upload has none).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "is not a JPEG (no SOI marker)"
    if data[n - 2:] != _EOI:
        return "does not end with an EOI marker (truncated?)"
    i, size = 2, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return f"has no marker where one should be (byte {i})"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return f"has a marker segment at byte {i} that runs past its end"
        if marker in _SOF_MARKERS:
            components = data[i + 9] if length >= 8 else 0
            if size is not None or components not in (1, 3, 4) or length != 8 + 3 * components:
                return "has a bad or repeated frame header (SOF)"
            size = ((data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8])
            if size != (height, width):
                return f"is {size[1]}x{size[0]}, the record declares {width}x{height}"
        elif marker == _SOS:
            return None if size is not None else "has a scan (SOS) before any frame header"
        elif 0xD0 <= marker <= 0xD9:  # RSTn, SOI, EOI: never before the first scan
            return f"has an unexpected marker 0xFF{marker:02X} at byte {i}"
        i += 2 + length
    return "has no scan (SOS marker)"


def check_images(a: Attempt) -> None:
    """Every step image must be a whole JPEG of the size the record declares, and decode.

    Every image's marker structure is checked (jpeg_structure_error: a few microseconds), and
    ONE image per attempt, picked at random so a sender cannot predict which, is decoded by
    libjpeg at 1/8 scale. Why not decode them all: that cost 0.3 ms of the server's ~1 ms of CPU
    per 10-step attempt, and libjpeg itself accepts corrupt entropy-coded data (it warns and
    fills in), so a full decode refuses little more than the structural check does: what it
    refuses (bad headers, truncation, a wrong size) the structure check refuses too.
    """
    for i, s in enumerate(a.steps):
        problem = jpeg_structure_error(s.image_jpeg, a.image_height, a.image_width)
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"step {i} image {problem}")
    if a.steps:
        i = random.randrange(len(a.steps))
        image = cv2.imdecode(np.frombuffer(a.steps[i].image_jpeg, np.uint8),
                             cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if image is None:
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
