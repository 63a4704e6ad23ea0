"""The episode store on real files: round trip, dedup, group commit, counters, back-pressure,
readers. Crashes are in test_store_crash.py, the fleet-free read in test_store_pyarrow_only.py.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pyarrow.parquet as pq
import pytest
from tmpfs import mounted_tmpfs
from hypothesis import given, settings, strategies as st

from fleet.wire.records import Attempt, Step, encode
from fleet.store.writer import Store, StoreConfig, StoreFullError, StoreLockedError
from fleet.store.reader import StorePosition, StoreReader
from fleet.store.wal import encode_record, scan


def make_attempt(rng: np.random.Generator, robot_id: str = "arm-0", n_steps: int = 3,
                 outcome: str = "success", policy_version: int = 1, size: int = 32) -> Attempt:
    """A small but real attempt: distinct JPEG images from cv2, random poses."""
    steps = []
    for i in range(n_steps):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        ok, jpeg = cv2.imencode(".jpg", img)
        assert ok
        steps.append(Step(jpeg.tobytes(), tuple(rng.normal(size=7)), tuple(rng.normal(size=4)),
                          float(rng.uniform(0, 0.08)), float(i) * 0.2))
    now = time.time()
    return Attempt(robot_id, policy_version, "random", steps, outcome,
                   tuple(rng.normal(size=7)), float(rng.uniform(0, 0.08)), now - 2, now,
                   image_height=size, image_width=size,
                   ground_truth={"lifted": outcome == "success"}, extra={"n": n_steps})


def batch_of(attempts: list[Attempt]) -> list[tuple[Attempt, list[bytes]]]:
    return [(a, encode(a)) for a in attempts]


def config(root: Path, **kw) -> StoreConfig:
    """Rolls in this process unless a test asks otherwise: a roll process costs a second of
    CPU per Store. The roll process is tested by the round trip and reader tests here, and by
    every server and kill -9 test."""
    kw.setdefault("min_free_bytes", 1 * 2**20)
    kw.setdefault("roll_process", False)
    return StoreConfig(root, **kw)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_round_trip_through_wal_and_shards(tmp_path, rng):
    attempts = [make_attempt(rng, f"arm-{i % 3}", n_steps=i % 4,
                             outcome=("success", "failure", "aborted")[i % 3]) for i in range(12)]
    with Store(config(tmp_path, roll_on_close=False, roll_process=True)) as store:
        assert store.append(batch_of(attempts[:5])).new == [a.attempt_id for a in attempts[:5]]
        store.roll()  # the first five go into a shard, the rest stay in the WAL at close
        store.append(batch_of(attempts[5:]))
    assert list((tmp_path / "wal").glob("*.log")), "the WAL should still hold the last batch"
    with Store(config(tmp_path)) as store:  # recovery rolls the WAL into a shard
        assert all(store.contains(a.attempt_id) for a in attempts)
    reader = StoreReader(tmp_path)
    assert reader.num_attempts() == 12
    for a in attempts:
        assert reader.read_attempt(a.attempt_id) == a
    index = reader.attempts()
    assert index.column("attempt_id").to_pylist() == [a.attempt_id for a in attempts]
    assert index.column("label").to_pylist() == [a.label for a in attempts]
    assert reader.attempts(robot_id="arm-1").num_rows == 4
    assert reader.attempts(label=True).num_rows == 4
    assert reader.attempts(outcome="aborted").num_rows == 4
    steps = pq.read_table(tmp_path / "steps")
    assert steps.num_rows == sum(len(a.steps) for a in attempts)


def test_duplicates_are_stored_once_also_across_restart(tmp_path, rng):
    a, b, c = (make_attempt(rng) for _ in range(3))
    with Store(config(tmp_path)) as store:
        r = store.append(batch_of([a, b, a]))  # a duplicate inside one batch too
        assert (r.new, r.duplicates) == ([a.attempt_id, b.attempt_id], [a.attempt_id])
        r = store.append(batch_of([b, c]))
        assert (r.new, r.duplicates) == ([c.attempt_id], [b.attempt_id])
        assert store.counters()["arm-0"].duplicates == 2
    with Store(config(tmp_path, roll_on_close=False)) as store:
        r = store.append(batch_of([c, b, a]))
        assert r.new == [] and len(r.duplicates) == 3
        assert store.counters()["arm-0"].attempts == 3
    ids = StoreReader(tmp_path).attempts().column("attempt_id").to_pylist()
    assert sorted(ids) == sorted([a.attempt_id, b.attempt_id, c.attempt_id])


def test_a_batch_is_made_durable_with_one_fsync(tmp_path, rng, monkeypatch):
    store = Store(config(tmp_path, background_roll=False))
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, _real=real, _n=name: (calls.append(_n),
                                                                       _real(fd))[1])
    attempts = [make_attempt(rng, n_steps=2) for _ in range(50)]
    t0 = time.perf_counter()
    result = store.append(batch_of(attempts))
    elapsed = time.perf_counter() - t0
    assert len(result.new) == 50
    assert calls == ["fdatasync"], f"one group commit expected, saw {calls}"
    assert store.health().fsyncs == 1
    assert store.append(batch_of(attempts[:10])).new == []  # duplicates only: no write at all
    assert len(calls) == 1
    monkeypatch.undo()
    store.close()
    print(f"50 attempts, one fsync: {elapsed * 1e3:.1f} ms")


def test_counters_per_robot_survive_reopen(tmp_path, rng):
    plan = [("arm-a", "success", 1), ("arm-a", "failure", 1), ("arm-a", "aborted", 2),
            ("arm-b", "success", 3), ("arm-b", "success", 4)]
    attempts = [make_attempt(rng, r, outcome=o, policy_version=v) for r, o, v in plan]
    t0 = time.time()
    with Store(config(tmp_path)) as store:
        for a in attempts:
            store.append(batch_of([a]))
        before = store.counters()
    a_c = before["arm-a"]
    assert (a_c.attempts, a_c.successes, a_c.failures, a_c.aborted) == (3, 1, 1, 1)
    assert a_c.policy_version == 2 and before["arm-b"].policy_version == 4
    assert a_c.bytes == sum(len(f) for a in attempts[:3] for f in encode(a))
    assert t0 <= a_c.first_seen <= a_c.last_seen <= time.time()
    with Store(config(tmp_path)) as store:
        assert {k: asdict(v) for k, v in store.counters().items()} == \
            {k: asdict(v) for k, v in before.items()}


def test_reserve_refuses_batches_and_accepts_them_when_space_returns(tmp_path, rng):
    store = Store(config(tmp_path, min_free_bytes=2**62))
    a = make_attempt(rng)
    with pytest.raises(StoreFullError) as err:
        store.append(batch_of([a]))
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert "min_free_bytes" in str(err.value)
    health = store.health()
    assert not health.ok and "reserve" in health.reason
    assert not store.contains(a.attempt_id) and health.wal_bytes == 0
    store.config.min_free_bytes = 2**20  # space was freed
    assert store.health().ok
    assert store.append(batch_of([a])).new == [a.attempt_id]
    store.close()


def test_second_writer_is_refused_with_a_clear_error(tmp_path):
    with Store(config(tmp_path)):
        with pytest.raises(StoreLockedError, match="already open for writing"):
            Store(config(tmp_path))
    Store(config(tmp_path)).close()  # the lock goes with close()


def test_torn_and_corrupt_wal_records_are_recovered(tmp_path, rng):
    batches = [[make_attempt(rng)] for _ in range(4)]
    with Store(config(tmp_path, roll_on_close=False)) as store:
        for b in batches:
            store.append(batch_of(b))
    (wal,) = list((tmp_path / "wal").glob("*.log"))
    records, valid_end = scan(wal)
    assert len(records) == 4 and valid_end == wal.stat().st_size
    # a bit flip in record 1 (a disk fault) and a torn last record (a crash mid-write)
    data = bytearray(wal.read_bytes())
    data[records[1].offset + records[1].size // 2] ^= 0xFF
    wal.write_bytes(bytes(data[:-30]))
    with Store(config(tmp_path)) as store:
        stored = [store.contains(b[0].attempt_id) for b in batches]
    assert stored == [True, False, True, False], stored
    reader = StoreReader(tmp_path)
    assert reader.read_attempt(batches[2][0].attempt_id) == batches[2][0]


def test_reader_sees_new_attempts_within_seconds(tmp_path, rng):
    store = Store(config(tmp_path, roll_process=True))  # the default roll age: 5 s
    reader = StoreReader(tmp_path)
    try:
        a = make_attempt(rng)
        store.append(batch_of([a]))
        t0 = time.monotonic()
        while a.attempt_id not in reader.attempts(
                since=time.time() - 60).column("attempt_id").to_pylist():
            assert time.monotonic() - t0 < 7.0, "attempt not visible to readers in 7 s"
            time.sleep(0.1)
            reader.refresh()
        print(f"visible to a reader {time.monotonic() - t0:.2f} s after its ack")
        assert reader.read_attempt(a.attempt_id) == a
    finally:
        store.close()


def test_resumable_iteration_continues_exactly_where_it_stopped(tmp_path, rng):
    with Store(config(tmp_path, steps_row_group=4, background_roll=False)) as store:
        for _ in range(3):
            store.append(batch_of([make_attempt(rng, n_steps=3) for _ in range(3)]))
            store.roll()
    reader = StoreReader(tmp_path)
    everything = [(aid, step) for chunk, _ in reader.iter_steps(columns=["attempt_id", "step"])
                  for aid, step in zip(chunk["attempt_id"].to_pylist(),
                                       chunk["step"].to_pylist())]
    assert len(everything) == 27 == len(set(everything))
    got, position = [], StorePosition()
    while True:  # stop after every chunk, as if the learner restarted from its checkpoint
        chunks = StoreReader(tmp_path).iter_steps(position, columns=["attempt_id", "step"])
        chunk, position = next(chunks, (None, position))
        if chunk is None:
            break
        got += list(zip(chunk["attempt_id"].to_pylist(), chunk["step"].to_pylist()))
    assert got == everything
    mid = StorePosition(position.shard - 2, 5)  # mid-row-group of the second shard
    rest = [r for c, _ in reader.iter_steps(mid, ["attempt_id", "step"])
            for r in zip(c["attempt_id"].to_pylist(), c["step"].to_pylist())]
    assert rest == everything[9 + 5:]


def test_frames_of_another_attempt_are_refused(tmp_path, rng):
    a, b = make_attempt(rng), make_attempt(rng)
    with Store(config(tmp_path)) as store:
        with pytest.raises(ValueError, match="not fleet.wire.records.encode"):
            store.append([(a, encode(b))])
        assert not store.contains(a.attempt_id) and not store.contains(b.attempt_id)


@pytest.mark.parametrize("sizes", [[], [0, 255], [256, 65535, 65536], [3] * 17])
def test_wal_record_is_msgpack_of_stored_at_and_frames(sizes):
    """record_parts writes the frames without copying them, byte for byte what msgpack would."""
    frames = [os.urandom(n) for n in sizes]
    payload = msgpack.packb([1234.5, frames], use_bin_type=True)
    record = encode_record(1234.5, frames)
    assert record[12:] == payload and record[:4] == b"FWAL"


@settings(max_examples=40, deadline=None)
@given(cut=st.floats(0, 1), flip=st.one_of(st.none(), st.floats(0, 1)))
def test_wal_scan_keeps_exactly_the_intact_records(tmp_path_factory, cut, flip):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("wal") / "wal-000000000001.log"
    frames = [encode(make_attempt(rng, n_steps=1, size=8)) for _ in range(5)]
    blobs = [encode_record(1.0, f) for f in frames]
    data = bytearray(b"".join(blobs))
    ends = np.cumsum([len(b) for b in blobs])
    cut_at = int(cut * len(data))
    broken = None
    if flip is not None:  # a flipped bit inside one record damages that record only
        pos = min(int(flip * len(data)), len(data) - 1)
        data[pos] ^= 0x01
        broken = int(np.searchsorted(ends, pos, "right"))
    path.write_bytes(bytes(data[:cut_at]))
    records, valid_end = scan(path)
    whole = [i for i in range(5) if ends[i] <= cut_at and i != broken]
    assert [r.frames for r in records] == [frames[i] for i in whole]
    assert valid_end == (int(ends[whole[-1]]) if whole else 0)


def test_weighted_sampling_prefers_recent_and_reads_only_needed_row_groups(tmp_path, rng):
    with Store(config(tmp_path, steps_row_group=8, background_roll=False)) as store:
        old = [make_attempt(rng, policy_version=1, n_steps=4) for _ in range(40)]
        new = [make_attempt(rng, policy_version=2, n_steps=4) for _ in range(40)]
        aborted = [make_attempt(rng, policy_version=2, outcome="aborted") for _ in range(20)]
        for chunk in (old, new, aborted):
            store.append(batch_of(chunk))
            store.roll()
    by_id = {a.attempt_id: a for a in old + new}
    reader = StoreReader(tmp_path, cache_bytes=1)
    total_groups = sum(pq.ParquetFile(p).metadata.num_row_groups
                       for p in (tmp_path / "steps").glob("*.parquet"))
    samples = reader.sample_steps(3, np.random.default_rng(1))
    assert reader.row_groups_read <= 3 < total_groups
    for s in samples:  # each sample is the right step of the right attempt
        a = by_id[s.attempt_id]
        assert s.image_jpeg == a.steps[s.step].image_jpeg
        np.testing.assert_array_equal(s.ee_pose, a.steps[s.step].ee_pose)
        np.testing.assert_array_equal(s.final_pose, a.final_pose)
        assert s.label == a.label and s.policy_version == a.policy_version

    reader = StoreReader(tmp_path)  # default cache: the remaining samples hit memory

    def share_new(weight: float) -> float:
        got = reader.sample_steps(1500, np.random.default_rng(2), recent_weight=weight)
        assert not any(s.attempt_id not in by_id for s in got), "sampled an aborted attempt"
        return np.mean([s.policy_version == 2 for s in got])

    uniform, recent = share_new(0.0), share_new(30.0)
    assert 0.45 < uniform < 0.55  # expected 0.5, sd 0.013
    assert recent > 0.68  # expected 0.737 for weights rising linearly 1 -> 31, sd 0.011


def test_an_online_buffer_of_the_newest_attempts_gets_its_share_of_the_draws(tmp_path, rng):
    """QT-Opt's online/offline mix: with online_fraction f over the newest N attempts, a draw
    comes from them with probability f + (1 - f) N / total (the whole store holds them too)."""
    with Store(config(tmp_path, background_roll=False)) as store:
        attempts = [make_attempt(rng, n_steps=4) for _ in range(80)]
        store.append(batch_of(attempts))
        store.roll()
    newest = {a.attempt_id for a in attempts[-10:]}
    reader = StoreReader(tmp_path)

    def share(fraction: float, online: int = 10) -> float:
        got = reader.sample_steps(2000, np.random.default_rng(3), online_fraction=fraction,
                                  online_attempts=online)
        return float(np.mean([s.attempt_id in newest for s in got]))

    assert 0.09 < share(0.0) < 0.16  # expected 0.125, sd 0.007
    assert 0.52 < share(0.5) < 0.61  # expected 0.5625, sd 0.011
    assert 0.09 < share(0.5, online=80) < 0.16, "a store within the buffer is all online"
    with pytest.raises(ValueError, match="online_fraction"):
        reader.sample_steps(1, np.random.default_rng(0), online_fraction=1.5, online_attempts=5)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system, so the kernel itself says ENOSPC."""
    with mounted_tmpfs(tmp_path / "disk", "2m") as mnt:
        yield mnt


