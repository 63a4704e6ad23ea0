"""The grasp-point learner: supervised grasp success on (I_0, where and how the gripper closed).

One example per labelled attempt: the pre-grasp image I_0 (the attempt's first recorded step)
and, for a network with use_depth, its aligned depth image; the closing pose's x, y and yaw
(final_pose: where the gripper really closed, contact stops and all, not where the policy
aimed) and the gripper's label, trained with binary cross-entropy on
the grasp-point network's logit (fleet/methods/grasp_point/network.py). Beside the Levine learner
(fleet/learner/config.py) it plugs into the same machinery (fleet/learner/loop.py: store streams,
DDP, checkpoints, the publish rule) through fleet.learner.api.Learner; `first_step_only` tells
the machinery to draw only step 0 of each attempt, `requires_depth` only attempts with depth.

Augmentations are the gripper's exact symmetries, drawn per example: a half turn of the yaw
(the same grasp) and a left-right / up-down mirror of the patch (the mirrored scene grasped the
mirrored way); plus a brightness/contrast change of the image (`augment_colour`). No image
shift: the patch geometry is the camera calibration, and moving the image would move the grasp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from fleet.learner.dataset import decode_rgb, depth_batch
from fleet.policy.geometry import quaternion_yaw
from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet
from fleet.learner.config import TrainingOptions
from fleet.learner.supervised import augment
from fleet.learner.api import Batch
from fleet.store.reader import StepSample
from fleet.learner.supervised import SupervisedLearner


def closing_grasps(final_poses: np.ndarray) -> np.ndarray:
    """(N, 7) closing poses (x, y, z, qx, qy, qz, qw) -> (N, 3) float32 grasps (x, y, yaw)."""
    fp = np.asarray(final_poses, dtype=np.float64).reshape(-1, 7)
    return np.stack([fp[:, 0], fp[:, 1], quaternion_yaw(fp[:, 3:])], 1).astype(np.float32)


@dataclass(frozen=True)
class GraspPointCollate:
    """StepSamples (step 0 of attempts) -> {"image": uint8 (B,3,H,W), "grasp": (B,3),
    "label": (B,)[, "depth": uint16 (B,1,H,W) mm]}. Picklable; runs in DataLoader workers."""

    height: int
    width: int
    depth: bool = False

    def __call__(self, samples: Sequence[StepSample]) -> Batch:
        if any(s.step != 0 for s in samples):
            raise ValueError("the grasp-point learner trains on each attempt's first step (I_0) "
                             "only; draw samples with first_step_only")
        images = np.stack([decode_rgb(s.image_jpeg, self.height, self.width) for s in samples])
        batch = {"image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                 "grasp": torch.from_numpy(closing_grasps(np.stack([s.final_pose
                                                                    for s in samples]))),
                 "label": torch.tensor([float(s.label) for s in samples])}
        if self.depth:
            batch["depth"] = depth_batch(samples, self.height, self.width)
        return batch


class GraspPointLearner(SupervisedLearner):
    """The grasp-point network, Adam, BCE with logits. Implements learner_api.Learner."""

    name = "grasp_point_supervised"
    first_step_only = True

    def __init__(self, network: GraspPointConfig, lr: float, weight_decay: float,
                 device: torch.device, options: Optional[TrainingOptions] = None) -> None:
        self.options = options or TrainingOptions()
        super().__init__(GraspPointNet(network), lr, weight_decay, device,
                         self.options.positive_weight, self.options.ema_decay)
        self.collate = GraspPointCollate(network.image_height, network.image_width,
                                         network.use_depth)
        #: the learner loop then draws only attempts that carry depth (learner_loop.py)
        self.requires_depth = network.use_depth

    def forward_batch(self, model: nn.Module, batch: Batch,
                      generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._to_device(batch["image"]).float().div_(255.0)
        grasp = self._to_device(batch["grasp"])
        # uint16 mm (the recorded form, 0 = no return) -> float m
        depth = self._to_device(batch["depth"]).float().div_(1000.0) if "depth" in batch \
            else None
        mirror = None
        if generator is not None:
            b = grasp.shape[0]
            turn = (torch.rand(b, generator=generator) < 0.5).to(grasp.dtype) * math.pi
            grasp = grasp.clone()
            grasp[:, 2] += turn.to(grasp.device)
            mirror = torch.rand(b, 2, generator=generator) < 0.5
            if self.options.augment_colour:
                image = augment(image, TrainingOptions(augment_colour=self.options.augment_colour),
                                generator)
        return model(image, grasp, mirror, depth), self._to_device(batch["label"])


def make_learner(config, device: torch.device) -> GraspPointLearner:
    """The registry's factory: a GraspPointLearner for the robots' camera (a LearnerConfig:
    image size, camera model, depth)."""
    size = config.image_size
    network = GraspPointConfig(image_height=size, image_width=size,
                               camera_eye=tuple(config.camera_eye),
                               camera_target=tuple(config.camera_target),
                               camera_fov_deg=config.camera_fov_deg, use_depth=config.depth)
    return GraspPointLearner(network, config.lr, config.weight_decay, device,
                             config.training_options())
