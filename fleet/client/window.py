"""The upload window of a robot's client: what is in flight, when to (re-)send, the final word.

A pure state machine with no socket (fleet/client/upload_client.py owns that): `UploadWindow` holds
at most `size` unacked attempts, sends each through the callable it is given, re-sends after a
timeout that doubles per try (capped), waits the server's `retry_after` on a retryable error, and
turns an ACK or a final refusal into one `Done` event per attempt, never two (a re-sent attempt may
be acked twice: the server deduplicates, the window reports it once).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from fleet.wire import protocol as P

log = logging.getLogger("fleet.client")

#: send(seq, frames) -> True if the message was queued to a live connection
SendUpload = Callable[[int, Sequence[bytes]], bool]


@dataclass
class Done:
    """The final word on one attempt."""

    attempt_id: str
    acked: bool
    duplicate: bool = False  # the server had it already (a re-send): still safe to delete
    code: Optional[P.ErrorCode] = None  # why it was refused, when not acked
    message: str = ""


@dataclass
class ClientStats:
    sent: int = 0
    resent: int = 0
    busy: int = 0
    acked: int = 0
    refused: int = 0
    last_error: str = ""
    welcome: dict[str, Any] = field(default_factory=dict)


@dataclass
class _InFlight:
    attempt_id: str
    frames: Sequence[bytes]
    tries: int = 0
    deadline: float = 0.0  # when to (re-)send: 0 = as soon as possible


class UploadWindow:
    """At most `size` unacked uploads, their re-send deadlines and their outcomes."""

    def __init__(self, size: int, ack_timeout: float, max_backoff: float, stats: ClientStats,
                 send: SendUpload, next_seq: Iterator[int]):
        self.size, self.ack_timeout, self.max_backoff = size, ack_timeout, max_backoff
        self.stats, self._send, self._seq = stats, send, next_seq
        self._inflight: dict[str, _InFlight] = {}
        self._by_seq: dict[int, str] = {}  # request seq -> attempt id, for replies without one
        self._done: list[Done] = []

    def room(self) -> int:
        return self.size - len(self._inflight)

    def __len__(self) -> int:
        return len(self._inflight)

    def __contains__(self, attempt_id: object) -> bool:
        return attempt_id in self._inflight

    def pending_ids(self) -> list[str]:
        return list(self._inflight)

    def add(self, attempt_id: str, frames: Sequence[bytes],
            problem: Optional[P.ProtocolError] = None) -> None:
        """Take an attempt and send it; with `problem` (it breaks the server's limits) it is
        refused at once, locally, so an oversized frame never reaches (and drops) the link."""
        if attempt_id in self._inflight:
            return
        if self.room() <= 0:
            raise RuntimeError("upload window is full: poll() until room() > 0")
        item = self._inflight[attempt_id] = _InFlight(attempt_id, frames)
        if problem is not None:
            log.error("attempt %s is over the server's limits: %s", attempt_id, problem.message)
            self.finish(Done(attempt_id, False, code=problem.code, message=problem.message))
        else:
            self._try_send(item, time.monotonic())

    def _try_send(self, item: _InFlight, now: float) -> None:
        seq = next(self._seq)
        if self._send(seq, item.frames):
            self._by_seq[seq] = item.attempt_id
            self.stats.sent += 1
            if item.tries:
                self.stats.resent += 1
            backoff = self.ack_timeout * (2 ** min(item.tries, 6))
            item.deadline = now + min(backoff, self.max_backoff)
            item.tries += 1
        else:  # not connected (server away): try again soon
            item.deadline = now + min(0.2 * (2 ** min(item.tries, 4)), 2.0)

    def resend_due(self, now: float) -> None:
        for item in list(self._inflight.values()):
            if now >= item.deadline:
                if item.tries:
                    log.debug("re-sending %s (try %d)", item.attempt_id, item.tries + 1)
                self._try_send(item, now)

    def next_deadline(self) -> Optional[float]:
        return min((i.deadline for i in self._inflight.values()), default=None)

    def resend_all_now(self) -> None:
        """The link was lost and is back: whatever was in flight may have died with it."""
        for item in self._inflight.values():
            item.deadline = 0.0

    def attempt_of(self, reply: P.Reply) -> Optional[str]:
        """The attempt a reply is about (its field, else its request's seq); forgets the seq."""
        attempt_id = reply.fields.get("attempt_id") or self._by_seq.get(
            reply.seq if reply.seq is not None else -1)
        if reply.seq is not None:
            self._by_seq.pop(reply.seq, None)
        return attempt_id

    def on_error(self, attempt_id: str, reply: P.Reply) -> None:
        """An ERROR about an attempt in flight: wait and retry, or give it up for good."""
        message = str(reply.fields.get("message", ""))
        self.stats.last_error = message
        if reply.fields.get("retryable"):
            self.stats.busy += 1
            item = self._inflight[attempt_id]
            wait = max(float(reply.fields.get("retry_after") or 0.0), 0.1)
            item.deadline = time.monotonic() + min(wait, self.max_backoff)
            log.info("server busy (%s): retrying %s in %.1f s", message, attempt_id, wait)
        else:
            log.error("server refused attempt %s: %s %s", attempt_id, reply.fields.get("name"),
                      message)
            self.finish(Done(attempt_id, False, code=reply.code, message=message))

    def finish(self, done: Done) -> None:
        if self._inflight.pop(done.attempt_id, None) is None:
            return  # a second ack for a re-sent attempt: already reported
        if done.acked:
            self.stats.acked += 1
            self.stats.last_error = ""  # the link works again
        else:
            self.stats.refused += 1
        self._done.append(done)

    def has_done(self) -> bool:
        return bool(self._done)

    def take_done(self) -> list[Done]:
        done, self._done = self._done, []
        return done
