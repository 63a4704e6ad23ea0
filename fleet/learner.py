"""The learner: trains the shared grasp network on the fleet's data and publishes policies.

Two methods (`--method`): "grasp_point" (the default, fleet/grasp_point_learner.py: one example
per attempt, the pre-grasp image and where the gripper closed) and "levine" (this file's
`LevineLearner`, Levine et al. 2016, supervised: every step t of every stored, labelled attempt
is an example (I_t, v = p_T - p_t, label), trained with binary cross-entropy on g(I_t, v)'s
logit). Either runs beside the fleet, forever or for --steps: worker processes sample the store (picking up new
attempts as they are rolled into shards) and decode the JPEGs; every `cycle_every_steps` steps
or `cycle_every_seconds` seconds rank 0 validates, checkpoints, and publishes policy v<N+1>
unless it is worse on validation than the policy in service. docs/learner.md has the details.

    python -m fleet.learner --data STORE --out RUN [--steps N] [--batch-size 64] ...
    torchrun --standalone --nproc_per_node 2 -m fleet.learner --data STORE --out RUN ...
"""
from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleet.bundle import BundleMeta
from fleet.dataset import decode_rgb, grasp_motions
from fleet.grasp_point import GraspPointConfig
from fleet.learner_api import Batch, Learner, PublishFn
from fleet.network import GraspSuccessNet, NetworkConfig, encode_motions
from fleet.store_reader import StepSample
from fleet.supervised import SupervisedLearner

log = logging.getLogger("fleet.learner")


#: The learning methods a learner run can use (LearnerConfig.method).
METHODS = ("grasp_point", "levine")


