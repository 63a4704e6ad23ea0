"""The ROS 2 messages of the arm contract as arrays, and the QoS profiles robot_node uses.

docs/ros-interfaces.md states the encodings: colour rgb8 (bgr8 read too), aligned depth 16UC1
mm or 32FC1 m (REP 118), stamps as builtin_interfaces/Time. Kept apart from the node
(arm_client.RosArm) so the conversions are tested without a running graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
LATCHED_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.TRANSIENT_LOCAL)
NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 RGB copy."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"camera encoding {msg.encoding!r} is not supported; publish rgb8")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    img = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return (img[:, :, ::-1] if msg.encoding == "bgr8" else img).copy()


def depth_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image aligned depth -> (H, W) float32 m, 0 = no return. REP 118: 16UC1 is
    uint16 mm (what realsense-ros publishes), 32FC1 float32 m; NaN, inf and values <= 0 read
    as no return."""
    if msg.encoding == "16UC1":
        dtype, per_metre = np.dtype(np.uint16), 1000.0
    elif msg.encoding == "32FC1":
        dtype, per_metre = np.dtype(np.float32), 1.0
    else:
        raise ValueError(f"depth encoding {msg.encoding!r} is not supported; publish 16UC1 "
                         "(mm) or 32FC1 (m)")
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"depth image {msg.width}x{msg.height} with step {msg.step} holds "
                         f"{len(msg.data)} bytes")
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = rows.reshape(msg.height, msg.step)[:, :row_bytes]
    depth = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width)
    metres = depth.astype(np.float32) / np.float32(per_metre)
    metres[~(np.isfinite(metres) & (metres > 0))] = 0.0
    return metres
