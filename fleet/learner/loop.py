"""The learner's machinery: data loading, DDP, the train/validate/publish cycle, signals.

It drives any `fleet.learner.api.Learner`, made by the method LearnerConfig.method names in the
registry (fleet/registry.py). Rank 0 alone
validates, checkpoints and publishes; every rank trains on its own stream of batches. All ranks
agree every step on whether to stop (an all-reduce of a flag), so a signal delivered to one
rank stops all of them at the same step, and rank 0 checkpoints that step before exiting.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from fleet.learner.api import (Batch, Learner, PublishFn, first_step_only, online_fraction,
                               requires_depth, uses_transitions)
from fleet.learner.checkpoint import (CheckpointError, load_checkpoint, parameter_checksum,
                                      save_checkpoint)
from fleet.learner.config import LearnerConfig
from fleet.learner.dataset import (StoreBatches, ValidationSet, labelled_attempt_counts,
                                   stream_batches, warn_attempts_without_depth)
from fleet.learner.in_service import InService
from fleet.learner.publish_rule import PublishSettings, should_publish
from fleet.registry import get_method
from fleet.policy.folder import policies_dir, read_pointer, write_policy
from fleet.store.durable import atomic_write_json
from fleet.store.reader import StoreReader

log = logging.getLogger("fleet.learner")


def make_learner(config: LearnerConfig, device: torch.device) -> Learner:
    """The learning method config.method names (fleet/methods), built for the robots' camera."""
    return get_method(config.method).make_learner(config, device)