@dataclass
class LearnerConfig:
    """Every hyperparameter and setting of a learner run (each is a --flag of the CLI)."""

    data: Path  # the episode store directory (the data server's --data)
    out: Path  # run directory: checkpoint, policies/, tensorboard/
    method: str = "grasp_point"  # "grasp_point" (fleet/grasp_point_learner.py) or "levine"
    steps: Optional[int] = None  # stop at this total step count; None = run beside the fleet
    batch_size: int = 64  # per rank
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    seed: int = 0  # network init, and data order (which also depends on the rank)
    workers: int = 1  # DataLoader worker processes per rank (0: load in the training process)
    prefetch: int = 4  # batches each worker prepares ahead
    threads: int = 1  # torch intra-op threads of the training process
    device: str = "auto"  # "cpu", "cuda", "cuda:1", or "auto"
    image_size: int = 64  # network input side, px (must match the robots' camera setting)
    # The camera model the grasp-point network samples I_0 through (arms.yaml camera_*): a
    # look-at pinhole in base_link, m, and its vertical field of view, deg.
    camera_eye: tuple[float, float, float] = GraspPointConfig.camera_eye  # camera position
    camera_target: tuple[float, float, float] = GraspPointConfig.camera_target  # looked-at point
    camera_fov_deg: float = GraspPointConfig.camera_fov_deg  # vertical field of view, deg
    # The grasp-point network also takes I_0's aligned depth image (arms.yaml depth: the arms
    # have RGB-D cameras; fleet sim sets it). Every attempt trained on must then carry depth.
    depth: bool = False
    val_fraction: float = 0.1  # share of attempts (by a hash of their id) held out
    val_max_attempts: int = 200  # validation set: this many held-out attempts ...
    val_newest: bool = True  # ... the newest (a window moving with the fleet), else the first
    recent_weight: float = 0.0  # >0 favours newer attempts (see StoreReader.sample_steps)
    positive_weight: float = 1.0  # BCE weight of successes (>1 skews p up: CEM then closes early)
    augment_shift: int = 4  # random image shift, px (against memorising scenes)
    augment_colour: float = 0.2  # random brightness/contrast change, fraction
    ema_decay: float = 0.0  # >0: validate and publish a moving average of the weights (0.995)
    min_attempts: int = 50  # labelled attempts stored before the first training step
    # Replay ratio: the learner waits for more data once it has trained on this many samples
    # per labelled attempt stored (beyond it a small store is memorised); 0: no cap.
    samples_per_attempt: float = 0.0  # max training samples per labelled attempt stored
    cycle_every_steps: int = 500  # validate + checkpoint + maybe publish this often...
    cycle_every_seconds: float = 300.0  # ...or at least this often
    publish_tolerance: float = 0.0  # publish if val loss <= in-service val loss * (1 + this)
    #: ...or whatever the loss says, once the version in service has this many labelled fleet
    #: attempts and grasps less often than exploration does (fleet/publish_rule.py); 0: off
    replace_losing_after: int = 50
    log_every_steps: int = 50
    refresh_seconds: float = 5.0  # how often workers look for new shards
    frame_cache_mb: int = 512  # decoded-frame cache per worker, MiB (64x64: ~15 KB/frame); 0 off
    poll_seconds: float = 2.0  # how often to re-check the store while waiting for min_attempts
    tensorboard: bool = True
    logdir: Optional[Path] = None  # default <out>/tensorboard
    progress: bool = True  # a progress bar for finite runs on a terminal

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.batch_size < 1 or self.workers < 0 or self.threads < 1:
            raise ValueError("batch_size and threads must be >= 1, workers >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.cycle_every_steps < 1 or self.cycle_every_seconds <= 0:
            raise ValueError("cycle_every_steps must be >= 1 and cycle_every_seconds > 0")
        if self.steps is not None and self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.method not in METHODS:
            raise ValueError(f"unknown learning method {self.method!r}; choose from "
                             f"{sorted(METHODS)}")
        if self.samples_per_attempt < 0:
            raise ValueError(f"samples_per_attempt must be >= 0 (0: no cap), got "
                             f"{self.samples_per_attempt}")
        if self.frame_cache_mb < 0:
            raise ValueError(f"frame_cache_mb must be >= 0 (0: off), got {self.frame_cache_mb}")

    def training_options(self) -> "TrainingOptions":
        return TrainingOptions(self.positive_weight, self.augment_shift, self.augment_colour,
                               self.ema_decay)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# -- the method: Levine et al. 2016 supervised grasp success prediction ---------------------------

@dataclass(frozen=True)
class TrainingOptions:
    """What the training step does beyond plain BCE (each is a LearnerConfig field too)."""

    #: BCE weight of successful examples: > 1 while successes are rare, so the few positives
    #: are not drowned by the many easy failures.
    positive_weight: float = 1.0
    #: Random translation of each training image by up to this many pixels (replicate-padded
    #: crop): the same scene seen from a slightly moved camera, against overfitting.
    augment_shift: int = 0
    #: Random brightness/contrast change of each training image by up to this fraction.
    augment_colour: float = 0.0
    #: Polyak averaging: > 0 keeps an exponential moving average of the weights (this decay per
    #: step) and validates and publishes it instead of the latest weights. With a constant
    #: learning rate the latest weights wander with the last few hundred batches; the average
    #: is a better and steadier policy (successive versions differ less by chance).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.positive_weight <= 0 or self.augment_shift < 0 or self.augment_colour < 0:
            raise ValueError("positive_weight must be > 0, augment_shift and augment_colour >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def augment(images: torch.Tensor, options: TrainingOptions,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Float images (B, C, H, W) in [0, 1], shifted and colour-jittered per image."""
    b, _, h, w = images.shape
    s = options.augment_shift
    if s > 0:
        padded = F.pad(images, (s, s, s, s), mode="replicate")
        offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)
        images = torch.stack([padded[i, :, oy:oy + h, ox:ox + w]
                              for i, (oy, ox) in enumerate(offsets.tolist())])
    c = options.augment_colour
    if c > 0:
        gain = (1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * c).to(images.device)
        bias = ((torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * c / 2).to(images.device)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * gain + mean + bias).clamp_(0, 1)
    return images


@dataclass(frozen=True)
class LevineCollate:
    """StepSamples -> {"image": uint8 (B,3,H,W), "motion": (B,5), "label": (B,)}. Picklable;
    runs in workers. Images stay uint8 until the training process (4x less to pass along)."""

    height: int
    width: int
    motion_scale: float

    def __call__(self, samples: Sequence[StepSample]) -> Batch:
        images = np.stack([decode_rgb(s.image_jpeg, self.height, self.width) for s in samples])
        motions = grasp_motions(np.stack([s.ee_pose for s in samples]),
                                np.stack([s.final_pose for s in samples]))
        return {"image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                "motion": encode_motions(motions, self.motion_scale),
                "label": torch.tensor([float(s.label) for s in samples])}


class LevineLearner(SupervisedLearner):
    """The grasp success network g(I, v), Adam, BCE with logits. Implements learner_api.Learner."""

    name = "levine2016_supervised"

    def __init__(self, network: NetworkConfig, lr: float, weight_decay: float,
                 device: torch.device, options: Optional[TrainingOptions] = None) -> None:
        self.options = options or TrainingOptions()
        super().__init__(GraspSuccessNet(network), lr, weight_decay, device,
                         self.options.positive_weight, self.options.ema_decay)
        self.collate = LevineCollate(network.image_height, network.image_width,
                                     network.motion_scale)

    def forward_batch(self, model: nn.Module, batch: Batch,
                      generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._to_device(batch["image"]).float().div_(255.0)
        # the pre-grasp images I_0 (uint8, like "image") for networks that take them
        initial = (self._to_device(batch["initial_image"]).float().div_(255.0)
                   if "initial_image" in batch else None)
        o = self.options
        if generator is not None and (o.augment_shift or o.augment_colour):
            image = augment(image, o, generator)
            initial = None if initial is None else augment(initial, o, generator)
        logits = model(image, self._to_device(batch["motion"]), initial)
        return logits, self._to_device(batch["label"])


def parameter_checksum(model: nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order (equal iff bit-identical)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(config: LearnerConfig, publish_fn: Optional[PublishFn] = None,
        learner: Optional[Learner] = None) -> dict[str, Any]:
    """Train until config.steps (or a signal); see fleet/learner_loop.py. Returns a summary."""
    from fleet.learner_loop import LearnerRun
    return LearnerRun(config, publish_fn, learner).run()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m fleet.learner ...` / `fleet learn ...`: parse flags, train, exit code."""
    from fleet.learner_loop import main as _main
    return _main(argv)


__all__ = ["BundleMeta", "LearnerConfig", "LevineCollate", "LevineLearner", "Learner",
           "PublishFn", "TrainingOptions", "augment", "main", "parameter_checksum", "run"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
