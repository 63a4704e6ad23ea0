"""The process plan: which ROS 2 nodes run for which arms, computed once from config/arms.yaml.

`fleet sim` starts this plan as real processes (fleet/ops/supervisor.py), and launch/arms.launch.py
maps the very same plan onto launch_ros Node actions, so a simulated fleet and `ros2 launch` on a
robot controller start nodes the same way: an executable with `--ros-args`, a namespace per arm,
parameter files and remappings. Nothing here imports ROS; nodes are described, not run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from fleet.policy.geometry import CAMERA_KEYS

#: The repo (or installed share/fleet) directory holding config/.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PACKAGE_ROOT / "config"


class PlanError(ValueError):
    """config/arms.yaml (or a launch argument) is wrong; the message says what and where."""


@dataclass
class ArmSpec:
    """One arm as config/arms.yaml describes it."""

    name: str
    sim: bool = True
    image_size: int = 64
    num_objects: int = 5
    split: str = "train"
    seed: int = 0
    #: The camera as a look-at pinhole in base_link (m; image up = +z) and its vertical field of
    #: view: what the simulated arm renders with, and the camera model the grasp-point network
    #: samples I_0 through (a real arm writes its calibration here). None: the defaults
    #: (fleet.policy.geometry's, which sim_bridge SimConfig states too).
    camera_eye: Optional[list[float]] = None
    camera_target: Optional[list[float]] = None
    camera_fov_deg: Optional[float] = None
    #: The camera gives an aligned depth image beside the colour one (RGB-D): the simulated
    #: arm publishes it, robot_node records it and gives it to the policy, and the fleet's
    #: grasp-point network takes it (fleet learn --depth). False: colour only.
    depth: bool = True

    def camera(self) -> dict[str, Any]:
        """The camera settings this arm sets (keys of SimConfig / GraspPointConfig)."""
        out: dict[str, Any] = {}
        for key in CAMERA_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if key == "camera_fov_deg":
                out[key] = float(value)
            elif not (isinstance(value, (list, tuple)) and len(value) == 3):
                raise PlanError(f"arm {self.name}: {key} must be [x, y, z] in metres, got "
                                f"{value!r}")
            else:
                out[key] = [float(v) for v in value]
        return out



@dataclass
class NodeSpec:
    """One ROS 2 node process, described the way a launch file describes it."""

    arm: str
    executable: str  # console script name, installed into lib/fleet by colcon
    module: str  # the same entry point as `python -m <module>`
    node_name: str
    namespace: str
    params_files: list[Path] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.namespace.strip('/')}/{self.node_name}"

    def ros_args(self) -> list[str]:
        """`--ros-args ...` exactly as `ros2 launch` passes them to a node."""
        args = ["--ros-args", "-r", f"__node:={self.node_name}", "-r", f"__ns:={self.namespace}"]
        for f in self.params_files:
            args += ["--params-file", str(f)]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_param_literal(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        return args

    def argv(self, python: Optional[str] = None) -> list[str]:
        return [python or sys.executable, "-m", self.module] + self.ros_args()


def _param_literal(value: Any) -> str:
    """A `-p key:=value` literal; ROS parses it as YAML, so quote strings that look typed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_literal(v) for v in value) + "]"
    return yaml.safe_dump(str(value), default_style="'").strip()


def load_arms(config_path: Path, names: Optional[list[str]] = None,
              count: Optional[int] = None, sim: Optional[bool] = None) -> list[ArmSpec]:
    """Arms from config/arms.yaml; `names` or `count` (arm1..armN) override its list."""
    try:
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
    except FileNotFoundError:
        raise PlanError(f"{config_path}: no such arms file; pass --config with a path to one "
                        f"(the default is {CONFIG_DIR / 'arms.yaml'})") from None
    arms_block = raw.get("arms") or {}
    defaults = dict(arms_block.get("defaults") or {})
    if sim is not None:
        defaults["sim"] = sim
    if count is not None:
        if count < 1:
            raise PlanError(f"--arms must be at least 1, got {count}")
        names = [f"arm{i}" for i in range(1, count + 1)]
    names = names or list(arms_block.get("names") or [])
    if not names:
        raise PlanError(f"{config_path}: arms.names is empty; list at least one arm id")
    known = set(ArmSpec.__dataclass_fields__) - {"name"}
    unknown = set(defaults) - known
    if unknown:
        raise PlanError(f"{config_path}: unknown arm settings {sorted(unknown)}; "
                        f"known: {sorted(known)}")
    arms = []
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise PlanError(f"arm id {name!r} must be a ROS name: letters, digits, underscores")
        arms.append(ArmSpec(name=name, **{**defaults, "seed": defaults.get("seed", 0) + i}))
    if len({a.name for a in arms}) != len(arms):
        raise PlanError(f"arm ids must be unique, got {names}")
    return arms


