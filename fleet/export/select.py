"""Which attempts an export takes: the store's rolled shards, filtered.

The index is read shard by shard so that a shard pyarrow cannot read is named in the error.
Only committed shards are read (fleet.store.shards.list_shards: the attempts file renamed into
place, its steps file beside it); the WAL is never touched, so an export sees what a
StoreReader sees. Filters: robot ids and policy versions (each must exist in the store),
stored_at bounds (server clock; `since` inclusive, `until` exclusive), outcome, and split.

Split: a simulated attempt records its tray's objects in ground_truth_json
(`{"objects": [{"name": "random_urdfs/123", ...}]}`); it is "test" when any of its objects'
folder numbers ends in 0 (the benchmark split of sim_bridge/objects.py; an arm runs one split,
so all its objects agree), else "train". An attempt without recorded ground truth (a real arm)
is "train": it has no held-out objects to protect.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleet.store.shards import ATTEMPTS_DIR, STEPS_DIR, list_shards, read_index
from fleet.wire.records import Attempt, decode

SPLITS = ("train", "test")
_DEPTH = "depth_png"  # steps column of shard format 2 on (fleet/store/shards.py)


@dataclass
class Filters:
    robots: list[str] = field(default_factory=list)
    policy_versions: list[int] = field(default_factory=list)
    since: Optional[float] = None
    until: Optional[float] = None
    outcome: Optional[str] = None
    split: Optional[str] = None


def parse_time(text: str) -> float:
    """Unix seconds from '1764000000.5' or an ISO 8601 time ('2026-12-06T04:00:00', UTC when
    it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither unix seconds nor an ISO 8601 time "
                         f"(e.g. 2026-12-06T04:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def split_of(ground_truth_json: Optional[str]) -> str:
    if not ground_truth_json:
        return "train"
    try:
        objects = json.loads(ground_truth_json).get("objects") or []
    except (ValueError, AttributeError):
        return "train"
    names = [str(o.get("name", "")) for o in objects if isinstance(o, dict)]
    return "test" if any(n.rsplit("/", 1)[-1].endswith("0") for n in names) else "train"


def read_store_index(root: Path) -> pa.Table:
    """Every rolled attempt's index row (no images) plus `shard_file`, in store order."""
    root = Path(root)
    if not (root / ATTEMPTS_DIR).is_dir():
        raise FileNotFoundError(f"{root} is not an episode store (no {ATTEMPTS_DIR}/ "
                                f"directory): pass the data server's --data directory")
    tables = []
    for _seq, name in list_shards(root):
        steps = root / STEPS_DIR / name
        if not steps.exists():
            continue  # not committed yet: StoreReader skips it too
        for path in (root / ATTEMPTS_DIR / name, steps):
            try:
                pq.ParquetFile(path).close()
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure: name the file
                raise OSError(f"corrupt shard file {path}: {exc}") from None
        try:
            table = read_index(root, name)
        except Exception as exc:  # noqa: BLE001
            raise OSError(f"corrupt shard file {root / ATTEMPTS_DIR / name}: {exc}") from None
        tables.append(table.append_column("shard_file", pa.array([name] * table.num_rows,
                                                                 pa.string())))
    if not tables:
        raise ValueError(f"store {root} has no rolled shards yet (attempts still in the WAL "
                         f"appear after the next roll, or when the server closes the store)")
    return pa.concat_tables(tables)


def _known(index: pa.Table, column: str) -> list:
    return sorted(pc.unique(index[column]).to_pylist())


def select(index: pa.Table, f: Filters) -> pa.Table:
    """The rows of `index` the filters take, in store order. A robot or policy version that the
    store does not hold is an error naming it and the known values."""
    mask = pa.array([True] * index.num_rows)
    for column, wanted, what in (("robot_id", f.robots, "robot"),
                                 ("policy_version", f.policy_versions, "policy version")):
        if not wanted:
            continue
        known = _known(index, column)
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(f"unknown {what} {', '.join(map(str, unknown))}: the store holds "
                             f"{what}s {', '.join(map(str, known))}")
        mask = pc.and_(mask, pc.is_in(index[column], pa.array(wanted, index[column].type)))
    if f.since is not None:
        mask = pc.and_(mask, pc.greater_equal(index["stored_at"], f.since))
    if f.until is not None:
        mask = pc.and_(mask, pc.less(index["stored_at"], f.until))
    if f.outcome is not None:
        mask = pc.and_(mask, pc.equal(index["outcome"], f.outcome))
    if f.split is not None:
        if f.split not in SPLITS:
            raise ValueError(f"unknown split {f.split!r}: use one of {', '.join(SPLITS)}")
        splits = [split_of(g) for g in index["ground_truth_json"].to_pylist()]
        mask = pc.and_(mask, pc.equal(pa.array(splits), f.split))
    return index.filter(mask)



def iter_attempts(root: Path, selected: pa.Table) -> Iterator[Attempt]:
    """The selected attempts exactly as uploaded, in the order of `selected`: per shard, the
    header column of its attempts file and the image columns of its steps file are read once
    (as StoreReader.read_attempt reads them for one attempt), then each attempt's frames are
    decoded by fleet.wire.records.decode. A failure names the shard file."""
    root = Path(root)
    ids = selected["attempt_id"].to_pylist()
    shards = selected["shard_file"].to_pylist()
    k = 0
    while k < len(ids):
        name, first = shards[k], k
        while k < len(ids) and shards[k] == name:
            k += 1
        yield from _shard_attempts(root, name, ids[first:k])


def _shard_attempts(root: Path, name: str, wanted: list[str]) -> Iterator[Attempt]:
    apath, spath = root / ATTEMPTS_DIR / name, root / STEPS_DIR / name
    try:
        head = pq.read_table(apath, columns=["attempt_id", "header", "step_offset",
                                             "num_steps"])
        rows = {a: i for i, a in enumerate(head["attempt_id"].to_pylist())}
        have = pq.read_schema(spath).names
        steps = pq.read_table(spath, columns=["image_jpeg"] + (
            [_DEPTH] if _DEPTH in have else []))
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure: name the file
        raise OSError(f"corrupt shard file {apath} or {spath}: {exc}") from None
    for attempt_id in wanted:
        i = rows[attempt_id]
        offset, count = head["step_offset"][i].as_py(), head["num_steps"][i].as_py()
        try:
            part = steps.slice(offset, count)
            frames = [head["header"][i].as_py()] + part["image_jpeg"].to_pylist()
            if _DEPTH in part.column_names and count and part[_DEPTH][0].is_valid:
                frames += part[_DEPTH].to_pylist()
            yield decode(frames, max_steps=2**31)
        except Exception as exc:  # noqa: BLE001 - pyarrow, decode or record errors alike
            raise OSError(f"cannot read attempt {attempt_id} from shard {spath}: {exc}") \
                from None