class LearnerRun:
    """One learner process (one rank). `run()` returns when steps are done or on a signal."""

    def __init__(self, config: LearnerConfig, publish_fn: Optional[PublishFn] = None,
                 learner: Optional[Learner] = None) -> None:
        self.cfg = config
        self.publish_fn = publish_fn
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        device = config.torch_device()
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.device = device
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.learner: Learner = learner or make_learner(config, device)
        self.step = 0
        self.last_published_step = -1
        self.last_checkpoint_step = -1
        self.stop_requested = False
        self.reader: Optional[StoreReader] = None
        self.valset: Optional[ValidationSet] = None
        self.writer = None
        self.in_service = InService(policies_dir(config.out))
        #: (when, labelled training attempts) last counted for the replay-ratio cap
        self._attempts_counted: tuple[float, int] = (-math.inf, 0)
        self._waiting_since: Optional[float] = None
        self._wait_logged = -math.inf
        self._without_depth_warned = 0  # attempts without depth last warned about

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        old_handlers = self._install_signal_handlers()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        try:
            self._restore()
            if not self._wait_for_data():
                self._checkpoint_if_new()
                return self._summary()
            if self.world > 1:
                self.learner.wrap_distributed()
            if self.rank == 0:
                self._open_rank0_tools()
            self._train()
            return self._summary()
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        def request_stop(signum: int, _frame: Any) -> None:
            log.info("rank %d: %s received: checkpointing and stopping", self.rank,
                     signal.Signals(signum).name)
            self.stop_requested = True
        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _restore(self) -> None:
        state = load_checkpoint(self.cfg.out)
        if state is None:
            log.info("rank %d: no checkpoint in %s: starting at step 0", self.rank, self.cfg.out)
            return
        if state.get("learner_name") != self.learner.name:
            raise CheckpointError(
                f"{self.cfg.out} holds a checkpoint of learner {state.get('learner_name')!r}, "
                f"not {self.learner.name!r}: pass another --out directory")
        try:
            self.learner.load_state_dict(state["learner"])
        except RuntimeError as exc:  # torch: missing/unexpected keys, size mismatch
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"{self.cfg.out} holds a checkpoint of another network shape "
                f"({first[-1].strip()[:200]}): "
                f"it was trained with other network settings (--depth/--no-depth, "
                f"--image-size, the camera, the layer sizes); pass another --out directory, "
                f"or the settings it was trained with") from None
        self.step = self.last_checkpoint_step = int(state["step"])
        self.last_published_step = int(state.get("last_published_step", -1))
        if int(state.get("world_size", 1)) != self.world:
            log.warning("checkpoint was written by %s ranks, running %d: data streams differ",
                        state.get("world_size"), self.world)
        log.info("rank %d: resumed from %s at step %d", self.rank, self.cfg.out, self.step)

    def _warn_attempts_without_depth(self, reader: StoreReader, usable: int) -> None:
        if requires_depth(self.learner) and self.rank == 0:
            self._without_depth_warned = warn_attempts_without_depth(
                reader, usable, self._without_depth_warned, self.cfg.data)

    def _wait_for_data(self) -> bool:
        """Block until the store holds min_attempts labelled attempts; False if told to stop."""
        announced = False
        while not self.stop_requested:
            try:
                reader = self.reader or StoreReader(self.cfg.data)
            except FileNotFoundError:
                if not announced:
                    log.info("waiting for the store at %s to be created", self.cfg.data)
                    announced = True
                time.sleep(self.cfg.poll_seconds)
                continue
            self.reader = reader
            reader.refresh()
            train, val = labelled_attempt_counts(reader, self.cfg.val_fraction,
                                                 requires_depth(self.learner))
            self._warn_attempts_without_depth(reader, train + val)
            if train + val >= self.cfg.min_attempts and train > 0:
                log.info("rank %d: store %s holds %d labelled attempts (%d train, %d val)",
                         self.rank, self.cfg.data, train + val, train, val)
                return True
            if not announced:
                log.info("waiting for %d labelled attempts in %s (have %d train, %d val)",
                         self.cfg.min_attempts, self.cfg.data, train, val)
                announced = True
            time.sleep(self.cfg.poll_seconds)
        return False

    def _open_rank0_tools(self) -> None:
        assert self.reader is not None
        self.valset = ValidationSet(self.reader, self.learner.collate, self.cfg.val_fraction,
                                    self.cfg.val_max_attempts, self.cfg.batch_size,
                                    first_step_only(self.learner), self.cfg.val_newest,
                                    requires_depth(self.learner))
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            logdir = self.cfg.logdir or self.cfg.out / "tensorboard"
            self.writer = SummaryWriter(str(logdir), purge_step=self.step or None)

    def _batches(self) -> Iterator[Batch]:
        ds = StoreBatches(self.cfg.data, self.learner.collate, self.cfg.batch_size,
                          seed=self.cfg.seed, rank=self.rank, start_batch=self.step,
                          val_fraction=self.cfg.val_fraction,
                          recent_weight=self.cfg.recent_weight,
                          refresh_seconds=self.cfg.refresh_seconds,
                          frame_cache_bytes=self.cfg.frame_cache_mb * 2**20,
                          first_step_only=first_step_only(self.learner),
                          require_depth=requires_depth(self.learner),
                          with_next=uses_transitions(self.learner),
                          online_fraction=online_fraction(self.learner,
                                                          self.cfg.online_fraction),
                          online_attempts=self.cfg.online_attempts)
        return stream_batches(ds, self.cfg.workers, self.cfg.prefetch,
                              pin_memory=self.device.type == "cuda")

    # -- training ----------------------------------------------------------------------------

    def _agree(self) -> tuple[bool, bool]:
        """(stop, wait) as every rank agrees: one all-reduce per step, so that ranks train the
        same steps (a rank that waited alone would pair its next all-reduce with the others'
        gradient reduction)."""
        stop = self.stop_requested or (self.cfg.steps is not None and self.step >= self.cfg.steps)
        wait = not stop and self._over_replay_ratio()
        if self.world > 1:
            t = torch.tensor([float(stop), float(wait)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            stop, wait = bool(t[0].item()), bool(t[1].item())
        return stop, wait

    def _over_replay_ratio(self) -> bool:
        """True while the run has drawn samples_per_attempt samples (all ranks together) per
        labelled training attempt stored: the learner then waits for the fleet instead of
        memorising what it has (and leaves the CPU to the arms). The store is re-counted at
        most every poll_seconds."""
        ratio = self.cfg.samples_per_attempt
        if ratio <= 0:
            return False
        trained = self.step * self.cfg.batch_size * self.world
        if trained < ratio * self._attempts_counted[1]:
            self._waiting_since = None
            return False
        now = time.monotonic()
        if now - self._attempts_counted[0] >= self.cfg.poll_seconds:
            assert self.reader is not None
            self.reader.refresh()
            self._attempts_counted = (now, labelled_attempt_counts(
                self.reader, self.cfg.val_fraction, requires_depth(self.learner))[0])
        over = trained >= ratio * self._attempts_counted[1]
        if over and self._waiting_since is None:
            self._waiting_since = now
            # beside a running fleet this happens every few seconds: say it once a minute
            if now - self._wait_logged >= 60.0:
                self._wait_logged = now
                log.info("rank %d: step %d: %d samples drawn for %d training attempts (cap %g "
                         "per attempt): waiting for the fleet", self.rank, self.step, trained,
                         self._attempts_counted[1], ratio)
        return over

    def _train(self) -> None:
        cfg = self.cfg
        bar = None
        if self.rank == 0 and cfg.steps is not None and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", disable=None,
                       dynamic_ncols=True)
        it = self._batches()
        last_cycle, last_log, samples = time.monotonic(), time.monotonic(), 0
        cycled_at = self.step
        log.info("rank %d/%d: training from step %d (%s, batch %d, %d workers)", self.rank,
                 self.world, self.step, self.device, cfg.batch_size, cfg.workers)
        try:
            while True:
                stop, wait = self._agree()
                if stop:
                    break
                if wait:
                    # what was trained before the wait is validated and published on time
                    if (self.rank == 0 and self.step > cycled_at
                            and time.monotonic() - last_cycle >= cfg.cycle_every_seconds):
                        self._cycle()
                        last_cycle, cycled_at = time.monotonic(), self.step
                    time.sleep(0.2)
                    continue
                self.learner.train_step(next(it))
                self.step += 1
                samples += cfg.batch_size
                if bar is not None:
                    bar.update(1)
                if self.rank != 0:
                    continue
                if self.step % cfg.log_every_steps == 0:
                    now = time.monotonic()
                    self._log_train(samples / max(now - last_log, 1e-9))
                    last_log, samples = now, 0
                if (self.step % cfg.cycle_every_steps == 0
                        or time.monotonic() - last_cycle >= cfg.cycle_every_seconds):
                    self._cycle()
                    last_cycle, cycled_at = time.monotonic(), self.step
            if self.rank == 0:
                if self.stop_requested:
                    self._checkpoint_if_new()
                elif self.step != self.last_checkpoint_step:
                    self._cycle()  # a finite run ends validated, checkpointed, published
        finally:
            if bar is not None:
                bar.close()
            it.close()  # shuts the worker processes down
            self._write_rank_file()

    def _log_train(self, samples_per_s: float) -> None:
        m = self.learner.train_metrics()
        if not m:
            return
        assert self.reader is not None
        self.reader.refresh()
        log.info("step %d: train loss %.4f acc %.3f auc %.3f | %.0f samples/s/rank | store %d "
                 "attempts", self.step, m["loss"], m["accuracy"], m["auc"], samples_per_s,
                 self.reader.num_attempts())
        if self.writer is not None:
            for k in ("loss", "accuracy", "auc"):
                if math.isfinite(m[k]):
                    self.writer.add_scalar(f"train/{k}", m[k], self.step)
            self.writer.add_scalar("train/samples_per_s_per_rank", samples_per_s, self.step)
            self.writer.add_scalar("data/attempts", self.reader.num_attempts(), self.step)

    # -- validate, checkpoint, publish (rank 0) -----------------------------------------------

    def _cycle(self) -> None:
        """Validate the candidate and the policy in service on the same set, checkpoint, and
        publish the candidate unless it is worse."""
        assert self.reader is not None and self.valset is not None
        self.reader.refresh()
        self.valset.update()
        batches = self.valset.batches()
        cand = self.learner.evaluate(batches)
        pointer = read_pointer(self.cfg.out)
        service = self.in_service.metrics(pointer, self.learner, batches)
        train_n, val_n = labelled_attempt_counts(self.reader, self.cfg.val_fraction,
                                                 requires_depth(self.learner))
        self._warn_attempts_without_depth(self.reader, train_n + val_n)
        log.info("step %d: validation on %d steps of %d attempts: loss %.4f acc %.3f auc %.3f"
                 "%s", self.step, self.valset.examples, len(self.valset.attempt_ids),
                 cand["loss"], cand.get("accuracy", math.nan), cand.get("auc", math.nan),
                 "" if service is None else f" | in service v{pointer['version']}: "
                                            f"loss {service['loss']:.4f}")
        if self.writer is not None:
            for k in ("loss", "accuracy", "auc"):
                if math.isfinite(cand.get(k, math.nan)):
                    self.writer.add_scalar(f"val/{k}", cand[k], self.step)
            if service is not None and math.isfinite(service["loss"]):
                self.writer.add_scalar("val/in_service_loss", service["loss"], self.step)
            self.writer.flush()
        if 0 < self.step != self.last_published_step and self._should_publish(cand, service):
            self._publish(pointer, cand, train_n)
        self._checkpoint_if_new(force=True)

    def _should_publish(self, cand: dict, service: Optional[dict]) -> bool:
        assert self.reader is not None and self.valset is not None
        decision = should_publish(cand, service, self.valset.examples, self.reader,
                                  PublishSettings(self.cfg.publish_tolerance,
                                                  self.cfg.replace_losing_after))
        level = logging.WARNING if decision.publish and decision.unchecked else (
            logging.ERROR if decision.broken else logging.INFO)
        if decision.reason:
            log.log(level, "step %d: %s", self.step, decision.reason)
        return decision.publish

    def _publish(self, pointer: Optional[dict], cand: dict, trained_on: int) -> None:
        version = (int(pointer["version"]) if pointer else 0) + 1
        metrics = {f"val_{k}": (v if math.isfinite(v) else None) for k, v in cand.items()}
        metrics.update(step=self.step, learner=self.learner.name)
        directory, meta = write_policy(self.cfg.out, self.learner.network(), version=version,
                                       trained_on_attempts=trained_on, metrics=metrics)
        self.last_published_step = self.step
        log.info("published policy v%d at %s (step %d, trained on %d attempts)", version,
                 directory, self.step, trained_on)
        if self.writer is not None:
            self.writer.add_scalar("policy/version", version, self.step)
        if self.publish_fn is not None:
            try:
                self.publish_fn(directory, meta)
            except Exception:  # the bundle is on disk; distribution can catch up later
                log.exception("publish hook failed for policy v%d (bundle kept at %s)",
                              version, directory)

    def _checkpoint_if_new(self, force: bool = False) -> None:
        if self.rank != 0 or (self.step == self.last_checkpoint_step and not force):
            return
        save_checkpoint(self.cfg.out, {
            "step": self.step, "learner_name": self.learner.name,
            "learner": self.learner.state_dict(), "world_size": self.world,
            "last_published_step": self.last_published_step,
            "info": {"step": self.step, "learner": self.learner.name, "world_size": self.world,
                     "seed": self.cfg.seed, "batch_size": self.cfg.batch_size,
                     "last_published_step": self.last_published_step}})
        self.last_checkpoint_step = self.step
        log.info("checkpoint at step %d in %s", self.step, self.cfg.out)

    def _write_rank_file(self) -> None:
        """out/ranks/rank<r>.json: the step and a checksum of the parameters this rank ended
        with (data-parallel ranks must agree bit for bit)."""
        atomic_write_json(self.cfg.out / "ranks" / f"rank{self.rank}.json", {
            "rank": self.rank, "world_size": self.world, "step": self.step,
            "parameters_sha256": parameter_checksum(self.learner.network())})

    def _summary(self) -> dict[str, Any]:
        pointer = read_pointer(self.cfg.out) if self.rank == 0 else None
        return {"step": self.step, "rank": self.rank, "world_size": self.world,
                "published_version": pointer["version"] if pointer else 0,
                "stopped_by_signal": self.stop_requested}


def run(config: LearnerConfig, publish_fn: Optional[PublishFn] = None,
        learner: Optional[Learner] = None) -> dict[str, Any]:
    """Train until config.steps (or a signal). Returns a summary."""
    return LearnerRun(config, publish_fn, learner).run()
