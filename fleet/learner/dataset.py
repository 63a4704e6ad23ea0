"""From the episode store to training tensors: the split, the targets, the worker-side stream.

- The train/validation split is by attempt, never by step: an attempt is in validation iff a
  hash of its id falls under `val_fraction` (`is_validation`). Steps of one attempt share the
  image of one scene and one label, so splitting by step would leak the label into validation.
  The hash is stable, so the split never changes as the store grows or the learner restarts.
- The Levine et al. 2016 target of step t is the motion from where the gripper is to where it
  closed, v = p_T - p_t, as (dx, dy, dz, dyaw) in the base frame (`grasp_motions`).
- `StoreBatches` is what each DataLoader worker iterates. Each worker process opens its own
  StoreReader, samples steps, and runs the learner's `collate` (JPEG decoding with cv2) off the
  training thread. Batches are drawn in blocks of `block_batches` (one store read serves many
  batches: the reader's cost is per Parquet row group touched, not per sample); block b of rank
  r comes from an RNG seeded by (seed, r, b) alone, and batch k is slice k % block_batches of
  block k // block_batches. So the data position is just the step count: a resumed learner
  draws exactly the batches an uninterrupted one would have (on the same store contents), and
  ranks draw different data.
- Each worker keeps a bounded cache of decoded frames (fleet/learner/frame_cache.py: `decode_rgb`
inside
  the collate decodes each distinct JPEG once while it stays cached) and hands batches over
  through a ring of preallocated shared-memory slots (fleet/learner/handover.py). Neither changes
  what a batch holds, only what it costs.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import get_worker_info

from fleet.learner.handover import BatchStream
from fleet.learner.frame_cache import FrameCache, FrameCacheStats, active_cache
from fleet.learner.api import Batch
from fleet.wire.depth_image import decode_depth_png
from fleet.wire.records import Attempt
from fleet.store.reader import StepSample, StoreReader

log = logging.getLogger(__name__)

Collate = Callable[[Sequence[StepSample]], dict[str, torch.Tensor]]


# -- the split and the targets --------------------------------------------------------------------

def is_validation(attempt_id: str, val_fraction: float) -> bool:
    """True for the attempts held out for validation (a stable hash of the id)."""
    h = int.from_bytes(hashlib.blake2b(attempt_id.encode(), digest_size=8).digest(), "big")
    return h / 2.0**64 < val_fraction


def quaternion_yaw(q: np.ndarray) -> np.ndarray:
    """Yaw (rotation about base z) of (..., 4) quaternions (qx, qy, qz, qw)."""
    qx, qy, qz, qw = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))


def grasp_motions(ee_poses: np.ndarray, final_poses: np.ndarray) -> np.ndarray:
    """(N, 7) poses now and at closing -> (N, 4) float32 (dx, dy, dz, dyaw), dyaw in (-pi, pi]."""
    ee = np.asarray(ee_poses, dtype=np.float64).reshape(-1, 7)
    fin = np.asarray(final_poses, dtype=np.float64).reshape(-1, 7)
    dyaw = quaternion_yaw(fin[:, 3:]) - quaternion_yaw(ee[:, 3:])
    dyaw = -((-dyaw + math.pi) % (2 * math.pi) - math.pi)  # wrap to (-pi, pi]
    return np.concatenate([fin[:, :3] - ee[:, :3], dyaw[:, None]], 1).astype(np.float32)


def decode_rgb(jpeg: bytes, height: int, width: int) -> np.ndarray:
    """A stored JPEG (written by cv2 from RGB) -> (H, W, 3) uint8 RGB, resized if it differs.

    Inside a `FrameCache.active()` block (the training stream's collate) the frame comes from
    that cache when it holds it, and is then read-only."""
    cache = active_cache()
    if cache is not None:
        return cache.decode(jpeg, height, width, _decode_rgb)
    return _decode_rgb(jpeg, height, width)



def depth_batch(samples: Sequence[StepSample], height: int, width: int) -> torch.Tensor:
    """The samples' recorded depth images -> uint16 (B, 1, H, W) mm (0 = no return). One of
    another size is resized as decode_rgb resizes colour, nearest neighbour so that no-return
    zeros are not blended into real depths. A sample without depth is an error that names the
    attempt and the fix."""
    out = np.zeros((len(samples), 1, height, width), np.uint16)
    for i, s in enumerate(samples):
        if s.depth_png is None:
            raise ValueError(
                f"attempt {s.attempt_id} (robot {s.robot_id}) step {s.step} has no depth image, "
                f"and this network takes one (use_depth): give every arm an RGB-D camera, or "
                f"train without depth (fleet learn --no-depth)")
        depth = decode_depth_png(s.depth_png)
        if depth.shape != (height, width):
            depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        out[i, 0] = depth
    return torch.from_numpy(out)

def _decode_rgb(jpeg: bytes, height: int, width: int) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a stored step image is not a decodable JPEG")
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def samples_of_attempt(attempt: Attempt) -> list[StepSample]:
    """Every step of a stored attempt as StepSamples (what validation evaluates on), each
    linked to the one after it (`next_step`: a Q-learner validates on transitions)."""
    final = np.asarray(attempt.final_pose, dtype=np.float64)
    samples = [StepSample(image_jpeg=s.image_jpeg, ee_pose=np.asarray(s.ee_pose),
                          motion=np.asarray(s.motion), final_pose=final,
                          label=bool(attempt.label), attempt_id=attempt.attempt_id,
                          robot_id=attempt.robot_id, policy_version=attempt.policy_version,
                          step=i, num_steps=len(attempt.steps), gripper=s.gripper,
                          stamp=s.stamp, depth_png=s.depth_png)
               for i, s in enumerate(attempt.steps)]
    for sample, following in zip(samples, samples[1:]):
        sample.next_step = following
    return samples


def labelled_attempt_counts(reader: StoreReader, val_fraction: float,
                            require_depth: bool = False) -> tuple[int, int]:
    """(training, validation) attempts that have a label and at least one step (and, with
    require_depth, depth images: the only ones a depth network can learn from)."""
    t = reader.attempts(depth=True if require_depth else None)
    ids = t["attempt_id"].to_pylist()
    ok = [lab is not None and n > 0
          for lab, n in zip(t["label"].to_pylist(), t["num_steps"].to_pylist())]
    val = sum(1 for i, good in zip(ids, ok) if good and is_validation(i, val_fraction))
    return sum(ok) - val, val



def warn_attempts_without_depth(reader: StoreReader, usable: int, warned: int,
                                store: object) -> int:
    """Say once (and again when the number grows tenfold) that labelled attempts without depth
    are left out of a depth network's training: a robot with no depth topic, or data from
    before depth. usable: the labelled attempts with depth, already counted by the caller;
    warned: the count last warned about. Returns the new one."""
    t = reader.attempts(depth=False)
    left_out = int(pc.sum(pc.and_(pc.is_valid(t["label"]),
                                  pc.greater(t["num_steps"], 0))).as_py() or 0)
    if left_out > 0 and left_out >= 10 * warned:
        log.warning("%d of %d labelled attempts in %s have no depth images and are not "
                    "trained on (this network takes depth): give every arm an RGB-D camera, "
                    "or train without depth (--no-depth)", left_out, left_out + usable, store)
        return left_out
    return warned


# -- the training stream (runs in DataLoader workers) ----------------------------------------------

class StoreBatches:
    """An endless stream of training batches for one rank, drawn from the store.

    Iterating yields (k, batch) for k = start_batch, start_batch + 1, ... (in a DataLoader
    worker w of n: the k with (k - start_batch) % n == w; the DataLoader deals them round robin,
    so the training process sees every k in order). `frame_cache_bytes` bounds the decoded-frame
    cache of each process iterating it (0: decode every time).
    """

    def __init__(self, root: Path, collate: Collate, batch_size: int, *, seed: int, rank: int,
                 start_batch: int, val_fraction: float, recent_weight: float = 0.0,
                 refresh_seconds: float = 5.0, cache_bytes: int = 128 * 2**20,
                 block_batches: int = 8, frame_cache_bytes: int = 512 * 2**20,
                 first_step_only: bool = False, require_depth: bool = False,
                 with_next: bool = False, online_fraction: float = 0.0,
                 online_attempts: int = 0) -> None:
        self.root = Path(root)
        self.collate = collate
        self.batch_size = batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        self.val_fraction = val_fraction
        self.recent_weight = recent_weight
        self.refresh_seconds = refresh_seconds
        self.cache_bytes = cache_bytes
        self.block_batches = block_batches
        self.first_step_only = first_step_only
        self.require_depth = require_depth  # draw only attempts with depth, read their depth
        self.with_next = with_next  # each sample carries its next step (transitions)
        # share of draws from the newest online_attempts attempts (StoreReader.sample_steps)
        self.online_fraction, self.online_attempts = online_fraction, online_attempts
        self.frames = FrameCache(frame_cache_bytes)  # one per process: each worker gets a copy
        self._block: tuple[int, list[StepSample]] = (-1, [])

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        reader = StoreReader(self.root, cache_bytes=self.cache_bytes,
                             include_depth=self.require_depth)
        refreshed = time.monotonic()
        k = self.start_batch + worker
        try:
            while True:
                if time.monotonic() - refreshed > self.refresh_seconds:
                    reader.refresh()
                    refreshed = time.monotonic()
                steps = self.training_steps(reader, k)
                with self.frames.active():
                    batch = self.collate(steps)
                yield k, batch
                k += workers
        finally:
            reader.close()
            self.frames.clear()

    def frame_cache_stats(self) -> FrameCacheStats:
        """This process's decoded-frame cache counters (the workers send theirs along)."""
        return self.frames.stats()

    def training_steps(self, reader: StoreReader, k: int) -> list[StepSample]:
        """The steps of batch k (a slice of its block; the block is drawn once per worker)."""
        block, offset = divmod(k, self.block_batches)
        if self._block[0] != block:
            self._block = (block, self._draw_block(reader, block))
        return self._block[1][offset * self.batch_size:(offset + 1) * self.batch_size]

    def _draw_block(self, reader: StoreReader, block: int) -> list[StepSample]:
        """block_batches * batch_size steps sampled from the store, validation rejected."""
        rng = np.random.default_rng([self.seed, self.rank, block])
        keep: list[StepSample] = []
        want = self.batch_size * self.block_batches
        draw = int(want / max(1e-3, 1.0 - self.val_fraction) * 1.1) + 8
        for tries in range(1000):
            for s in reader.sample_steps(draw, rng, self.recent_weight, self.first_step_only,
                                         self.require_depth, self.with_next,
                                         self.online_fraction, self.online_attempts):
                if not is_validation(s.attempt_id, self.val_fraction):
                    keep.append(s)
                    if len(keep) == want:
                        return keep
            if tries % 50 == 49:  # everything stored so far is validation data: wait for more
                log.warning("store %s: only validation attempts so far; waiting for more",
                            self.root)
                time.sleep(1.0)
                reader.refresh()
        raise RuntimeError(f"store {self.root} has no training attempts (all are held out for "
                           f"validation); lower val_fraction or collect more attempts")


def stream_batches(batches: StoreBatches, workers: int, prefetch: int = 4,
                   pin_memory: bool = False) -> BatchStream:
    """Batches from `workers` DataLoader worker processes (0: this process), in order, handed
    over through shared-memory slots. `close()` (or dropping it) shuts the workers down;
    `.frame_cache()` has the workers' decoded-frame cache counters."""
    return BatchStream(batches, workers, prefetch, pin_memory, first_batch=batches.start_batch)


# -- the validation set (main process, rank 0) ----------------------------------------------------

class ValidationSet:
    """Every step (or, first_step_only, step 0) of `max_attempts` validation attempts, collated.

    newest=False: the first `max_attempts` held-out attempts in store order. Store order only
    grows, so the set grows until the cap and then stays fixed.
    newest=True: the newest `max_attempts` held-out attempts, a window that moves with the
    fleet. Why: the fleet's data drift with the policy that collects them; a fixed early set
    holds only the first policies' grasps, and a candidate that has learned from the newest
    policy's mistakes can score worse there than the version in service (learning run 5 kept
    its v3 in service that way). Either way the candidate and the policy in service are
    compared on the same examples at each cycle.
    """

    def __init__(self, reader: StoreReader, collate: Collate, val_fraction: float,
                 max_attempts: int, batch_size: int, first_step_only: bool = False,
                 newest: bool = False, require_depth: bool = False) -> None:
        self.reader = reader
        self.collate = collate
        self.val_fraction = val_fraction
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.first_step_only = first_step_only
        self.newest = newest
        self.require_depth = require_depth
        self.attempt_ids: list[str] = []
        self._samples: dict[str, list[StepSample]] = {}
        self._batches: list[dict[str, torch.Tensor]] = []
        self.examples = 0

    def _held_out(self) -> list[str]:
        """Labelled held-out attempts with steps (and depth, if required), in store order."""
        t = self.reader.attempts(depth=True if self.require_depth else None)
        return [aid for aid, label, n in zip(t["attempt_id"].to_pylist(), t["label"].to_pylist(),
                                             t["num_steps"].to_pylist())
                if label is not None and n > 0 and is_validation(aid, self.val_fraction)]

    def update(self) -> int:
        """Take in validation attempts stored since the last call (reader already refreshed);
        returns how many were added."""
        if not self.newest and len(self.attempt_ids) >= self.max_attempts:
            return 0
        held = self._held_out()
        chosen = held[-self.max_attempts:] if self.newest else held[:self.max_attempts]
        if chosen == self.attempt_ids:
            return 0
        added = [aid for aid in chosen if aid not in self._samples]
        for aid in added:
            samples = samples_of_attempt(self.reader.read_attempt(aid))
            self._samples[aid] = samples[:1] if self.first_step_only else samples
        self._samples = {aid: self._samples[aid] for aid in chosen}
        self.attempt_ids = chosen
        pending = [s for aid in chosen for s in self._samples[aid]]
        self._batches = [self.collate(pending[i:i + self.batch_size])
                         for i in range(0, len(pending), self.batch_size)]
        self.examples = len(pending)
        return len(added)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        return list(self._batches)
