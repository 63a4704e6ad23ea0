"""The static scene of one simulated arm: floor, tray, and the Franka Panda with its gripper.

The panda comes from pybullet_data's franka_panda/panda.urdf (7 revolute joints, 2 prismatic
finger joints). With `light_arm_visuals` the URDF is rewritten once into a temporary directory so
that its visual meshes are its collision meshes (same shapes, 5x cheaper to rasterise).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import pybullet as p
import pybullet_data

from .config import SimConfig

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
TOOL_LINK = "panda_grasptarget"
FINGER_LIMIT = 0.04  # m, each finger, from the URDF

_ARM_RGBA = (0.92, 0.92, 0.92, 1.0)
_HAND_RGBA = (0.25, 0.25, 0.28, 1.0)


@dataclass
class Scene:
    """Body ids and joint/link indices of a built scene."""

    arm: int
    tray: int
    arm_joint_indices: list[int]
    finger_joint_indices: list[int]
    tool_link: int
    lower_limits: list[float]  # over all movable joints (arm + fingers), as IK wants them
    upper_limits: list[float]
    finger_links: list[int]


def build_scene(client: int, config: SimConfig) -> Scene:
    data = pybullet_data.getDataPath()
    p.setGravity(0, 0, -9.81, physicsClientId=client)
    p.setTimeStep(1.0 / config.physics_hz, physicsClientId=client)
    p.setPhysicsEngineParameter(numSolverIterations=config.solver_iterations, physicsClientId=client)
    p.loadURDF(os.path.join(data, "plane.urdf"), physicsClientId=client)
    tray = p.loadURDF(os.path.join(data, "tray", "traybox.urdf"), config.tray_position,
                      useFixedBase=True, physicsClientId=client)
    arm = _load_panda(client, data, config.light_arm_visuals)

    index = {p.getJointInfo(arm, j, physicsClientId=client)[1].decode(): j
             for j in range(p.getNumJoints(arm, physicsClientId=client))}
    links = {p.getJointInfo(arm, j, physicsClientId=client)[12].decode(): j
             for j in range(p.getNumJoints(arm, physicsClientId=client))}
    movable = [j for j in range(p.getNumJoints(arm, physicsClientId=client))
               if p.getJointInfo(arm, j, physicsClientId=client)[2] != p.JOINT_FIXED]
    info = [p.getJointInfo(arm, j, physicsClientId=client) for j in movable]
    finger_links = [index[name] for name in FINGER_JOINTS]
    for link in finger_links:
        p.changeDynamics(arm, link, lateralFriction=config.finger_friction, spinningFriction=0.001,
                         physicsClientId=client)
    return Scene(
        arm=arm,
        tray=tray,
        arm_joint_indices=[index[name] for name in ARM_JOINTS],
        finger_joint_indices=[index[name] for name in FINGER_JOINTS],
        tool_link=links[TOOL_LINK],
        lower_limits=[i[8] for i in info],
        upper_limits=[i[9] for i in info],
        finger_links=finger_links,
    )


def _load_panda(client: int, data: str, light_visuals: bool) -> int:
    source = os.path.join(data, "franka_panda", "panda.urdf")
    if not light_visuals:
        return p.loadURDF(source, useFixedBase=True, physicsClientId=client)
    meshes = os.path.join(data, "franka_panda", "meshes", "collision")
    with open(source) as f:
        text = f.read()
    text = re.sub(r"package://meshes/(?:visual|collision)/", meshes + os.sep, text)
    folder = tempfile.mkdtemp(prefix="sim_bridge_panda_")
    try:
        path = os.path.join(folder, "panda.urdf")
        with open(path, "w") as f:
            f.write(text)
        arm = p.loadURDF(path, useFixedBase=True, physicsClientId=client)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for link in range(-1, p.getNumJoints(arm, physicsClientId=client)):
        name = "" if link < 0 else p.getJointInfo(arm, link, physicsClientId=client)[12].decode()
        rgba = _HAND_RGBA if ("hand" in name or "finger" in name) else _ARM_RGBA
        p.changeVisualShape(arm, link, rgbaColor=rgba, physicsClientId=client)
    return arm
