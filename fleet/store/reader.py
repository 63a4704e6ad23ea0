"""Reading the episode store: the attempt index, step sampling for the learner, one attempt back.

A StoreReader keeps only the attempt-level index in memory (one row of small columns per
attempt, no images, no raw headers) and the row-group layout of each steps file. Sampling
chooses steps from the index, then reads just the Parquet row groups that hold them (64 steps
each by default) through an LRU cache bounded in bytes, so a store far larger than RAM can be
sampled. Readers take no lock and never see a half-written shard: a shard becomes visible when
its attempts file is renamed into place, after its steps file (fleet/store/shards.py).

Readers see what has been rolled into shards; the writer rolls at least every
StoreConfig.shard_max_seconds, so call refresh() every second or so to see new attempts.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleet.wire.records import Attempt, decode
from fleet.store.shards import (ATTEMPTS_DIR, ATTEMPTS_SCHEMA, INDEX_COLUMNS, STEPS_DIR,
                                list_shards, read_index)

_INDEX_SCHEMA = pa.schema([ATTEMPTS_SCHEMA.field(n) for n in INDEX_COLUMNS]
                          + [pa.field("shard", pa.int32())])
#: Combine the in-memory index into one chunk when it has more (amortises the copy).
_MAX_CHUNKS = 32
_OPEN_FILES = 32  # steps files kept open by a reader
_SAMPLE_COLUMNS = ["attempt_id", "step", "stamp", "ee_pose", "motion", "gripper", "image_jpeg"]
#: Steps column of shard format 2 on; absent from format 1 shards (no depth).
_DEPTH = "depth_png"


@dataclass
class StepSample:
    """One servo step with what a grasp network trains on: (image, motion to the grasp, label)."""

    image_jpeg: bytes
    ee_pose: np.ndarray  # (7,) x y z qx qy qz qw, m, base frame, before the motion
    motion: np.ndarray  # (4,) the commanded dx dy dz dyaw of this step
    final_pose: np.ndarray  # (7,) ee pose when the gripper closed: target = final - ee_pose
    label: bool  # grasp succeeded
    attempt_id: str
    robot_id: str
    policy_version: int
    step: int  # index of the step within its attempt
    num_steps: int
    gripper: float  # finger opening at this step, m
    stamp: float  # robot clock, s
    #: the image's aligned depth (16-bit PNG of mm, fleet/wire/depth_image.py), None without one
    depth_png: Optional[bytes] = None
    #: the attempt's following step (s_t+1 of a transition), when asked for (sample_steps
    #: with_next, samples_of_attempt); None at the attempt's last step, where it closed
    next_step: Optional["StepSample"] = None


@dataclass(frozen=True, order=True)
class StorePosition:
    """A place in the store's step stream that stays valid for ever: shards are immutable and
    numbered in the order they were written, and rows never move. A learner that checkpoints
    it with its weights resumes an epoch exactly where it stopped (iter_steps)."""

    shard: int = 0  # sequence number of a shard (the N of part-N.parquet)
    row: int = 0  # next row of that shard's steps file


@dataclass
class _RowGroup:
    """A steps row group converted once to Python lists and numpy arrays. A batch samples one
    or two steps from each of many small row groups, and a pyarrow take + to_pydict per group
    and batch cost ~5 ms per batch of 64 at 3,000 stored attempts (most of a data worker's CPU);
    indexing converted columns costs a fraction of that."""

    attempt_id: list[str]
    step: list[int]
    stamp: list[float]
    gripper: list[float]
    image_jpeg: list[bytes]
    depth_png: list[Optional[bytes]]
    ee_pose: np.ndarray  # (rows, 7) float64
    motion: np.ndarray  # (rows, 4) float64
    nbytes: int  # estimated memory held, for the reader's cache bound

    #: Python object overhead per row beyond the Arrow bytes (str, bytes, int, 2 floats, slots).
    _ROW_OVERHEAD = 300

    @classmethod
    def of(cls, table: pa.Table) -> "_RowGroup":
        d = table.to_pydict()
        rows = table.num_rows
        return cls(attempt_id=d["attempt_id"], step=d["step"], stamp=d["stamp"],
                   gripper=d["gripper"], image_jpeg=d["image_jpeg"],
                   depth_png=d.get(_DEPTH) or [None] * rows,
                   ee_pose=np.asarray(d["ee_pose"], dtype=np.float64).reshape(rows, 7),
                   motion=np.asarray(d["motion"], dtype=np.float64).reshape(rows, 4),
                   nbytes=table.nbytes + cls._ROW_OVERHEAD * rows)


@dataclass
class _Shard:
    seq: int
    name: str
    rg_starts: np.ndarray  # first row of each row group of the steps file, plus the total


class StoreReader:
    """Read-only view of a store directory; needs only pyarrow/numpy. Not thread-safe.

    include_depth=False: sampled steps come without their depth images (depth_png None), so a
    learner that takes no depth does not read, cache and ship a column it ignores.
    """

    def __init__(self, root: Path, cache_bytes: int = 256 * 2**20,
                 include_depth: bool = True) -> None:
        self.root = Path(root)
        if not (self.root / ATTEMPTS_DIR).is_dir():
            raise FileNotFoundError(
                f"{self.root} is not an episode store (no {ATTEMPTS_DIR}/ directory); pass the "
                f"directory given to the data server as its store root")
        self.cache_bytes = cache_bytes
        self.include_depth = include_depth
        self._shards: list[_Shard] = []
        self._known: set[str] = set()
        self._index = _INDEX_SCHEMA.empty_table()
        self._arrays: Optional[dict[str, np.ndarray]] = None
        self._cache: OrderedDict[tuple[int, int], _RowGroup] = OrderedDict()
        self._cached = 0
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()  # open steps files
        self.row_groups_read = 0  # steps row groups read from disk (cache misses), for tests
        self.refresh()

    # -- the index -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up shards rolled since the last call (cheap when there are none)."""
        added = False
        for seq, name in list_shards(self.root):
            if name in self._known or not (self.root / STEPS_DIR / name).exists():
                continue
            steps_meta = pq.ParquetFile(self.root / STEPS_DIR / name).metadata
            counts = [steps_meta.row_group(i).num_rows for i in range(steps_meta.num_row_groups)]
            table = read_index(self.root, name)
            shard_no = len(self._shards)
            table = table.append_column("shard", pa.array(
                np.full(table.num_rows, shard_no, dtype=np.int32))).cast(_INDEX_SCHEMA)
            self._shards.append(_Shard(seq, name, np.concatenate([[0], np.cumsum(counts)])))
            self._known.add(name)
            self._index = pa.concat_tables([self._index, table])
            added = True
        if added:
            if self._index["shard"].num_chunks > _MAX_CHUNKS:
                self._index = self._index.combine_chunks()
            self._arrays = None

    def num_attempts(self) -> int:
        return self._index.num_rows

    def attempts(self, robot_id: Optional[str] = None, policy_version: Optional[int] = None,
                 since: Optional[float] = None, until: Optional[float] = None,
                 label: Optional[bool] = None, outcome: Optional[str] = None,
                 depth: Optional[bool] = None) -> pa.Table:
        """The attempt index (no images), in store order, filtered.

        since/until bound `stored_at` (unix s, server clock), since inclusive, until exclusive.
        label=True/False selects successes/failures (aborted attempts have no label);
        outcome selects "success", "failure" or "aborted"; depth=True/False those with/without
        depth images. `.to_pandas()` for a DataFrame.
        """
        t = self._index
        mask = None
        for cond in (
                None if robot_id is None else pc.equal(t["robot_id"], robot_id),
                None if policy_version is None else pc.equal(t["policy_version"], policy_version),
                None if since is None else pc.greater_equal(t["stored_at"], since),
                None if until is None else pc.less(t["stored_at"], until),
                None if label is None else pc.equal(t["label"], label),
                None if outcome is None else pc.equal(t["outcome"], outcome),
                None if depth is None else pc.equal(t["depth"], depth)):
            if cond is not None:
                mask = cond if mask is None else pc.and_(mask, cond)
        t = t if mask is None else t.filter(mask)
        return t.drop_columns(["shard"])

    # -- sampling --------------------------------------------------------------------------

    def _sampling_arrays(self) -> dict[str, np.ndarray]:
        """Numpy views of the index for sampling, rebuilt after a refresh that added data."""
        if self._arrays is None:
            t = self._index.combine_chunks()
            labelled = pc.is_valid(t["label"]).to_numpy(zero_copy_only=False)
            num_steps = t["num_steps"].to_numpy()
            robots = pc.dictionary_encode(t["robot_id"]).combine_chunks()
            self._arrays = {
                "rows": np.flatnonzero(labelled & (num_steps > 0)),
                "depth": t["depth"].to_numpy(zero_copy_only=False),
                "num_steps": num_steps,
                "label": t["label"].to_numpy(zero_copy_only=False),
                "shard": t["shard"].to_numpy(),
                "step_offset": t["step_offset"].to_numpy(),
                "policy_version": t["policy_version"].to_numpy(),
                "final_pose": t["final_pose"].combine_chunks().flatten().to_numpy().reshape(
                    -1, 7),
                "robot_code": robots.indices.to_numpy(),
                "robot_names": np.array(robots.dictionary.to_pylist(), dtype=object),
            }
        return self._arrays

    def sample_steps(self, n: int, rng: np.random.Generator,
                     recent_weight: float = 0.0,
                     first_step_only: bool = False,
                     require_depth: bool = False, with_next: bool = False,
                     online_fraction: float = 0.0, online_attempts: int = 0
                     ) -> list[StepSample]:
        """n steps drawn with replacement from labelled (not aborted) attempts.

        recent_weight=0: every stored step is equally likely. recent_weight=w > 0: a step's
        weight grows linearly with its attempt's position in store order, the newest attempt's
        steps (1 + w) times as likely as the oldest's. first_step_only: only step 0 of each
        attempt (its pre-grasp image), every attempt equally likely (before recent_weight).
        require_depth: only attempts that carry depth images (the others are not drawn).
        with_next: each sample also carries its attempt's following step as `next_step` (a
        Q-learner's transition s_t -> s_t+1; None at the last step). online_fraction f with
        online_attempts N: the newest N attempts (in store order) are an online buffer beside
        the whole store, and each draw comes from it with probability f (QT-Opt's online and
        offline buffers; a store of at most N attempts is all online, so f changes nothing).
        Reads only the row groups it needs.
        """
        if recent_weight < 0:
            raise ValueError("recent_weight must be >= 0")
        if not 0.0 <= online_fraction <= 1.0 or online_attempts < 0:
            raise ValueError(f"online_fraction must be in [0, 1] and online_attempts >= 0, got "
                             f"{online_fraction}, {online_attempts}")
        arrays = self._sampling_arrays()
        rows = arrays["rows"]
        if require_depth:
            rows = rows[arrays["depth"][rows]]
        num_steps = arrays["num_steps"][rows]
        if len(rows) == 0:
            raise LookupError(f"store {self.root} has no labelled attempts with steps"
                              f"{' and depth images' if require_depth else ''} yet")
        weights = np.ones(len(rows)) if first_step_only else num_steps.astype(np.float64)
        if recent_weight and len(rows) > 1:
            weights *= 1.0 + recent_weight * np.arange(len(rows)) / (len(rows) - 1)
        picks = rng.choice(len(rows), size=n, p=weights / weights.sum())
        if online_fraction > 0 and 0 < online_attempts < len(rows):
            first = len(rows) - online_attempts  # the online buffer: rows[first:]
            online = rng.random(n) < online_fraction
            tail = weights[first:]
            picks[online] = first + rng.choice(online_attempts, size=int(online.sum()),
                                               p=tail / tail.sum())
        steps = np.zeros(n, np.int64) if first_step_only else rng.integers(0, num_steps[picks])
        chosen = rows[picks]
        out = self._steps_at(chosen, steps)
        if with_next:
            later = np.flatnonzero(steps + 1 < arrays["num_steps"][chosen])
            following = self._steps_at(chosen[later], steps[later] + 1)
            for i, sample in zip(later.tolist(), following):
                out[i].next_step = sample
        return out

    def _steps_at(self, chosen: np.ndarray, steps: np.ndarray) -> list[StepSample]:
        """StepSamples of step steps[i] of the attempt at index row chosen[i]."""
        arrays = self._sampling_arrays()
        n = len(chosen)
        shard_nos = arrays["shard"][chosen]
        step_rows = arrays["step_offset"][chosen] + steps
        out: list[Optional[StepSample]] = [None] * n
        # one read (or cache hit) per row group, however many samples it serves
        groups: dict[tuple[int, int], list[int]] = {}
        for shard_no in np.unique(shard_nos).tolist():
            mine = np.flatnonzero(shard_nos == shard_no)
            rgs = np.searchsorted(self._shards[shard_no].rg_starts, step_rows[mine], "right") - 1
            for i, rg in zip(mine.tolist(), rgs.tolist()):
                groups.setdefault((shard_no, rg), []).append(i)
        for (shard_no, rg), which in groups.items():
            first = int(self._shards[shard_no].rg_starts[rg])
            group = self._row_group(shard_no, rg)
            for i in which:
                k, row = int(step_rows[i]) - first, int(chosen[i])
                out[i] = StepSample(
                    image_jpeg=group.image_jpeg[k], ee_pose=group.ee_pose[k].copy(),
                    motion=group.motion[k].copy(), final_pose=arrays["final_pose"][row].copy(),
                    label=bool(arrays["label"][row]), attempt_id=group.attempt_id[k],
                    robot_id=arrays["robot_names"][arrays["robot_code"][row]],
                    policy_version=int(arrays["policy_version"][row]), step=group.step[k],
                    num_steps=int(arrays["num_steps"][row]), gripper=group.gripper[k],
                    stamp=group.stamp[k], depth_png=group.depth_png[k])
        return out  # type: ignore[return-value]

    def _row_group(self, shard_no: int, rg: int) -> "_RowGroup":
        key = (shard_no, rg)
        group = self._cache.get(key)
        if group is not None:
            self._cache.move_to_end(key)
            return group
        f = self._steps_file(shard_no)
        read_depth = self.include_depth and _DEPTH in f.schema_arrow.names
        columns = _SAMPLE_COLUMNS + ([_DEPTH] if read_depth else [])
        group = _RowGroup.of(f.read_row_group(rg, columns=columns))
        self.row_groups_read += 1
        self._cache[key] = group
        self._cached += group.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return group

    def _steps_file(self, shard_no: int) -> pq.ParquetFile:
        """Open steps files are kept (LRU): parsing a footer costs more than reading a group."""
        f = self._files.get(shard_no)
        if f is None:
            f = pq.ParquetFile(self.root / STEPS_DIR / self._shards[shard_no].name)
            self._files[shard_no] = f
            if len(self._files) > _OPEN_FILES:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(shard_no)
        return f

    def close(self) -> None:
        """Close the open steps files and drop the cache (the reader stays usable)."""
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._cache.clear()
        self._cached = 0

    def iter_steps(self, start: StorePosition = StorePosition(),
                   columns: Optional[list[str]] = None) -> Iterator[tuple[pa.Table, StorePosition]]:
        """Steps in store order from `start`, one row group at a time, each with the position
        just after it (checkpoint that one). Covers the shards known at the last refresh();
        join a chunk with attempts() on attempt_id for labels and final poses."""
        for shard_no, shard in sorted(enumerate(self._shards), key=lambda x: x[1].seq):
            if shard.seq < start.shard:
                continue
            first = start.row if shard.seq == start.shard else 0
            n_groups = len(shard.rg_starts) - 1
            for rg in range(n_groups):
                lo, hi = int(shard.rg_starts[rg]), int(shard.rg_starts[rg + 1])
                if hi <= first:
                    continue
                chunk = self._steps_file(shard_no).read_row_group(rg, columns=columns)
                if first > lo:
                    chunk = chunk.slice(first - lo)
                after = (StorePosition(shard.seq, hi) if rg + 1 < n_groups
                         else StorePosition(shard.seq + 1, 0))
                yield chunk, after

    # -- one attempt back ------------------------------------------------------------------

    def read_attempt(self, attempt_id: str) -> Attempt:
        """The attempt exactly as it was uploaded (decoded from its stored header and JPEGs)."""
        t = self._index
        hits = pc.indices_nonzero(pc.equal(t["attempt_id"], attempt_id))
        if len(hits) == 0:
            raise KeyError(f"attempt {attempt_id!r} is not in the store's shards (yet): "
                           f"call refresh() if it was acked more than a few seconds ago")
        row = hits[0].as_py()
        shard = self._shards[t["shard"][row].as_py()]
        header = _read_rows(self.root / ATTEMPTS_DIR / shard.name,
                            self._attempt_row_in_shard(row), 1, ["header"])["header"][0]
        first, count = t["step_offset"][row].as_py(), t["num_steps"][row].as_py()
        path = self.root / STEPS_DIR / shard.name
        columns = ["image_jpeg"] + ([_DEPTH] if _DEPTH in pq.read_schema(path).names else [])
        rows = _read_rows(path, first, count, columns)
        frames = [header.as_py()] + rows["image_jpeg"].to_pylist()
        if _DEPTH in columns and count and rows[_DEPTH][0].is_valid:
            frames += rows[_DEPTH].to_pylist()
        return decode(frames, max_steps=2**31)

    def _attempt_row_in_shard(self, row: int) -> int:
        shard_col = self._index["shard"]
        shard_no = shard_col[row].as_py()
        first = pc.index(shard_col, pa.scalar(shard_no, pa.int32())).as_py()
        return row - first


def _read_rows(path: os.PathLike, first: int, count: int, columns: list[str]) -> pa.Table:
    """Rows [first, first+count) of a Parquet file, reading only the row groups holding them."""
    f = pq.ParquetFile(path)
    if count == 0:
        return f.schema_arrow.empty_table().select(columns)
    meta = f.metadata
    starts = np.concatenate([[0], np.cumsum([meta.row_group(i).num_rows
                                             for i in range(meta.num_row_groups)])])
    lo = int(np.searchsorted(starts, first, "right") - 1)
    hi = int(np.searchsorted(starts, first + count - 1, "right") - 1)
    groups = f.read_row_groups(list(range(lo, hi + 1)), columns=columns)
    return groups.slice(first - int(starts[lo]), count)
