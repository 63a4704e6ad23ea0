"""Which servo policy runs a loaded policy bundle, by the bundle's architecture.

A robot (robot_node's PolicyRuntime) and the evaluator (fleet eval, which must know the
policy_kind a bundle's attempts record) both ask here, so a new architecture is added in one
place: its network class, the Policy that drives it, and that policy's kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from fleet import grasp_point
from fleet.cem import CEMConfig
from fleet.grasp_point import GraspPointNet
from fleet.grasp_point_policy import GraspPointPolicy, GraspPointPolicyConfig
from fleet.network import ARCHITECTURE_NAME as LEVINE_ARCHITECTURE
from fleet.network import GraspSuccessNet
from fleet.policy import GraspPolicy, GraspPolicyConfig, Policy

#: Bundle architecture -> the policy_kind its attempts record.
POLICY_KINDS: dict[str, str] = {
    LEVINE_ARCHITECTURE: GraspPolicy.kind,
    grasp_point.ARCHITECTURE_NAME: GraspPointPolicy.kind,
}


@dataclass(frozen=True)
class ServoSettings:
    """The robot's policy parameters that a learned policy takes (robot_node NodeConfig)."""

    cem_samples: int = 64
    cem_elites: int = 6
    cem_iterations: int = 3
    #: grasp-point policy: share of attempts whose grasp is drawn among the best few
    explore_top: float = 0.0


def policy_kind(architecture: str) -> str:
    """The policy_kind recorded by attempts of a bundle with this architecture."""
    try:
        return POLICY_KINDS[architecture]
    except KeyError:
        raise ValueError(f"no servo policy for architecture {architecture!r} (known: "
                         f"{sorted(POLICY_KINDS)})") from None


def policy_for(model: nn.Module, version: int,
               settings: Optional[ServoSettings] = None) -> Policy:
    """The servo policy for a network loaded from a bundle."""
    s = settings or ServoSettings()
    if isinstance(model, GraspPointNet):
        return GraspPointPolicy(model, GraspPointPolicyConfig(explore_top=s.explore_top),
                                version)
    if isinstance(model, GraspSuccessNet):
        cem = CEMConfig(samples=s.cem_samples, elites=s.cem_elites, iterations=s.cem_iterations)
        return GraspPolicy.from_model(model, GraspPolicyConfig(cem=cem), version)
    raise ValueError(f"no servo policy for a {type(model).__name__}")
