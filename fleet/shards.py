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

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq

from fleet.wal import fsync_dir, fsync_file

ATTEMPTS_DIR = "attempts"
STEPS_DIR = "steps"
SHARD_FORMAT_VERSION = "1"
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
], metadata={b"fleet.shard_format": SHARD_FORMAT_VERSION.encode()})

#: Attempts per row group of an attempts file: read_attempt reads one group's headers.
ATTEMPTS_ROW_GROUP = 256
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


class _ShardWriter:
    """Builds one shard's two files from attempts, streaming steps in row groups."""

    def __init__(self, root: Path, seq: int, row_group_steps: int) -> None:
        self.name = shard_name(seq)
        self.final = {d: root / d / self.name for d in (STEPS_DIR, ATTEMPTS_DIR)}
        self.tmp = {d: root / d / f".{self.name}.tmp" for d in (STEPS_DIR, ATTEMPTS_DIR)}
        self.row_group_steps = row_group_steps
        self.steps_writer = pq.ParquetWriter(
            self.tmp[STEPS_DIR], STEPS_SCHEMA, compression={
                n: ("none" if n == "image_jpeg" else "zstd") for n in STEPS_SCHEMA.names},
            use_dictionary=["attempt_id"], write_statistics=["attempt_id", "step", "stamp"])
        self.step_rows: dict[str, list] = {n: [] for n in STEPS_SCHEMA.names}
        self.attempt_rows: dict[str, list] = {n: [] for n in ATTEMPTS_SCHEMA.names}
        self.n_steps = 0

    def add(self, frames: list[bytes], stored_at: float) -> None:
        """One attempt, from its encoded frames (validated by the server before they were
        logged, and crc-checked since: the header is read as is, without a second decode)."""
        h = msgpack.unpackb(frames[0], raw=False)
        aid, steps = h["attempt_id"], h["steps"]
        a = self.attempt_rows
        for key, value in (
                ("attempt_id", aid), ("robot_id", h["robot_id"]),
                ("policy_version", h["policy_version"]), ("policy_kind", h["policy_kind"]),
                ("outcome", h["outcome"]),
                ("label", None if h["outcome"] == "aborted" else h["outcome"] == "success"),
                ("final_pose", h["final_pose"]), ("gripper_after_lift", h["gripper_after_lift"]),
                ("started_at", h["started_at"]), ("ended_at", h["ended_at"]),
                ("stored_at", stored_at), ("image_height", h["image_height"]),
                ("image_width", h["image_width"]), ("num_steps", len(steps)),
                ("step_offset", self.n_steps),
                ("encoded_bytes", sum(len(f) for f in frames)),
                ("ground_truth_json", _json_or_none(h.get("ground_truth"))),
                ("extra_json", _json_or_none(h.get("extra", {}))), ("header", frames[0])):
            a[key].append(value)
        s = self.step_rows
        s["attempt_id"].extend([aid] * len(steps))
        s["step"].extend(range(len(steps)))
        s["stamp"].extend(st["stamp"] for st in steps)
        s["ee_pose"].extend(st["ee_pose"] for st in steps)
        s["motion"].extend(st["motion"] for st in steps)
        s["gripper"].extend(st["gripper"] for st in steps)
        s["image_jpeg"].extend(frames[1:])
        self.n_steps += len(steps)
        if len(s["step"]) >= 16 * self.row_group_steps:  # fewer, larger writes
            self._flush_steps()

    def _flush_steps(self) -> None:
        if self.step_rows["step"]:
            table = pa.table(self.step_rows, schema=STEPS_SCHEMA)
            self.steps_writer.write_table(table, row_group_size=self.row_group_steps)
            self.step_rows = {n: [] for n in STEPS_SCHEMA.names}

    def commit(self) -> int:
        """Close, fsync and rename both files (steps first); returns the number of attempts."""
        self._flush_steps()
        self.steps_writer.close()
        attempts = pa.table(self.attempt_rows, schema=ATTEMPTS_SCHEMA)
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
        try:
            self.steps_writer.close()
        except Exception:  # already failing; the temp files are removed below
            pass
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


def write_shard(root: Path, seq: int, records: Iterable[tuple[float, list[bytes]]],
                row_group_steps: int = 64) -> int:
    """Write the (stored_at, frames) records as shard `seq`, atomically; returns attempts written.

    On any error the temporary files are removed and nothing becomes visible.
    """
    writer = _ShardWriter(root, seq, row_group_steps)
    try:
        for stored_at, frames in records:
            writer.add(frames, stored_at)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def ensure_dirs(root: Path) -> None:
    for d in (ATTEMPTS_DIR, STEPS_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)


def remove_temp_files(root: Path) -> None:
    """Leftovers of a roll that crashed; never visible to readers, safe to delete."""
    for d in (ATTEMPTS_DIR, STEPS_DIR):
        for p in (root / d).glob(".part-*.tmp"):
            p.unlink()


def read_index(root: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """The attempt-level columns of one shard (no images, no raw header by default)."""
    return pq.read_table(root / ATTEMPTS_DIR / name, columns=columns or INDEX_COLUMNS)
