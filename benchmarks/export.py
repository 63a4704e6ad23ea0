"""Export benchmark: `fleet export` (mcap, lerobot) attempts/s against reading the same shards.

Builds a store of 10-step attempts of 64x64 camera-like JPEGs (half of them with 16-bit depth
PNGs) over 4 robots, closes it (every attempt rolled into Parquet shards), then times, in the
same run on the same files (page cache warm for both): the reference, reading every shard whole
with pyarrow (attempts and steps, all columns: the bytes an export must read); a second
reference that also decodes every JPEG (and depth PNG) with OpenCV, the pixel work an rgb8/16UC1
export cannot skip; and the export itself (`fleet.cli.main(["export", ...])` in this process:
select, StoreReader.read_attempt, decode, CDR encode, zstd-chunked MCAP write). Headline: export
attempts/s as a ratio of the pyarrow read (target >= 0.05: an export within 20x of the raw read,
i.e. bound by the per-frame decode, not by the store's reading path).

    .venv/bin/python benchmarks/export.py [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleet.cli import main as fleet_main  # noqa: E402
from fleet.export.lerobot import DEFAULT_PYTHON  # noqa: E402
from fleet.store.writer import Store, StoreConfig  # noqa: E402
from fleet.wire.depth_image import encode_depth_png  # noqa: E402
from fleet.wire.records import Attempt, Step, encode  # noqa: E402
from ingest import camera_jpegs  # noqa: E402  (benchmarks/ingest.py, beside this file)

TARGET = 0.05
STEPS = 10


def build_store(root: Path, n: int, rng: np.random.Generator) -> None:
    jpegs = camera_jpegs(64, rng)
    pngs = [encode_depth_png(rng.uniform(0.4, 0.9, (64, 64)).astype(np.float32))
            for _ in range(16)]
    batch = []
    for i in range(n):
        depth = i % 2 == 0
        t0 = 1_764_000_000.0 + 10.0 * i
        steps = [Step(jpegs[int(rng.integers(64))], (0.5, 0.0, 0.3 - 0.02 * k, 0, 0, 0, 1.0),
                      (0.0, 0.0, -0.02, 0.0), 0.08, t0 + 0.1 * k,
                      pngs[int(rng.integers(16))] if depth else None) for k in range(STEPS)]
        a = Attempt(f"bench{i % 4}", i % 3, "random", steps,
                    "success" if i % 2 else "failure", (0.5, 0.0, 0.02, 0, 0, 0, 1.0), 0.01,
                    t0 - 1, t0 + 1, ground_truth={"objects": [{"name": f"random_urdfs/{i}"}]})
        batch.append((a, encode(a)))
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        for k in range(0, n, 256):
            store.append(batch[k:k + 256])


def read_reference(root: Path, decode: bool) -> float:
    t0 = time.perf_counter()
    attempts = pq.read_table(root / "attempts")
    steps = pq.read_table(root / "steps")
    if decode:
        for jpeg in steps["image_jpeg"].to_pylist():
            cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        for png in steps["depth_png"].to_pylist():
            if png is not None:
                cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert attempts.num_rows > 0
    return time.perf_counter() - t0


def export_once(root: Path, out: Path, fmt: str = "mcap") -> tuple[float, str]:
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = fleet_main(["export", "--store", str(root), "--format", fmt, "--out", str(out)])
    elapsed = time.perf_counter() - t0
    assert rc == 0, rc
    return elapsed, buf.getvalue().strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer attempts and runs (< 1 min)")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp "
                   "dir under the repo, i.e. the disk a store would live on)")
    args = p.parse_args()
    n, runs = (300, 3) if args.quick else (2000, 3)
    work = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.dir or REPO))
    rows = []
    try:
        build_store(work / "store", n, np.random.default_rng(0))
        read_reference(work / "store", decode=False)  # warm the page cache for both sides
        for i in range(runs):
            raw = read_reference(work / "store", decode=False)
            dec = read_reference(work / "store", decode=True)
            out = work / f"out{i}"
            exp, summary = export_once(work / "store", out)
            size = sum(f.stat().st_size for f in out.iterdir())
            row = {"raw": n / raw, "dec": n / dec, "exp": n / exp, "mb": size / 2**20,
                   "summary": summary}
            shutil.rmtree(out)
            if DEFAULT_PYTHON.is_file():
                lr, row["lr_summary"] = export_once(work / "store", out, "lerobot")
                row["lr"] = n / lr
                row["lr_mb"] = sum(f.stat().st_size for f in out.rglob("*")
                                   if f.is_file()) / 2**20
                shutil.rmtree(out)
            rows.append(row)
        store_mb = sum(f.stat().st_size for f in (work / "store").rglob("*.parquet")) / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{n} attempts x {STEPS} steps of 64x64 JPEG (half with depth PNGs), 4 robots, "
          f"store {store_mb:.1f} MiB of shards")
    print(f"{'run':>4} {'pyarrow att/s':>14} {'+decode att/s':>14} {'export att/s':>13} "
          f"{'MCAP MiB':>9} {'ratio':>6}")
    for i, r in enumerate(rows):
        print(f"{i:>4} {r['raw']:>14.0f} {r['dec']:>14.0f} {r['exp']:>13.0f} {r['mb']:>9.1f} "
              f"{r['exp'] / r['raw']:>6.3f}")
    print(f"last export's summary: {rows[-1]['summary']}")
    print(f"export against pyarrow read + decode: "
          f"{statistics.median(r['exp'] / r['dec'] for r in rows):.2f} x")
    if "lr" in rows[0]:
        for i, r in enumerate(rows):
            print(f"lerobot run {i}: {r['lr']:.0f} attempts/s, {r['lr_mb']:.1f} MiB, "
                  f"{r['lr'] / r['raw']:.3f} x pyarrow read")
        print(f"last lerobot summary: {rows[-1]['lr_summary']}")
        print(f"lerobot export: {statistics.median(r['lr'] for r in rows):.0f} attempts/s "
              f"({statistics.median(r['lr'] / r['raw'] for r in rows):.3f} x reading the "
              f"shards with pyarrow)")
    else:
        print(f"lerobot export not timed: no {DEFAULT_PYTHON} (scripts/lerobot-venv.sh)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rate = statistics.median(r["exp"] for r in rows)
    ratio = statistics.median(r["exp"] / r["raw"] for r in rows)
    print(f"export: {rate:.0f} attempts/s ({ratio:.3f} x reading the shards with pyarrow; "
          f"target >= {TARGET} x)")


if __name__ == "__main__":
    main()
