"""The grasp success network g(I, v) of Levine et al. 2016, scaled to a CPU.

g takes the camera image I_t (and optionally the pre-grasp image I_0) and a candidate motion
v = p_T - p_t of the gripper (where it would close, relative to where it is now), and returns the
logit of the probability that the grasp succeeds if the gripper moves by v and closes.

    image(s) --conv trunk--> feature map F (C x m x m)          computed once per decision
    motion v (dx, dy, dz, sin dyaw, cos dyaw) --MLP--> e (C)     re-run for every CEM sample
    relu(F + e tiled over m x m) --conv head--> fc --> logit     re-run for every CEM sample

The split matters for speed: the cross-entropy method scores 64 motions x 3 iterations against
the *same* image, so `image_features` runs once and `score_features` runs on a batch of motions
against a broadcast feature map. Everything tunable is in `NetworkConfig`; the architecture
name and the config travel in the policy bundle (fleet/policy/bundle.py) so a loader can rebuild it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fleet.methods.layers import image_trunk, scoring_head

#: The name under which this architecture is registered in fleet.policy.bundle.
ARCHITECTURE_NAME = "grasp_success_cnn"

#: The motion encoding the network takes, as recorded in a bundle's input spec.
MOTION_ENCODING = "dx,dy,dz,sin(dyaw),cos(dyaw); base frame; translation divided by motion_scale"


@dataclass(frozen=True)
class NetworkConfig:
    """Every tunable of the grasp success network (saved verbatim in the policy bundle)."""

    image_height: int = 64
    image_width: int = 64
    image_channels: int = 3
    #: Also take the pre-grasp image I_0 (the paper's second input), stacked channel-wise with
    #: I_t. Costs only the first conv's extra input channels, once per decision.
    use_initial_image: bool = False
    #: Output channels of the image trunk; each conv halves the resolution (stride 2).
    trunk_channels: tuple[int, ...] = (16, 32, 32)
    #: Kernel of the first trunk conv (the rest are 3x3).
    first_kernel: int = 5
    #: Side of the feature map the motion is tiled over; larger images are pooled down to it.
    merge_size: int = 8
    #: Hidden width of the motion MLP.
    motion_hidden: int = 64
    #: Metres per unit of translation the network sees, so inputs are O(1).
    motion_scale: float = 0.1
    #: Output channels of the convs after the merge. The first has stride 2: every sample of
    #: every CEM iteration runs these, so they work at a quarter of the merge resolution.
    head_channels: tuple[int, ...] = (32, 32)
    #: Width of the fully connected layer before the logit.
    fc_width: int = 64

    def __post_init__(self) -> None:
        # Tuples, not lists, so the config stays hashable after a JSON round trip.
        object.__setattr__(self, "trunk_channels", tuple(int(c) for c in self.trunk_channels))
        object.__setattr__(self, "head_channels", tuple(int(c) for c in self.head_channels))
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError(f"images must be at least 16x16, got "
                             f"{self.image_height}x{self.image_width}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if not self.trunk_channels or not self.head_channels:
            raise ValueError("trunk_channels and head_channels need at least one layer each")
        if min(self.trunk_channels + self.head_channels) < 1 or self.fc_width < 1:
            raise ValueError("channel counts and widths must be positive")
        if self.merge_size < 2:
            raise ValueError(f"merge_size must be at least 2, got {self.merge_size}")
        if not self.motion_scale > 0:
            raise ValueError(f"motion_scale must be positive, got {self.motion_scale}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trunk_channels"] = list(self.trunk_channels)
        d["head_channels"] = list(self.head_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        """Strict: an unknown key is an error (a bundle from a newer build), not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown NetworkConfig fields {sorted(unknown)}")
        return cls(**d)


def encode_motions(motions: np.ndarray | torch.Tensor, motion_scale: float) -> torch.Tensor:
    """(N, 4) motions (dx, dy, dz, dyaw) in m and rad -> (N, 5) network input.

    Yaw enters as sin/cos so that +pi and -pi are the same motion to the network.
    """
    m = torch.as_tensor(motions, dtype=torch.float32)
    if m.ndim != 2 or m.shape[1] != 4:
        raise ValueError(f"motions must have shape (N, 4), got {tuple(m.shape)}")
    return torch.cat([m[:, :3] / motion_scale, torch.sin(m[:, 3:4]), torch.cos(m[:, 3:4])], 1)


class GraspSuccessNet(nn.Module):
    """g(I, v) -> logit. See the module docstring for the layout."""

    architecture = ARCHITECTURE_NAME

    def __init__(self, config: Optional[NetworkConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or NetworkConfig()
        cin = cfg.image_channels * (2 if cfg.use_initial_image else 1)
        # Larger cameras are pooled to the merge size so the per-sample head cost stays fixed.
        self.trunk, self.pool = image_trunk(cin, cfg.trunk_channels, cfg.first_kernel,
                                            cfg.image_height, cfg.image_width, cfg.merge_size)
        merge_channels = cfg.trunk_channels[-1]
        self.motion_mlp = nn.Sequential(nn.Linear(5, cfg.motion_hidden), nn.ReLU(),
                                        nn.Linear(cfg.motion_hidden, merge_channels))
        self.head, self.fc = scoring_head(merge_channels, cfg.head_channels, cfg.merge_size,
                                          cfg.fc_width)

    # -- what a bundle needs to rebuild and check this model ------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def input_spec(self) -> dict[str, Any]:
        cfg = self.config
        return {"image_height": cfg.image_height, "image_width": cfg.image_width,
                "image_channels": cfg.image_channels, "image_encoding": "rgb8 / 255",
                "uses_initial_image": cfg.use_initial_image, "motion_encoding": MOTION_ENCODING,
                "motion_scale": cfg.motion_scale}

    # -- the two halves ---------------------------------------------------------------------------
    def image_features(self, image: torch.Tensor,
                       initial_image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) float images in [0, 1] -> (B, C', m, m) feature map."""
        cfg = self.config
        expected = (cfg.image_channels, cfg.image_height, cfg.image_width)
        if tuple(image.shape[1:]) != expected:
            raise ValueError(f"image must be (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(image.shape)}")
        x = image - 0.5
        if cfg.use_initial_image:
            if initial_image is None or initial_image.shape != image.shape:
                raise ValueError("this network takes the pre-grasp image too "
                                 "(use_initial_image=True): pass initial_image, same shape")
            x = torch.cat([x, initial_image - 0.5], 1)
        return self.pool(self.trunk(x))

    def score_features(self, features: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """Logits (N,) for encoded motions (N, 5) against features (N or 1, C', m, m).

        A single feature map is broadcast over all N motions (the CEM case) without copying.
        """
        e = self.motion_mlp(motions)[:, :, None, None]
        return self.fc(self.head((features + e).relu_())).squeeze(1)

    def forward(self, image: torch.Tensor, motion: torch.Tensor,
                initial_image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B,) for images (B, C, H, W) in [0, 1] and encoded motions (B, 5)."""
        return self.score_features(self.image_features(image, initial_image), motion)


def build_network(config: dict[str, Any]) -> GraspSuccessNet:
    """Registry builder: a config dict (as saved in a bundle) -> an untrained network."""
    return GraspSuccessNet(NetworkConfig.from_dict(config))
