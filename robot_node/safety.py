"""Safety in the node itself: workspace bounds, e-stop latch, watchdog.

Why here and not only in the arm: robot_node runs whatever policy it is given (a fresh network,
an exploration policy, a buggy plugin), and an arm driver's own limits differ between real arms.
So no command leaves this module that would take the tool point outside the configured
workspace, none is sent while an e-stop is engaged, and a stalled camera or policy makes the
node command a stop. Nothing here imports rclpy: the node wires these to topics and timers.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence


def yaw_of(pose: Sequence[float]) -> float:
    """Heading of the tool's x axis about base_link z, from a pose's quaternion (x,y,z,w)."""
    qx, qy, qz, qw = pose[3:7]
    return math.atan2(2 * (qx * qy + qz * qw), 1 - 2 * (qy * qy + qz * qz))


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned tool-point bounds in base_link (m), and the tool's yaw range (rad)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    yaw_lo: float = -math.pi / 2
    yaw_hi: float = math.pi / 2

    def contains(self, xyz: Sequence[float], tol: float = 1e-6) -> bool:
        return all(lo - tol <= v <= hi + tol for v, lo, hi in zip(xyz, self.lo, self.hi))

    def clip_point(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        return tuple(min(max(float(v), lo), hi) for v, lo, hi in zip(xyz, self.lo, self.hi))

    def clip_motion(self, pose: Sequence[float], motion: Sequence[float]
                    ) -> tuple[float, float, float, float]:
        """The motion (dx, dy, dz, dyaw) from `pose` (x, y, z[, qx, qy, qz, qw]) whose target
        stays inside the bounds.

        Non-finite components become 0 (a policy that returns NaN gets no motion on that
        axis). A current position already outside (e.g. a real arm started out of bounds) may
        only move back towards the box: the target is clipped, so the motion points inwards.
        """
        d = [float(m) if math.isfinite(float(m)) else 0.0 for m in motion[:4]]
        target = self.clip_point([p + dv for p, dv in zip(pose[:3], d[:3])])
        dyaw = d[3]
        if len(pose) >= 7:
            yaw = yaw_of(pose)
            dyaw = min(max(yaw + dyaw, min(self.yaw_lo, yaw)), max(self.yaw_hi, yaw)) - yaw
        else:
            dyaw = min(max(dyaw, self.yaw_lo - self.yaw_hi), self.yaw_hi - self.yaw_lo)
        return (target[0] - pose[0], target[1] - pose[1], target[2] - pose[2], dyaw)


def split_motion(motion: Sequence[float], duration: float, max_speed: float, max_yaw_rate: float
                 ) -> list[tuple[float, float, float, float]]:
    """Twist velocities (vx, vy, vz, wz), each held for `duration`, that add up to `motion`.

    A motion faster than the speed limits is split into several equal commands rather than
    being clamped by the arm (which would silently shorten it).
    """
    dist = math.sqrt(sum(m * m for m in motion[:3]))
    n = max(1, math.ceil(dist / (max_speed * duration) - 1e-9),
            math.ceil(abs(motion[3]) / (max_yaw_rate * duration) - 1e-9))
    return [tuple(m / (n * duration) for m in motion[:4])] * n


class EStop:
    """Latched e-stop over several sources (fleet-wide and per-arm topics).

    Engaged while any source last said True; released only when every source that ever spoke
    has said False. `on_engage` runs synchronously in the caller's thread (the subscription
    callback), so the zero twist goes out before the callback returns.
    """

    def __init__(self, on_engage: Callable[[], None] = lambda: None):
        self._lock = threading.Lock()
        self._sources: dict[str, bool] = {}
        self._on_engage = on_engage
        self.changed = threading.Event()

    def set(self, source: str, engaged: bool) -> None:
        with self._lock:
            was = any(self._sources.values())
            self._sources[source] = bool(engaged)
            now = any(self._sources.values())
        if now:
            self._on_engage()
        if now != was:
            self.changed.set()

    @property
    def engaged(self) -> bool:
        with self._lock:
            return any(self._sources.values())

    def sources(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._sources)


class Watchdog:
    """Camera and policy stall detection on the steady clock.

    The grasp loop marks when a policy decision starts and ends; the camera subscription feeds
    every image. `check()` (called from a timer) returns a reason when something stalled while
    collecting, and the node then commands a stop and aborts the attempt.
    """

    def __init__(self, camera_stall: float, policy_stall: float,
                 clock: Callable[[], float] = time.monotonic):
        self.camera_stall = camera_stall
        self.policy_stall = policy_stall
        self._clock = clock
        self._lock = threading.Lock()
        self._last_image: Optional[float] = None
        self._decision_started: Optional[float] = None
        self._active = False
        self.tripped: Optional[str] = None

    def image_seen(self) -> None:
        with self._lock:
            self._last_image = self._clock()

    def set_active(self, active: bool) -> None:
        """Watch only while the arm should be streaming (an attempt servoing, lifting...).

        Becoming active opens a fresh camera window (the camera may rightly have been quiet
        while idle); becoming inactive clears a trip (the attempt it ended is over).
        """
        with self._lock:
            if active and not self._active:
                self._last_image = self._clock()
            if not active and self._active:
                self.tripped = None
            self._active = active

    def decision_started(self) -> None:
        with self._lock:
            self._decision_started = self._clock()

    def decision_ended(self) -> None:
        with self._lock:
            self._decision_started = None

    def check(self) -> Optional[str]:
        """The stall reason (also kept in `tripped`), or None."""
        with self._lock:
            if not self._active or self.tripped:
                return None
            now = self._clock()
            if self._last_image is not None and now - self._last_image > self.camera_stall:
                self.tripped = f"camera stalled: no image for {now - self._last_image:.1f} s"
            elif (self._decision_started is not None
                  and now - self._decision_started > self.policy_stall):
                self.tripped = (f"policy stalled: one decision running for "
                                f"{now - self._decision_started:.1f} s")
            return self.tripped
