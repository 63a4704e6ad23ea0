"""Depth images as they are recorded, uploaded and stored: 16-bit greyscale PNG of millimetres.

The form of REP 118's 16UC1 depth (what realsense-ros publishes as aligned_depth_to_color):
unsigned millimetres along the camera's optical axis, 0 where the camera got no return.
Lossless, so a learner sees the geometry the robot saw; a 128 x 128 tray image is ~10-20 KB.
Decoding needs only OpenCV (or any PNG reader: the store's column is plain PNG bytes).
"""
from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np

from fleet.wire.records import PNG_SIGNATURE

#: Depth beyond this (mm) does not fit uint16; recorded as 0 (no return).
MAX_MM = 65535
#: zlib level of the recorder's PNGs: 1 costs ~1/3 of the default's time for ~10% more bytes.
PNG_COMPRESSION = 1


class DepthImageError(ValueError):
    """A depth image that cannot be encoded or decoded; the message says what was wrong."""


def to_millimetres(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in m (float) or mm (uint16, passed through) -> uint16 mm, 0 = no return
    (NaN, inf, <= 0 or beyond 65.535 m)."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise DepthImageError(f"a depth image must be (H, W), got shape {depth.shape}")
    if depth.dtype == np.uint16:
        return depth
    if depth.dtype.kind != "f":
        raise DepthImageError(f"depth must be float metres or uint16 millimetres, got "
                              f"{depth.dtype}")
    mm = np.rint(depth.astype(np.float64) * 1000.0)
    ok = np.isfinite(mm) & (mm > 0) & (mm <= MAX_MM)
    return np.where(ok, mm, 0).astype(np.uint16)


def encode_depth_png(depth: np.ndarray) -> bytes:
    """PNG bytes (16-bit greyscale, mm) of a depth image in m (float) or mm (uint16)."""
    ok, buf = cv2.imencode(".png", to_millimetres(depth),
                           [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise DepthImageError("OpenCV could not PNG-encode the depth image")
    return buf.tobytes()


def decode_depth_png(data: bytes) -> np.ndarray:
    """(H, W) uint16 mm from a recorded depth PNG."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or image.ndim != 2:
        raise DepthImageError("not a 16-bit greyscale PNG depth image")
    return image


def png_header_error(data: bytes, height: int, width: int) -> Optional[str]:
    """None if `data` starts as a 16-bit greyscale PNG of this size (signature and IHDR) and
    ends with an IEND chunk; else what is wrong. What the data server checks of every depth
    image before step 0's and one other are decoded whole (fleet/wire/validation.py)."""
    if data[:8] != PNG_SIGNATURE:
        return "is not a PNG (no signature)"
    if len(data) < 8 + 25 + 12 or data[12:16] != b"IHDR":
        return "is truncated before its IHDR chunk"
    w, h, bits, colour = struct.unpack(">IIBB", data[16:26])
    if (w, h) != (width, height):
        return f"is {w}x{h}, the record declares {width}x{height}"
    if (bits, colour) != (16, 0):
        return f"is not 16-bit greyscale millimetres (bit depth {bits}, colour type {colour})"
    if data[-8:-4] != b"IEND":
        return "is truncated (no IEND chunk at its end)"
    return None
