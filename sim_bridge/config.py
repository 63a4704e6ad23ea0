"""Every tunable of the simulated arm in one dataclass (re-exported by `sim_bridge.core`).

Frames and units: base_link is the panda's base (x forward, z up); the world frame of the physics
client coincides with it. Metres, radians, seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# The tray's collision floor is a 2 cm box centred 5 mm above the tray origin (traybox.urdf).
TRAY_FLOOR_ABOVE_ORIGIN = 0.015


@dataclass
class SimConfig:
    image_width: int = 64  # up to 472
    image_height: int = 64
    num_objects: int = 5
    split: str = "train"  # "train" or "test": test = random_urdfs folders whose number ends in 0
    seed: int = 0
    command_duration: float = 0.1  # s of simulated time one servo (twist) command is held
    gripper_duration: float = 0.3  # s of simulated time a gripper command runs
    physics_hz: float = 240.0
    # 20 keeps stacked objects, finger contacts and lifted objects stable (measured: see
    # docs/sim.md); 150 (KukaDiverseObjectEnv's) costs about 3x the physics time for nothing seen.
    solver_iterations: int = 20
    max_linear_speed: float = 0.5  # m/s, clamp of servo twists (one step moves <= 5 cm)
    # m/s of a pose target (move_to), like a trajectory controller's own limit (a Panda's
    # Cartesian limit is 1.7 m/s). Measured: 1.0 saves 17% of an attempt's physics steps but
    # lowers scripted grasp success from 89% to 82%: faster is not worth it.
    max_move_speed: float = 0.5
    max_yaw_rate: float = 2.0  # rad/s, clamp (measured: 2.5 lowers scripted success 89% -> 82%)
    # Tool-point bounds in base_link: over the tray floor, fingertips never below the floor.
    workspace_min: tuple[float, float, float] = (0.40, -0.15, 0.027)
    workspace_max: tuple[float, float, float] = (0.70, 0.15, 0.40)
    yaw_limits: tuple[float, float] = (-math.pi / 2, math.pi / 2)  # gripper is symmetric under pi
    lift_threshold: float = 0.1  # m above tray floor = "lifted" in ground truth

    # Scene.
    tray_position: tuple[float, float, float] = (0.55, 0.0, 0.0)
    home_position: tuple[float, float, float] = (0.55, 0.0, 0.30)  # tool point after reset
    home_yaw: float = 0.0
    drop_half_extent: float = 0.1  # objects are dropped within tray centre +- this, m
    drop_gap: float = 0.005  # m an object starts above the floor or the objects under it
    drop_tries: int = 10  # random spots tried per object before stacking on the lowest one
    settle_max_time: float = 1.0  # s simulated, upper bound on letting dropped objects settle
    settle_speed: float = 0.02  # m/s: objects slower than this count as settled ...
    settle_spin: float = 0.3  # rad/s ... and turning slower than this
    object_pool_size: int = 64  # loaded object bodies kept (LRU beyond this)
    # PyBullet leaks ~50-80 KB per URDF load even after removeBody; the physics client is
    # rebuilt (at a reset) after this many object loads, which frees it all.
    max_loads_per_client: int = 1000
    object_friction: float = 1.0
    # random_urdfs have zero rolling friction: round blobs roll on the sloped tray walls for
    # seconds. A little rolling/spinning friction lets them come to rest as real objects do.
    object_rolling_friction: float = 0.01
    object_spinning_friction: float = 0.01
    # The panda's visual meshes are 10-20 MB of triangles; TinyRenderer then needs ~25 ms per
    # 64x64 frame. Its collision meshes look the same at camera resolution and render 5x faster.
    light_arm_visuals: bool = True

    # Motion.
    # Joint position-servo gain: 1.0 tracks a 0.5 m/s path within ~1 mm; PyBullet's default
    # 0.1 lags by up to 15 mm.
    arm_position_gain: float = 1.0
    ik_every: int = 4  # physics steps between IK solutions along a commanded path
    ik_iterations: int = 20
    move_settle_time: float = 0.05  # s held at a move_to target so the arm arrives
    # N pressing down (contact normals' z) at which a motion stops where it is, as a real
    # arm's collision reflex does; lifting an object or squeezing it does not count.
    contact_stop_force: float = 30.0
    finger_force: float = 40.0  # N per finger (force-limited: fingers stop on an object)
    finger_speed: float = 0.2  # m/s per finger (URDF velocity limit)
    finger_friction: float = 1.5

    # Camera: behind and above the arm's right shoulder, looking down into the tray.
    camera_eye: tuple[float, float, float] = (0.05, -0.45, 0.70)
    camera_target: tuple[float, float, float] = (0.55, 0.0, 0.10)
    camera_fov_deg: float = 45.0

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not (1 <= self.image_width <= 472 and 1 <= self.image_height <= 472):
            raise ValueError(f"image size {self.image_width}x{self.image_height}: each side must be 1..472")
        if not 1.0 < self.camera_fov_deg < 179.0:
            raise ValueError(f"camera_fov_deg must be in (1, 179), got {self.camera_fov_deg}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {self.num_objects}")
        for name in ("command_duration", "gripper_duration", "physics_hz", "max_linear_speed", "max_move_speed",
                     "max_yaw_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(f"workspace_min {self.workspace_min} must be below workspace_max "
                             f"{self.workspace_max} on every axis")
        if self.object_pool_size < self.num_objects:
            raise ValueError(f"object_pool_size {self.object_pool_size} must be >= num_objects "
                             f"{self.num_objects}")

    @property
    def tray_floor_z(self) -> float:
        return self.tray_position[2] + TRAY_FLOOR_ABOVE_ORIGIN
