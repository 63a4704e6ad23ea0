"""Every tunable of robot_node in one dataclass, declared as ROS 2 parameters with descriptions.

Why a dataclass first: the grasp loop, the safety layer and the tests take a plain `NodeConfig`
and never touch rclpy; `declare_config(node)` is the one place that maps it onto ROS 2
parameters (each with a `ParameterDescriptor` whose description is the field's doc), so
`ros2 param describe /arm1/robot_node max_steps` tells an operator what a knob does.
"""
from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field, fields
from typing import Any


def _p(default: Any, description: str) -> Any:
    """A config field with its parameter description (lists get a default_factory)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


#: realsense-ros's name (relative to the camera's namespace), and the simulated arm's.
DEFAULT_DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
#: depth_topic values meaning "this camera gives no depth".
NO_DEPTH = ("", "none")


class ConfigError(ValueError):
    """A parameter value that cannot work; the message names the parameter and the fix."""


@dataclass
class NodeConfig:
    """robot_node's parameters (names are the ROS 2 parameter names)."""

    arm_id: str = _p("", "Robot id recorded in every attempt; empty = the node's namespace "
                         "without '/' (e.g. arm1).")
    host: str = _p("", "The machine this arm runs on, reported to the data server in every "
                       "heartbeat and shown by the dashboard and `fleet status`; empty = this "
                       "computer's host name (socket.gethostname()). A scheduler that places "
                       "arms (e.g. a Ray actor) passes its own node id.")
    # Topics and services, relative to the arm's namespace (docs/ros-interfaces.md).
    image_topic: str = _p("camera/image_raw", "sensor_msgs/Image rgb8 camera topic.")
    depth_topic: str = _p(DEFAULT_DEPTH_TOPIC,
                          "sensor_msgs/Image aligned depth topic of an RGB-D camera (16UC1 mm "
                          "or 32FC1 m along the optical axis, 0 = no return; same size and "
                          "stamps as image_topic), recorded and given to the policy; '' or "
                          "'none' = the camera has no depth.")
    ee_pose_topic: str = _p("ee_pose", "geometry_msgs/PoseStamped tool pose in base_link.")
    joint_states_topic: str = _p("joint_states", "sensor_msgs/JointState with finger joints.")
    twist_topic: str = _p("servo_node/delta_twist_cmds", "geometry_msgs/TwistStamped servo "
                                                         "commands (MoveIt Servo).")
    pose_topic: str = _p("servo_node/pose_target_cmds", "geometry_msgs/PoseStamped pose "
                                                       "targets (MoveIt Servo).")
    gripper_topic: str = _p("gripper_controller/commands", "std_msgs/Float64MultiArray finger "
                                                           "position commands.")
    finger_joints: list = _p(["panda_finger_joint1", "panda_finger_joint2"],
                             "Finger joint names whose positions sum to the gripper opening.")
    ground_truth_topic: str = _p("sim/ground_truth", "std_msgs/String JSON simulator truth "
                                                     "(recorded beside the label, never as it).")
    reset_service: str = _p("sim/reset", "std_srvs/Trigger called for the next scene; 'none' "
                                         "for a real arm whose scene needs no call.")
    estop_topic: str = _p("/estop", "Fleet-wide std_msgs/Bool e-stop (True = stop).")
    arm_estop_topic: str = _p("estop", "Per-arm std_msgs/Bool e-stop (relative name).")
    status_topic: str = _p("status", "std_msgs/String JSON status for the fleet monitor.")
    # Grasp loop.
    image_width: int = _p(64, "Expected camera image width, px (the policy's input).")
    image_height: int = _p(64, "Expected camera image height, px.")
    max_steps: int = _p(12, "T: servo steps before the gripper closes regardless (12 "
                            "reaches the floor from 0.30 m at 5 cm per step).")
    command_duration: float = _p(0.1, "Seconds one twist command is held (arm's contract).")
    gripper_duration: float = _p(0.3, "Seconds one gripper command runs (arm's contract).")
    motion_mode: str = _p("twist", "How a motion is sent: 'twist' (TwistStamped held for "
                                   "command_duration, split at the speed limits) or 'pose' "
                                   "(one PoseStamped target reached at max speed).")
    pose_settle: float = _p(0.05, "Pose mode: seconds added to distance/max speed before a "
                                  "pose target counts as reached (sim: move_settle_time).")
    pose_tolerance: float = _p(0.005, "Pose mode: a target counts as reached within this "
                                      "distance, m (or once its full duration has passed).")
    max_linear_speed: float = _p(0.5, "Twist speed limit, m/s; longer motions are split.")
    max_yaw_rate: float = _p(2.0, "Twist yaw-rate limit, rad/s.")
    lift_height: float = _p(0.3, "Tool-point height (base_link z, m) to lift to after closing, "
                                 "clipped to the workspace.")
    gripper_open: float = _p(0.04, "Per-finger open position, m.")
    success_threshold: float = _p(0.005, "Gripper opening after lift above which the grasp is "
                                         "a success, m (paper: 1 cm; measured in sim: empty "
                                         "closes under 1 mm, thin held parts read 5-10 mm).")
    workspace_min: list = _p([0.40, -0.15, 0.027], "Tool-point lower bounds x,y,z in "
                                                   "base_link, m; no command leaves them.")
    workspace_max: list = _p([0.70, 0.15, 0.40], "Tool-point upper bounds x,y,z, m.")
    yaw_limits: list = _p([-math.pi / 2, math.pi / 2], "Tool yaw range about base_link z, "
                                                       "rad (a parallel gripper needs pi).")
    # Policy.
    bundle_path: str = _p("", "Policy bundle file or directory (newest bundle wins); empty = "
                              "exploration only.")
    bundle_poll_s: float = _p(2.0, "How often to look for a new bundle, s (swaps happen only "
                                   "between attempts).")
    exploration_share: float = _p(0.2, "Share of attempts run with the exploration policy once "
                                       "a network exists (always 1 before).")
    exploration_policy: str = _p("random_descent", "Exploration policy: 'random', "
                                 "'random_descent', 'any_height_descent' (random_descent "
                                 "closing at a random height in 30% of attempts), "
                                 "'aimed_descent' (at a colourful blob of I_0) or "
                                 "'package.module:Class'.")
    exploration_max_step: float = _p(0.05, "Largest translation per axis of one exploration "
                                           "step, m (random and random_descent).")
    cem_samples: int = _p(64, "CEM samples per iteration.")
    cem_elites: int = _p(6, "CEM elites refit per iteration.")
    cem_iterations: int = _p(0, "CEM iterations per step; 0: the method's own (Levine 3, "
                                "QT-Opt 2, as in each paper).")
    grasp_explore_top: float = _p(0.0, "Grasp-point policies: share of learned attempts whose "
                                       "grasp is drawn among the 16 best-scored candidates "
                                       "(in proportion to their scores) instead of the best.")
    torch_threads: int = _p(1, "Torch intra-op threads for the policy network. 1: a CEM "
                               "decision is a few small batches, and more threads only fight "
                               "the simulator, the other arms and the learner for the cores "
                               "(measured 10x slower with 2 on a loaded 2-core host); "
                               "0 = torch's default (one per core).")
    seed: int = _p(0, "Random seed (policy sampling, exploration); 0 = from the OS.")
    # Recorder and spool.
    jpeg_quality: int = _p(90, "JPEG quality of recorded images, 1-100.")
    spool_dir: str = _p("spool", "Directory of attempts not yet acknowledged by the server.")
    spool_max_bytes: int = _p(1 << 30, "Spool size limit, bytes; when full, collection pauses "
                                       "(nothing unsent is ever deleted).")
    spool_aborted: bool = _p(True, "Also spool aborted attempts that ran at least one step "
                                   "(outcome 'aborted': never trained on as failures).")
    max_attempts: int = _p(0, "Stop collecting after this many attempts; 0 = no limit.")
    # Timeouts, seconds of steady (wall) clock, never simulated time.
    arm_ready_timeout: float = _p(30.0, "Wait for the arm's first image/pose/joints, s.")
    motion_timeout: float = _p(5.0, "Wait for one motion or gripper command to complete, s.")
    reset_timeout: float = _p(30.0, "Wait for the next-scene service, s.")
    camera_stall: float = _p(2.0, "Watchdog: camera silent this long while collecting => stop.")
    policy_stall: float = _p(2.0, "Watchdog: one policy decision this long => stop.")
    ground_truth_wait: float = _p(0.5, "Wait for ground truth after the lift, s (sim only).")
    # Uploader (fleet/client/upload_client.py).
    server_address: str = _p("", "Data server, e.g. tcp://127.0.0.1:5555; empty = no upload.")
    server_public_key: str = _p("", "Path to the server's CURVE public key file.")
    robot_secret_key: str = _p("", "Path to this robot's CURVE secret key file.")
    status_period: float = _p(1.0, "Seconds between /diagnostics and status messages.")

    @property
    def has_depth(self) -> bool:
        """The camera gives an aligned depth image (depth_topic is set)."""
        return self.depth_topic.strip().lower() not in NO_DEPTH

    def validate(self) -> None:
        """Raise ConfigError naming the first parameter that cannot work."""
        if self.has_depth:
            if any(ch.isspace() for ch in self.depth_topic):
                raise ConfigError(f"depth_topic {self.depth_topic!r} is not a topic name (no "
                                  "spaces); '' or 'none' if the camera has no depth")
            if self.depth_topic == self.image_topic:
                raise ConfigError(f"depth_topic and image_topic are both {self.image_topic!r}: "
                                  "the depth topic is the camera's aligned depth image (e.g. "
                                  f"{DEFAULT_DEPTH_TOPIC}), or 'none'")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        for name in ("command_duration", "gripper_duration", "max_linear_speed", "max_yaw_rate",
                     "motion_timeout", "reset_timeout", "arm_ready_timeout", "camera_stall",
                     "policy_stall", "status_period", "bundle_poll_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.motion_mode not in ("twist", "pose"):
            raise ConfigError(f"motion_mode must be 'twist' or 'pose', got {self.motion_mode!r}")
        if not 0.0 <= self.grasp_explore_top <= 1.0:
            raise ConfigError(f"grasp_explore_top must be in [0, 1], got "
                              f"{self.grasp_explore_top}")
        if not 0.0 <= self.exploration_share <= 1.0:
            raise ConfigError(f"exploration_share must be in [0, 1], got {self.exploration_share}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0 (0 = torch's default), got "
                              f"{self.torch_threads}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError("workspace_min and workspace_max must each hold 3 numbers (x, y, z)")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"workspace_min {self.workspace_min} must be below workspace_max "
                              f"{self.workspace_max} on every axis")
        if len(self.yaw_limits) != 2 or self.yaw_limits[0] >= self.yaw_limits[1]:
            raise ConfigError(f"yaw_limits must be [low, high] with low < high, got "
                              f"{self.yaw_limits}")
        if len(self.finger_joints) < 1:
            raise ConfigError("finger_joints must name at least one joint")
        if self.spool_max_bytes <= 0:
            raise ConfigError(f"spool_max_bytes must be positive, got {self.spool_max_bytes}")


def unknown_parameters(node: Any) -> list[str]:
    """Names given to the node (params file, -p, overrides) that it does not declare. rclpy
    drops them silently, so a misspelt parameter would look like its default taking effect.
    rclpy has no public accessor for the overrides; without the attribute this finds none."""
    given = set(getattr(node, "_parameter_overrides", {}))
    return sorted(given - {f.name for f in fields(NodeConfig)}
                  - {"use_sim_time", "start_type_description_service"})


def declare_config(node: Any) -> NodeConfig:
    """Declare every NodeConfig field on `node` as a described parameter and read it back."""
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType

    list_types = {"finger_joints": ParameterType.PARAMETER_STRING_ARRAY,
                  "workspace_min": ParameterType.PARAMETER_DOUBLE_ARRAY,
                  "workspace_max": ParameterType.PARAMETER_DOUBLE_ARRAY,
                  "yaw_limits": ParameterType.PARAMETER_DOUBLE_ARRAY}
    values: dict[str, Any] = {}
    defaults = NodeConfig()
    for f in fields(NodeConfig):
        default = getattr(defaults, f.name)
        descriptor = ParameterDescriptor(name=f.name, description=f.metadata["description"])
        if f.name in list_types:
            descriptor.type = list_types[f.name]
        elif isinstance(default, float):
            # let an integer literal in YAML (e.g. `lift_height: 1`) still be accepted
            descriptor.dynamic_typing = True
        param = node.declare_parameter(f.name, default, descriptor)
        value = param.value
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if isinstance(default, list):
            value = [float(v) for v in value] if f.name.startswith(("workspace", "yaw")) else list(value)
        values[f.name] = value
    undeclared = unknown_parameters(node)
    if undeclared:
        node.get_logger().warning(f"ignored unknown parameter(s) {undeclared}: robot_node has "
                                  f"no such parameter (docs/robot-node.md lists them)")
    config = NodeConfig(**values)
    if not config.arm_id:
        config.arm_id = node.get_namespace().strip("/").replace("/", "_") or "arm"
    config.host = config.host.strip() or socket.gethostname()
    config.validate()
    return config
