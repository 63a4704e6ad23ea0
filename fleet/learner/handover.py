"""Handing training batches from DataLoader workers to the training process through a ring of
preallocated shared-memory slots.

Why: a tensor a DataLoader worker yields normally travels in a new shared-memory file per
batch: the worker copies the batch into it and serves its descriptor over a Unix socket, the
training process receives and maps it, faults its pages in, and unmaps it when the batch dies.
Measured here for one 64-image 64x64 batch (786 KB): 6.2 ms of training-process CPU and 3.0 ms
of worker CPU per batch, about a tenth of a training step. Instead each worker allocates a ring
of slots once and sends it once (with its first group of batches), then writes every batch into
a slot and sends only (batch number, slot, layout): about 1 ms and 0.3 ms. And each DataLoader
request carries a group of `prefetch` batches instead of one, because every request also costs
the training process a queue-feeder thread wake-up and a GIL hand-off (about 0.5 ms of CPU, and
a few ms of wall time when the cores are saturated and the training thread loses its core).

Why a slot is never overwritten before it is read: a worker's ring holds 3 groups. The
DataLoader (in order, prefetch_factor 1) keeps at most one request per worker outstanding and
sends worker w its next request only when the training process receives w's previous group. So
while the training process reads group m of worker w, w may be writing group m + 1 and nothing
else: group m + 2 is requested only when group m + 1 is received, which happens after every
batch of group m was taken. The training process copies each batch out of its slot as it hands
it to the learner (about 0.1 ms for 786 KB), so the learner owns its batches and may keep them.

Ring sizes only grow: a group larger than its worker's slots (a learner whose batch shape
changed) makes the worker allocate a larger ring and send it with that group; batches already
delivered keep a reference to the ring they lie in.
"""
from __future__ import annotations

import signal
from collections import deque
from typing import Iterator, NamedTuple, Optional, Protocol

import cv2
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fleet.learner.frame_cache import FrameCacheStats
from fleet.learner.api import Batch

Layout = list[tuple[str, torch.dtype, tuple[int, ...], int, int]]  # name, dtype, shape, at, n
_ALIGN = 16  # every tensor starts 16-byte aligned in its slot, so any dtype can be viewed


class NumberedBatches(Protocol):
    """What the ring wraps: an iterable of (batch number, batch) with cache counters."""

    def __iter__(self) -> Iterator[tuple[int, Batch]]: ...

    def frame_cache_stats(self) -> FrameCacheStats: ...


class Delivery(NamedTuple):
    """What crosses the worker -> training process queue for one group of batches (a few hundred
    bytes, except when it carries a new ring's descriptor: each worker's first message)."""

    worker: int
    batches: list[tuple[int, int, Layout]]  # (batch number, slot, layout), in the worker's order
    ring: Optional[torch.Tensor]  # set when the worker (re)allocated its ring
    cache: FrameCacheStats  # the worker's frame cache counters after this group


