"""One ROS 2 MCAP file per robot: `<out>/<robot_id>.mcap`, topics as docs/ros-interfaces.md
names them under /<robot_id>/, each message's log_time, publish_time and header.stamp the
step's own stamp (robot clock). Per step:

  /<robot>/camera/image_raw                          sensor_msgs/msg/Image rgb8 (the JPEG decoded)
  /<robot>/camera/aligned_depth_to_color/image_raw   sensor_msgs/msg/Image 16UC1 mm (if recorded)
  /<robot>/camera/camera_info                        sensor_msgs/msg/CameraInfo: fleet's camera model
                                                     (a pinhole of --camera-fov-deg, vertical)
  /<robot>/ee_pose                                   geometry_msgs/msg/PoseStamped, base_link
  /<robot>/fleet/motion      geometry_msgs/msg/TwistStamped: the commanded motion of the step as a
                             displacement (linear = dx dy dz m, angular.z = dyaw rad), not a speed
  /<robot>/fleet/gripper     std_msgs/msg/Float64: finger opening, m
Per attempt: /<robot>/fleet/attempt (std_msgs/msg/String, JSON of the attempt's fields, at its
first step's stamp) and /<robot>/fleet/label (std_msgs/msg/Bool, at its last step's stamp; none
for an aborted attempt). The store does not record a camera's intrinsics, so camera_info is
the model the learner assumes (fleet/policy/geometry.py: square pixels, no distortion, pixel i
covering [i, i+1), so the principal point is (w/2 - 0.5, h/2 - 0.5) in ROS's pixel-centre
convention), at the given vertical field of view (config/arms.yaml's camera_fov_deg).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pyarrow as pa

from fleet.export import msgdefs
from fleet.export.select import iter_attempts
from fleet.policy.geometry import focal_px
from fleet.wire.depth_image import decode_depth_png
from fleet.wire.records import Attempt

COLOUR_FRAME = "camera_color_optical_frame"
BASE_FRAME = "base_link"


def stamp_ns(stamp: float) -> int:
    return int(round(stamp * 1e9))


def _header(ns: int, frame: str) -> dict:
    return {"stamp": {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000},
            "frame_id": frame}


def attempt_json(a: Attempt) -> str:
    return json.dumps({"attempt_id": a.attempt_id, "robot_id": a.robot_id,
                       "policy_version": a.policy_version, "policy_kind": a.policy_kind,
                       "outcome": a.outcome, "label": a.label, "final_pose": list(a.final_pose),
                       "gripper_after_lift": a.gripper_after_lift, "started_at": a.started_at,
                       "ended_at": a.ended_at, "num_steps": len(a.steps),
                       "image_height": a.image_height, "image_width": a.image_width})


class _RobotFile:
    def __init__(self, path: Path, robot: str) -> None:
        from mcap_ros2.writer import Writer

        self.stream = open(path, "wb")
        self.writer = Writer(self.stream)
        self.schemas = {name: self.writer.register_msgdef(name, text)
                        for name, text in msgdefs.ALL}
        self.prefix = f"/{robot}/"
        self.seq = 0

    def write(self, topic: str, schema: tuple[str, str], msg: dict, ns: int) -> None:
        self.seq += 1
        self.writer.write_message(self.prefix + topic, self.schemas[schema[0]], msg,
                                  log_time=ns, publish_time=ns, sequence=self.seq)

    def close(self) -> None:
        self.writer.finish()
        self.stream.close()


def _image(ns: int, pixels: np.ndarray, encoding: str) -> dict:
    h, w = pixels.shape[:2]
    return {"header": _header(ns, COLOUR_FRAME), "height": h, "width": w,
            "encoding": encoding, "is_bigendian": 0, "step": pixels.strides[0],
            "data": pixels.tobytes()}


def camera_info(ns: int, height: int, width: int, fov_deg: float) -> dict:
    """sensor_msgs/CameraInfo of fleet's pinhole camera model for an HxW image."""
    f = focal_px(height, fov_deg)
    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    return {"header": _header(ns, COLOUR_FRAME), "height": height, "width": width,
            "distortion_model": "plumb_bob", "d": [0.0] * 5,
            "k": [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0],
            "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "p": [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
            "binning_x": 0, "binning_y": 0,
            "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}}


def write_attempt(f: _RobotFile, a: Attempt, fov_deg: float) -> int:
    """The attempt's messages; returns the number of steps (frames) written."""
    if a.steps:
        f.write("fleet/attempt", msgdefs.STRING, {"data": attempt_json(a)},
                stamp_ns(a.steps[0].stamp))
    for s in a.steps:
        ns = stamp_ns(s.stamp)
        bgr = cv2.imdecode(np.frombuffer(s.image_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"attempt {a.attempt_id}: a step's JPEG does not decode")
        if s.depth_png is not None:
            depth = np.ascontiguousarray(decode_depth_png(s.depth_png).astype("<u2"))
            f.write("camera/aligned_depth_to_color/image_raw", msgdefs.IMAGE,
                    _image(ns, depth, "16UC1"), ns)
        f.write("camera/image_raw", msgdefs.IMAGE,
                _image(ns, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), "rgb8"), ns)
        f.write("camera/camera_info", msgdefs.CAMERA_INFO,
                camera_info(ns, bgr.shape[0], bgr.shape[1], fov_deg), ns)
        x, y, z, qx, qy, qz, qw = s.ee_pose
        f.write("ee_pose", msgdefs.POSE_STAMPED, {
            "header": _header(ns, BASE_FRAME),
            "pose": {"position": {"x": x, "y": y, "z": z},
                     "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}}, ns)
        dx, dy, dz, dyaw = s.motion
        f.write("fleet/motion", msgdefs.TWIST_STAMPED, {
            "header": _header(ns, BASE_FRAME),
            "twist": {"linear": {"x": dx, "y": dy, "z": dz},
                      "angular": {"x": 0.0, "y": 0.0, "z": dyaw}}}, ns)
        f.write("fleet/gripper", msgdefs.FLOAT64, {"data": s.gripper}, ns)
    if a.steps and a.label is not None:
        f.write("fleet/label", msgdefs.BOOL, {"data": a.label}, stamp_ns(a.steps[-1].stamp))
    return len(a.steps)


def export_mcap(root: Path, selected: pa.Table, out: Path, advance: Callable[[int], None],
                fov_deg: float) -> dict:
    """Write the selected attempts; returns {"frames", "files"}."""
    files: dict[str, _RobotFile] = {}
    frames = 0
    try:
        for a in iter_attempts(root, selected):
            robot = a.robot_id
            if robot not in files:
                files[robot] = _RobotFile(out / f"{robot}.mcap", robot)
            frames += write_attempt(files[robot], a, fov_deg)
            advance(1)
    finally:
        for f in files.values():
            f.close()
    return {"frames": frames, "files": sorted(f"{r}.mcap" for r in files)}
