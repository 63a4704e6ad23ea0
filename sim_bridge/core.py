"""SimArm: one simulated Franka Panda over a tray of objects, driven the way a real arm is
(tool-velocity servo commands, pose targets, gripper position commands) and read the way a
real arm is (joint states, tool pose, camera frames). No ROS here: `sim_bridge.node` wraps it.

Time model: physics runs only inside a command, as fast as the CPU allows, for the command's
fixed simulated duration (a servo command holds its twist for `command_duration`, a gripper
command runs for `gripper_duration`, a pose target takes distance / max_move_speed plus a
short settle). `sim_time` counts simulated seconds and stands still between commands.

Every command validates its input (non-finite numbers or wrong lengths raise ValueError) and
clamps what is out of range (speeds, workspace, yaw, finger range), saying so in the
CommandReport: whatever it is asked, the commanded tool point never leaves the workspace box,
and the measured one follows it within millimetres (a descending motion stops on contact
rather than letting objects deflect the arm out of it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pybullet as p

from .camera import Camera, CameraGeometry
from .commands import CommandReport, finite_number, finite_vector, top_down, wrap_half_turn, yaw_of
from .config import SimConfig
from .objects import ObjectPool, catalogue
from .scene import ARM_JOINTS, FINGER_JOINTS, FINGER_LIMIT, build_scene
from .tray import RestingObjects, drop_objects, settle_objects

__all__ = ["SimConfig", "CommandReport", "SimArm", "finite_vector", "yaw_of", "top_down"]

# The panda's "ready" posture; its last joint at pi/4 puts the hand square to base_link x.
_READY = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
_ARM_FORCES = (87.0,) * 4 + (12.0,) * 3  # N m, URDF effort limits
_RESYNC_DISTANCE = 0.01  # m: a setpoint this far from the measured tool point is re-anchored


class SimArm:
    """A simulated arm with its own PyBullet DIRECT client (several may live in one process)."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config = config or SimConfig()
        config.validate()
        self._client: int | None = None
        self._build_world()
        self._catalogue = catalogue(config.split)
        self._catalogue_set = frozenset(self._catalogue)
        self._rng = np.random.default_rng(config.seed)
        self._dt = 1.0 / config.physics_hz
        self._lo = np.asarray(config.workspace_min, dtype=float)
        self._hi = np.asarray(config.workspace_max, dtype=float)
        self._objects: list[tuple[str, int]] = []
        self._finger_targets = (FINGER_LIMIT, FINGER_LIMIT)
        self.sim_time = 0.0
        self.physics_steps = 0  # counters for benchmarks: physics steps and frames rendered
        self.renders = 0
        home = np.clip(np.asarray(config.home_position, dtype=float), self._lo, self._hi)
        self._home = (home, self._clip_yaw(config.home_yaw))
        self._home_joints = self._solve_home()
        self._setpoint = (home.copy(), self._home[1])
        self._send_home()

    def _build_world(self) -> None:
        """A fresh physics client with the scene, camera and an empty object pool.

        PyBullet keeps ~50-80 KB per loadURDF even after removeBody (measured); only
        disconnecting frees it. So after `max_loads_per_client` object loads the next reset
        rebuilds the world: memory stays bounded over any number of resets, for ~0.3 s every
        few hundred resets.
        """
        if self._client is not None:
            p.disconnect(physicsClientId=self._client)
        c = self.config
        self._client = p.connect(p.DIRECT)
        self._scene = build_scene(self._client, c)
        self._camera = Camera(CameraGeometry(
            eye=c.camera_eye, target=c.camera_target, vertical_fov_deg=c.camera_fov_deg,
            width=c.image_width, height=c.image_height), self._client)
        self._pool = ObjectPool(self._client, c.object_pool_size, c.object_friction,
                                c.object_rolling_friction, c.object_spinning_friction)
        self._resting = RestingObjects(self._client, c)
        self._objects = []

    # ----------------------------------------------------------------------------- episodes
    def seed(self, seed: int) -> None:
        """Restart the object/pose random sequence as if constructed with this seed."""
        self._rng = np.random.default_rng(seed)

    def reset(self, objects: Sequence[str] | None = None) -> list[str]:
        """Send the arm home with open fingers, swap in fresh objects, let them settle.

        `objects` (names from this arm's split) picks the objects instead of the seeded draw,
        for evaluation and tests; poses are still drawn from the seeded generator.
        """
        if objects is None:
            names = [self._catalogue[i] for i in
                     self._rng.choice(len(self._catalogue), self.config.num_objects, replace=False)]
        else:
            names = list(objects)
            unknown = [n for n in names if n not in self._catalogue_set]
            if unknown or len(set(names)) != len(names):
                raise ValueError(f"objects {names}: each must appear once and be in the "
                                 f"{self.config.split} split (names look like 'random_urdfs/123')")
        if self._pool.loads >= self.config.max_loads_per_client:
            self._build_world()
        self._send_home()
        bodies = self._pool.activate(names)
        self._objects = list(zip(names, bodies))
        drop_objects(self._client, self._pool, self._objects, self._rng, self.config)
        self._resting.track(bodies)
        settle_objects(self._resting, self._step_only, self.config)
        return names

    @property
    def loaded_objects(self) -> int:
        """Object bodies currently loaded (in play or parked): bounded by object_pool_size."""
        return len(self._pool)

    # ----------------------------------------------------------------------------- commands
    def servo(self, linear: Sequence[float], yaw_rate: float) -> CommandReport:
        """Hold tool velocity `linear` (m/s, base_link) and `yaw_rate` (rad/s about the vertical)
        for `command_duration` of simulated time."""
        velocity = finite_vector(linear, 3, "linear velocity")
        yaw_rate = finite_number(yaw_rate, "yaw rate")
        report = CommandReport()
        c = self.config
        speed = float(np.linalg.norm(velocity))
        if speed > c.max_linear_speed:
            velocity *= c.max_linear_speed / speed
            report.note(f"linear speed {speed:.3g} m/s clamped to {c.max_linear_speed:g} m/s")
        if abs(yaw_rate) > c.max_yaw_rate:
            clamped = math.copysign(c.max_yaw_rate, yaw_rate)
            report.note(f"yaw rate {yaw_rate:.3g} rad/s clamped to {clamped:g} rad/s")
            yaw_rate = clamped
        start, start_yaw = self._anchor()
        target = self._clip_workspace(start + velocity * c.command_duration, report)
        yaw = start_yaw + yaw_rate * c.command_duration
        clipped = self._clip_yaw(yaw)
        if clipped != yaw:
            report.note(f"yaw {yaw:.3g} rad clamped to limit {clipped:.3g} rad")
        self._track(target, clipped, self._steps(c.command_duration), 0, report)
        return report

    def move_to(self, position: Sequence[float], yaw: float) -> CommandReport:
        """Go to tool position (base_link, m) with the gripper pointing down turned by `yaw`
        (rad), at the maximum speed, then hold briefly so the arm arrives."""
        target = finite_vector(position, 3, "position")
        yaw = finite_number(yaw, "yaw")
        report = CommandReport()
        target = self._clip_workspace(target, report)
        wrapped = wrap_half_turn(yaw)
        if abs(wrapped - yaw) > 1e-9:
            report.note(f"yaw {yaw:.3g} rad taken as the equivalent {wrapped:.3g} rad "
                        "(the gripper is symmetric under a half turn)", clamped=False)
        clipped = self._clip_yaw(wrapped)
        if clipped != wrapped:
            report.note(f"yaw {wrapped:.3g} rad clamped to limit {clipped:.3g} rad")
        start, start_yaw = self._anchor()
        c = self.config
        duration = max(float(np.linalg.norm(target - start)) / c.max_move_speed,
                       abs(clipped - start_yaw) / c.max_yaw_rate)
        self._track(target, clipped, max(1, self._steps(duration)), self._steps(c.move_settle_time),
                    report)
        return report

    def set_fingers(self, targets: Sequence[float]) -> CommandReport:
        """Drive the fingers to `targets` ([finger1, finger2], m, each 0..0.04) with limited
        force, for `gripper_duration`: fingers closing on an object stop on it."""
        values = finite_vector(targets, 2, "finger targets")
        report = CommandReport()
        clipped = np.clip(values, 0.0, FINGER_LIMIT)
        for name, asked, got in zip(FINGER_JOINTS, values, clipped):
            if asked != got:
                report.note(f"{name} target {asked:.3g} m clamped to {got:g} m (range 0..{FINGER_LIMIT})")
        self._finger_targets = (float(clipped[0]), float(clipped[1]))
        self._command_fingers()
        self._step(self._steps(self.config.gripper_duration))
        return report

    # ------------------------------------------------------------------------------ sensing
    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB from the over-the-shoulder camera."""
        self.renders += 1
        return self._camera.render()

    def render_rgbd(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and the aligned (H, W) float32 depth in m along the optical
        axis, from the same render (an RGB-D camera's color and aligned_depth_to_color)."""
        self.renders += 1
        return self._camera.render_rgbd()

    def camera_intrinsics(self) -> tuple[float, float, float, float]:
        return self._camera.intrinsics()

    def camera_pose(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """camera_color_optical_frame in base_link: position, quaternion (x, y, z, w)."""
        return self._camera.optical_frame_pose()

    def ee_pose(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """Tool point (between the fingertips) in base_link: position, quaternion (x, y, z, w)."""
        state = p.getLinkState(self._scene.arm, self._scene.tool_link, computeForwardKinematics=True,
                               physicsClientId=self._client)
        return tuple(state[4]), tuple(state[5])

    def joint_state(self) -> tuple[list[str], list[float], list[float]]:
        """Names, positions (rad, m), velocities: the 7 arm joints, then the 2 finger joints."""
        indices = self._scene.arm_joint_indices + self._scene.finger_joint_indices
        states = p.getJointStates(self._scene.arm, indices, physicsClientId=self._client)
        return (list(ARM_JOINTS + FINGER_JOINTS), [s[0] for s in states], [s[1] for s in states])

    def gripper_opening(self) -> float:
        """The gripper's own reading: sum of the finger joint positions, m (0 closed, 0.08 open)."""
        states = p.getJointStates(self._scene.arm, self._scene.finger_joint_indices,
                                  physicsClientId=self._client)
        return float(states[0][0] + states[1][0])

    def object_boxes(self) -> list[tuple[str, tuple[float, ...], tuple[float, ...]]]:
        """Privileged simulator knowledge (scripted policies, evaluation): each object in play
        as (name, box_min, box_max): the tight axis-aligned box of its collision mesh in base_link."""
        return [(name, *self._pool.bounds(name)) for name, _ in self._objects]

    def object_points(self) -> list[tuple[str, np.ndarray]]:
        """Privileged simulator knowledge: each object in play as (name, (N, 3) array of its
        collision-mesh vertices in base_link, m)."""
        return [(name, self._pool.points(name)) for name, _ in self._objects]

    def ground_truth(self) -> dict:
        """Evaluation only, never a label: each object's lowest point above the tray floor."""
        floor = self.config.tray_floor_z
        objects = []
        for name, low, _ in self.object_boxes():
            height = float(low[2] - floor)
            objects.append({"name": name, "height": round(height, 4),
                            "lifted": height > self.config.lift_threshold})
        return {"objects": objects, "any_lifted": any(o["lifted"] for o in objects),
                "tray_height": floor}

    def close(self) -> None:
        if self._client is not None and p.isConnected(physicsClientId=self._client):
            p.disconnect(physicsClientId=self._client)
        self._client = None

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ motion
    def _steps(self, duration: float) -> int:
        return int(round(duration * self.config.physics_hz))

    def _step(self, n: int) -> None:
        """Step physics n times, letting objects that came to rest sleep along the way."""
        every = RestingObjects.CHECK_EVERY
        while n > 0:
            chunk = min(n, every - self.physics_steps % every)
            self._step_only(chunk)
            n -= chunk
            if self.physics_steps % every == 0:
                self._resting.check()

    def _step_only(self, n: int) -> None:
        for _ in range(n):
            p.stepSimulation(physicsClientId=self._client)
        self.physics_steps += n
        self.sim_time += n * self._dt

    def _anchor(self) -> tuple[np.ndarray, float]:
        """Where a new command starts: the last setpoint, unless the arm was held back (by an
        object, the tray) so far that the measured tool point is the honest start."""
        position, orientation = self.ee_pose()
        measured = np.asarray(position)
        if np.linalg.norm(measured - self._setpoint[0]) > _RESYNC_DISTANCE:
            self._setpoint = (np.clip(measured, self._lo, self._hi), self._setpoint[1])
        return self._setpoint[0].copy(), self._setpoint[1]

    def _track(self, target: np.ndarray, yaw: float, steps: int, hold: int,
               report: CommandReport) -> None:
        """Move the setpoint linearly to (target, yaw) over `steps` physics steps, solving IK
        every `ik_every` steps, then hold for `hold` steps.

        Like a real arm's collision reflex, a descending motion stops where it is when the
        gripper presses down on something harder than `contact_stop_force`: pushing on, the arm
        would drive objects into the tray and be deflected sideways, out of its workspace.
        (Rising or level motions are not checked: a pinch on a sloped face pushes on the
        fingers' z too, and lifting it must go on.)
        """
        start, start_yaw = self._setpoint
        descending = target[2] < start[2] - 1e-6
        every = max(1, self.config.ik_every)
        done = 0
        while done < steps:
            chunk = min(every, steps - done)
            done += chunk
            s = done / steps
            self._setpoint = (start + (target - start) * s, start_yaw + (yaw - start_yaw) * s)
            self._command_arm(*self._setpoint)
            self._step(chunk)
            force = self._downward_contact_force() if descending else 0.0
            if force > self.config.contact_stop_force:
                report.note(f"stopped on contact: {force:.0f} N pressing down "
                            f"(limit {self.config.contact_stop_force:g} N)", clamped=False)
                position, _ = self.ee_pose()
                self._setpoint = (np.clip(np.asarray(position), self._lo, self._hi), self._setpoint[1])
                self._command_arm(*self._setpoint)
                hold += steps - done
                break
        if hold:
            self._step(hold)

    def _downward_contact_force(self) -> float:
        """Net upward contact force on the arm (normals point from the other body to the arm):
        what it presses down with. A pinch's tilted normals cancel; a held object pulls down."""
        contacts = p.getContactPoints(bodyA=self._scene.arm, physicsClientId=self._client)
        return float(sum(c[7][2] * c[9] for c in contacts))

    def _command_arm(self, position: np.ndarray, yaw: float) -> None:
        joints = self._solve(position, yaw)
        p.setJointMotorControlArray(self._scene.arm, self._scene.arm_joint_indices, p.POSITION_CONTROL,
                                    targetPositions=joints, forces=_ARM_FORCES,
                                    positionGains=[self.config.arm_position_gain] * 7,
                                    physicsClientId=self._client)

    def _command_fingers(self) -> None:
        for index, target in zip(self._scene.finger_joint_indices, self._finger_targets):
            p.setJointMotorControl2(self._scene.arm, index, p.POSITION_CONTROL, targetPosition=target,
                                    force=self.config.finger_force, maxVelocity=self.config.finger_speed,
                                    physicsClientId=self._client)

    def _solve(self, position: Sequence[float], yaw: float) -> list[float]:
        """IK for the 7 arm joints, starting from the arm's current joints.

        No null-space (rest pose) term: measured here, PyBullet's null-space IK trades up to
        15 mm of tool error for posture, while plain damped least squares from the current
        state lands within 0.4 mm and moves the joints least; posture is restored on reset.
        """
        s = self._scene
        joints = p.calculateInverseKinematics(
            s.arm, s.tool_link, list(position), top_down(yaw), maxNumIterations=self.config.ik_iterations,
            residualThreshold=1e-5, physicsClientId=self._client)
        return list(joints[:7])

    def _solve_home(self) -> list[float]:
        """Joint angles of the home pose, refined by a few IK passes from the ready posture."""
        s = self._scene
        for index, angle in zip(s.arm_joint_indices, _READY):
            p.resetJointState(s.arm, index, angle, physicsClientId=self._client)
        joints = list(_READY)
        for _ in range(10):
            joints = self._solve(*self._home)
            for index, angle in zip(s.arm_joint_indices, joints):
                p.resetJointState(s.arm, index, angle, physicsClientId=self._client)
        return joints

    def _send_home(self) -> None:
        s = self._scene
        for index, angle in zip(s.arm_joint_indices, self._home_joints):
            p.resetJointState(s.arm, index, angle, 0.0, physicsClientId=self._client)
        for index in s.finger_joint_indices:
            p.resetJointState(s.arm, index, FINGER_LIMIT, 0.0, physicsClientId=self._client)
        p.setJointMotorControlArray(s.arm, s.arm_joint_indices, p.POSITION_CONTROL,
                                    targetPositions=self._home_joints, forces=_ARM_FORCES,
                                    positionGains=[self.config.arm_position_gain] * 7,
                                    physicsClientId=self._client)
        self._finger_targets = (FINGER_LIMIT, FINGER_LIMIT)
        self._command_fingers()
        self._setpoint = (self._home[0].copy(), self._home[1])

    def _clip_workspace(self, target: np.ndarray, report: CommandReport) -> np.ndarray:
        clipped = np.clip(target, self._lo, self._hi)
        for axis, asked, got in zip("xyz", target, clipped):
            if asked != got:
                bound = "max" if asked > got else "min"
                report.note(f"{axis} {asked:.3g} m clamped to workspace {bound} {got:g} m")
        return clipped

    def _clip_yaw(self, yaw: float) -> float:
        lo, hi = self.config.yaw_limits
        return float(min(max(yaw, lo), hi))
