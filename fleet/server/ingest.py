"""Group commit: the writer thread that turns many concurrent uploads into one fsync.

The server's socket thread validates uploads and offers them to an `IngestQueue`, bounded in
attempts and bytes so memory stays bounded whatever the fleet sends. The `Committer` thread
takes everything waiting (up to a group size), appends it to the store in ONE call (one fsync),
and only then hands acknowledgements back to the socket thread. While an fsync runs, the next
group piles up, so the number of fsyncs per second stays near the disk's limit however many
robots upload: throughput scales with the group, not with the fsync rate.

A re-sent attempt that is still waiting joins the waiting entry (one write, every sender
acked). When the store refuses (disk full) the committer answers BUSY for everything waiting,
marks itself blocked with the reason, and probes the store's health until it recovers; it never
acknowledges what was not stored.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from fleet.wire.records import Attempt

log = logging.getLogger(__name__)

Waiter = tuple[bytes, Optional[int]]  # (ROUTER routing id, request seq)


@dataclass
class Pending:
    attempt: Attempt
    frames: list[bytes]
    nbytes: int
    waiters: list[Waiter] = field(default_factory=list)


@dataclass
class Outcome:
    """What to tell the waiters of one attempt: acked (new or duplicate) or a retryable error."""

    pending: Pending
    stored: bool
    duplicate: bool = False
    error: Optional[str] = None  # "busy" or "internal" when not stored
    reason: str = ""


class IngestQueue:
    """Attempts validated but not yet durable, bounded by count and bytes."""

    def __init__(self, max_attempts: int, max_bytes: int):
        self.max_attempts, self.max_bytes = max_attempts, max_bytes
        self._items: "collections.OrderedDict[str, Pending]" = collections.OrderedDict()
        self._bytes = 0
        self._cond = threading.Condition()

    def has_room(self) -> bool:
        with self._cond:
            return len(self._items) < self.max_attempts and self._bytes < self.max_bytes

    def depth(self) -> tuple[int, int]:
        with self._cond:
            return len(self._items), self._bytes

    def offer(self, attempt: Attempt, frames: list[bytes], waiter: Waiter) -> None:
        """Queue an attempt (the caller checked has_room; one item may overshoot the bound)."""
        self.offer_many([(attempt, frames, waiter)])

    def offer_many(self, items: list[tuple[Attempt, list[bytes], Waiter]]) -> None:
        """Queue several attempts and wake the committer once (a wake-up per attempt made the
        committer take the GIL, and commit tiny groups, once per upload)."""
        with self._cond:
            for attempt, frames, waiter in items:
                existing = self._items.get(attempt.attempt_id)
                if existing is not None:
                    existing.waiters.append(waiter)
                    continue
                nbytes = sum(map(len, frames))
                self._items[attempt.attempt_id] = Pending(attempt, frames, nbytes, [waiter])
                self._bytes += nbytes
            self._cond.notify()

    def take(self, max_group: int, timeout: float) -> list[Pending]:
        """Everything waiting (up to max_group), or [] after timeout."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            group = []
            while self._items and len(group) < max_group:
                _, p = self._items.popitem(last=False)
                self._bytes -= p.nbytes
                group.append(p)
            return group

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class Committer(threading.Thread):
    """Drains the queue into the store, one append per group, and reports outcomes.

    `notify` is called (from this thread) after outcomes are queued, so the socket thread can
    wake up and send the acks; outcomes themselves go through a thread-safe deque.
    """

    def __init__(self, store, queue: IngestQueue, notify: Callable[[], None], max_group: int = 1024,
                 health_interval: float = 1.0, commit_delay: float = 0.0,
                 on_commit: Optional[Callable[[int, float], None]] = None):
        super().__init__(name="fleet-committer", daemon=True)
        self.store, self.queue = store, queue
        self.notify, self.max_group = notify, max_group
        self.health_interval, self.commit_delay = health_interval, commit_delay
        self.on_commit = on_commit
        self.outcomes: collections.deque[Outcome] = collections.deque()
        self.blocked_reason: Optional[str] = None  # read by the socket thread (atomic)
        self._halt = threading.Event()
        self._next_probe = 0.0
        self.commits = 0
        self.committed = 0

    def stop(self) -> None:
        """Finish what is queued (or answer BUSY if blocked), then exit."""
        self._halt.set()
        self.queue.wake()

    def run(self) -> None:
        while True:
            if self.blocked_reason is not None:
                self._probe_health()
            group = self.queue.take(self.max_group, timeout=0.2)
            if group:
                self._commit(group)
            elif self._halt.is_set():
                return

    def _probe_health(self) -> None:
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + self.health_interval
        try:
            health = self.store.health()
        except Exception as exc:  # a broken store stays blocked, and says why
            log.warning("store health check failed: %s", exc)
            return
        if getattr(health, "ok", False):
            log.info("store healthy again (%s); accepting uploads",
                     getattr(health, "reason", ""))
            self.blocked_reason = None
        else:
            self.blocked_reason = getattr(health, "reason", "store not healthy") or "unhealthy"

    def _commit(self, group: list[Pending]) -> None:
        if self.blocked_reason is not None:
            self._refuse(group, "busy", self.blocked_reason)
            return
        if self.commit_delay:
            time.sleep(self.commit_delay)
        t0 = time.perf_counter()
        try:
            result = self.store.append([(p.attempt, p.frames) for p in group])
        except OSError as exc:  # StoreFullError is an OSError; so is ENOSPC from the kernel
            self.blocked_reason = f"store refused writes: {exc}"
            self._next_probe = time.monotonic() + self.health_interval
            log.error("back-pressure: %s; answering BUSY, robots keep their attempts spooled",
                      self.blocked_reason)
            self._refuse(group, "busy", self.blocked_reason)
            return
        except Exception as exc:
            log.exception("store append failed for %d attempts", len(group))
            self._refuse(group, "internal", f"store append failed: {exc}")
            return
        elapsed = time.perf_counter() - t0
        self.commits += 1
        self.committed += len(group)
        duplicates = set(result.duplicates)
        for p in group:
            self.outcomes.append(Outcome(p, True, p.attempt.attempt_id in duplicates))
        if self.on_commit:
            self.on_commit(len(group), elapsed)
        self.notify()

    def _refuse(self, group: list[Pending], error: str, reason: str) -> None:
        for p in group:
            self.outcomes.append(Outcome(p, False, error=error, reason=reason))
        self.notify()
