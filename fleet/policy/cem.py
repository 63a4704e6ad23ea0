"""The cross-entropy method (CEM) over bounded continuous actions.

Levine et al. 2016 pick each servo motion with CEM on the grasp success network: sample 64
motions from a diagonal Gaussian, keep the best 6, refit the Gaussian to them, three times.
QT-Opt maximises its Q-function over actions the same way. So this module knows nothing of
networks or grasping: it maximises any `score(batch of actions) -> batch of scores`, which also
makes it testable against a function whose maximum is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

#: A batch of actions (N, D) -> their scores (N,); higher is better.
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CEMConfig:
    """CEM settings; defaults are the paper's (64 samples, 6 elites, 3 iterations).

    Bounds and standard deviations are per action dimension; the defaults are for grasp motions
    (dx, dy, dz, dyaw) in m and rad. A caller may narrow the bounds per call (e.g. to keep the
    gripper inside the workspace).
    """

    samples: int = 64
    elites: int = 6
    iterations: int = 3
    init_std: tuple[float, ...] = (0.08, 0.08, 0.1, 0.8)
    #: Floor on the refitted std, so three iterations never collapse onto one sample.
    min_std: tuple[float, ...] = (0.002, 0.002, 0.002, 0.02)
    low: tuple[float, ...] = (-0.15, -0.15, -0.3, -np.pi / 2)
    high: tuple[float, ...] = (0.15, 0.15, 0.1, np.pi / 2)

    def __post_init__(self) -> None:
        d = len(self.low)
        if not (len(self.high) == len(self.init_std) == len(self.min_std) == d):
            raise ValueError("low, high, init_std and min_std need one entry per action dimension")
        if self.samples < 2 or not 1 <= self.elites <= self.samples:
            raise ValueError(f"need 2 <= samples and 1 <= elites <= samples, got "
                             f"samples={self.samples}, elites={self.elites}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if np.any(np.asarray(self.low) > np.asarray(self.high)):
            raise ValueError(f"low {self.low} must not exceed high {self.high}")

    @property
    def dims(self) -> int:
        return len(self.low)


@dataclass
class CEMResult:
    """The best action seen over all iterations, and the final sampling distribution."""

    best: np.ndarray  # (D,)
    best_score: float
    mean: np.ndarray  # (D,) of the last refit
    std: np.ndarray  # (D,) of the last refit
    evaluations: int  # how many actions were scored


def cem_maximize(score: ScoreFn, config: CEMConfig, rng: np.random.Generator,
                 mean: Optional[Sequence[float]] = None,
                 low: Optional[Sequence[float]] = None,
                 high: Optional[Sequence[float]] = None) -> CEMResult:
    """Maximise `score` over the box [low, high] (config bounds unless given) with CEM.

    Samples outside the box are clipped onto it rather than resampled: one batched call to
    `score` per iteration is what keeps a CEM decision fast. `mean` starts the search (zero,
    clipped into the box, unless given): a servo loop may warm-start from its last answer.
    """
    lo = np.asarray(config.low if low is None else low, dtype=np.float64)
    hi = np.asarray(config.high if high is None else high, dtype=np.float64)
    if lo.shape != (config.dims,) or hi.shape != (config.dims,):
        raise ValueError(f"bounds must have {config.dims} entries")
    if np.any(lo > hi):
        raise ValueError(f"empty search box: low {lo} exceeds high {hi}")
    mu = np.clip(np.zeros(config.dims) if mean is None else np.asarray(mean, float), lo, hi)
    std = np.asarray(config.init_std, dtype=np.float64)
    min_std = np.asarray(config.min_std, dtype=np.float64)
    best, best_score = mu.copy(), -np.inf
    for _ in range(config.iterations):
        actions = np.clip(mu + std * rng.standard_normal((config.samples, config.dims)), lo, hi)
        scores = np.asarray(score(actions), dtype=np.float64).reshape(-1)
        if scores.shape != (config.samples,):
            raise ValueError(f"score returned {scores.shape[0]} scores for "
                             f"{config.samples} actions")
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        elite_idx = np.argpartition(-scores, config.elites - 1)[:config.elites]
        top = int(elite_idx[np.argmax(scores[elite_idx])])
        if scores[top] > best_score:
            best, best_score = actions[top].copy(), float(scores[top])
        elites = actions[elite_idx]
        mu = elites.mean(axis=0)
        std = np.maximum(elites.std(axis=0), min_std)
    return CEMResult(best=best, best_score=best_score, mean=mu, std=std,
                     evaluations=config.samples * config.iterations)
