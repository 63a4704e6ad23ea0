"""camera_node: a camera driver for arm controllers that have none, from OpenCV.

Publishes what ROS camera drivers publish, as docs/ros-interfaces.md asks of an arm:
`camera/image_raw` (sensor_msgs/Image, rgb8) and `camera/camera_info` (sensor_msgs/CameraInfo,
same stamp), both with the sensor-data QoS (best effort, keep last 5, volatile), in the frame
`camera_color_optical_frame`. The source is a V4L2 device (`0`, `/dev/video0`), a video file
(played at `fps`, looped) or a URL (rtsp://, http:// MJPEG, ...).

Why it exists: robot_node takes images only from ROS topics, and a USB camera, or a RealSense's
colour stream (a UVC device too), should not need a vendor ROS driver to feed it. The grasp
network wants small square images, so the node centre-crops to the asked aspect ratio (pixels
stay square) and resizes, and its CameraInfo describes the image it actually publishes.

Live sources are read continuously (so no stale frame waits in the driver's buffer) and the
newest frame is published at `fps`, stamped when it was grabbed. A failed read re-opens the
source up to `max_reconnects` times in a row, then the node exits 1 so a supervisor restarts
it; a source that cannot be opened at start, or a bad parameter, exits 2 with what to check.
SIGINT/SIGTERM exit 0.

    python -m robot_node.camera_node --ros-args -r __ns:=/arm1 -p device:=/dev/video0 \
        -p width:=64 -p height:=64 -p fps:=30.0       # or the `camera_node` executable
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image

from robot_node.spin import spin_in_background
from robot_node.camera_model import (Calibration, CameraError, OutputGeometry, load_calibration,
                                     pinhole)

EXIT_LOST = 1  # the source failed for good while running: let a supervisor restart the node
EXIT_CONFIG = 2  # a bad parameter, or a source that cannot be opened at start
LOG_EVERY_S = 30.0  # how often the node logs its frame count


def _p(default: Any, description: str) -> Any:
    return field(default=default, metadata={"description": description})


@dataclass
class CameraConfig:
    """camera_node's parameters (names are the ROS 2 parameter names)."""

    device: str = _p("0", "V4L2 device index ('0') or path ('/dev/video0'), a video file, or a "
                          "URL (rtsp://, http://).")
    fps: float = _p(30.0, "Publish rate, Hz. Live sources publish their newest frame at this "
                          "rate; video files play at it.")
    width: int = _p(64, "Published image width, px; 0 with height 0 = as captured.")
    height: int = _p(64, "Published image height, px; 0 with width 0 = as captured.")
    crop_to_aspect: bool = _p(True, "Centre-crop to width:height before resizing (pixels stay "
                                    "square); false stretches the whole frame.")
    capture_width: int = _p(0, "Live cameras: capture size asked of the device, px; 0 = its "
                               "default.")
    capture_height: int = _p(0, "Live cameras: capture height asked of the device, px; 0 = its "
                                "default.")
    frame_id: str = _p("camera_color_optical_frame", "header.frame_id of images and camera_info.")
    loop: bool = _p(True, "Video files: start again at the end (false: exit 0 at the end).")
    fov: float = _p(60.0, "Horizontal field of view of the captured frame, degrees: the pinhole "
                          "CameraInfo when no camera_info_url is given.")
    camera_info_url: str = _p("", "Calibration YAML (camera_calibration_parsers format, as "
                                  "written by camera_calibration): a path or file:// URL.")
    max_reconnects: int = _p(5, "Failed reads/re-opens in a row before the node exits 1.")
    reconnect_delay: float = _p(1.0, "Seconds between re-open attempts.")
    open_timeout: float = _p(5.0, "URL sources: seconds to wait for the stream to open or for a "
                                  "frame to arrive.")

    def validate(self) -> None:
        """Raise CameraError naming the first parameter that cannot work."""
        if not self.device.strip():
            raise CameraError("parameter 'device' is empty: give a V4L2 index or /dev/videoN, a "
                              "video file or a URL")
        for name in ("fps", "reconnect_delay", "open_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CameraError(f"parameter {name!r} must be a positive number, got {value}")
        if (self.width == 0) != (self.height == 0) or self.width < 0 or self.height < 0:
            raise CameraError(f"parameters 'width' and 'height' must both be positive, or both 0 "
                              f"(as captured); got {self.width}x{self.height}")
        if self.capture_width < 0 or self.capture_height < 0:
            raise CameraError("parameters 'capture_width'/'capture_height' must be >= 0")
        if not 0.0 < self.fov < 180.0:
            raise CameraError(f"parameter 'fov' must be in (0, 180) degrees, got {self.fov}")
        if self.max_reconnects < 0:
            raise CameraError(f"parameter 'max_reconnects' must be >= 0, got "
                              f"{self.max_reconnects}")


# ------------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Source:
    """Where frames come from: kind 'device' (V4L2), 'file' or 'url'."""

    kind: str
    target: Union[int, str]

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def __str__(self) -> str:
        return f"/dev/video{self.target}" if isinstance(self.target, int) else str(self.target)


def parse_source(device: str) -> Source:
    """'0' -> V4L2 index 0; '/dev/...' -> V4L2 path; 'scheme://...' -> URL; else a file."""
    device = device.strip()
    if device.isdigit():
        return Source("device", int(device))
    if device.startswith("/dev/"):
        return Source("device", device)
    if device.startswith("file://"):
        return Source("file", unquote(urlparse(device).path))
    if "://" in device:
        return Source("url", device)
    return Source("file", device)


def why_not_open(source: Source) -> str:
    """What to check when `source` cannot be opened, as precisely as the file system tells."""
    if source.kind == "url":
        return ("check the URL, that the stream is up and reachable from this machine, and "
                "that OpenCV's FFmpeg backend supports it")
    path = str(source)
    if not os.path.exists(path):
        if source.kind == "device":
            return (f"{path} does not exist: list the cameras with `ls /dev/video*` (or "
                    f"`v4l2-ctl --list-devices`) and check the camera is plugged in")
        return f"no such file {path}: check the path (relative paths start at the working dir)"
    if not os.access(path, os.R_OK | (os.W_OK if source.kind == "device" else 0)):
        return (f"permission denied on {path}: add this user to the device's group (usually "
                f"`sudo usermod -aG video $USER`, then log in again) or fix the file mode")
    if source.kind == "device":
        return (f"{path} exists but did not open as a capture device: another process may hold "
                f"it (`fuser -v {path}`), or it is a metadata node (try the next /dev/videoN)")
    return f"{path} is not a video OpenCV can decode (check it with `ffprobe {path}`)"


class FrameSource:
    """A cv2.VideoCapture on `source`, re-openable; frames come back as BGR (or gray)."""

    def __init__(self, source: Source, config: CameraConfig):
        self.source = source
        self.config = config
        self.capture: Optional[cv2.VideoCapture] = None

    def open(self) -> bool:
        self.release()
        c, ms = self.config, int(self.config.open_timeout * 1000)
        if self.source.kind == "device":
            cap = cv2.VideoCapture(self.source.target, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not one queued seconds ago
                if c.capture_width and c.capture_height:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.capture_width)
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.capture_height)
                cap.set(cv2.CAP_PROP_FPS, c.fps)
        elif self.source.kind == "url":
            cap = cv2.VideoCapture(self.source.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(self.source.target)
        self.capture = cap
        return cap.isOpened()

    def grab(self) -> bool:
        return self.capture is not None and self.capture.isOpened() and self.capture.grab()

    def retrieve(self) -> Optional[np.ndarray]:
        ok, frame = self.capture.retrieve() if self.capture is not None else (False, None)
        return frame if ok and frame is not None and frame.size else None

    def release(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


# ------------------------------------------------------------------------------- the node


def declare_config(node: Node) -> CameraConfig:
    """Declare every CameraConfig field as a read-only, described parameter; read them back."""
    values: dict[str, Any] = {}
    for f in fields(CameraConfig):
        default = f.default
        # device: `-p device:=0` arrives as an integer; floats: accept `fps:=30` as well
        dynamic = f.name == "device" or isinstance(default, float)
        descriptor = ParameterDescriptor(description=f.metadata["description"], read_only=True,
                                         dynamic_typing=dynamic)
        try:
            value = node.declare_parameter(f.name, default, descriptor).value
        except ParameterException as exc:  # e.g. a string given for an integer
            raise CameraError(f"parameter {f.name!r}: {exc}") from None
        if f.name == "device":
            value = str(value)
        elif isinstance(default, float) and isinstance(value, int) \
                and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise CameraError(f"parameter {f.name!r} must be a {type(default).__name__}, got "
                              f"{value!r}")
        values[f.name] = value
    config = CameraConfig(**values)
    config.validate()
    return config


class CameraNode:
    """Reads frames on the calling thread and publishes them; `run()` returns the exit code."""

    def __init__(self, node: Node, config: CameraConfig,
                 stop_event: Optional[threading.Event] = None):
        self.node = node
        self.config = config
        self.log = node.get_logger()
        self.stop_event = stop_event or threading.Event()
        self.source = FrameSource(parse_source(config.device), config)
        self.calibration = load_calibration(config.camera_info_url) \
            if config.camera_info_url else None
        self._image_pub = node.create_publisher(Image, "camera/image_raw",
                                                qos_profile_sensor_data)
        self._info_pub = node.create_publisher(CameraInfo, "camera/camera_info",
                                               qos_profile_sensor_data)
        self._geometry: Optional[OutputGeometry] = None
        self._captured_size = (0, 0)
        self._info: Optional[CameraInfo] = None  # for the current geometry; stamped per frame
        self.published = 0
        self._failures = 0

    def open_or_explain(self) -> None:
        if not self.source.open():
            raise CameraError(f"cannot open camera source {self.source.source} "
                              f"({self.source.source.kind}): {why_not_open(self.source.source)}")

    def _prepare(self, frame: np.ndarray) -> OutputGeometry:
        """The crop/resize and CameraInfo for this capture size (recomputed if it changes)."""
        in_h, in_w = frame.shape[:2]
        if self._geometry is not None and self._captured_size == (in_w, in_h):
            return self._geometry
        c = self.config
        geometry = OutputGeometry.plan(in_w, in_h, c.width, c.height, c.crop_to_aspect)
        captured = self.calibration or pinhole(in_w, in_h, c.fov)
        if (captured.width, captured.height) != (in_w, in_h):
            self.log.warning(f"calibration is for {captured.width}x{captured.height} but the "
                             f"source delivers {in_w}x{in_h}: scaling it (recalibrate at this "
                             f"size for accurate intrinsics)")
            captured = captured.cropped_scaled(0, 0, captured.width, captured.height, in_w, in_h)
        self._captured_size, self._geometry = (in_w, in_h), geometry
        self._info = camera_info_msg(geometry.camera_model(captured), c.frame_id)
        self.log.info(f"source {self.source.source} delivers {in_w}x{in_h}; publishing "
                      f"{geometry.out_w}x{geometry.out_h} rgb8 (crop {geometry.crop_w}x"
                      f"{geometry.crop_h} at {geometry.x0},{geometry.y0}) at up to {c.fps:g} Hz "
                      f"on {self._image_pub.topic_name}, camera_info from "
                      f"{c.camera_info_url or f'a {c.fov:g} deg pinhole'}")
        return geometry

    def publish(self, frame: np.ndarray, stamp: Any) -> None:
        geometry = self._prepare(frame)
        rgb = geometry.apply(frame)
        msg = Image(height=geometry.out_h, width=geometry.out_w, encoding="rgb8",
                    is_bigendian=0, step=geometry.out_w * 3)
        msg.header.stamp, msg.header.frame_id = stamp, self.config.frame_id
        msg.data = rgb.tobytes()
        self._info.header.stamp = stamp
        self._image_pub.publish(msg)
        self._info_pub.publish(self._info)
        self.published += 1

    def _on_failure(self) -> Optional[int]:
        """A read failed: re-open after a delay, or give up; the exit code if giving up."""
        self._failures += 1
        src, limit = self.source.source, self.config.max_reconnects
        if self._failures > limit:
            self.log.error(f"camera source {src} failed {self._failures} times in a row; giving "
                           f"up (exit {EXIT_LOST}) so a supervisor can restart the node: "
                           f"{why_not_open(src)}")
            return EXIT_LOST
        self.log.warning(f"reading from {src} failed; re-opening in "
                         f"{self.config.reconnect_delay:g} s (attempt {self._failures}/{limit})")
        if self.stop_event.wait(self.config.reconnect_delay):
            return 0
        if self.source.open():
            self.log.info(f"re-opened {src}")
        return None

    def _on_grab_failed(self, frames_this_open: int) -> Optional[int]:
        """The end of a video file (start again, or stop) or a failure (re-open or give up)."""
        if self.source.source.kind == "file" and frames_this_open:
            if not self.config.loop:
                self.log.info(f"end of {self.source.source} after {self.published} frames "
                              f"published (loop is false)")
                return 0
            self.source.open()  # back to the first frame (seeking is unreliable in some codecs)
            return None
        return self._on_failure()

    def run(self) -> int:
        """Grab, pace, publish until stopped; files end at EOF unless `loop`."""
        period, frames_this_open = 1.0 / self.config.fps, 0
        next_due = last_log = time.monotonic()
        clock = self.node.get_clock()
        while not self.stop_event.is_set():
            if not self.source.grab():
                code = self._on_grab_failed(frames_this_open)
                if code is not None:
                    return code
                frames_this_open, next_due = 0, time.monotonic()
                continue
            frames_this_open += 1
            now = time.monotonic()
            if self.source.source.live:
                if now < next_due:
                    continue  # drop it: a live camera's newest frame is the one that counts
            elif self.stop_event.wait(max(0.0, next_due - now)):
                break
            stamp = clock.now().to_msg()
            frame = self.source.retrieve()
            if frame is None:
                code = self._on_failure()
                if code is not None:
                    return code
                continue
            self.publish(frame, stamp)
            self._failures = 0
            next_due = max(next_due + period, time.monotonic() - period)
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                self.log.info(f"{self.published} frames published from {self.source.source}")
        return 0

    def close(self) -> None:
        self.source.release()


def camera_info_msg(model: Calibration, frame_id: str) -> CameraInfo:
    info = CameraInfo(width=model.width, height=model.height,
                      distortion_model=model.distortion_model, d=list(model.d),
                      k=list(model.k), r=list(model.r), p=list(model.p))
    info.header.frame_id = frame_id
    return info


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of `camera_node` / `python -m robot_node.camera_node`."""
    rclpy.init(args=args if args is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()  # set by SIGINT/SIGTERM, from the very start
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    node = rclpy.create_node("camera")
    camera: Optional[CameraNode] = None
    try:
        camera = CameraNode(node, declare_config(node), stop)
        camera.open_or_explain()
    except CameraError as exc:
        node.get_logger().fatal(f"cannot start: {exc}")
        if camera is not None:
            camera.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return EXIT_CONFIG
    # spun for the parameter services (`ros2 param describe`)
    executor, spinner = spin_in_background(node, "camera-spin")
    code = 0
    try:
        code = camera.run()
    finally:
        camera.close()
        node.get_logger().info(f"camera stopped after {camera.published} frames (exit {code})")
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
        spinner.join(timeout=2.0)
    return code


if __name__ == "__main__":
    sys.exit(main())
