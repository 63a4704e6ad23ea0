"""The `sim_arm` node's ROS parameters: each declared up front with a description, typed from
SimConfig's own defaults (so a default lives in exactly one place), and read back into a
SimConfig plus the node's few settings of its own.

All are read-only: the simulator is built once at start, so changing one at runtime would be
a lie. `ros2 param describe /arm1/sim_arm <name>` shows the descriptions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node

from .core import SimConfig

#: SimConfig fields exposed as parameters, with what they mean (units in brackets).
SIM_PARAMETERS = {
    "image_width": "camera image width [px], 1..472",
    "image_height": "camera image height [px], 1..472",
    "num_objects": "objects dropped into the tray at each reset",
    "split": "object split: 'train' (random_urdfs folders whose number does not end in 0) "
             "or 'test' (ends in 0: never trained on)",
    "seed": "seed of the object choice and drop poses",
    "command_duration": "simulated time a twist command is held [s] (MoveIt Servo's "
                        "incoming_command_timeout)",
    "gripper_duration": "simulated time a gripper command runs [s]",
    "physics_hz": "physics steps per simulated second [Hz]",
    "solver_iterations": "PyBullet constraint-solver iterations per step",
    "max_linear_speed": "tool speed limit [m/s]: faster twists are clamped; pose targets are "
                        "reached at this speed",
    "max_yaw_rate": "yaw rate limit [rad/s]: faster twists are clamped",
    "workspace_min": "lower corner [x, y, z] of the tool-point box in base_link [m]: targets "
                     "outside the box are clamped into it",
    "workspace_max": "upper corner [x, y, z] of the tool-point box in base_link [m]",
    "home_position": "tool point after a reset [x, y, z] in base_link [m]",
    "lift_threshold": "height above the tray floor [m] over which ground truth calls an "
                      "object lifted",
    "settle_max_time": "upper bound on the simulated time dropped objects settle after a "
                       "reset [s]",
    "camera_eye": "camera position [x, y, z] in base_link [m]",
    "camera_target": "point [x, y, z] in base_link the camera looks at [m] (image up = +z)",
    "camera_fov_deg": "camera vertical field of view [deg]",
}

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          tuple: ParameterType.PARAMETER_DOUBLE_ARRAY}


@dataclass
class NodeSettings:
    """Everything the node is configured with: the simulator's config and its own settings."""

    sim: SimConfig
    arm_id: str = ""  # empty: the namespace without its slash ("/arm1" -> "arm1")
    idle_publish_rate: float = 2.0  # Hz: state re-published with its frozen stamp when idle
    diagnostics_period: float = 1.0  # s between periodic /diagnostics statuses
    publish_depth: bool = True  # also the aligned depth image (an RGB-D camera), 16UC1 mm


_NODE_PARAMETERS = {
    "arm_id": "arm id for logs and diagnostics hardware_id; empty: the namespace",
    "idle_publish_rate": "rate [Hz] at which the last state is re-published, with its frozen "
                         "stamp, while the arm is idle",
    "diagnostics_period": "period [s] of the regular /diagnostics status",
    "publish_depth": "also publish the aligned depth image on "
                     "camera/aligned_depth_to_color/image_raw (16UC1, mm along the optical axis, "
                     "0 = no return; rendered with the colour image, same stamp), as an RGB-D "
                     "camera does; false: a colour-only camera",
}


def _declare(node: Node, name: str, default: object, description: str) -> object:
    kind = _TYPES[type(default)]
    value = list(default) if isinstance(default, tuple) else default
    descriptor = ParameterDescriptor(description=description, type=kind, read_only=True)
    try:
        return node.declare_parameter(name, value, descriptor).value
    except InvalidParameterTypeException as error:
        hint = " (write floats with a decimal point, e.g. 1.0)" if kind in (
            ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_DOUBLE_ARRAY) else ""
        raise ValueError(f"parameter {name!r} has the wrong type: {error}{hint}") from None


def declare_settings(node: Node) -> NodeSettings:
    """Declare every parameter and return the settings; ValueError says what is wrong."""
    defaults = SimConfig()
    values = {}
    for name, description in SIM_PARAMETERS.items():
        default = getattr(defaults, name)
        value = _declare(node, name, default, description)
        values[name] = tuple(value) if isinstance(default, tuple) else value
    sim = dataclasses.replace(defaults, **values)
    for corner in ("workspace_min", "workspace_max", "home_position", "camera_eye",
                   "camera_target"):
        if len(getattr(sim, corner)) != 3:
            raise ValueError(f"parameter {corner!r} must have 3 values [x, y, z], "
                             f"got {list(getattr(sim, corner))}")
    sim.validate()
    own = NodeSettings(sim=sim)
    for name, description in _NODE_PARAMETERS.items():
        setattr(own, name, _declare(node, name, getattr(own, name), description))
    if not own.idle_publish_rate > 0 or not own.diagnostics_period > 0:
        raise ValueError("idle_publish_rate and diagnostics_period must be positive, got "
                         f"{own.idle_publish_rate} and {own.diagnostics_period}")
    return own
