"""Policies used only by robot_node's end-to-end tests, loaded into a real robot_node process
through its `exploration_policy` parameter ('robot_test_policies:HugeMotions', with tests/ on
PYTHONPATH)."""
from __future__ import annotations

import numpy as np

from fleet.policy.base import Decision, Policy


class HugeMotions(Policy):
    """Asks for absurd motions every step (metres, in random directions, some NaN): the node's
    workspace clipping is all that keeps the arm in its box."""

    kind = "huge"

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def decide(self, obs) -> Decision:
        motion = self.rng.choice([-1.0, 1.0], 4) * self.rng.uniform(1.0, 100.0, 4)
        if self.rng.random() < 0.1:
            motion[int(self.rng.integers(4))] = np.nan
        return Decision(motion, close=False)
