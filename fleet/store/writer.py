"""The episode store: durable, deduplicated, append-only storage of grasp attempts.

The data server calls `Store.append(batch)` and acks the batch only after it returns: by then
every new attempt of the batch is in the write-ahead log and fsynced (ONE fdatasync per batch,
fleet/store/wal.py). `maybe_roll()`, called from the server's loop, seals the log segment every
`shard_max_attempts` attempts / `shard_max_seconds` seconds / `shard_max_bytes` bytes and rolls
it, in a background thread, into an immutable Parquet shard (fleet/store/shards.py) that pandas,
pyarrow and fleet.store.reader.StoreReader read. docs/store.md is the format and the contract.

One process owns a store directory (an flock on `<root>/LOCK`); any number of readers may read
it at the same time.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import msgpack

from fleet.wire.records import Attempt
from fleet.store.recovery import index_shards, recover_wal, take_lock
from fleet.store.roller import ShardRoller
from fleet.store.shards import ensure_dirs, remove_temp_files, shard_name
from fleet.store.counters import CounterBook, RobotCounters
from fleet.store.types import (AppendResult, StoreConfig, StoreFullError, StoreHealth,
                               StoreLockedError)
from fleet.store.durable import fsync_dir
from fleet.store.wal import WalSegment, record_parts, segment_name

__all__ = ["AppendResult", "RobotCounters", "Store", "StoreConfig", "StoreFullError",
           "StoreHealth", "StoreLockedError"]

log = logging.getLogger(__name__)
WAL_DIR = "wal"


class Store:
    """The writer side of the episode store. Thread-safe; one Store per directory."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.root = config.root
        self._lock = threading.Lock()  # guards ids, counters, the active segment
        self._roll_lock = threading.Lock()  # one roll at a time
        self._stop_roller = threading.Event()
        self._wake_roller = threading.Event()
        self._roller_thread: threading.Thread | None = None
        self._roll_error = ""
        self._roll_retry_at = 0.0
        self._closed = False
        self._ids: set[str] = set()
        self._counters = CounterBook()
        self._sealed: list[tuple[int, Path]] = []
        self._shards = 0
        self._fsyncs = 0
        self._refused_bytes = 0  # size of the last batch refused for space; 0 after a success
        if 0 < config.min_free_bytes < config.shard_max_bytes:
            log.warning("store %s: min_free_bytes (%d) is under shard_max_bytes (%d): a roll may "
                        "then find the disk full", config.root, config.min_free_bytes,
                        config.shard_max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shard_roller = ShardRoller(config.roll_process)
        self._lock_fd = take_lock(self.root)
        try:
            self._recover()
        except BaseException:
            self._shard_roller.close()
            os.close(self._lock_fd)
            raise
        if config.background_roll:
            self._roller_thread = threading.Thread(target=self._roller, name="store-roller",
                                                   daemon=True)
            self._roller_thread.start()

    # -- opening ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild ids and counters from the shards, then the WAL; cut torn WAL tails."""
        ensure_dirs(self.root)
        wal_dir = self.root / WAL_DIR
        wal_dir.mkdir(exist_ok=True)
        remove_temp_files(self.root)
        self._shards, shard_seqs = index_shards(self.root, self._ids, self._counters)
        self._sealed, last_seq = recover_wal(self.root, wal_dir, shard_seqs, self._count_new)
        self._open_segment(last_seq + 1)
        if self._sealed:
            log.info("store %s: %d WAL segment(s) recovered; rolling them into shards",
                     self.root, len(self._sealed))
            self._roll_sealed()
        log.info("store %s open: %d attempts from %d robots in %d shards", self.root,
                 len(self._ids), len(self._counters.snapshot()), self._shards)

    def _count_new(self, frames: list[bytes], stored_at: float) -> None:
        h = msgpack.unpackb(frames[0], raw=False)  # the header: images are not counted
        if h["attempt_id"] in self._ids:
            return
        self._ids.add(h["attempt_id"])
        self._counters.add(h["robot_id"], h["outcome"], h["policy_version"], stored_at,
                           sum(len(f) for f in frames))

    def _open_segment(self, seq: int) -> None:
        self._active = WalSegment(self.root / WAL_DIR / segment_name(seq), seq)
        fsync_dir(self.root / WAL_DIR)  # the new file's name must survive a crash too

    # -- writing ---------------------------------------------------------------------------

    def append(self, attempts: list[tuple[Attempt, list[bytes]]]) -> AppendResult:
        """Store the new attempts of the batch durably (one fsync) and say which were new.

        `attempts` holds each decoded, validated Attempt with its encoded frames
        (fleet.wire.records.encode of that same attempt: the shards are built from the frames).
        Raises StoreFullError (nothing stored) when the disk is full or below the reserve; any other
        OSError also means nothing of the batch was stored.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("append on a closed Store")
            stored_at = time.time()
            new: list[tuple[Attempt, list[bytes]]] = []
            duplicates: list[str] = []
            seen: set[str] = set()
            dup_robots: list[str] = []
            for attempt, frames in attempts:
                aid = attempt.attempt_id
                _check_frames_match(attempt, frames)
                if aid in self._ids or aid in seen:
                    duplicates.append(aid)
                    dup_robots.append(attempt.robot_id)
                else:
                    seen.add(aid)
                    new.append((attempt, frames))
            if not new:
                self._count_duplicates(dup_robots)
                return AppendResult([], duplicates)
            self._shard_roller.start(wait=False)  # a roll is due within shard_max_seconds
            parts = []
            for _, frames in new:
                parts += record_parts(stored_at, frames)
            nbytes = sum(map(len, parts))
            self._check_space(nbytes)
            if self._active.broken:
                self._seal_active()
            try:
                self._active.append(parts, len(new))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self._refused_bytes = nbytes
                    raise StoreFullError(
                        exc.errno, f"store disk {self.root} is full ({exc.strerror}); the batch "
                        f"of {len(new)} attempts was not stored: free space, then resend"
                    ) from exc
                raise
            self._fsyncs += 1
            self._refused_bytes = 0
            if self._active.first_record_at is None:
                self._active.first_record_at = time.monotonic()
            for attempt, frames in new:
                self._ids.add(attempt.attempt_id)
                self._counters.add(attempt.robot_id, attempt.outcome, attempt.policy_version,
                                   stored_at, sum(len(f) for f in frames))
            self._count_duplicates(dup_robots)
            return AppendResult([a.attempt_id for a, _ in new], duplicates)

    def _count_duplicates(self, robots: list[str]) -> None:
        for robot_id in robots:
            self._counters.add_duplicate(robot_id)

    def _check_space(self, nbytes: int) -> None:
        if self.config.min_free_bytes == 0:
            return
        free = _free_bytes(self.root)
        if free - nbytes < self.config.min_free_bytes:
            self._refused_bytes = nbytes
            raise StoreFullError(
                errno.ENOSPC, f"store disk {self.root} has {free / 2**20:.1f} MiB free, which a "
                f"{nbytes / 2**10:.0f} KiB batch would take under the reserve of "
                f"{self.config.min_free_bytes / 2**20:.1f} MiB (StoreConfig.min_free_bytes); "
                f"the batch was not stored: free space, then resend")

    def contains(self, attempt_id: str) -> bool:
        with self._lock:
            return attempt_id in self._ids

    def counters(self) -> dict[str, RobotCounters]:
        """Per-robot counters, keyed by robot id (copies; dataclasses.asdict works on them)."""
        with self._lock:
            return self._counters.snapshot()

    def health(self) -> StoreHealth:
        free = _free_bytes(self.root)
        with self._lock:
            wal_bytes = self._active.size + sum(_size(p) for _, p in self._sealed)
            reasons = []
            if self._closed:
                reasons.append("store is closed")
            if free < self.config.min_free_bytes:
                reasons.append(f"disk free {free / 2**20:.1f} MiB is under the reserve of "
                               f"{self.config.min_free_bytes / 2**20:.1f} MiB: refusing batches")
            elif free < self.config.min_free_bytes + self._refused_bytes:
                reasons.append(f"disk free {free / 2**20:.2f} MiB is too little for the last "
                               f"refused batch ({self._refused_bytes / 2**20:.2f} MiB) on top of "
                               f"the reserve: free space on {self.root}")
            return StoreHealth(
                ok=not reasons, reason="; ".join(reasons), free_bytes=free,
                min_free_bytes=self.config.min_free_bytes, wal_bytes=wal_bytes,
                wal_attempts=self._active.records, sealed_segments=len(self._sealed),
                shards=self._shards, attempts=len(self._ids), fsyncs=self._fsyncs,
                roll_error=self._roll_error)

    # -- rolling ---------------------------------------------------------------------------

    def maybe_roll(self) -> None:
        """Seal the active segment if it is due, and roll sealed segments into shards.

        With background_roll (the default) the store's own roller thread does this every
        roll_interval seconds and this call only wakes it; without, it rolls here, inline.
        """
        if self._seal_if_due() and self.config.background_roll:
            self._wake_roller.set()
        elif not self.config.background_roll:
            self._roll_if_allowed()

    def _seal_if_due(self) -> bool:
        """Seal the active segment if full or old enough; True if sealed segments wait."""
        with self._lock:
            if self._closed:
                return False
            a, cfg = self._active, self.config
            age = time.monotonic() - a.first_record_at if a.first_record_at else 0.0
            if a.records and (a.records >= cfg.shard_max_attempts or a.size >= cfg.shard_max_bytes
                              or age >= cfg.shard_max_seconds):
                self._seal_active()
            return bool(self._sealed)

    def start_rolling(self) -> None:
        """Start the roll process now, not at the first append (the server: before serving)."""
        self._shard_roller.start()

    def _roll_if_allowed(self) -> None:
        if self._seal_if_due() and time.monotonic() >= self._roll_retry_at:
            self._roll_sealed()

    def _roller(self) -> None:
        """The background thread: rolls due segments until close()."""
        while not self._stop_roller.is_set():
            self._wake_roller.wait(self.config.roll_interval)
            self._wake_roller.clear()
            if not self._stop_roller.is_set():
                self._roll_if_allowed()

    def roll(self) -> None:
        """Seal the active segment and roll every sealed one into a shard, now (synchronous)."""
        with self._lock:
            if self._active.records:
                self._seal_active()
        self._roll_sealed(raise_errors=True)

    def _seal_active(self) -> None:
        """Start a new segment; the old one waits in _sealed for a roll. Caller holds _lock."""
        old = self._active
        old.close()
        self._sealed.append((old.seq, old.path))
        self._open_segment(old.seq + 1)

    def _roll_sealed(self, raise_errors: bool = False) -> None:
        with self._roll_lock:
            while True:
                with self._lock:
                    if not self._sealed:
                        return
                    seq, path = self._sealed[0]
                try:
                    self._roll_segment(seq, path)
                except Exception as exc:
                    self._roll_error = f"{type(exc).__name__}: {exc}"
                    self._roll_retry_at = time.monotonic() + self.config.roll_retry_seconds
                    log.error("store %s: rolling %s failed (%s); it stays in the WAL and is "
                              "retried", self.root, path.name, self._roll_error)
                    if raise_errors:
                        raise
                    return
                with self._lock:
                    self._sealed.pop(0)
                    self._shards += 1
                    self._roll_error = ""

    def _roll_segment(self, seq: int, path: Path) -> None:
        t0 = time.monotonic()
        n = self._shard_roller.roll(self.root, seq, path, self.config.steps_row_group)
        path.unlink()
        fsync_dir(path.parent)
        log.info("store %s: rolled %d attempts into shard %s in %.2f s%s", self.root, n,
                 shard_name(seq), time.monotonic() - t0,
                 f" (roll process peak RSS {self._shard_roller.peak_rss_kib / 1024:.0f} MB)"
                 if self.config.roll_process else "")

    def close(self) -> None:
        """Stop rolling, optionally roll what is left, release the directory. Idempotent."""
        if self._closed:
            return
        if self._roller_thread is not None:
            self._stop_roller.set()
            self._wake_roller.set()
            self._roller_thread.join()
        if self.config.roll_on_close:
            try:
                self.roll()
            except Exception as exc:  # the WAL keeps it; the next open rolls it
                log.warning("store %s: roll on close failed (%s); kept in the WAL", self.root,
                            exc)
        with self._lock:
            self._closed = True
            self._active.close()
        self._shard_roller.close()
        os.close(self._lock_fd)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_frames_match(attempt: Attempt, frames: list[bytes]) -> None:
    """The shards are built from the frames and dedup uses the Attempt: they must agree.

    A guard against a caller's mistake (the server decodes the Attempt from these very
    frames), so it looks for the packed `"attempt_id": <id>` pair in the header frame rather
    than decoding the header a second time (a fifth of append's CPU per attempt).
    """
    if (len(frames) != 1 + (2 if attempt.has_depth else 1) * len(attempt.steps)
            or _ID_KEY + msgpack.packb(attempt.attempt_id) not in frames[0]):
        raise ValueError(
            f"append() got frames that are not fleet.wire.records.encode() of attempt "
            f"{attempt.attempt_id!r} ({len(frames)} frames for {len(attempt.steps)} steps, or "
            f"a header naming another id); pass each attempt with its own frames")


_ID_KEY = msgpack.packb("attempt_id")


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
