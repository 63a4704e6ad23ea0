"""Conversions between ROS 2 messages and the plain values SimArm takes and gives, and the
validation of incoming commands (docs/ros-interfaces.md is the contract).

Kept apart from the node so the rules for what a command may contain live in one place, and
so the node module is only about wiring: topics, QoS, threads, time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, Header

BASE_FRAME = "base_link"
CAMERA_FRAME = "camera_color_optical_frame"
ACCEPTED_FRAMES = ("", BASE_FRAME)  # empty means base_link, as MoveIt Servo reads it
FINGER_RANGE = (0.0, 0.04)  # m, each finger
TILT_WARNING = math.radians(5.0)  # a pose target tilted more than this gets a warning


class CommandRejected(ValueError):
    """A command that cannot be executed at all (the message says why); the arm stays put."""


@dataclass
class Command:
    """A validated command: what to run, and any warnings (zeroed or ignored parts)."""

    kind: str  # "servo", "move_to" or "fingers"
    args: tuple
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------- time


def ns_to_time_msg(total_ns: int) -> Time:
    """Nanoseconds since the epoch as builtin_interfaces/Time. Stamps stay integers end to
    end: a float of seconds since the epoch resolves only ~240 ns."""
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


def time_msg_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def from_time_msg(stamp: Time) -> float:
    """Seconds (float: for display and coarse comparisons only, see ns_to_time_msg)."""
    return stamp.sec + stamp.nanosec * 1e-9


def header(stamp: Time, frame_id: str) -> Header:
    return Header(stamp=stamp, frame_id=frame_id)


# --------------------------------------------------------------------------------- commands


def _finite(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise CommandRejected(f"{what} contains NaN or inf: {values}")
    return values


def _check_frame(frame_id: str, what: str) -> None:
    if frame_id not in ACCEPTED_FRAMES:
        raise CommandRejected(f"{what} in unknown frame {frame_id!r}: only {BASE_FRAME!r} "
                              f"(or empty, meaning {BASE_FRAME!r}) is accepted")


def twist_command(msg: TwistStamped) -> Command:
    """A servo command from a TwistStamped: linear m/s and the yaw rate in base_link.

    The gripper always points down, so angular x/y cannot be followed: they are zeroed and
    reported rather than rejecting the whole command (MoveIt Servo would also move on)."""
    _check_frame(msg.header.frame_id, "twist")
    t = msg.twist
    linear = _finite((t.linear.x, t.linear.y, t.linear.z), "twist linear")
    ax, ay, az = _finite((t.angular.x, t.angular.y, t.angular.z), "twist angular")
    command = Command("servo", (linear, az))
    if ax != 0.0 or ay != 0.0:
        command.warnings.append(f"twist angular x/y ({ax:.3g}, {ay:.3g}) rad/s zeroed: the "
                                "gripper points down; only angular z (yaw) is followed")
    return command


def pose_command(msg: PoseStamped) -> Command:
    """A pose target from a PoseStamped: tool position and the yaw of its orientation."""
    _check_frame(msg.header.frame_id, "pose target")
    p, o = msg.pose.position, msg.pose.orientation
    position = _finite((p.x, p.y, p.z), "pose position")
    quaternion = np.asarray(_finite((o.x, o.y, o.z, o.w), "pose orientation"))
    norm = float(np.linalg.norm(quaternion))
    if norm < 1e-6:
        raise CommandRejected("pose orientation is a zero quaternion; send a unit quaternion "
                              "(the gripper pointing down, x=1 w=0 for yaw 0)")
    rotation = rotation_matrix(quaternion / norm)
    yaw = math.atan2(rotation[1, 0], rotation[0, 0])
    command = Command("move_to", (position, yaw))
    tilt = math.acos(float(np.clip(-rotation[2, 2], -1.0, 1.0)))  # tool z vs straight down
    if tilt > TILT_WARNING:
        command.warnings.append(f"pose orientation tilted {math.degrees(tilt):.0f} deg from "
                                f"top-down: only its yaw ({yaw:.3g} rad) is used")
    return command


def finger_command(msg: Float64MultiArray) -> Command:
    """Finger targets [finger_joint1, finger_joint2] in m; ranges are clamped by the arm."""
    data = list(msg.data)
    if len(data) != 2:
        raise CommandRejected(f"gripper command has {len(data)} values; it takes exactly 2 "
                              "(panda_finger_joint1, panda_finger_joint2 targets in m, 0..0.04)")
    return Command("fingers", (_finite(data, "gripper command"),))


def rotation_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation of a unit quaternion (x, y, z, w)."""
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def top_down_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """The tool pointing straight down, turned by `yaw` about base_link z (x, y, z, w):
    a half turn about x, then yaw about z. For clients building pose targets."""
    return (math.cos(yaw / 2), math.sin(yaw / 2), 0.0, 0.0)


