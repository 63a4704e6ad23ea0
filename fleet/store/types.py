"""The episode store's public value types: its config, what append() and health() return,
and its errors. Kept apart from fleet/store/writer.py so the server (and its tests) can name them
without reading the writer's machinery; fleet.store re-exports every one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class StoreConfig:
    """Every tunable of the store. The defaults suit one data server for a dozen arms."""

    root: Path
    #: Roll the WAL into a shard at this many attempts... (big shards amortise a roll's fixed
    #: cost: four fsyncs, two Parquet footers, and fewer files for readers to open)
    shard_max_attempts: int = 2000
    shard_max_seconds: float = 5.0  # ...or this age (new data visible to readers in seconds)
    shard_max_bytes: int = 32 * 2**20  # ...or this size (a roll holds ~2x this in memory)
    #: Refuse batches when the disk's free space would drop below this. Keep it above
    #: shard_max_bytes: rolling a segment needs about its size again while both exist.
    #: 0 disables the check: the kernel's ENOSPC (still a StoreFullError) is the only guard.
    min_free_bytes: int = 64 * 2**20
    steps_row_group: int = 64  # steps per Parquet row group: the unit a sampler reads
    background_roll: bool = True  # a store thread seals and rolls (False: maybe_roll does)
    roll_interval: float = 0.5  # how often that thread checks whether a roll is due, s
    roll_retry_seconds: float = 5.0  # wait this long after a failed roll before retrying
    roll_on_close: bool = True  # make everything visible to readers on a clean close
    #: Roll in a child process (fleet.store.roller.ShardRoller): the roll's Python then never holds
    #: the writer's GIL, so acks do not wait behind it. `fleet serve` turns it on. Off by
    #: default because a spawned child re-imports the caller's __main__: a script that opens a
    #: Store without an `if __name__ == "__main__":` guard would start itself again.
    roll_process: bool = False

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.shard_max_attempts < 1 or self.shard_max_seconds <= 0:
            raise ValueError("shard_max_attempts must be >= 1 and shard_max_seconds > 0")
        if self.min_free_bytes < 0 or self.steps_row_group < 1:
            raise ValueError("min_free_bytes must be >= 0 and steps_row_group >= 1")


@dataclass
class AppendResult:
    new: list[str]  # attempt ids stored now
    duplicates: list[str]  # attempt ids that were already stored (ack them too)


@dataclass
class StoreHealth:
    """For the server's back-pressure decisions, logs and metrics."""

    ok: bool  # False: append() refuses batches now (disk under the reserve, or closed)
    reason: str  # why not ok, for a human; "" when ok
    free_bytes: int  # free bytes on the store's file system (for unprivileged users)
    min_free_bytes: int
    wal_bytes: int  # bytes in WAL segments not yet rolled into shards
    wal_attempts: int  # attempts in the active WAL segment
    sealed_segments: int  # full segments waiting to be rolled
    shards: int
    attempts: int  # attempts stored in total (shards + WAL)
    fsyncs: int  # WAL group commits since open (one per append that stored something)
    roll_error: str  # "" or why rolling the WAL into shards last failed (retried; data is safe)


class StoreFullError(OSError):
    """The store's disk is full, or below its free-space reserve. The batch was NOT stored
    (do not ack it); the same batch succeeds once space is freed."""


class StoreLockedError(RuntimeError):
    """Another process has this store open for writing."""
