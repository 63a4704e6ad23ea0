"""Immutable Parquet shards of the episode store: schema, atomic writing, listing.

A shard is a pair of Parquet files with the same name, one in `attempts/` (one row per attempt,
no images) and one in `steps/` (one row per servo step, JPEG bytes included), so that
`pandas.read_parquet("<root>/attempts")` gives the attempt index and a join on `attempt_id`
gives the steps. The schemas below are the contract (docs/store.md documents them); readers
need only pyarrow or pandas.

Atomicity: each file is written under a dot-prefixed temporary name (pyarrow and pandas skip
names starting with "." or "_"), fsynced, renamed, and both directories are fsynced. The steps
file is renamed first: the attempts file is the shard's commit point, and StoreReader ignores a
steps file whose attempts file is not there yet. Shard names come from the WAL segment number,
so rolling the same segment again after a crash rewrites the same shard instead of adding one.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (Array.take needs it: import it now, not in a roll)
import pyarrow.parquet as pq

from fleet.store.durable import fsync_dir, fsync_file

log = logging.getLogger(__name__)

ATTEMPTS_DIR = "attempts"
STEPS_DIR = "steps"
#: 2 added the steps column depth_png and the attempts column depth; a reader takes 1 too (no
#: depth: both columns are absent, read_index fills depth with false).
SHARD_FORMAT_VERSION = "2"
_SHARD_RE = re.compile(r"^part-(\d{12})\.parquet$")

POSE = pa.list_(pa.float64(), 7)
MOTION = pa.list_(pa.float64(), 4)

ATTEMPTS_SCHEMA = pa.schema([
    ("attempt_id", pa.string()),
    ("robot_id", pa.string()),
    ("policy_version", pa.int64()),
    ("policy_kind", pa.string()),
    ("outcome", pa.string()),  # success | failure | aborted
    ("label", pa.bool_()),  # null for aborted: never train on it
    ("final_pose", POSE),  # x y z qx qy qz qw, m, base frame
    ("gripper_after_lift", pa.float64()),  # m
    ("started_at", pa.float64()),  # unix s, robot clock
    ("ended_at", pa.float64()),  # unix s, robot clock
    ("stored_at", pa.float64()),  # unix s, server clock, when the attempt was made durable
    ("image_height", pa.int32()),
    ("image_width", pa.int32()),
    ("num_steps", pa.int32()),
    ("depth", pa.bool_()),  # its steps carry depth images (depth_png); false: colour only
    ("step_offset", pa.int64()),  # row of the attempt's first step in the shard's steps file
    ("encoded_bytes", pa.int64()),  # size of the attempt as uploaded (all frames)
    ("ground_truth_json", pa.string()),  # simulation only, evaluation only; null on real arms
    ("extra_json", pa.string()),
    ("header", pa.binary()),  # the attempt's msgpack header frame as uploaded (exact record)
], metadata={b"fleet.shard_format": SHARD_FORMAT_VERSION.encode()})

STEPS_SCHEMA = pa.schema([
    ("attempt_id", pa.string()),
    ("step", pa.int32()),  # 0-based step index within the attempt
    ("stamp", pa.float64()),  # s, robot clock (sim time on a simulated arm)
    ("ee_pose", POSE),  # x y z qx qy qz qw, m, base frame, before the motion
    ("motion", MOTION),  # commanded dx dy dz (m) dyaw (rad), base frame
    ("gripper", pa.float64()),  # finger opening, m
    ("image_jpeg", pa.binary()),  # the camera image before the motion, JPEG
    # its aligned depth, 16-bit greyscale PNG of mm (wire/depth_image.py); null: no depth camera
    ("depth_png", pa.binary()),
], metadata={b"fleet.shard_format": SHARD_FORMAT_VERSION.encode()})

#: Attempts per row group of an attempts file: read_attempt reads one group's headers.
ATTEMPTS_ROW_GROUP = 256
#: Steps row groups written per ParquetWriter call: big enough to amortise the call, small
#: enough that a roll's Arrow copy of the images stays a few MB.
_ROW_GROUPS_PER_WRITE = 16
#: Attempt-level columns a reader keeps in memory (everything but the raw header).
INDEX_COLUMNS = [n for n in ATTEMPTS_SCHEMA.names if n != "header"]


def shard_name(seq: int) -> str:
    return f"part-{seq:012d}.parquet"


def list_shards(root: Path) -> list[tuple[int, str]]:
    """(sequence, file name) of every committed shard (its attempts file exists), oldest first."""
    adir = root / ATTEMPTS_DIR
    if not adir.is_dir():
        return []
    out = []
    for name in os.listdir(adir):
        m = _SHARD_RE.match(name)
        if m:
            out.append((int(m.group(1)), name))
    return sorted(out)


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, default=lambda v: v.hex() if isinstance(
        v, (bytes, bytearray)) else repr(v))


class _Columns:
    """One shard's rows, gathered column by column from the logged frames.

    Why column-wise: a roll handles every attempt the server ever acks, so per-row Python
    work (a dict per step, a list append per cell) was the largest CPU cost of ingest. Here
    each attempt costs one msgpack decode of its header and a few list appends; the step
    columns are built once per shard from flat lists (pa.array / numpy), not row by row. The
    headers are not validated again: the server validated them before they were logged and
    the WAL's crc32 has guarded them since.
    """

    def __init__(self) -> None:
        self.headers: list[dict] = []
        self.header_frames: list[bytes] = []
        self.stored_at: list[float] = []
        self.encoded_bytes: list[int] = []
        self.steps: list[dict] = []  # every step's header map, in shard order
        self.images: list[bytes] = []
        self.depths: list = []  # per step: PNG bytes, or None (an attempt without depth)
        self.has_depth: list[bool] = []  # per attempt
        self.ids: set[str] = set()

    def add(self, frames: list[bytes], stored_at: float) -> None:
        """One attempt as logged; a second record of the same id is dropped."""
        h = msgpack.unpackb(frames[0], raw=False)
        if h["attempt_id"] in self.ids:
            return
        self.ids.add(h["attempt_id"])
        n = len(h["steps"])
        # the rule of records.decode, which the server applied before logging it
        per_step = 2 if h["record_version"] >= 2 and h.get("depth") is True else 1
        if per_step * n != len(frames) - 1:
            raise ValueError(f"attempt {h['attempt_id']!r}: {n} steps"
                             f"{' with depth' if per_step == 2 else ''} need "
                             f"{per_step * n} image frames, but the log holds {len(frames) - 1}")
        self.headers.append(h)
        self.header_frames.append(frames[0])
        self.stored_at.append(stored_at)
        self.encoded_bytes.append(sum(map(len, frames)))
        self.steps.extend(h["steps"])
        self.images.extend(frames[1:1 + n])
        self.has_depth.append(per_step == 2)
        self.depths.extend(frames[1 + n:] if per_step == 2 else [None] * n)

    def attempts_table(self) -> pa.Table:
        hs = self.headers
        counts = np.fromiter((len(h["steps"]) for h in hs), np.int64, len(hs))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        outcome = [h["outcome"] for h in hs]
        cols = {
            "attempt_id": [h["attempt_id"] for h in hs],
            "robot_id": [h["robot_id"] for h in hs],
            "policy_version": [h["policy_version"] for h in hs],
            "policy_kind": [h["policy_kind"] for h in hs],
            "outcome": outcome,
            "label": [None if o == "aborted" else o == "success" for o in outcome],
            "final_pose": _fixed_lists([h["final_pose"] for h in hs], 7, "final_pose"),
            "gripper_after_lift": [h["gripper_after_lift"] for h in hs],
            "started_at": [h["started_at"] for h in hs],
            "ended_at": [h["ended_at"] for h in hs],
            "stored_at": self.stored_at,
            "image_height": [h["image_height"] for h in hs],
            "image_width": [h["image_width"] for h in hs],
            "num_steps": counts,
            "depth": self.has_depth,
            "step_offset": offsets,
            "encoded_bytes": self.encoded_bytes,
            "ground_truth_json": [_json_or_none(h.get("ground_truth")) for h in hs],
            "extra_json": [_json_or_none(h.get("extra", {})) for h in hs],
            "header": self.header_frames,
        }
        cols["header"] = _binary(self.header_frames)
        return pa.table({n: c if isinstance(c, pa.Array) else pa.array(
            c, ATTEMPTS_SCHEMA.field(n).type) for n, c in cols.items()}, schema=ATTEMPTS_SCHEMA)

    def steps_tables(self, attempt_ids: pa.Array, counts: np.ndarray,
                     chunk_steps: int) -> Iterator[pa.Table]:
        """The steps file's rows, `chunk_steps` at a time.

        The small columns are built once for the whole shard; the images are copied into
        Arrow one chunk at a time, so a roll holds the logged frames plus one chunk, not two
        copies of every image.
        """
        st = self.steps
        owner = np.repeat(np.arange(len(counts)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        cols = {
            "attempt_id": attempt_ids.take(pa.array(owner)),
            "step": pa.array((np.arange(len(st)) - first).astype(np.int32)),
            "stamp": pa.array([s["stamp"] for s in st], pa.float64()),
            "ee_pose": _fixed_lists([s["ee_pose"] for s in st], 7, "ee_pose"),
            "motion": _fixed_lists([s["motion"] for s in st], 4, "motion"),
            "gripper": pa.array([s["gripper"] for s in st], pa.float64()),
        }
        for lo in range(0, len(st), chunk_steps):
            hi = min(lo + chunk_steps, len(st))
            chunk = {n: a.slice(lo, hi - lo) for n, a in cols.items()}
            chunk["image_jpeg"] = _binary(self.images[lo:hi])
            chunk["depth_png"] = _binary(self.depths[lo:hi])
            yield pa.table(chunk, schema=STEPS_SCHEMA)


def _binary(values: list) -> pa.BinaryArray:
    """A binary column from bytes-like values (None: null) with one copy (b"".join), no
    per-value objects.

    Why not pa.array: given views into a WAL segment (fleet.store.wal.scan's frames) it used memory
    in proportion to the whole segment, not to the values.
    """
    nulls = [v is None for v in values]
    validity = None
    if any(nulls):
        valid = ~np.fromiter(nulls, bool, len(values))
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
        values = [b"" if v is None else v for v in values]
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("over 2 GiB of binary values in one column chunk")
    return pa.Array.from_buffers(pa.binary(), len(values), [
        validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(values))])


def _fixed_lists(rows: list[list], width: int, name: str) -> pa.FixedSizeListArray:
    """Rows of `width` numbers as one fixed_size_list column, from one flat float array."""
    flat = list(itertools.chain.from_iterable(rows))
    if len(flat) != width * len(rows):  # validated at ingest; a mismatch would shift rows
        raise ValueError(f"{name}: every row must hold {width} numbers")
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float64()), width)


class _ShardWriter:
    """Writes one shard's two files under temporary names and renames them into place."""

    def __init__(self, root: Path, seq: int, row_group_steps: int) -> None:
        self.name = shard_name(seq)
        self.final = {d: root / d / self.name for d in (STEPS_DIR, ATTEMPTS_DIR)}
        self.tmp = {d: root / d / f".{self.name}.tmp" for d in (STEPS_DIR, ATTEMPTS_DIR)}
        self.row_group_steps = row_group_steps

    def commit(self, rows: _Columns) -> int:
        """Write, fsync and rename both files (steps first); returns the number of attempts."""
        attempts = rows.attempts_table()
        chunks = rows.steps_tables(attempts.column("attempt_id").combine_chunks(),
                                   attempts.column("num_steps").to_numpy(),
                                   _ROW_GROUPS_PER_WRITE * self.row_group_steps)
        with pq.ParquetWriter(self.tmp[STEPS_DIR], STEPS_SCHEMA, compression={
                n: ("none" if n in ("image_jpeg", "depth_png") else "zstd")
                for n in STEPS_SCHEMA.names},
                use_dictionary=["attempt_id"],
                write_statistics=["attempt_id", "step", "stamp"]) as steps_file:
            for table in chunks:
                steps_file.write_table(table, row_group_size=self.row_group_steps)
        pq.write_table(attempts, self.tmp[ATTEMPTS_DIR], row_group_size=ATTEMPTS_ROW_GROUP,
                       use_dictionary=["robot_id", "policy_kind", "outcome"],
                       compression={n: ("none" if n == "header" else "zstd")
                                    for n in ATTEMPTS_SCHEMA.names})
        for d in (STEPS_DIR, ATTEMPTS_DIR):
            fsync_file(self.tmp[d])
        os.replace(self.tmp[STEPS_DIR], self.final[STEPS_DIR])
        fsync_dir(self.final[STEPS_DIR].parent)
        os.replace(self.tmp[ATTEMPTS_DIR], self.final[ATTEMPTS_DIR])
        fsync_dir(self.final[ATTEMPTS_DIR].parent)
        return attempts.num_rows

    def abort(self) -> None:
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


def write_shard(root: Path, seq: int, records: Iterable[tuple[float, list[bytes]]],
                row_group_steps: int = 64) -> int:
    """Write the (stored_at, frames) records as shard `seq`, atomically; returns attempts written.

    On any error the temporary files are removed and nothing becomes visible.
    """
    writer = _ShardWriter(root, seq, row_group_steps)
    try:
        rows = _Columns()
        for stored_at, frames in records:
            rows.add(frames, stored_at)
        return writer.commit(rows)
    except BaseException:
        writer.abort()
        raise


def warm_up() -> None:
    """Pay pyarrow's one-time start-up (~0.3 s of CPU: its kernel registry, memory pool) now.

    The store's writer calls this when it opens, so the first roll does not take that CPU
    from the server while robots wait for acks.
    """
    rows = _Columns()
    rows.images, rows.depths = [b""], [None]
    rows.steps = [{"stamp": 0.0, "ee_pose": [0.0] * 7, "motion": [0.0] * 4, "gripper": 0.0}]
    table = next(rows.steps_tables(pa.array(["warm"]), np.array([1]), 1))
    pq.write_table(table, pa.BufferOutputStream(), compression="zstd")


def ensure_dirs(root: Path) -> None:
    for d in (ATTEMPTS_DIR, STEPS_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)


def remove_temp_files(root: Path) -> None:
    """Leftovers of a roll that crashed; never visible to readers, safe to delete."""
    for d in (ATTEMPTS_DIR, STEPS_DIR):
        for p in (root / d).glob(".part-*.tmp"):
            p.unlink()


def read_index(root: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """The attempt-level columns of one shard (no images, no raw header by default), in that
    order; a format 1 shard's missing depth column reads as false (it has no depth images)."""
    path = root / ATTEMPTS_DIR / name
    want = columns or INDEX_COLUMNS
    with pq.ParquetFile(path) as f:
        have = f.schema_arrow.names
        table = f.read(columns=[c for c in want if c in have])
    if "depth" in want and "depth" not in have:
        table = table.append_column("depth", pa.array(np.zeros(table.num_rows, bool)))
    return table.select(want)
