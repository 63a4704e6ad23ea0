"""The robot's durable local spool: one file per attempt, holding exactly `records.encode()`'s
frames, until the data server acknowledges it.

File format (`<ended_ns>-<attempt_id>.attempt`): fleet's attempt file (fleet/wire/attempt_file.py:
magic, length-prefixed frames, SHA-256), so fleet's tools read a spool without robot_node.

Durability: a file is written under a temporary name, fsync'd, renamed into place and the
directory fsync'd, so after a crash (even `kill -9` or power loss) the spool holds only complete
attempts; leftover temporaries are removed at start. Names sort oldest first (the nanosecond
prefix), which is the upload order. The spool never deletes an unsent attempt: when it is full
the node pauses collecting instead (`has_room`).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.wire.attempt_file import MAGIC, AttemptFileError, pack_frames  # noqa: F401 (re-export)
from fleet.wire.attempt_file import unpack_frames as _unpack
from fleet.store.durable import atomic_write, fsync_dir

SUFFIX = ".attempt"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"


class SpoolError(Exception):
    """A spool file is unreadable or corrupt, or the spool directory is unusable."""


def unpack_frames(data: bytes, source: str = "spool file") -> list[bytes]:
    """The frames of a spool file; raises SpoolError saying what is wrong."""
    try:
        return _unpack(data, source)
    except AttemptFileError as exc:
        raise SpoolError(str(exc)) from None


@dataclass(frozen=True)
class SpoolEntry:
    name: str
    size: int


class Spool:
    """A directory of spooled attempts with a size limit. Thread-safe."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc}; set "
                             f"spool_dir to a writable path") from None
        self.removed_temporaries = 0
        for tmp in self.directory.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)  # a crash mid-write: the attempt was still in progress
            self.removed_temporaries += 1
        self._sizes = {p.name: p.stat().st_size for p in self.directory.glob(f"*{SUFFIX}")}

    # ------------------------------------------------------------------ writing

    def put(self, attempt_id: str, frames: list[bytes]) -> SpoolEntry:
        """Store an attempt's frames durably; returns once the file survives a crash."""
        name = f"{time.time_ns():020d}-{attempt_id}{SUFFIX}"
        data = pack_frames(frames)
        atomic_write(self.directory / name, data, tmp_suffix=TMP_SUFFIX)
        with self._lock:
            self._sizes[name] = len(data)
        return SpoolEntry(name, len(data))

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[SpoolEntry]:
        """Spooled attempts, oldest first."""
        with self._lock:
            return [SpoolEntry(n, s) for n, s in sorted(self._sizes.items())]

    def read(self, name: str) -> list[bytes]:
        """The frames of one spooled attempt, checksum verified."""
        path = self.directory / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"{path}: {exc}") from None
        return unpack_frames(data, str(path))

    def remove(self, name: str) -> None:
        """Drop an attempt: only once the server acknowledged it."""
        (self.directory / name).unlink(missing_ok=True)
        fsync_dir(self.directory)
        with self._lock:
            self._sizes.pop(name, None)

    def quarantine(self, name: str) -> None:
        """Set a damaged file aside (renamed, kept for inspection, no longer counted)."""
        path = self.directory / name
        if path.exists():
            path.rename(path.with_name(name + CORRUPT_SUFFIX))
        with self._lock:
            self._sizes.pop(name, None)

    # ------------------------------------------------------------------ accounting

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    def has_room(self, reserve: int) -> bool:
        """Whether one more attempt of about `reserve` bytes fits under the limit."""
        return self.used_bytes + max(0, reserve) <= self.max_bytes
