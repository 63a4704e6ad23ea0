"""A Gymnasium view of the simulated arm: the grasping task of Levine et al. 2016 / Quillen et
al. 2018 as an episodic environment, over the same SimArm the ROS node drives (no physics here).

Episode: reset drops fresh objects; each step holds a tool twist for `command_duration`
(action = dx, dy, dz, dyaw in [-1, 1], scaled to the arm's max linear speed and yaw rate); after
`servo_steps` steps the gripper closes and lifts automatically, and the episode ends. Reward 1
when the gripper's own reading says it holds something (opening over 1 cm), else 0, exactly the
label a real robot records. `info` carries the simulator's ground truth, for evaluation only.

    import gymnasium, sim_bridge.gym_env
    env = gymnasium.make("fleet/Grasp-v0", num_objects=3, split="test")
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import gymnasium
import numpy as np
from gymnasium import spaces

from .core import SimArm, SimConfig, finite_vector, yaw_of
from .scripted import grasp_label

ENV_ID = "fleet/Grasp-v0"


@dataclass
class GraspEnvConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    servo_steps: int = 8  # policy steps before the automatic close + lift
    lift_height: float = 0.25  # m above the tray floor the tool point rises to after closing


class GraspEnv(gymnasium.Env):
    """Observation: (H, W, 3) uint8 RGB camera frame. Action: Box(4) in [-1, 1]."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: GraspEnvConfig | None = None, render_mode: str | None = None,
                 **sim_overrides):
        """`sim_overrides` set SimConfig fields by name (e.g. num_objects=3, split="test")."""
        config = config or GraspEnvConfig()
        unknown = set(sim_overrides) - {f.name for f in dataclasses.fields(SimConfig)}
        if unknown:
            raise TypeError(f"unknown SimConfig fields {sorted(unknown)}; see sim_bridge.config.SimConfig")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.config = dataclasses.replace(config, sim=dataclasses.replace(config.sim, **sim_overrides))
        self.render_mode = render_mode
        self.arm = SimArm(self.config.sim)
        s = self.config.sim
        self.observation_space = spaces.Box(0, 255, (s.image_height, s.image_width, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._steps = 0
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.arm.seed(seed)
        self.arm.reset()
        self._steps = 0
        self._frame = self.arm.render()
        return self._frame, self.arm.ground_truth()

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        a = np.clip(finite_vector(np.ravel(action), 4, "action (dx, dy, dz, dyaw)"), -1.0, 1.0)
        s = self.config.sim
        report = self.arm.servo(a[:3] * s.max_linear_speed, float(a[3]) * s.max_yaw_rate)
        self._steps += 1
        terminated = self._steps >= self.config.servo_steps
        reward = 0.0
        info = {"clamped": report.reasons}
        if terminated:
            reward = float(self._close_and_lift())
            info["gripper_opening"] = self.arm.gripper_opening()
        self._frame = self.arm.render()
        info.update(self.arm.ground_truth())
        return self._frame, reward, terminated, False, info

    def _close_and_lift(self) -> bool:
        self.arm.set_fingers([0.0, 0.0])
        (x, y, _), orientation = self.arm.ee_pose()
        lift_to = self.config.sim.tray_floor_z + self.config.lift_height
        self.arm.move_to([x, y, lift_to], yaw_of(orientation))
        return grasp_label(self.arm.gripper_opening())

    def render(self):
        return None if self._frame is None else self._frame.copy()

    def close(self):
        self.arm.close()


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="sim_bridge.gym_env:GraspEnv")
