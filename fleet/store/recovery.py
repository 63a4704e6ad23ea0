"""Opening a store: the writer's lock, and what it finds on disk after a clean stop or a crash.

Recovery is what makes an ack a promise: an acknowledged attempt is in an fsynced WAL record or
in a shard, so re-reading both (ids and counters from the shards' attempt index, then every WAL
segment not yet rolled) rebuilds exactly the acknowledged state. A WAL segment whose shard is
complete was rolled just before a crash and is dropped; a torn tail (an unacked batch that was
being written) is cut off.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Callable

from fleet.store.counters import CounterBook
from fleet.store.durable import fsync_dir, fsync_file
from fleet.store.shards import STEPS_DIR, list_shards, read_index, shard_name
from fleet.store.types import StoreLockedError
from fleet.store.wal import list_segments, scan

log = logging.getLogger("fleet.store.writer")


def take_lock(root: Path) -> int:
    """An exclusive flock on <root>/LOCK holding this process's pid; StoreLockedError if
    another process writes the store."""
    fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StoreLockedError(
            f"store {root} is already open for writing by process {holder or '?'}; "
            f"run one data server per store directory (readers need no lock)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def index_shards(root: Path, ids: set[str], counters: CounterBook) -> tuple[int, set[int]]:
    """Add every shard's attempt ids and counts; (number of shards, their sequence numbers)."""
    shards = list_shards(root)
    for seq, name in shards:
        if not (root / STEPS_DIR / name).exists():
            log.error("shard %s has no steps file: its images are lost", name)
        try:
            table = read_index(root, name, ["attempt_id", "robot_id", "outcome",
                                            "policy_version", "stored_at", "encoded_bytes"])
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise RuntimeError(
                f"shard {root / 'attempts' / name} is unreadable ({exc}); shards are "
                f"written atomically, so this is disk damage: restore it from a backup or "
                f"move both part files of that name out of the store, then restart") from exc
        ids.update(table.column("attempt_id").to_pylist())
        counters.add_table(table)
    return len(shards), {seq for seq, _ in shards}


def recover_wal(root: Path, wal_dir: Path, shard_seqs: set[int],
                count_new: Callable[[list[bytes], float], None]
                ) -> tuple[list[tuple[int, Path]], int]:
    """Replay every WAL segment not yet rolled through count_new(frames, stored_at), cutting
    torn tails; returns the segments to roll (seq, path) and the highest sequence number."""
    sealed: list[tuple[int, Path]] = []
    last_seq = max(shard_seqs, default=0)
    for seq, path in list_segments(wal_dir):
        last_seq = max(last_seq, seq)
        if seq in shard_seqs and (root / STEPS_DIR / shard_name(seq)).exists():
            path.unlink()  # rolled just before a crash; its shard is complete
            continue
        records, valid_end = scan(path)
        if valid_end < path.stat().st_size:
            log.warning("WAL %s: torn tail of %d bytes truncated (an unacked batch)",
                        path.name, path.stat().st_size - valid_end)
            os.truncate(path, valid_end)
            fsync_file(path)
        if not records:
            path.unlink()
            continue
        for r in records:
            count_new(r.frames, r.stored_at)
        sealed.append((seq, path))
    fsync_dir(wal_dir)
    return sealed, last_seq
