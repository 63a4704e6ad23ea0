"""The interface between the learner's machinery and one learning method.

The machinery (fleet/learner/config.py: the store, worker processes, DDP, checkpoints, the publish
rule) knows nothing of grasping or of supervised learning; a method plugs in through `Learner`:

    samples in:  `collate(samples)` turns StepSamples from the store into a Batch of tensors
                 (it runs in DataLoader worker processes, so it must be a pure function of its
                 input and picklable with its object);
    training:    `train_step(batch)` -> metrics; `evaluate(batches, model)` -> metrics, of
                 which "loss" is what the publish rule compares (lower is better);
    policy out:  `network()` is the nn.Module that fleet.policy.bundle.save_bundle writes.

The Levine et al. 2016 supervised learner (fleet/learner/config.py `LevineLearner`) is the first; a
QT-Opt learner (Bellman targets, a target network) can sit beside it with no change to the
store, the wire protocol or the robots, which see only bundles.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from fleet.policy.bundle import BundleMeta
from fleet.store.reader import StepSample

#: Named tensors of one batch (e.g. "image", "motion", "label"); shapes are the method's own.
Batch = dict[str, torch.Tensor]

#: Called by rank 0 after a new policy bundle directory is fully written and the pointer
#: (policies/latest.json) updated: hand it to the data server for distribution to the robots.
PublishFn = Callable[[Path, BundleMeta], None]


@runtime_checkable
class Learner(Protocol):
    """One learning method, as the learner's machinery drives it."""

    #: A short name, logged and stored in checkpoints so a resume with another method fails.
    name: str

    #: Samples -> training tensors. Runs in DataLoader worker processes (JPEG decoding happens
    #: there), so it must be picklable and must not touch the network.
    collate: Callable[[Sequence[StepSample]], Batch]

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on the batch; returns at least {"loss": ...}."""
        ...

    def train_metrics(self) -> dict[str, float]:
        """Metrics over the training batches since the last call (for logs and TensorBoard)."""
        ...

    def evaluate(self, batches: Iterable[Batch],
                 model: Optional[nn.Module] = None) -> dict[str, float]:
        """Metrics of `model` (default: the one being trained) over batches; has "loss"."""
        ...

    def network(self) -> nn.Module:
        """The bare network (not DDP-wrapped) that goes into a policy bundle."""
        ...

    def wrap_distributed(self) -> None:
        """Wrap the network for data-parallel training (torch.distributed is initialised)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume training: network and optimiser state (tensors, plain values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


def first_step_only(learner: Learner) -> bool:
    """Whether the method trains on each attempt's first step only (grasp-point: I_0)."""
    return bool(getattr(learner, "first_step_only", False))


def uses_transitions(learner: Learner) -> bool:
    """Whether the method learns from transitions (s_t, a_t, s_t+1): each training sample then
    carries its attempt's next step (StepSample.next_step; a Q-learner's Bellman target)."""
    return bool(getattr(learner, "uses_transitions", False))


def online_fraction(learner: Learner, configured: Optional[float]) -> float:
    """The share of each batch drawn from the newest attempts: `configured` (--online-fraction)
    when given, else the method's own `online_fraction` (0: none, every stored step alike)."""
    if configured is not None:
        return float(configured)
    return float(getattr(learner, "online_fraction", 0.0))


def requires_depth(learner: Learner) -> bool:
    """Whether the method's network takes depth: it then learns only from attempts that carry
    depth images, and the others (older or colour-only robots) are left out, with a warning."""
    return bool(getattr(learner, "requires_depth", False))


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged.

    NaN when only one class is present (AUC is undefined then, not 0.5).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average 1-based ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def window_metrics(window: list[tuple]) -> dict[str, float]:
    """binary_metrics over the training steps since the last call, then the window is emptied:
    each entry is (logits, labels, loss, ...extra) of one step; {} when no step ran."""
    if not window:
        return {}
    logits = torch.cat([w[0] for w in window]).numpy()
    labels = torch.cat([w[1] for w in window]).numpy()
    metrics = binary_metrics(logits, labels, float(np.mean([w[2] for w in window])))
    window.clear()
    return metrics


def binary_metrics(logits: np.ndarray, labels: np.ndarray, loss: float) -> dict[str, float]:
    """loss, accuracy (threshold p = 0.5), AUC, success rate of the labels, count."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n = labels.size
    return {"loss": float(loss),
            "accuracy": float(((logits > 0) == labels).mean()) if n else float("nan"),
            "auc": binary_auc(logits, labels),
            "positive_rate": float(labels.mean()) if n else float("nan"),
            "examples": float(n)}
