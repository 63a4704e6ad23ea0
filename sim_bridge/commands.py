"""What a command may be and what became of it: input validation (ValueError naming the
problem), the CommandReport of clamps, and the top-down tool pose helpers."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pybullet as p


@dataclass
class CommandReport:
    """What happened to a command: whether anything was clamped, and why, readable by people."""

    clamped: bool = False
    reasons: list[str] = field(default_factory=list)

    def note(self, reason: str, clamped: bool = True) -> None:
        self.reasons.append(reason)
        self.clamped = self.clamped or clamped


def finite_vector(value: Sequence[float], length: int, what: str) -> np.ndarray:
    """`value` as a float array of exactly `length` finite numbers, else ValueError saying why."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be {length} numbers, got {value!r}") from error
    if array.shape != (length,):
        raise ValueError(f"{what} must be {length} numbers, got shape {array.shape}: {value!r}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite, got {array.tolist()}")
    return array


def finite_number(value: float, what: str) -> float:
    return float(finite_vector([value], 1, what)[0])


def yaw_of(quaternion: Sequence[float]) -> float:
    """Rotation about the vertical of a top-down tool orientation (the tool x axis' heading)."""
    m = p.getMatrixFromQuaternion(quaternion)
    return math.atan2(m[3], m[0])


def top_down(yaw: float) -> tuple[float, float, float, float]:
    """Tool orientation pointing straight down, turned by `yaw` about base_link z."""
    return p.getQuaternionFromEuler((math.pi, 0.0, yaw))


def wrap_half_turn(yaw: float) -> float:
    """The angle equivalent to `yaw` modulo pi, in [-pi/2, pi/2)."""
    return (yaw + math.pi / 2) % math.pi - math.pi / 2