def layout_of(batch: Batch) -> tuple[Layout, int]:
    """Where each tensor of `batch` lies in one byte buffer, and the buffer's size."""
    layout: Layout = []
    offset = 0
    for name, t in batch.items():
        n = t.numel() * t.element_size()
        layout.append((name, t.dtype, tuple(t.shape), offset, n))
        offset += -(-n // _ALIGN) * _ALIGN
    return layout, max(offset, _ALIGN)


def write_batch(batch: Batch, layout: Layout, dest: torch.Tensor) -> None:
    for name, _, _, at, n in layout:
        dest[at:at + n].view(batch[name].dtype).copy_(batch[name].reshape(-1))


def view_batch(buf: torch.Tensor, layout: Layout) -> Batch:
    """Tensors viewing `buf` (no copy)."""
    return {name: buf[at:at + n].view(dtype).view(shape) for name, dtype, shape, at, n in layout}


def worker_init(_worker_id: int) -> None:
    """Workers decode with one thread each and leave Ctrl-C to the training process, which
    checkpoints and then shuts them down. OpenCV is already single-threaded here: the training
    process stopped its pool before forking (`stop_opencv_pool`), and touching the inherited
    pool again (even `cv2.setNumThreads(1)`) is what hung."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def stop_opencv_pool() -> None:
    """Run OpenCV single-threaded in this process before it forks DataLoader workers.

    Why: OpenCV's thread pool is not fork-safe. Once this process has used it (any imencode or
    resize of a large enough image starts it), a worker forked afterwards hangs in its first
    OpenCV call, waiting for pool threads that do not exist in the child. That hung CI at
    84b5521: tests/test_export.py encodes images in the pytest process, and every later test
    that streamed batches through workers timed out. `setNumThreads(0)` stops the pool; a
    training process decodes little itself (its workers decode), so it loses nothing.
    """
    cv2.setNumThreads(0)


class SlotRing(IterableDataset):
    """The DataLoader's dataset: runs `source` in a worker and writes its batches into a ring of
    `groups` x `group` slots, one Delivery per `group` batches."""

    def __init__(self, source: NumberedBatches, group: int, groups: int) -> None:
        super().__init__()
        if group < 1 or groups < 2:
            raise ValueError("a slot ring needs group >= 1 and at least 2 groups")
        self.source, self.group, self.groups = source, group, groups

    def __iter__(self) -> Iterator[Delivery]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        ring: Optional[torch.Tensor] = None
        pending: list[tuple[int, Batch]] = []
        g = 0
        for numbered in self.source:
            pending.append(numbered)
            if len(pending) < self.group:
                continue
            layouts = [layout_of(batch) for _, batch in pending]
            nbytes = max(n for _, n in layouts)
            fresh = ring is None or nbytes > ring.shape[1]
            if fresh:
                ring = torch.empty((self.groups * self.group, nbytes), dtype=torch.uint8)
                if info is not None:
                    ring.share_memory_()
            assert ring is not None
            first = (g % self.groups) * self.group
            for j, ((_, batch), (layout, _)) in enumerate(zip(pending, layouts)):
                write_batch(batch, layout, ring[first + j])
            yield Delivery(worker, [(no, first + j, layout) for j, ((no, _), (layout, _))
                                    in enumerate(zip(pending, layouts))],
                           ring if fresh else None, self.source.frame_cache_stats())
            pending, g = [], g + 1


class BatchStream:
    """Batches in order from `workers` DataLoader worker processes (0: this process).

    Each worker hands over `prefetch` batches per DataLoader item and prepares the next
    `prefetch` while the training process consumes them (one DataLoader request per group
    rather than per batch: each request wakes a queue-feeder thread in the training process,
    and under load the GIL hand-off cost about 2 ms of wall time per batch). Iterate it;
    `close()` (or dropping it) shuts the workers down. `frame_cache()` sums the workers' frame
    cache counters as of their latest groups.
    """

    def __init__(self, source: NumberedBatches, workers: int, prefetch: int = 4,
                 pin_memory: bool = False, first_batch: int = 0) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        # one request outstanding per worker: the group in use, the one being written, a spare
        extra = {"prefetch_factor": 1} if workers else {}
        if workers:
            stop_opencv_pool()
        # DataLoader's own pin_memory would copy the ring out of shared memory; pin here instead
        loader = DataLoader(SlotRing(source, group=prefetch, groups=3), batch_size=None,
                            num_workers=workers, collate_fn=_as_is, worker_init_fn=worker_init,
                            **extra)
        self._deliveries: Optional[Iterator[Delivery]] = iter(loader)
        self._workers = max(1, workers)
        self._ready: deque[tuple[int, torch.Tensor, int, Layout]] = deque()
        self._cache: dict[int, FrameCacheStats] = {}
        self._rings: dict[int, torch.Tensor] = {}
        self._pin = pin_memory
        self._next_no = first_batch

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Batch:
        if self._deliveries is None:
            raise StopIteration
        if not self._ready:
            self._take_round()
        no, ring, slot, layout = self._ready.popleft()
        if no != self._next_no:
            raise RuntimeError(f"batch {no} arrived where {self._next_no} was due: the "
                               f"DataLoader no longer deals requests round robin in order")
        self._next_no += 1
        used = layout[-1][3] + layout[-1][4] if layout else 0
        own = torch.empty(used, dtype=torch.uint8, pin_memory=self._pin)
        own.copy_(ring[slot, :used])  # a copy the learner owns: the worker will reuse the slot
        return view_batch(own, layout)

    def _take_round(self) -> None:
        """One group from each worker (the DataLoader deals requests round robin), interleaved
        back into batch order."""
        assert self._deliveries is not None
        got = []
        for _ in range(self._workers):
            d = next(self._deliveries)
            if d.ring is not None:
                self._rings[d.worker] = d.ring
            self._cache[d.worker] = d.cache
            ring = self._rings[d.worker]
            got.extend((no, ring, slot, layout) for no, slot, layout in d.batches)
        self._ready.extend(sorted(got, key=lambda item: item[0]))

    def frame_cache(self) -> FrameCacheStats:
        total = FrameCacheStats()
        for s in self._cache.values():
            total = total + s
        return total

    def close(self) -> None:
        """Shut the worker processes down (dropping the DataLoader iterator does it)."""
        self._deliveries = None
        self._rings.clear()

    def __del__(self) -> None:
        self.close()


def _as_is(x: Delivery) -> Delivery:
    return x
