"""A third learning method that lives in tests/ only: what a lab adds to fleet without editing it.

"tiny" predicts grasp success from the mean colour of I_0 and where the gripper closes (x, y,
z), with a two-layer MLP. It is deliberately trivial; what it proves is the seam: one
`Method` registration gives the learner loop its training step, the bundle loader its network,
robot_node's policy runtime its policy and `fleet eval` its policy_kind, with no table
anywhere in fleet naming it. On tests/test_learner.py's synthetic store (success iff the gripper
closed below z = 0.1 m) it learns to close low.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fleet.learner.api import Batch
from fleet.learner.dataset import decode_rgb
from fleet.learner.supervised import SupervisedLearner
from fleet.registry import Method
from fleet.policy.base import Decision, Observation, Policy, StepLimits, clip_to_workspace
from fleet.store.reader import StepSample

ARCHITECTURE = "test_tiny_mlp"
KIND = "tiny"


class TinyNet(nn.Module):
    """logit p(success | mean RGB of I_0, closing x, y, z)."""

    architecture = ARCHITECTURE

    def __init__(self, image_size: int = 64, width: int = 16) -> None:
        super().__init__()
        self.image_size, self.width = image_size, width
        self.mlp = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 1))

    def config_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "width": self.width}

    def input_spec(self) -> dict[str, Any]:
        return {"image_height": self.image_size, "image_width": self.image_size,
                "grasp_encoding": "closing x, y, z (m, base_link); mean RGB of I_0 / 255"}

    def forward(self, colour: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([colour, where * 10.0], 1)).squeeze(1)


def build_network(config: dict[str, Any]) -> TinyNet:
    return TinyNet(**config)


@dataclass(frozen=True)
class TinyCollate:
    """Step 0 of attempts -> {"colour": (B, 3), "where": (B, 3), "label": (B,)}."""

    size: int

    def __call__(self, samples: Sequence[StepSample]) -> Batch:
        colour = np.stack([decode_rgb(s.image_jpeg, self.size, self.size).reshape(-1, 3)
                           .mean(0) / 255.0 for s in samples])
        where = np.stack([np.asarray(s.final_pose[:3]) for s in samples])
        return {"colour": torch.tensor(colour, dtype=torch.float32),
                "where": torch.tensor(where, dtype=torch.float32),
                "label": torch.tensor([float(s.label) for s in samples])}


class TinyLearner(SupervisedLearner):
    name = "tiny_supervised"
    first_step_only = True

    def __init__(self, size: int, lr: float, device: torch.device) -> None:
        super().__init__(TinyNet(size), lr, 0.0, device)
        self.collate = TinyCollate(size)

    def forward_batch(self, model: nn.Module, batch: Batch,
                      generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        return (model(self._to_device(batch["colour"]), self._to_device(batch["where"])),
                self._to_device(batch["label"]))


def make_learner(config: Any, device: torch.device) -> TinyLearner:
    return TinyLearner(config.image_size, config.lr, device)


class TinyPolicy(Policy):
    """Scores closing heights under the gripper with the network; goes down to the best one
    and closes there."""

    kind = KIND

    def __init__(self, model: TinyNet, version: int, limits: StepLimits = StepLimits()) -> None:
        self.model, self.version, self.limits = model.eval(), version, limits
        self._target_z: Optional[float] = None

    def reset(self, rng: np.random.Generator) -> None:
        self._target_z = None

    def decide(self, obs: Observation) -> Decision:
        if self._target_z is None:
            heights = np.linspace(float(obs.workspace_min[2]), float(obs.workspace_max[2]), 21)
            colour = torch.tensor(obs.image.reshape(-1, 3).mean(0) / 255.0,
                                  dtype=torch.float32).expand(len(heights), 3)
            where = torch.tensor([[obs.position[0], obs.position[1], z] for z in heights],
                                 dtype=torch.float32)
            with torch.inference_mode():
                scores = torch.sigmoid(self.model(colour, where)).numpy()
            self._target_z = float(heights[int(np.argmax(scores))])
        dz = self._target_z - obs.position[2]
        if obs.is_last_step or abs(dz) < 1e-3:
            return Decision(np.zeros(4), close=True)
        motion = clip_to_workspace(obs.position, self.limits.clip(np.array([0, 0, dz, 0.0])),
                                   obs.workspace_min, obs.workspace_max)
        return Decision(motion, close=False)


def make_policy(model: TinyNet, version: int, settings: Any) -> TinyPolicy:
    return TinyPolicy(model, version)


TINY = Method(name="tiny", architecture=ARCHITECTURE, policy_kind=KIND,
              network=build_network, policy=make_policy,
              learner=make_learner, description="test-only third method")
