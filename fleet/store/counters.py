"""Per-robot counters of the episode store, rebuilt from the store itself on open.

They are not persisted separately: the attempts tables of the shards and the WAL already hold
every field they count, so rebuilding them on open (a projection of five small columns) cannot
disagree with the data, which a separate counters file could after a crash.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa


@dataclass
class RobotCounters:
    """What one robot has contributed; times are the server's clock (unix seconds)."""

    robot_id: str
    attempts: int = 0  # stored attempts, each counted once
    successes: int = 0
    failures: int = 0
    aborted: int = 0
    bytes: int = 0  # encoded size of the stored attempts (header + JPEG frames)
    first_seen: float = 0.0  # stored_at of its first stored attempt
    last_seen: float = 0.0  # stored_at of its latest stored attempt
    policy_version: int = 0  # policy version of its latest stored attempt
    duplicates: int = 0  # re-sent attempts since this store was opened (not persisted)


class CounterBook:
    """RobotCounters for every robot; not thread-safe (the Store holds its lock)."""

    def __init__(self) -> None:
        self._robots: dict[str, RobotCounters] = {}

    def add(self, robot_id: str, outcome: str, policy_version: int, stored_at: float,
            nbytes: int) -> None:
        c = self._robots.get(robot_id)
        if c is None:
            c = self._robots[robot_id] = RobotCounters(robot_id, first_seen=stored_at,
                                                       last_seen=stored_at)
        c.attempts += 1
        if outcome == "success":
            c.successes += 1
        elif outcome == "failure":
            c.failures += 1
        else:
            c.aborted += 1
        c.bytes += nbytes
        c.first_seen = min(c.first_seen, stored_at)
        if stored_at >= c.last_seen:
            c.last_seen = stored_at
            c.policy_version = policy_version

    def add_duplicate(self, robot_id: str) -> None:
        c = self._robots.setdefault(robot_id, RobotCounters(robot_id))
        c.duplicates += 1

    def add_table(self, table: pa.Table) -> None:
        """Count the rows of an attempts table (robot_id, outcome, policy_version, stored_at,
        encoded_bytes columns)."""
        cols = [table.column(n).to_pylist() for n in (
            "robot_id", "outcome", "policy_version", "stored_at", "encoded_bytes")]
        for robot_id, outcome, version, stored_at, nbytes in zip(*cols):
            self.add(robot_id, outcome, version, stored_at, nbytes)

    def snapshot(self) -> dict[str, RobotCounters]:
        """Copies, so the caller may read them while the store keeps counting."""
        return {rid: replace(c) for rid, c in sorted(self._robots.items())}