def fill(path: Path, leave: int) -> None:
    """Fill the file system of `path` until only `leave` bytes are free."""
    st = os.statvfs(path.parent)
    path.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_full_disk_refuses_cleanly_and_recovers_when_space_is_freed(small_disk, rng):
    root = small_disk / "store"
    store = Store(StoreConfig(root, min_free_bytes=0, background_roll=False,
                              shard_max_seconds=3600))
    fill(small_disk / "filler", leave=600 * 2**10)
    acked: list[str] = []
    with pytest.raises(StoreFullError) as err:  # the kernel's ENOSPC, no reserve check
        for _ in range(200):
            refused = [make_attempt(rng, size=64, n_steps=4) for _ in range(2)]
            acked += store.append(batch_of(refused)).new
    assert err.value.errno == errno.ENOSPC and "is full" in str(err.value)
    assert len(acked) > 4 and not any(store.contains(a.attempt_id) for a in refused)
    records, valid_end = scan(store._active.path)
    assert len(records) == len(acked)
    assert valid_end == store._active.path.stat().st_size, "half a batch was left in the WAL"
    health = store.health()
    assert not health.ok and "refused batch" in health.reason
    (small_disk / "filler").unlink()
    assert store.health().ok
    assert store.append(batch_of(refused)).new == [a.attempt_id for a in refused]
    acked += [a.attempt_id for a in refused]

    fill(small_disk / "filler", leave=64 * 2**10)  # too little for the shard: the roll fails
    with pytest.raises(OSError):
        store.roll()
    assert store.health().roll_error
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "temp files left"
    assert all(store.contains(i) for i in acked)
    (small_disk / "filler").unlink()
    store.roll()
    assert store.health().roll_error == ""
    store.close()
    with Store(StoreConfig(root, min_free_bytes=0)) as reopened:
        assert all(reopened.contains(i) for i in acked)
    ids = StoreReader(root).attempts().column("attempt_id").to_pylist()
    assert sorted(ids) == sorted(acked)
