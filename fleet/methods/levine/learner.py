"""The Levine et al. 2016 learner: supervised grasp success prediction on every step.

Every step t of every stored, labelled attempt is an example (I_t, v = p_T - p_t, label),
trained with binary cross-entropy on g(I_t, v)'s logit (fleet/methods/levine/network.py). It
plugs into the learner's machinery (fleet/learner/loop.py) through fleet.learner.api.Learner.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from fleet.learner.api import Batch
from fleet.learner.dataset import decode_rgb, grasp_motions
from fleet.learner.supervised import SupervisedLearner, augment
from fleet.learner.config import TrainingOptions
from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig, encode_motions
from fleet.store.reader import StepSample

log = logging.getLogger("fleet.learner")


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


def make_learner(config, device: torch.device) -> LevineLearner:
    """The registry's factory: a LevineLearner for the robots' camera size (a LearnerConfig)."""
    size = config.image_size
    if config.depth:
        log.info("the levine method takes colour images only: --depth is ignored")
    return LevineLearner(NetworkConfig(image_height=size, image_width=size), config.lr,
                         config.weight_decay, device, config.training_options())