# --------------------------------------------------------------------------------- state


def image_msg(rgb: np.ndarray, stamp: Time) -> Image:
    height, width, _ = rgb.shape
    msg = Image(header=header(stamp, CAMERA_FRAME), height=height, width=width,
                encoding="rgb8", is_bigendian=0, step=width * 3)
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


#: REP 118 depth: uint16 millimetres along the optical axis, 0 = no return (what realsense-ros
#: publishes on aligned_depth_to_color/image_raw).
DEPTH_ENCODING = "16UC1"
MAX_DEPTH_MM = 65535  # beyond this a uint16 cannot hold it: published as 0 (no return)


def depth_image_msg(depth_m: np.ndarray, stamp: Time) -> Image:
    """An aligned depth image (H, W) in m -> sensor_msgs/Image 16UC1 of mm (little endian),
    in the colour camera's frame: pixel (v, u) is the depth of the colour pixel (v, u).
    NaN, inf, <= 0 or beyond 65.535 m become 0 (no return)."""
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f"a depth image must be (H, W), got shape {depth_m.shape}")
    height, width = depth_m.shape
    mm = np.rint(depth_m.astype(np.float64) * 1000.0)
    ok = np.isfinite(mm) & (mm > 0) & (mm <= MAX_DEPTH_MM)
    msg = Image(header=header(stamp, CAMERA_FRAME), height=height, width=width,
                encoding=DEPTH_ENCODING, is_bigendian=0, step=width * 2)
    msg.data = np.where(ok, mm, 0).astype("<u2").tobytes()
    return msg


def camera_info_msg(intrinsics: Sequence[float], width: int, height: int,
                    stamp: Time) -> CameraInfo:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return CameraInfo(header=header(stamp, CAMERA_FRAME), width=width, height=height,
                      distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def joint_state_msg(names: Sequence[str], positions: Sequence[float],
                    velocities: Sequence[float], stamp: Time) -> JointState:
    return JointState(header=header(stamp, ""), name=list(names),
                      position=[float(v) for v in positions],
                      velocity=[float(v) for v in velocities])


def pose_msg(position: Sequence[float], orientation: Sequence[float], stamp: Time) -> PoseStamped:
    msg = PoseStamped(header=header(stamp, BASE_FRAME))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in orientation)
    return msg


def ground_truth_json(truth: dict, boxes: Sequence[tuple[str, Sequence[float], Sequence[float]]],
                      stamp: float) -> str:
    """The ground-truth JSON: SimArm.ground_truth() plus, per object, the centre and size of
    its axis-aligned bounding box in base_link (for scripted grasps and evaluation)."""
    by_name = {name: (np.asarray(lo, float), np.asarray(hi, float)) for name, lo, hi in boxes}
    objects = []
    for entry in truth["objects"]:
        entry = dict(entry)
        if entry["name"] in by_name:
            lo, hi = by_name[entry["name"]]
            entry["position"] = [round(float(v), 4) for v in (lo + hi) / 2]
            entry["size"] = [round(float(v), 4) for v in hi - lo]
        objects.append(entry)
    return json.dumps({"stamp": round(stamp, 6), **truth, "objects": objects})


def diagnostic_status(level: bytes, name: str, hardware_id: str, message: str,
                      values: dict[str, Any]) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
