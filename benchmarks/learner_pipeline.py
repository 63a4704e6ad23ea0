"""Does the data path keep the learner busy? Training samples/s read from the store, over the
same training on batches already in memory.

The store path is the real one: a DataLoader worker process samples the episode store
(StoreBatches: Parquet row groups, validation attempts rejected), decodes the JPEGs with cv2
through its decoded-frame cache, and hands each batch over through a shared-memory slot, while
the training process runs the optimiser step. The reference trains the same network on batches
collated from the same store beforehand, so it measures the training step alone. All three
phases run in the one training process, so they share its torch thread setting (--threads,
default 1; workers use 1 thread each).

Two store streams, each with its own worker, are measured against the same reference:
- "warm": the frame cache on (the learner's default size). The timed windows start after the
  cache holds the store's training frames (the warm-up pulls batches until 95% of look-ups
  hit): the steady state of a learner whose store fits in its cache. This is the headline.
- "cold": the frame cache off, so every frame is decoded: what a learner sees when its store is
  much larger than its cache (every draw a miss).

Each repeat times `steps` steps of each phase back to back (a few seconds, so all three see the
same load from other processes on a shared machine), in an order that rotates between repeats.
Before each phase the benchmark sleeps 0.15 s, so the workers refill their prefetch queues off
the clock: every timed store window starts and ends with a full queue, i.e. its worker produces
exactly the batches the window consumes, and no phase pays for another's refill (the table
shows the workers' CPU during the memory phases to prove it). Figures are medians of the
repeats' ratios; the load average is printed.

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
from typing import Callable

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.learner.dataset import StoreBatches, stream_batches  # noqa: E402
from fleet.learner.config import LearnerConfig  # noqa: E402
from fleet.methods.levine.learner import LevineLearner
from fleet.methods.levine.network import NetworkConfig  # noqa: E402
from fleet.wire.records import Attempt, Step, encode  # noqa: E402
from fleet.store.writer import Store, StoreConfig  # noqa: E402
from fleet.store.reader import StoreReader  # noqa: E402

TARGET = 0.9
PREFETCH = 4  # batches each worker prepares ahead (the learner's default)
SETTLE_S = 0.15  # off-clock pause before each phase: workers refill their queues
PHASES = ("memory", "warm", "cold")


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


def timed(learner: LevineLearner, next_batch: Callable, steps: int) -> tuple[float, float]:
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


def child_pids() -> set[int]:
    pid = os.getpid()
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 1 min)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, training process")
    args = ap.parse_args()
    steps, repeats = (8, 7) if args.quick else (20, 15)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, bs = args.image_size, args.batch_size
    cache_bytes = LearnerConfig(data=Path("."), out=Path(".")).frame_cache_mb * 2**20
    load0 = os.getloadavg()
    learner = LevineLearner(NetworkConfig(image_height=size, image_width=size), 1e-3, 0.0,
                            torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="learner_pipeline_") as tmp:
        root = Path(tmp) / "store"
        t0 = time.perf_counter()
        synthetic_store(root, attempts=300, steps=8, size=size)
        build_s = time.perf_counter() - t0

        def dataset(frame_cache_bytes: int) -> StoreBatches:
            return StoreBatches(root, learner.collate, bs, seed=1, rank=0, start_batch=0,
                                val_fraction=0.1, frame_cache_bytes=frame_cache_bytes)

        reader = StoreReader(root)
        memory = itertools.cycle([learner.collate(dataset(0).training_steps(reader, k))
                                  for k in range(8)])
        streams, pids = {}, {}
        for name, nbytes in (("warm", cache_bytes), ("cold", 0)):
            before = child_pids()
            streams[name] = stream_batches(dataset(nbytes), 1, prefetch=PREFETCH)
            (pids[name],) = child_pids() - before
        nexts = {"memory": lambda: next(memory), "warm": lambda: next(streams["warm"]),
                 "cold": lambda: next(streams["cold"])}
        # warm-up: the warm stream's cache until 95% of a window's look-ups hit (no training:
        # only the worker works), then a few training steps of each phase
        warm_batches, last = 0, streams["warm"].frame_cache()
        while warm_batches < 2000:
            for _ in range(20):
                next(streams["warm"])
            warm_batches += 20
            now = streams["warm"].frame_cache()
            if (now - last).hit_rate >= 0.95:
                break
            last = now
        for name in PHASES:
            timed(learner, nexts[name], 4)
        rows = []
        for r in range(repeats):
            order = PHASES[r % 3:] + PHASES[:r % 3]
            got: dict[str, tuple[float, ...]] = {}
            for name in order:
                time.sleep(SETTLE_S)
                cache0 = streams["warm"].frame_cache()
                cpu0 = time.process_time()
                work0 = {s: cpu_seconds(p) for s, p in pids.items()}
                rate, wait = timed(learner, nexts[name], steps)
                train_cpu = (time.process_time() - cpu0) / steps
                work = {s: (cpu_seconds(p) - work0[s]) / steps for s, p in pids.items()}
                hits = (streams["warm"].frame_cache() - cache0).hit_rate
                got[name] = (rate, wait, train_cpu, work["warm"], work["cold"], hits)
            m, w, c = got["memory"], got["warm"], got["cold"]
            rows.append((m[0], w[0], w[0] / m[0], c[0], c[0] / m[0], w[1], c[1], m[2], w[2],
                         c[2], w[3], c[4], m[3] + m[4], w[5]))
        stats = {name: streams[name].frame_cache() for name in streams}
        for s in streams.values():
            s.close()
    load1 = os.getloadavg()
    print(f"store: 300 attempts x 8 steps ({int(300 * 8 * 0.9)} training frames), {size}x{size} "
          f"JPEG, built in {build_s:.1f} s; batch {bs}; {steps} steps x {repeats} repeats per "
          f"phase; torch threads: training process {torch.get_num_threads()} (all phases), "
          f"workers 1 each")
    print(f"frame cache (warm stream): {cache_bytes / 2**20:.0f} MiB allowed, "
          f"{stats['warm'].frames} frames / {stats['warm'].nbytes / 2**20:.1f} MiB held; warmed "
          f"with {warm_batches} batches before timing; cold stream: cache off")
    print(f"load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    head = ["repeat", "memory", "warm", "ratio", "cold", "ratio", "wait", "wait",
            "train CPU", "train CPU", "train CPU", "worker", "worker", "workers in",
            "warm hit"]
    sub = ["", "samples/s", "samples/s", "warm", "samples/s", "cold", "warm", "cold",
           "memory ms", "warm ms", "cold ms", "warm ms", "cold ms", "memory ms", "rate"]
    widths = [max(len(a), len(b), 6) for a, b in zip(head, sub)]
    print(" | ".join(h.rjust(w) for h, w in zip(head, widths)))
    print(" | ".join(h.rjust(w) for h, w in zip(sub, widths)))
    fmts = ["{:.0f}", "{:.0f}", "{:.3f}", "{:.0f}", "{:.3f}", "{:.1%}", "{:.1%}", "{:.1f}",
            "{:.1f}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.1%}"]
    scale = [1, 1, 1, 1, 1, 1, 1, 1e3, 1e3, 1e3, 1e3, 1e3, 1e3, 1]
    med = tuple(statistics.median(col) for col in zip(*rows))
    for name, row in [(str(i), r) for i, r in enumerate(rows)] + [("median", med)]:
        cells = [f.format(v * k) for f, v, k in zip(fmts, row, scale)]
        print(" | ".join(c.rjust(w) for c, w in zip([name] + cells, widths)))
    print("train CPU: training process CPU per step; worker: that stream's worker CPU per batch "
          "(during its own phase); workers in memory: both workers' CPU per step during the "
          "memory phase (~0: no refill leaks into the reference)")
    for name, i, j, k in (("warm", 8, 10, 2), ("cold", 9, 11, 4)):
        lo, hi = min(r[k] for r in rows), max(r[k] for r in rows)
        print(f"{name}: ratio median {med[k]:.3f} (range {lo:.2f}-{hi:.2f}); CPU per step, "
              f"memory / store: training process {med[7] / med[i]:.3f} (the bound when the "
              f"worker has a core to itself), training + worker {med[7] / (med[i] + med[j]):.3f}"
              f" (the bound when every core is saturated)")
    print(f"cold (every frame decoded, the store much larger than the cache): "
          f"{med[4]:.2f} x")
    print(f"learner_pipeline: {med[2]:.2f} x (target {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
