"""A bounded cache of decoded camera frames, keyed by the JPEG bytes themselves.

Why: the learner samples stored steps uniformly with replacement, so between two publications
it draws each step of a store of a few thousand attempts tens of times, and every draw used to
decode the same JPEG again (about 55 us of a worker's CPU for 64x64, a third of the worker's
work per batch). A hit costs a hash of the JPEG bytes and a dict look-up (about 2 us).

- The key is the JPEG's bytes (plus the output size), not its place in the store: a hit is
  exact (the dict compares the bytes whenever the hashes match), it needs nothing from the store
  layout, and any learner's collate gets it by calling `fleet.learner.dataset.decode_rgb`.
- Bounded in bytes, least recently used out first. An entry costs the decoded frame
  (H x W x 3 bytes: 12,288 for 64x64), the JPEG bytes kept as its key (about 2-3 KB at 64x64)
  and `ENTRY_OVERHEAD` of Python objects: about 15 KB per 64x64 frame, so 512 MiB holds about
  35,000 frames.
- Cached frames are read-only arrays: a caller that wrote into one would corrupt later batches,
  so numpy raises instead.
- One cache per process, used only inside `FrameCache.active()` (the dataset wraps its collate
  call with it), so decoding elsewhere in the process (the validation set) is untouched.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

#: Python objects around one entry (ndarray header, key tuple, bytes header, OrderedDict node),
#: measured with tracemalloc on CPython 3.11: about 320 bytes.
ENTRY_OVERHEAD = 320

Decode = Callable[[bytes, int, int], np.ndarray]

_active: ContextVar[Optional["FrameCache"]] = ContextVar("fleet_frame_cache", default=None)


@dataclass(frozen=True)
class FrameCacheStats:
    """Counters of one cache (picklable: workers send them to the training process)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    frames: int = 0  # entries held now
    nbytes: int = 0  # bytes accounted now (frames + keys + ENTRY_OVERHEAD each)
    max_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else float("nan")

    def __add__(self, other: "FrameCacheStats") -> "FrameCacheStats":
        return FrameCacheStats(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def __sub__(self, other: "FrameCacheStats") -> "FrameCacheStats":
        """Counters since `other` (hits, misses, evictions); sizes stay those of self."""
        return FrameCacheStats(self.hits - other.hits, self.misses - other.misses,
                               self.evictions - other.evictions, self.frames, self.nbytes,
                               self.max_bytes)

    def as_tuple(self) -> tuple[int, ...]:
        return (self.hits, self.misses, self.evictions, self.frames, self.nbytes, self.max_bytes)


class FrameCache:
    """LRU of decoded frames, at most `max_bytes` (0 disables it: every call decodes)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"frame cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._frames: OrderedDict[tuple[bytes, int, int], np.ndarray] = OrderedDict()
        self._nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def decode(self, jpeg: bytes, height: int, width: int, decode: Decode) -> np.ndarray:
        """The frame `decode(jpeg, height, width)` returns, decoded at most once while cached."""
        if self.max_bytes == 0:
            self.misses += 1
            return decode(jpeg, height, width)
        key = (bytes(jpeg), height, width)  # bytes(): a memoryview or bytearray is not hashable
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            self.hits += 1
            return frame
        self.misses += 1
        frame = decode(jpeg, height, width)
        frame.flags.writeable = False
        size = frame.nbytes + len(key[0]) + ENTRY_OVERHEAD
        if size <= self.max_bytes:
            self._frames[key] = frame
            self._nbytes += size
            while self._nbytes > self.max_bytes:
                (old, _, _), dropped = self._frames.popitem(last=False)
                self._nbytes -= dropped.nbytes + len(old) + ENTRY_OVERHEAD
                self.evictions += 1
        return frame

    def stats(self) -> FrameCacheStats:
        return FrameCacheStats(self.hits, self.misses, self.evictions, len(self._frames),
                               self._nbytes, self.max_bytes)

    def clear(self) -> None:
        self._frames.clear()
        self._nbytes = 0

    @contextmanager
    def active(self) -> Iterator["FrameCache"]:
        """Within the block, `active_cache()` (so `fleet.learner.dataset.decode_rgb`) uses this."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


def active_cache() -> Optional[FrameCache]:
    """The cache of the innermost `FrameCache.active()` block, None outside any."""
    return _active.get()
