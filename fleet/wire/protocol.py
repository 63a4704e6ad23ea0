"""The data server's wire protocol: the one module that defines what crosses the network.

Every message, in either direction, is a ZeroMQ multipart message whose first frame (after the
ROUTER's routing identity, which the application never writes) is a msgpack map, the *header*:

    {"v": PROTOCOL_VERSION, "type": MsgType, "seq": int, ...type-specific fields}

followed by zero or more raw payload frames. An UPLOAD's payload is the attempt exactly as
`fleet.wire.records.encode` writes it (record header, then one JPEG frame per step), so an attempt
is serialised once, on the robot, and never re-encoded on the way to the store.

Nothing here is ever unpickled: msgpack with `strict_map_key`, bytes frames, and explicit field
checks that raise `ProtocolError` carrying the `ErrorCode` to send back. What is checked in an
uploaded attempt lives in fleet/wire/validation.py. docs/protocol.md is the prose version of both.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import msgpack

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
    UPLOAD = 20  # robot -> server: one attempt (payload: fleet.wire.records.encode frames)
    ACK = 21  # server -> robot: the attempt is durable (or was already stored)
    COUNTERS = 30  # anyone admitted -> server: per-robot counters
    COUNTERS_REPLY = 31
    POLICY_AVAILABLE = 40  # server -> robot, unsolicited: the fleet's policy is now version N
    FETCH_POLICY = 42  # robot -> server: send me the policy you serve
    POLICY = 43  # server -> robot: the packed bundle (policy.bundle.pack_bundle), one payload
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
_MSG_TYPES = {int(t): t for t in MsgType}


class ProtocolError(ValueError):
    """A request the server refuses; carries the code and a message naming the problem."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Size limits the server enforces (and announces in WELCOME so clients can check first)."""

    #: protocol header + record header + up to 256 steps' images and their depth images
    max_frames: int = 1 + 1 + 2 * 256
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
    msg_type = _MSG_TYPES.get(raw_type)  # a dict, not MsgType(): this runs for every upload
    if msg_type is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {raw_type}")
    header["type"] = msg_type
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


#: Longest `host` a HELLO may carry: a DNS name's limit (a Ray node id is 56 hex characters).
MAX_HOST_CHARS = 253


def parse_host(header: dict[str, Any]) -> Optional[str]:
    """HELLO's optional `host`: the machine (or Ray node) the robot's process runs on.

    Optional, so a HELLO of an older robot (without it) stays valid and `v` stays 1; an older
    server ignores the field. None when absent; MALFORMED when not a printable string.
    """
    host = header.get("host")
    if host is None:
        return None
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS \
            or not host.isprintable() or host != host.strip():
        raise ProtocolError(ErrorCode.MALFORMED, f"HELLO host must be a printable string of "
                            f"1-{MAX_HOST_CHARS} characters, got {host!r:.60}")
    return host


_REPLY_LIMITS = Limits(max_header_bytes=16 * 1024 * 1024)  # a reply's header may be big


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
    header = parse_header(frames[0], _REPLY_LIMITS)
    header.pop("v")
    return Reply(type=header.pop("type"), seq=header.pop("seq", None), fields=header)
