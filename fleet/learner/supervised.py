"""What every supervised grasp-success learner shares: Adam, BCE with logits, metrics, DDP,
the training options (class weight, augmentation, weight averaging) and image augmentation.

A method (fleet/methods/levine/learner.py `LevineLearner`, fleet/methods/grasp_point/learner.py
`GraspPointLearner`) says only how a batch becomes logits and labels (`forward_batch`, with its
augmentations when training); this base class turns that into the fleet.learner.api.Learner the
machinery drives.
"""
from __future__ import annotations

import abc
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from fleet.learner.api import Batch, binary_metrics, window_metrics
from fleet.learner.config import TrainingOptions


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


def _warm_ema(decay: float):
    """Exponential moving average whose decay ramps up as (1 + n) / (10 + n) to `decay` over
    the first updates n, so the average of a young learner is not mostly its random start
    (the first policy is published after a few hundred steps)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for a, c in zip(averaged, current):
            a.lerp_(c, weight)

    return update


class SupervisedLearner(abc.ABC):
    """A network trained with binary cross-entropy on grasp labels."""

    name = "supervised"
    #: Draw only each attempt's first step from the store (fleet/learner/loop.py reads it).
    first_step_only = False

    def __init__(self, net: nn.Module, lr: float, weight_decay: float, device: torch.device,
                 positive_weight: float = 1.0, ema_decay: float = 0.0) -> None:
        self.device = device
        self.net = net.to(device)
        self.model: nn.Module = self.net
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr,
                                          weight_decay=weight_decay)
        self.positive_weight = positive_weight
        #: The moving average of the weights that is validated and published (ema_decay > 0).
        self.ema: Optional[AveragedModel] = None if ema_decay <= 0 else AveragedModel(
            self.net, multi_avg_fn=_warm_ema(ema_decay))
        self._window: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        #: Training steps taken: seeds each step's augmentation, so a learner resumed from a
        #: checkpoint augments exactly as an uninterrupted one would.
        self.steps_taken = 0

    @abc.abstractmethod
    def forward_batch(self, model: nn.Module, batch: Batch,
                      generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a batch; `generator` is set when training (augment with it)."""

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        g = torch.Generator().manual_seed(self.steps_taken)
        self.steps_taken += 1
        logits, label = self.forward_batch(self.model, batch, g)
        pos_weight = None if self.positive_weight == 1.0 else \
            torch.tensor(self.positive_weight, device=self.device)
        loss = F.binary_cross_entropy_with_logits(logits, label, pos_weight=pos_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        value = float(loss.detach())
        self._window.append((logits.detach().cpu(), label.cpu(), value))
        return {"loss": value}

    def train_metrics(self) -> dict[str, float]:
        return window_metrics(self._window)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch],
                 model: Optional[nn.Module] = None) -> dict[str, float]:
        model = (model or self.network()).to(self.device)
        was_training = model.training
        model.eval()
        total, logits_all, labels_all = 0.0, [], []
        for batch in batches:
            logits, label = self.forward_batch(model, batch, None)
            total += float(F.binary_cross_entropy_with_logits(logits, label, reduction="sum"))
            logits_all.append(logits.cpu())
            labels_all.append(label.cpu())
        model.train(was_training)
        if not labels_all:
            return {"loss": float("nan"), "examples": 0.0}
        logits, labels = torch.cat(logits_all).numpy(), torch.cat(labels_all).numpy()
        return binary_metrics(logits, labels, total / len(labels))

    def network(self) -> nn.Module:
        """What is validated and published: the weight average if kept, else the weights."""
        return self.net if self.ema is None else self.ema.module

    def wrap_distributed(self) -> None:
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    def state_dict(self) -> dict[str, Any]:
        state = {"network": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "steps_taken": self.steps_taken}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["network"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # a checkpoint from before averaging was on: start the average here
                self.ema.module.load_state_dict(state["network"])
                self.ema.n_averaged.fill_(1)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state.get("steps_taken", 0))