def node_plan(arms: list[ArmSpec], config_dir: Path = CONFIG_DIR,
              extra_robot_params: Optional[dict[str, Any]] = None) -> list[NodeSpec]:
    """The nodes for these arms: per arm a robot_node, and a sim_bridge arm when sim is on.

    Each arm's simulated clock is its own, so both nodes of a simulated arm remap /clock into
    the arm's namespace (docs/ros-interfaces.md, "Time")."""
    nodes: list[NodeSpec] = []
    for arm in arms:
        ns = f"/{arm.name}"
        clock = [("/clock", f"{ns}/clock")] if arm.sim else []
        if arm.sim:
            nodes.append(NodeSpec(
                arm=arm.name, executable="sim_arm", module="sim_bridge.node",
                node_name="sim_arm", namespace=ns,
                params_files=_existing([config_dir / "sim_arm.yaml"]),
                parameters={"image_width": arm.image_size, "image_height": arm.image_size,
                            "num_objects": arm.num_objects, "split": arm.split,
                            "seed": arm.seed, "publish_depth": bool(arm.depth),
                            **arm.camera()},
                remappings=clock))
        # the policy's input size is the camera's: one setting (arms.yaml image_size) for both
        robot_params: dict[str, Any] = {"arm_id": arm.name, "use_sim_time": arm.sim,
                                        "image_width": arm.image_size,
                                        "image_height": arm.image_size}
        if not arm.depth:
            robot_params["depth_topic"] = "none"
        robot_params.update(extra_robot_params or {})
        nodes.append(NodeSpec(
            arm=arm.name, executable="robot_node", module="robot_node.node",
            node_name="robot_node", namespace=ns,
            params_files=_existing([config_dir / "robot_node.yaml"]),
            parameters=robot_params, remappings=clock))
    return nodes


def fleet_image_size(arms: list[ArmSpec]) -> int:
    """The one camera size of a fleet: its arms share one network, so they must agree."""
    sizes = sorted({a.image_size for a in arms})
    if len(sizes) != 1:
        raise PlanError(f"arms have image sizes {sizes}: one fleet trains one network, so every "
                        f"arm's image_size must be the same")
    return sizes[0]


def fleet_camera(arms: list[ArmSpec]) -> dict[str, Any]:
    """The one camera model of a fleet (the settings its arms give): one network samples every
    arm's I_0 through it, so they must agree."""
    cameras = {repr(sorted(c.items())): c for c in (a.camera() for a in arms)}
    if len(cameras) != 1:
        raise PlanError(f"arms give different cameras {list(cameras.values())}: one fleet trains "
                        f"one grasp-point network on one camera model, so every arm's "
                        f"camera_eye, camera_target and camera_fov_deg must be the same")
    return next(iter(cameras.values()))


def fleet_depth(arms: list[ArmSpec]) -> bool:
    """Whether the fleet's one network takes depth: every arm's camera gives it, or none's."""
    kinds = {bool(a.depth) for a in arms}
    if len(kinds) != 1:
        raise PlanError(f"arms {[a.name for a in arms if a.depth]} give depth and "
                        f"{[a.name for a in arms if not a.depth]} do not: one fleet trains one "
                        f"network, so set depth the same for every arm (false: colour only)")
    return kinds.pop()


def camera_flags(camera: dict[str, Any]) -> list[str]:
    """`fleet learn` flags for a fleet_camera() dict (--camera-eye X Y Z ...)."""
    argv: list[str] = []
    for key, value in camera.items():
        argv.append("--" + key.replace("_", "-"))
        argv += [repr(float(v)) for v in value] if isinstance(value, list) else [repr(value)]
    return argv


def _existing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]
