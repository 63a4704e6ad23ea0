"""What the data server checks in an upload before anything of it is stored.

An attempt that passes is well-formed (fleet.wire.records.decode), belongs to the robot whose key
sent it, has plausible values, and JPEG images of the declared size. Every refusal is a
`ProtocolError` with the error code the server sends back (docs/protocol.md, "Error codes").
"""
from __future__ import annotations

import math
import random
import time
from typing import Optional, Sequence

import cv2
import numpy as np

from fleet.wire.depth_image import DepthImageError, decode_depth_png, png_header_error
from fleet.wire.protocol import ErrorCode, ProtocolError
from fleet.wire.records import Attempt, RecordError, decode



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


class _CheckedHeaders:
    """JPEG headers (SOI up to the first scan's header) already found well-formed, with size.

    Why: one camera's encoder writes the same ~600 header bytes (quantisation and Huffman
    tables, frame and scan headers) in front of every image of a size, and walking those marker
    segments in Python was the largest part of an upload's image check (~6 us an image, 10 an
    attempt). An image that starts with a header already walked gets exactly the walk's
    verdict, because the walk reads no byte past the scan header; `startswith` is a memcmp.
    Bounded: the oldest header is forgotten when full (a fleet has few camera set-ups).
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._headers: list[tuple[bytes, tuple[int, int]]] = []  # newest first

    def known(self, data: bytes, height: int, width: int) -> bool:
        for header, size in self._headers:
            if data.startswith(header):
                return size == (height, width)
        return False

    def add(self, data: bytes, height: int, width: int) -> None:
        """Remember the header of `data`, which jpeg_structure_error accepted at this size."""
        length = _header_length(data)
        if length is not None:
            self._headers.insert(0, (bytes(data[:length]), (height, width)))
            del self._headers[self.max_entries:]


def _header_length(data: bytes) -> Optional[int]:
    """Bytes up to and including the first scan (SOS) header of a JPEG that
    jpeg_structure_error accepted, or None if the walk finds no SOS."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i + 1] == 0xFF:
            i += 1
            continue
        end = i + 2 + ((data[i + 2] << 8) | data[i + 3])
        if data[i + 1] == _SOS:
            return end
        i = end
    return None


_CHECKED = _CheckedHeaders()


def check_images(a: Attempt) -> None:
    """Every step image must be a whole JPEG of the size the record declares, and decode.

    Every image's marker structure is checked (jpeg_structure_error, or the same verdict from
    a header already walked: _CheckedHeaders) and must end with EOI, and ONE image per
    attempt, picked at random so a sender cannot predict which, is decoded by libjpeg at 1/8
    scale. Why not decode them all: that cost 0.3 ms of the server's ~1 ms of CPU per 10-step
    attempt, and libjpeg itself accepts corrupt entropy-coded data (it warns and fills in), so
    a full decode refuses little more than the structural check does: what it refuses (bad
    headers, truncation, a wrong size) the structure check refuses too.
    """
    height, width = a.image_height, a.image_width
    for i, s in enumerate(a.steps):
        data = s.image_jpeg
        if data[-2:] == _EOI and _CHECKED.known(data, height, width):
            continue
        problem = jpeg_structure_error(data, height, width)
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"step {i} image {problem}")
        _CHECKED.add(data, height, width)
    if a.steps:
        i = random.randrange(len(a.steps))
        image = cv2.imdecode(np.frombuffer(a.steps[i].image_jpeg, np.uint8),
                             cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if image is None:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"step {i} image does not decode as JPEG")
    if a.has_depth:
        check_depth_images(a)


def check_depth_images(a: Attempt) -> None:
    """Every depth image must be a 16-bit greyscale PNG of the record's image size (signature,
    IHDR, IEND); step 0's (I_0's depth, the one the grasp-point learner reads) and one other at
    random must decode whole (zlib and CRCs), since a PNG decoder refuses a corrupt one."""
    height, width = a.image_height, a.image_width
    for i, s in enumerate(a.steps):
        problem = png_header_error(s.depth_png, height, width)
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"step {i} depth image {problem}")
    for i in sorted({0, random.randrange(len(a.steps))}):
        try:
            decode_depth_png(a.steps[i].depth_png)
        except DepthImageError:
            raise ProtocolError(ErrorCode.BAD_IMAGE,
                                f"step {i} depth image does not decode as a PNG") from None


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
