"""The camera model camera_node publishes: calibration (camera_calibration_parsers YAML, or a
pinhole from a field of view) and the crop/resize from a captured frame to the published image,
with the intrinsics transformed to match. No ROS here: tests and tools use it directly.

Pixel convention: pixel i covers [i, i+1), so the image centre is (w/2, h/2) (as sim_bridge's
camera publishes it) and cropping and scaling transform K and P exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import yaml


class CameraError(Exception):
    """Something a user can fix (a parameter, a device, a calibration file); says what."""


@dataclass(frozen=True)
class Calibration:
    """A camera model as sensor_msgs/CameraInfo holds it (row-major K 3x3, R 3x3, P 3x4)."""

    width: int
    height: int
    k: tuple
    d: tuple = (0.0, 0.0, 0.0, 0.0, 0.0)
    r: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    p: tuple = ()
    distortion_model: str = "plumb_bob"

    def cropped_scaled(self, x0: float, y0: float, crop_w: int, crop_h: int,
                       out_w: int, out_h: int) -> "Calibration":
        """The model of the image cut at (x0, y0) to crop_w x crop_h, then resized to out.

        u' = sx (u - x0) with u = row0.X / row2.X, so row0' = sx (row0 - x0 row2) (row1 in
        kind): exact for K and for P, Tx terms included."""
        sx, sy = out_w / crop_w, out_h / crop_h

        def transform(m: tuple, cols: int) -> tuple:
            r0, r1, r2 = m[:cols], m[cols:2 * cols], m[2 * cols:3 * cols]
            return (tuple(sx * (a - x0 * c) for a, c in zip(r0, r2))
                    + tuple(sy * (b - y0 * c) for b, c in zip(r1, r2)) + tuple(r2))

        return replace(self, width=out_w, height=out_h, k=transform(self.k, 3),
                       p=transform(self.p or _projection(self.k), 4))


def _projection(k: tuple) -> tuple:
    return (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0)


def pinhole(width: int, height: int, hfov_deg: float) -> Calibration:
    """Distortion-free square-pixel model with horizontal field of view `hfov_deg`."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    k = (f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0)
    return Calibration(width, height, k, p=_projection(k))


def load_calibration(url: str) -> Calibration:
    """A camera_calibration_parsers YAML (image_width, camera_matrix, ...), from a path or
    file:// URL. CameraError says which file and which key is wrong."""
    path = Path(unquote(urlparse(url).path) if url.startswith("file://") else url).expanduser()
    if "://" in url and not url.startswith("file://"):
        raise CameraError(f"camera_info_url {url!r}: only a path or a file:// URL is supported")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CameraError(f"cannot read camera_info_url {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CameraError(f"camera_info_url {path} is not valid YAML: {exc}") from None

    def matrix(key: str, n: Optional[int]) -> tuple:
        try:
            data = tuple(float(v) for v in raw[key]["data"])
        except (KeyError, TypeError, ValueError):
            raise CameraError(f"camera_info_url {path}: '{key}' must be a mapping with a 'data' "
                              f"list of numbers (camera_calibration_parsers format)") from None
        if n is not None and len(data) != n:
            raise CameraError(f"camera_info_url {path}: '{key}' has {len(data)} values, "
                              f"expected {n}")
        return data

    if not isinstance(raw, dict):
        raise CameraError(f"camera_info_url {path}: expected a YAML mapping")
    try:
        width, height = int(raw["image_width"]), int(raw["image_height"])
    except (KeyError, TypeError, ValueError):
        raise CameraError(f"camera_info_url {path}: needs integer 'image_width' and "
                          f"'image_height'") from None
    k = matrix("camera_matrix", 9)
    return Calibration(width, height, k,
                       d=matrix("distortion_coefficients", None) if "distortion_coefficients"
                       in raw else (0.0,) * 5,
                       r=matrix("rectification_matrix", 9) if "rectification_matrix" in raw
                       else Calibration.r,
                       p=matrix("projection_matrix", 12) if "projection_matrix" in raw
                       else _projection(k),
                       distortion_model=str(raw.get("distortion_model", "plumb_bob")))


@dataclass(frozen=True)
class OutputGeometry:
    """How a captured frame becomes the published image: a crop box, then a resize."""

    x0: int
    y0: int
    crop_w: int
    crop_h: int
    out_w: int
    out_h: int

    @classmethod
    def plan(cls, in_w: int, in_h: int, out_w: int = 0, out_h: int = 0,
             crop_to_aspect: bool = True) -> "OutputGeometry":
        """From in_w x in_h to out_w x out_h (0 = as captured), centre-cropped to the output's
        aspect ratio first when `crop_to_aspect` (else stretched)."""
        if not (out_w and out_h):
            out_w, out_h = in_w, in_h
        crop_w, crop_h = in_w, in_h
        if crop_to_aspect:
            if in_w * out_h > in_h * out_w:  # wider than asked: cut the sides
                crop_w = max(1, round(in_h * out_w / out_h))
            else:
                crop_h = max(1, round(in_w * out_h / out_w))
        return cls((in_w - crop_w) // 2, (in_h - crop_h) // 2, crop_w, crop_h, out_w, out_h)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """BGR/BGRA/gray frame -> contiguous (out_h, out_w, 3) RGB uint8."""
        frame = frame[self.y0:self.y0 + self.crop_h, self.x0:self.x0 + self.crop_w]
        if (self.crop_w, self.crop_h) != (self.out_w, self.out_h):
            shrink = self.out_w < self.crop_w
            frame = cv2.resize(frame, (self.out_w, self.out_h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        channels = 1 if frame.ndim == 2 else frame.shape[2]
        code = {1: cv2.COLOR_GRAY2RGB, 4: cv2.COLOR_BGRA2RGB}.get(channels, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(cv2.cvtColor(frame, code))

    def camera_model(self, captured: Calibration) -> Calibration:
        return captured.cropped_scaled(self.x0, self.y0, self.crop_w, self.crop_h,
                                       self.out_w, self.out_h)
