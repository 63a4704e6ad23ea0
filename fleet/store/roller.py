"""Rolling a sealed WAL segment into its Parquet shard, in a child process of the server.

The shard format is fleet/store/shards.py's; this module is only where and how a roll runs
(ShardRoller's docstring says why a process).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

from fleet.store.shards import warm_up, write_shard
from fleet.store.wal import WalRecord, scan


def roll_segment(root: Path, seq: int, path: Path, row_group_steps: int) -> tuple[int, int]:
    """WAL segment `path` -> shard `seq` (atomic); returns (attempts written, this process's
    peak RSS in KiB). The caller deletes the segment once this has returned."""
    records, _ = scan(path)
    # write_shard keeps the first record of an id (a segment never holds one twice)
    n = write_shard(root, seq, _hand_over(records), row_group_steps)
    return n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hand_over(records: list[WalRecord]) -> Iterator[tuple[float, list[bytes]]]:
    """Yield the records, dropping the list's reference to each: the shard writer then holds
    the only copy of the frames, and frees the images once they are in an Arrow array."""
    records.reverse()
    while records:
        r = records.pop()
        yield r.stored_at, r.frames


class ShardRoller:
    """Runs roll_segment in a child process (or inline, with use_process=False).

    Why a process: a roll is ~0.25 ms of CPU per attempt, much of it Python holding the GIL
    (re-reading the log, decoding headers, building columns), and in the server's process it
    delayed the socket thread's receives and acks behind it. In a child it runs on the other
    core, and its memory (about twice a segment while the Arrow arrays are built) leaves with
    it. The child exits within 0.1 s of its parent's death, so after a kill -9 no roll
    outlives the server for long; a roll it left half done is redone from the
    WAL, as after any crash (shards are written under temporary names, then renamed, and
    rolling a segment again rewrites the same shard).
    """

    def __init__(self, use_process: bool = True) -> None:
        self.use_process = use_process
        if not use_process:
            warm_up()  # pyarrow's start-up now, not in the first roll
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.peak_rss_kib = 0  # the roll process's peak RSS, as its last roll reported it

    def start(self, wait: bool = True) -> None:
        """Start the roll process now (about a second of CPU: Python, pyarrow), so that the
        first roll does not wait for it; roll() starts it if needed. wait=False: return at
        once, the child starts in the background."""
        with self._lock:  # the writer's committer and roller threads may both get here
            if not self.use_process or self._pool is not None:
                return
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_roller_process_init, initargs=(os.getpid(),))
            started = self._pool.submit(int)  # done once the child has initialised
        if wait:
            started.result()

    def roll(self, root: Path, seq: int, path: Path, row_group_steps: int) -> int:
        """Write shard `seq` from segment `path`; returns the attempts written. Raises what
        the roll raised (or BrokenProcessPool if the child died; the next roll starts anew)."""
        if not self.use_process:
            return roll_segment(root, seq, path, row_group_steps)[0]
        self.start()
        try:
            n, self.peak_rss_kib = self._pool.submit(
                roll_segment, root, seq, path, row_group_steps).result()
        except concurrent.futures.process.BrokenProcessPool:
            self.close()
            raise
        return n

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _roller_process_init(parent: int) -> None:
    """In the roll process: exit when the server (pid `parent`) is gone, ignore the terminal's
    Ctrl-C (the server finishes its roll, then stops this process itself), pay pyarrow's
    start-up now."""
    def watch_parent() -> None:  # not PR_SET_PDEATHSIG: that fires when the spawning THREAD ends
        while os.getppid() == parent:
            time.sleep(0.1)
        os._exit(1)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()
