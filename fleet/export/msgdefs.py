"""ROS 2 message definitions (msgdef text, as rosbag2 stores them in MCAP schemas) for the
exported topics: each type's fields, then every type it uses after a separator line and an
`MSG: pkg/Type` line, so a reader needs no ROS 2 install to decode them (mcap_ros2 parses this
form; tests/test_export.py reads the files back with its DecoderFactory)."""
from __future__ import annotations

_SEP = "=" * 80

_TIME = "int32 sec\nuint32 nanosec\n"
_HEADER = "builtin_interfaces/Time stamp\nstring frame_id\n"
_POINT = "float64 x\nfloat64 y\nfloat64 z\n"
_QUATERNION = "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n"
_POSE = "Point position\nQuaternion orientation\n"
_VECTOR3 = "float64 x\nfloat64 y\nfloat64 z\n"
_TWIST = "Vector3 linear\nVector3 angular\n"
_IMAGE = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
          "uint8 is_bigendian\nuint32 step\nuint8[] data\n")
_CAMERA_INFO = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
                "float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n"
                "uint32 binning_y\nRegionOfInterest roi\n")
_ROI = "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n"
_POSE_STAMPED = "std_msgs/Header header\nPose pose\n"
_TWIST_STAMPED = "std_msgs/Header header\nTwist twist\n"


def _msgdef(body: str, *deps: tuple[str, str]) -> str:
    parts = [body]
    for name, text in deps:
        parts.append(f"{_SEP}\nMSG: {name}\n{text}")
    return "\n".join(parts)


_HEADER_DEPS = (("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME))

IMAGE = ("sensor_msgs/msg/Image", _msgdef(_IMAGE, *_HEADER_DEPS))
CAMERA_INFO = ("sensor_msgs/msg/CameraInfo", _msgdef(
    _CAMERA_INFO, *_HEADER_DEPS, ("sensor_msgs/RegionOfInterest", _ROI)))
POSE_STAMPED = ("geometry_msgs/msg/PoseStamped", _msgdef(
    _POSE_STAMPED, *_HEADER_DEPS, ("geometry_msgs/Pose", _POSE),
    ("geometry_msgs/Point", _POINT), ("geometry_msgs/Quaternion", _QUATERNION)))
TWIST_STAMPED = ("geometry_msgs/msg/TwistStamped", _msgdef(
    _TWIST_STAMPED, *_HEADER_DEPS, ("geometry_msgs/Twist", _TWIST),
    ("geometry_msgs/Vector3", _VECTOR3)))
FLOAT64 = ("std_msgs/msg/Float64", "float64 data\n")
BOOL = ("std_msgs/msg/Bool", "bool data\n")
STRING = ("std_msgs/msg/String", "string data\n")

ALL = (IMAGE, CAMERA_INFO, POSE_STAMPED, TWIST_STAMPED, FLOAT64, BOOL, STRING)
