"""Filling the tray: seeded placement of the objects of an attempt, and letting them settle.

Placement uses the objects' exact collision vertices, so each starts just above the floor (or
just above the objects under its footprint) and never inside anything: short falls settle in a
fraction of the time random drops from a height take.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pybullet as p

from .config import SimConfig
from .objects import ObjectPool

Box = tuple[tuple[float, ...], tuple[float, ...]]


def drop_objects(client: int, pool: ObjectPool, objects: list[tuple[str, int]],
                 rng: np.random.Generator, config: SimConfig) -> None:
    """Place each object at a seeded random xy and yaw just above the floor, or, when no free
    spot turns up in `drop_tries` tries, just above the objects under its footprint."""
    c = config
    placed: list[Box] = []
    for name, body in objects:
        best = None
        for _ in range(c.drop_tries):
            pose = _random_pose(client, body, rng, c)
            low, high = pool.bounds(name)
            base = max([c.tray_floor_z] + [h[2] for l, h in placed if _overlap(low, high, l, h)])
            if best is None or base < best[0]:
                best = (base, pose, low, high)
            if base == c.tray_floor_z:
                break
        base, (x, y, orientation), low, high = best
        lift = base + c.drop_gap - low[2]
        p.resetBasePositionAndOrientation(body, (x, y, lift), orientation, physicsClientId=client)
        p.resetBaseVelocity(body, (0, 0, 0), (0, 0, 0), physicsClientId=client)
        p.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_WAKE_UP, physicsClientId=client)
        placed.append(((low[0], low[1], low[2] + lift), (high[0], high[1], high[2] + lift)))


class RestingObjects:
    """Puts objects to sleep as soon as they have been still for two checks in a row (not a
    bounce's apex), and keeps doing so after the gripper or a neighbour woke them.

    A sleeping body costs almost nothing per step (measured: 5 resting objects awake double
    or triple the step time of the arm alone) and wakes as soon as anything moving touches it.
    """

    CHECK_EVERY = 6  # physics steps

    def __init__(self, client: int, config: SimConfig):
        self._client = client
        self._config = config
        self._still: dict[int, int] = {}

    def track(self, bodies: list[int]) -> None:
        self._still = dict.fromkeys(bodies, 0)

    def check(self) -> bool:
        """Sleep the objects still twice in a row; whether all tracked objects are at rest."""
        for body, count in self._still.items():
            count = 0 if _moving(self._client, body, self._config) else count + 1
            self._still[body] = count
            if count >= 2:
                p.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_SLEEP,
                                 physicsClientId=self._client)
        return all(count >= 2 for count in self._still.values())


def settle_objects(resting: RestingObjects, step: Callable[[int], None], config: SimConfig) -> None:
    """Step until every object is at rest (linear < settle_speed, angular < settle_spin, each
    put to sleep as soon as it is), at most settle_max_time."""
    for _ in range(max(1, int(config.settle_max_time * config.physics_hz) // RestingObjects.CHECK_EVERY)):
        step(RestingObjects.CHECK_EVERY)
        if resting.check():
            return


def _moving(client: int, body: int, c: SimConfig) -> bool:
    linear, angular = p.getBaseVelocity(body, physicsClientId=client)
    return bool(np.linalg.norm(linear) > c.settle_speed or np.linalg.norm(angular) > c.settle_spin)


def _random_pose(client: int, body: int, rng: np.random.Generator, c: SimConfig):
    x, y = rng.uniform(-c.drop_half_extent, c.drop_half_extent, size=2)
    orientation = p.getQuaternionFromEuler((0, 0, rng.uniform(-math.pi, math.pi)))
    x, y = x + c.tray_position[0], y + c.tray_position[1]
    p.resetBasePositionAndOrientation(body, (x, y, 0.0), orientation, physicsClientId=client)
    return x, y, orientation


def _overlap(low_a, high_a, low_b, high_b) -> bool:
    """Whether two boxes' footprints (x, y) overlap."""
    return all(low_a[i] < high_b[i] and low_b[i] < high_a[i] for i in (0, 1))
