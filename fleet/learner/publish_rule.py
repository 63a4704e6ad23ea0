"""The learner's publish rule, whole: when a trained candidate becomes the next policy version.

The rule (`should_publish`): publish the candidate unless its validation loss is worse than the
policy in service's (within `publish_tolerance`); publish unchecked while there is no
validation data; never publish a non-finite loss; and publish whatever the loss says once the
version in service has lost to exploration on the robots (below).

Why the fleet evidence: the learner used to compare validation losses only. In learning run 3
(docs/RESULTS.md) a v2 that grasped 5 of its 1,235 fleet attempts stayed in service for 15 of 20
minutes, because its own failures filled the validation set with easy negatives and no later network
beat its loss there. The store already says how each version does on the robots, so a version whose
learned attempts succeed less often than the exploration attempts (the same robots, scenes from the
same distribution) is replaced by the next candidate whatever the loss says.

`version_records` is the same evidence for every version at once, with where each version's
attempts closed: what `fleet policy list --store` shows an operator choosing a version to pin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleet.policy.exploration import EXPLORATION_KINDS
from fleet.store.reader import StoreReader



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


@dataclass(frozen=True)
class VersionRecord(FleetRecord):
    """How one policy version did on the robots, as an operator reads it before pinning: its
    learned attempts' success, and where they closed (a version that closes at once, high above
    the tray, scores well on validation loss and grasps nothing: docs/RESULTS.md, run 6). Here
    the exploration counts are those run while this version was in service."""

    version: int
    #: median steps of its learned attempts (the last one closes), NaN without any
    median_steps: float
    #: median height of the tool point where its learned attempts closed, m, NaN without any
    median_close_z: float


def version_records(reader: StoreReader) -> dict[int, VersionRecord]:
    """Per policy version (0: before any network), from the store's attempt index (aborted
    attempts have no label and are left out). Learned attempts are those run by a network,
    whatever its method (each records its own kind): any kind that is not an exploration kind."""
    t = reader.attempts().select(["policy_kind", "policy_version", "label", "num_steps",
                                  "final_pose"])
    t = t.filter(pc.is_valid(t["label"]))
    versions = t["policy_version"].to_numpy()
    exploring = pc.is_in(t["policy_kind"],
                         value_set=pa.array(sorted(EXPLORATION_KINDS))).to_numpy(
                             zero_copy_only=False)
    labels = t["label"].to_numpy(zero_copy_only=False).astype(bool)
    steps = t["num_steps"].to_numpy().astype(float)
    poses = t["final_pose"].combine_chunks().flatten().to_numpy().reshape(-1, 7) \
        if t.num_rows else np.zeros((0, 7))
    records = {}
    for v in sorted(set(versions.tolist())):
        mine = versions == v
        learned, explore = mine & ~exploring, mine & exploring
        records[v] = VersionRecord(
            learned_attempts=int(learned.sum()), learned_successes=int(labels[learned].sum()),
            exploration_attempts=int(explore.sum()),
            exploration_successes=int(labels[explore].sum()), version=int(v),
            median_steps=float(np.median(steps[learned])) if learned.any() else math.nan,
            median_close_z=float(np.median(poses[learned, 2])) if learned.any() else math.nan)
    return records


def in_service_record(records: dict[int, VersionRecord], version: int) -> FleetRecord:
    """What the rule weighs for `version`: its learned attempts against exploration's of all
    versions (more evidence than the hours it served)."""
    mine = records.get(version)
    return FleetRecord(mine.learned_attempts if mine else 0,
                       mine.learned_successes if mine else 0,
                       sum(r.exploration_attempts for r in records.values()),
                       sum(r.exploration_successes for r in records.values()))


def fleet_record(reader: StoreReader, version: int) -> FleetRecord:
    """in_service_record of the store as it is now."""
    return in_service_record(version_records(reader), version)


def losing(r: FleetRecord, version: int, min_attempts: int) -> Optional[str]:
    """Why version `version` should be replaced (or None): over at least `min_attempts` labelled
    attempts of each, its learned attempts succeed less often than exploration's.
    min_attempts <= 0 turns the rule off."""
    if min_attempts <= 0 or version <= 0:
        return None
    if r.learned_attempts < min_attempts or r.exploration_attempts < min_attempts:
        return None
    if r.learned_rate >= r.exploration_rate:
        return None
    return (f"v{version} grasped {r.learned_successes}/{r.learned_attempts} "
            f"({r.learned_rate:.2f}) of its fleet attempts, exploration "
            f"{r.exploration_successes}/{r.exploration_attempts} ({r.exploration_rate:.2f})")


def losing_to_exploration(reader: StoreReader, version: int, min_attempts: int) -> Optional[str]:
    """`losing` on the store as it is now (reads the index only when the rule is on)."""
    if min_attempts <= 0 or version <= 0:
        return None
    return losing(fleet_record(reader, version), version, min_attempts)


@dataclass(frozen=True)
class PublishSettings:
    """The rule's two knobs (LearnerConfig publish_tolerance, replace_losing_after)."""

    #: publish if the candidate's val loss <= in-service val loss * (1 + tolerance)
    tolerance: float = 0.0
    #: replace a version in service that grasps less often than exploration, once each has
    #: this many labelled fleet attempts; 0: off
    replace_losing_after: int = 50


@dataclass(frozen=True)
class PublishDecision:
    """Whether to publish, and why (logged by the learner)."""

    publish: bool
    reason: str = ""
    unchecked: bool = False  # published without validation data
    broken: bool = False  # the candidate's loss is not finite


def should_publish(candidate: dict, service: Optional[dict], validation_examples: int,
                   reader: StoreReader, settings: PublishSettings) -> PublishDecision:
    """The rule. candidate/service: validation metrics with "loss" (service also "version"),
    service None when no policy is in service yet."""
    if validation_examples == 0:
        return PublishDecision(True, "no validation attempts yet: publishing unchecked",
                               unchecked=True)
    if not math.isfinite(candidate["loss"]):
        return PublishDecision(False, f"validation loss is {candidate['loss']}: not publishing",
                               broken=True)
    if service is None:
        return PublishDecision(True)
    if candidate["loss"] <= service["loss"] * (1.0 + settings.tolerance):
        return PublishDecision(True)
    if losing := losing_to_exploration(reader, service["version"],
                                       settings.replace_losing_after):
        return PublishDecision(True, f"publishing although validation loss "
                                     f"{candidate['loss']:.4f} > {service['loss']:.4f}: {losing}")
    return PublishDecision(False, f"not publishing: validation loss {candidate['loss']:.4f} is "
                                  f"worse than {service['loss']:.4f} of the policy in service")
