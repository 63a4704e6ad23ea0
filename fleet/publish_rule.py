"""Fleet evidence for the learner's publish rule: is the policy in service grasping less often
than the exploration policy beside it?

Why: the learner publishes a candidate unless its validation loss is worse than the policy in
service's. In learning run 3 (docs/RESULTS.md) a v2 that grasped 5 of its 1,235 fleet attempts
stayed in service for 15 of 20 minutes, because its own failures filled the validation set with
easy negatives and no later network beat its loss there. The store already says how each
version does on the robots, so a version whose learned attempts succeed less often than the
exploration attempts (the same robots, scenes from the same distribution) is replaced by the
next candidate whatever the loss says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from fleet.store_reader import StoreReader

#: Policy kinds robot_node records for exploration attempts (fleet.exploration).
EXPLORATION_KINDS = ("random", "scripted")


@dataclass(frozen=True)
class FleetRecord:
    """Labelled fleet attempts of the version in service and of exploration (all versions)."""

    learned_attempts: int
    learned_successes: int
    exploration_attempts: int
    exploration_successes: int

    @property
    def learned_rate(self) -> float:
        return self.learned_successes / max(self.learned_attempts, 1)

    @property
    def exploration_rate(self) -> float:
        return self.exploration_successes / max(self.exploration_attempts, 1)


def fleet_record(reader: StoreReader, version: int) -> FleetRecord:
    """Counts from the store's attempt index (aborted attempts have no label and are left out).
    Learned attempts are those of `version` run by a network, whatever its method ("cem",
    "grasp_point", ...): any kind that is not an exploration kind."""
    t = reader.attempts().select(["policy_kind", "policy_version", "label"])
    t = t.filter(pc.is_valid(t["label"]))
    exploring = pc.is_in(t["policy_kind"], value_set=pa.array(list(EXPLORATION_KINDS)))
    learned = t.filter(pc.and_(pc.invert(exploring), pc.equal(t["policy_version"], version)))
    explore = t.filter(exploring)

    def successes(x) -> int:
        return int(pc.sum(pc.cast(x["label"], "int64")).as_py() or 0)

    return FleetRecord(learned.num_rows, successes(learned), explore.num_rows, successes(explore))


def losing_to_exploration(reader: StoreReader, version: int, min_attempts: int) -> Optional[str]:
    """Why version `version` should be replaced (or None): over at least `min_attempts` labelled
    attempts of each, its learned attempts succeed less often than exploration's.
    min_attempts <= 0 turns the rule off."""
    if min_attempts <= 0 or version <= 0:
        return None
    r = fleet_record(reader, version)
    if r.learned_attempts < min_attempts or r.exploration_attempts < min_attempts:
        return None
    if r.learned_rate >= r.exploration_rate:
        return None
    return (f"v{version} grasped {r.learned_successes}/{r.learned_attempts} "
            f"({r.learned_rate:.2f}) of its fleet attempts, exploration "
            f"{r.exploration_successes}/{r.exploration_attempts} ({r.exploration_rate:.2f})")
