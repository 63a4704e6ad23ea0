"""The learner's input pipeline: the decoded-frame cache and the shared-memory batch hand-over,
with real JPEGs, a real store and real DataLoader worker processes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch

from fleet.learner.handover import BatchStream
from fleet.learner.dataset import StoreBatches, decode_rgb, stream_batches
from fleet.learner.frame_cache import ENTRY_OVERHEAD, FrameCache, FrameCacheStats, active_cache
from fleet.methods.levine.learner import LevineCollate
from fleet.learner.api import Batch
from fleet.store.reader import StoreReader
from test_learner import build_store


def jpeg_of(seed: int, size: int = 32) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"), 60)


# -- the frame cache -----------------------------------------------------------------------------

def test_frame_cache_decodes_once_exactly_and_stays_within_its_bytes():
    jpegs = [jpeg_of(i) for i in range(6)]
    entry = 32 * 32 * 3 + len(jpegs[0]) + ENTRY_OVERHEAD
    cache = FrameCache(max_bytes=int(3.5 * entry))  # room for 3 entries
    decoded: list[bytes] = []

    def decode(jpeg: bytes, h: int, w: int) -> np.ndarray:
        decoded.append(jpeg)
        return decode_rgb(jpeg, h, w)  # outside active(): a real decode

    with cache.active():
        assert active_cache() is cache
        first = decode_rgb(jpegs[0], 32, 32)
    assert active_cache() is None
    again = cache.decode(bytes(bytearray(jpegs[0])), 32, 32, decode)  # equal bytes, new object
    assert again is first and decoded == [] and cache.hits == 1
    assert not again.flags.writeable  # a caller cannot corrupt later batches
    np.testing.assert_array_equal(again, decode_rgb(jpegs[0], 32, 32))
    # a different output size is a different frame
    assert cache.decode(jpegs[0], 16, 16, decode).shape == (16, 16, 3)
    for j in jpegs[1:]:
        cache.decode(j, 32, 32, decode)
    s = cache.stats()
    assert s.frames == 3 and s.nbytes <= cache.max_bytes and s.evictions == 7 - 3
    # least recently used went first: the last three are hits, the first is decoded again
    decoded.clear()
    for j in jpegs[3:]:
        cache.decode(j, 32, 32, decode)
    assert decoded == []
    cache.decode(jpegs[0], 32, 32, decode)
    assert decoded == [jpegs[0]]
    assert cache.stats().hit_rate == pytest.approx(cache.hits / (cache.hits + cache.misses))


def test_frame_cache_off_and_bad_size():
    off = FrameCache(0)
    a = off.decode(jpeg_of(1), 32, 32, decode_rgb)
    b = off.decode(jpeg_of(1), 32, 32, decode_rgb)
    assert a is not b and off.stats() == FrameCacheStats(misses=2)
    with pytest.raises(ValueError, match="frame cache size"):
        FrameCache(-1)


# -- the stream through shared-memory slots -----------------------------------------------------

def reference(store_dir: Path, collate: LevineCollate, start: int, n: int) -> list[Batch]:
    ds = StoreBatches(store_dir, collate, 16, seed=5, rank=0, start_batch=0, val_fraction=0.2)
    reader = StoreReader(store_dir)
    return [collate(ds.training_steps(reader, k)) for k in range(start, start + n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_matches_in_process_batches_while_slots_are_reused(store_dir, workers):
    """Tight rings (group of 1, 3 slots per worker), a consumer that keeps every batch and
    sometimes stalls so the workers run ahead: each batch must still be the one collated in
    this process, untouched after later batches arrive."""
    collate = LevineCollate(64, 64, 0.1)
    ds = StoreBatches(store_dir, collate, 16, seed=5, rank=0, start_batch=7, val_fraction=0.2)
    stream = stream_batches(ds, workers=workers, prefetch=1)
    try:
        got = []
        for i in range(30):
            got.append(next(stream))
            if i % 7 == 0:
                time.sleep(0.2)
        cache = stream.frame_cache()
    finally:
        stream.close()
    for batch, want in zip(got, reference(store_dir, collate, 7, 30)):
        assert batch.keys() == want.keys()
        assert all(torch.equal(batch[name], want[name]) for name in want)
    # 30 batches x 16 of a ~430-step training set: frames repeat, and repeats are cache hits
    assert cache.hits > 0 and cache.hits + cache.misses == 30 * 16
    assert 0 < cache.frames <= cache.misses


class GrowingBatches:
    """Batches whose size grows: the worker must send a larger ring without losing order."""

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        for k in range(12):
            n = 4 if k < 5 else 64
            yield k, {"x": torch.full((n,), k, dtype=torch.int64), "y": torch.arange(3.0) + k}

    def frame_cache_stats(self) -> FrameCacheStats:
        return FrameCacheStats()


def test_ring_grows_when_a_batch_outgrows_its_slots():
    stream = BatchStream(GrowingBatches(), workers=1, prefetch=2)
    try:
        got = [next(stream) for _ in range(12)]
    finally:
        stream.close()
    for k, batch in enumerate(got):
        assert batch["x"].shape == ((4,) if k < 5 else (64,)) and bool((batch["x"] == k).all())
        assert torch.equal(batch["y"], torch.arange(3.0) + k)
