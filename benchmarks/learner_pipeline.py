"""Does the data path keep the learner busy? Training samples/s read from the store, over the
same training on batches already in memory.

The store path is the real one: a DataLoader worker process samples the episode store
(StoreBatches: Parquet row groups, validation attempts rejected) and decodes the JPEGs with cv2
while the training process runs the optimiser step (1 torch thread). The reference trains the
same network on batches collated from the same store beforehand, so it measures the training
step alone. Each repeat measures both back to back over a few seconds (short, so that both see
the same load from other processes on a shared machine); the figure is the median of the
repeats' ratios.

    .venv/bin/python benchmarks/learner_pipeline.py [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.dataset import StoreBatches, stream_batches  # noqa: E402
from fleet.learner import LevineLearner  # noqa: E402
from fleet.network import NetworkConfig  # noqa: E402
from fleet.records import Attempt, Step, encode  # noqa: E402
from fleet.store import Store, StoreConfig  # noqa: E402
from fleet.store_reader import StoreReader  # noqa: E402

TARGET = 0.9
PREFETCH = 4  # batches each worker prepares ahead (the learner's default)


def synthetic_store(root: Path, attempts: int, steps: int, size: int, seed: int = 0) -> None:
    """Attempts with real JPEGs of a cluttered scene (blobs on a noisy tray), like a camera's."""
    rng = np.random.default_rng(seed)
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        batch = []
        for _ in range(attempts):
            frames = []
            for t in range(steps):
                img = rng.normal(100, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
                for _ in range(5):
                    cv2.circle(img, tuple(int(c) for c in rng.integers(0, size, 2)),
                               int(rng.integers(3, size // 6)),
                               tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
                jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                pose = tuple(rng.normal(0, 0.1, 3)) + (0.0, 0.0, 0.0, 1.0)
                frames.append(Step(jpeg, pose, tuple(rng.normal(0, 0.02, 4)), 0.08, t * 0.2))
            final = tuple(rng.normal(0, 0.1, 3)) + (0.0, 0.0, 0.0, 1.0)
            now = time.time()
            a = Attempt("arm-0", 0, "scripted", frames,
                        "success" if rng.random() < 0.3 else "failure", final, 0.02, now - 2,
                        now, image_height=size, image_width=size)
            batch.append((a, encode(a)))
            if len(batch) == 100:
                store.append(batch)
                batch = []
        if batch:
            store.append(batch)


def timed(learner: LevineLearner, next_batch, steps: int) -> tuple[float, float]:
    """(samples per second, share of the time spent waiting for batches) over `steps` steps."""
    n, waited = 0, 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next_batch()
        waited += time.perf_counter() - t
        learner.train_step(batch)
        n += len(batch["label"])
    elapsed = time.perf_counter() - t0
    return n / elapsed, waited / elapsed


def children_cpu_seconds() -> float:
    """user + system CPU seconds of this process's live children (the DataLoader workers)."""
    pid, total = os.getpid(), 0.0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for kid in kids:
            stat = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:  # not Linux, or a worker just exited
        return float("nan")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 1 min)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    steps, repeats = (10, 7) if args.quick else (20, 15)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size, bs = args.image_size, args.batch_size
    learner = LevineLearner(NetworkConfig(image_height=size, image_width=size), 1e-3, 0.0,
                            torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="learner_pipeline_") as tmp:
        root = Path(tmp) / "store"
        t0 = time.perf_counter()
        synthetic_store(root, attempts=300, steps=8, size=size)
        build_s = time.perf_counter() - t0
        ds = StoreBatches(root, learner.collate, bs, seed=1, rank=0, start_batch=0,
                          val_fraction=0.1)
        reader = StoreReader(root)
        memory = itertools.cycle([learner.collate(ds.training_steps(reader, k))
                                  for k in range(8)])
        store_it = stream_batches(ds, args.workers, prefetch=PREFETCH)
        timed(learner, lambda: next(store_it), 10)  # warm up: worker start, caches
        timed(learner, lambda: next(memory), 5)
        rows = []
        for _ in range(repeats):
            # the batches the worker buffered during the in-memory run come for free: use them
            # up untimed, so the timed steps see the worker's steady state
            timed(learner, lambda: next(store_it), PREFETCH * args.workers)
            cpu0, work0 = time.process_time(), children_cpu_seconds()
            sto, wait = timed(learner, lambda: next(store_it), steps)
            cpu_store = (time.process_time() - cpu0) / steps
            cpu_worker = (children_cpu_seconds() - work0) / steps
            cpu0 = time.process_time()
            mem, _ = timed(learner, lambda: next(memory), steps)
            cpu_mem = (time.process_time() - cpu0) / steps
            rows.append((mem, sto, sto / mem, wait, cpu_mem, cpu_store, cpu_worker))
        store_it.close()
    print(f"store: 300 attempts x 8 steps, {size}x{size} JPEG, built in {build_s:.1f} s; "
          f"batch {bs}, {args.workers} worker(s), {steps} steps x {repeats} repeats, "
          f"1 torch thread")
    head = (f"{'repeat':>6} | {'in memory':>10} | {'from store':>10} | {'ratio':>6} | "
            f"{'waiting':>7} | {'train CPU, memory':>17} | {'train CPU, store':>16} | "
            f"{'worker CPU':>10}")
    print(head)
    print(f"{'':>6} | {'samples/s':>10} | {'samples/s':>10} | {'':>6} | {'for data':>7} | "
          f"{'ms/step':>17} | {'ms/step':>16} | {'ms/batch':>10}")
    for name, row in [(str(i), r) for i, r in enumerate(rows)] + [
            ("median", tuple(statistics.median(col) for col in zip(*rows)))]:
        mem, sto, ratio, wait, c_mem, c_sto, c_work = row
        print(f"{name:>6} | {mem:>10.0f} | {sto:>10.0f} | {ratio:>6.3f} | {wait:>7.1%} | "
              f"{c_mem * 1e3:>17.1f} | {c_sto * 1e3:>16.1f} | {c_work * 1e3:>10.1f}")
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"CPU per step, in memory / from store: training process {med[4] / med[5]:.3f} (the "
          f"ratio when the worker has a core to itself); training + worker "
          f"{med[4] / (med[5] + med[6]):.3f} (the ratio when every core is saturated)")
    ratio = statistics.median(r[2] for r in rows)
    print(f"learner_pipeline: {ratio:.2f} x (target {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
