"""Which servo policy runs a loaded policy bundle: the one its method registered.

A robot (robot_node's PolicyRuntime) and the evaluator (`fleet eval`, which must know the
policy_kind a bundle's attempts record) both ask here. The bundle's architecture names its
method in the registry (fleet/registry.py); the method builds the policy from the
network and the robot's servo settings. Nothing here knows any one method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fleet.registry import MethodError, by_architecture
from fleet.policy.base import Policy


@dataclass(frozen=True)
class ServoSettings:
    """The robot's policy parameters that a learned policy may take (robot_node NodeConfig);
    each method's policy factory reads the ones it uses."""

    cem_samples: int = 64
    cem_elites: int = 6
    #: 0: the method's own default (the Levine policy 3, QT-Opt 2, as in each paper)
    cem_iterations: int = 0
    #: grasp-point policy: share of attempts whose grasp is drawn among the best few
    explore_top: float = 0.0


def policy_kind(architecture: str) -> str:
    """The policy_kind recorded by attempts of a bundle with this architecture."""
    try:
        return by_architecture(architecture).policy_kind
    except MethodError as exc:
        raise ValueError(f"no servo policy for {exc}") from None


def policy_for(model: Any, version: int, settings: Optional[ServoSettings] = None) -> Policy:
    """The servo policy for a network loaded from a bundle (by its `architecture`)."""
    architecture = getattr(model, "architecture", None)
    if architecture is None:
        raise ValueError(f"no servo policy for a {type(model).__name__}: it has no "
                         f"`architecture` (load networks with fleet.policy.bundle)")
    try:
        method = by_architecture(architecture)
    except MethodError as exc:
        raise ValueError(f"no servo policy for {exc}") from None
    policy = method.make_policy(model, version, settings or ServoSettings())
    if not isinstance(policy, Policy):
        raise ValueError(f"method {method.name!r} made a {type(policy).__name__}, not a "
                         f"fleet.policy.base.Policy")
    return policy
