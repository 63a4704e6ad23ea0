"""The graspable objects: the `random_urdfs` catalogue, its train/test split, and a bounded pool
of loaded bodies.

Loading a mesh URDF costs milliseconds (and parsing the same file again costs the same); an
attempt needs several objects, so the pool keeps bodies loaded and re-poses them instead of
reloading. Bodies not in the tray are *parked*: made static (mass 0) far away from everything,
where the broadphase never pairs them with anything, so they cost no physics time. The pool is
bounded: beyond `capacity` loaded bodies the least recently used parked one is removed, so
memory stays flat over thousands of resets.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pybullet as p
import pybullet_data

CATALOGUE_DIR = "random_urdfs"
SPLITS = ("train", "test")

# Parked bodies sit on a line far below and away from the scene, 2 m apart so they never touch.
_PARK_ORIGIN = (100.0, 0.0, -100.0)
_PARK_SPACING = 2.0


def is_test_object(name: str) -> bool:
    """Quillen et al. 2018 benchmark split: test objects are the folders whose number ends in 0."""
    return name.rsplit("/", 1)[-1].endswith("0")


def catalogue(split: str, data_path: str | None = None) -> list[str]:
    """Sorted object names ("random_urdfs/123") of one split of pybullet_data's random_urdfs."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = os.path.join(data_path or pybullet_data.getDataPath(), CATALOGUE_DIR)
    names = []
    for folder in sorted(os.listdir(root)):
        if not os.path.isfile(os.path.join(root, folder, f"{folder}.urdf")):
            continue
        name = f"{CATALOGUE_DIR}/{folder}"
        if is_test_object(name) == (split == "test"):
            names.append(name)
    if not names:
        raise FileNotFoundError(f"no {split} objects found under {root}; is pybullet_data complete?")
    return names


def urdf_path(name: str, data_path: str | None = None) -> str:
    """File of an object name as returned by `catalogue`."""
    folder = name.rsplit("/", 1)[-1]
    return os.path.join(data_path or pybullet_data.getDataPath(), CATALOGUE_DIR, folder, f"{folder}.urdf")


@dataclass
class _Entry:
    body: int
    mass: float
    slot: int
    vertices: np.ndarray  # (N, 3) collision-mesh vertices in the body frame, m


class ObjectPool:
    """Loaded object bodies of one physics client, keyed by name, bounded LRU."""

    def __init__(self, client: int, capacity: int, lateral_friction: float = 1.0,
                 rolling_friction: float = 0.0, spinning_friction: float = 0.0):
        if capacity < 1:
            raise ValueError(f"object pool capacity must be >= 1, got {capacity}")
        self._client = client
        self._capacity = capacity
        self._friction = (lateral_friction, rolling_friction, spinning_friction)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._active: set[str] = set()
        self._free_slots: list[int] = []
        self._next_slot = 0
        self.loads = 0  # URDF loads so far (for benchmarks and tests)

    def __len__(self) -> int:
        return len(self._entries)

    def body(self, name: str) -> int:
        return self._entries[name].body

    def points(self, name: str) -> np.ndarray:
        """(N, 3) collision-mesh vertices of the object where it is now, world frame, m."""
        entry = self._entries[name]
        position, orientation = p.getBasePositionAndOrientation(entry.body, physicsClientId=self._client)
        rotation = np.asarray(p.getMatrixFromQuaternion(orientation)).reshape(3, 3)
        return entry.vertices @ rotation.T + np.asarray(position)

    def bounds(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Tight axis-aligned box (min, max) of the object's collision vertices in the world.
        PyBullet's getAABB is looser by the collision margin and by rotating the local box."""
        points = self.points(name)
        return tuple(points.min(axis=0).tolist()), tuple(points.max(axis=0).tolist())

    def activate(self, names: list[str]) -> list[int]:
        """Make `names` the objects in play (loaded, dynamic); park every other one."""
        for name in list(self._active):
            if name not in names:
                self._park(name)
        bodies = []
        for name in names:
            entry = self._entries.get(name) or self._load(name)
            self._entries.move_to_end(name)
            if name not in self._active:
                p.changeDynamics(entry.body, -1, mass=entry.mass, physicsClientId=self._client)
                self._active.add(name)
            bodies.append(entry.body)
        self._evict()
        return bodies

    def _load(self, name: str) -> _Entry:
        slot = self._free_slots.pop() if self._free_slots else self._take_slot()
        body = p.loadURDF(urdf_path(name), _park_position(slot), physicsClientId=self._client)
        mass = p.getDynamicsInfo(body, -1, physicsClientId=self._client)[0]
        lateral, rolling, spinning = self._friction
        p.changeDynamics(body, -1, lateralFriction=lateral, rollingFriction=rolling,
                         spinningFriction=spinning, activationState=p.ACTIVATION_STATE_ENABLE_SLEEPING,
                         physicsClientId=self._client)
        vertices = np.asarray(p.getMeshData(body, -1, physicsClientId=self._client)[1], dtype=float)
        entry = _Entry(body=body, mass=mass, slot=slot, vertices=vertices.reshape(-1, 3))
        self._entries[name] = entry
        self.loads += 1
        return entry

    def _take_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def _park(self, name: str) -> None:
        entry = self._entries[name]
        p.changeDynamics(entry.body, -1, mass=0.0, physicsClientId=self._client)
        p.resetBasePositionAndOrientation(entry.body, _park_position(entry.slot), (0, 0, 0, 1),
                                          physicsClientId=self._client)
        p.resetBaseVelocity(entry.body, (0, 0, 0), (0, 0, 0), physicsClientId=self._client)
        self._active.discard(name)

    def _evict(self) -> None:
        for name in list(self._entries):
            if len(self._entries) <= self._capacity:
                return
            if name in self._active:
                continue
            entry = self._entries.pop(name)
            p.removeBody(entry.body, physicsClientId=self._client)
            self._free_slots.append(entry.slot)


def _park_position(slot: int) -> tuple[float, float, float]:
    x, y, z = _PARK_ORIGIN
    return (x + _PARK_SPACING * slot, y, z)
