"""The robot's durable local spool: one file per attempt, holding exactly `records.encode()`'s
frames, until the data server acknowledges it.

File format (`<ended_ns>-<attempt_id>.attempt`, little endian):

    b"FLSPOOL1"                     8-byte magic (format version 1)
    u32 n                           number of frames
    n x (u64 length, bytes)         the frames, unchanged: [msgpack header, jpeg, jpeg, ...]
    32 bytes                        SHA-256 of everything before it

Durability: a file is written under a temporary name, fsync'd, renamed into place and the
directory fsync'd, so after a crash (even `kill -9` or power loss) the spool holds only complete
attempts; leftover temporaries are removed at start. Names sort oldest first (the nanosecond
prefix), which is the upload order. The spool never deletes an unsent attempt: when it is full
the node pauses collecting instead (`has_room`).
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"FLSPOOL1"
SUFFIX = ".attempt"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DIGEST = 32


class SpoolError(Exception):
    """A spool file is unreadable or corrupt, or the spool directory is unusable."""


@dataclass(frozen=True)
class SpoolEntry:
    name: str
    size: int


def pack_frames(frames: list[bytes]) -> bytes:
    """The spool file's bytes for these frames."""
    parts = [MAGIC, _U32.pack(len(frames))]
    for frame in frames:
        parts += [_U64.pack(len(frame)), bytes(frame)]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def unpack_frames(data: bytes, source: str = "spool file") -> list[bytes]:
    """Inverse of pack_frames; raises SpoolError saying what is wrong."""
    if len(data) < len(MAGIC) + _U32.size + _DIGEST or not data.startswith(MAGIC):
        raise SpoolError(f"{source}: not a spool file (bad magic or truncated)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SpoolError(f"{source}: checksum mismatch (file damaged)")
    (count,) = _U32.unpack_from(body, len(MAGIC))
    offset = len(MAGIC) + _U32.size
    frames = []
    for i in range(count):
        if offset + _U64.size > len(body):
            raise SpoolError(f"{source}: frame {i} header runs past the end")
        (length,) = _U64.unpack_from(body, offset)
        offset += _U64.size
        if offset + length > len(body):
            raise SpoolError(f"{source}: frame {i} runs past the end")
        frames.append(body[offset:offset + length])
        offset += length
    if offset != len(body):
        raise SpoolError(f"{source}: {len(body) - offset} stray bytes after the last frame")
    return frames


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        final = self.directory / name
        tmp = self.directory / f".{name}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
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
        _fsync_dir(self.directory)
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
