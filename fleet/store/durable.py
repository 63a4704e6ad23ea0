"""Crash-safe file writes, shared by everything that must never leave half a file behind:
policy bundles, learner checkpoints, the store's WAL and shards, the robot's spool.

The rule everywhere: write a temporary file beside the target, fsync it, rename it over the
target (atomic on POSIX), then fsync the directory so the rename itself survives a power loss.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union


def fsync_dir(path: Union[str, os.PathLike]) -> None:
    """Make a directory's entries (a created, renamed or deleted file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Union[str, os.PathLike]) -> None:
    """Make a file's written bytes durable (a file written without fsync, e.g. by pyarrow)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike],
                 data: Union[bytes, Callable[[BinaryIO], None]], *,
                 sync_dir: bool = True, tmp_suffix: str = "") -> None:
    """Write `data` (bytes, or a function that writes to the open file) to `path` so that a
    reader, or the file system after a crash, sees either the old file or the whole new one.

    `sync_dir=False` lets a caller that renames several files fsync their directory once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=tmp_suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Union[str, os.PathLike], value: dict[str, Any]) -> None:
    """A small JSON object file (pointers, pins, checkpoint info), written atomically."""
    data = json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode()
    atomic_write(path, data)
