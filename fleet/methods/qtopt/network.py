"""The QT-Opt Q-function Q(s, a) (Kalashnikov et al. 2018), scaled to a CPU and the fleet's camera.

s is the newest camera image (and, with `use_depth`, its aligned depth image) plus the gripper's
state (finger opening, tool-point height); a is one servo step's command: a motion
(dx, dy, dz, dyaw) and whether to close instead of moving. In this robot contract closing also
ends the attempt (close, lift, label), so "close" is the paper's gripper-close and terminate
actions in one. Q is a logit; sigmoid(Q) is the probability that the attempt ends with an object
lifted, discounted by the steps it takes (docs/method.md, "qtopt").

    image [+ depth] --conv trunk--> feature map F (C x m x m)     once per decision
    state (opening, height) + action --MLP--> e (C)               for every CEM sample
    relu(F + e tiled over m x m) --conv head--> fc --> logit      for every CEM sample

As in the paper, the state's low-dimensional part and the action enter together as a vector
tiled over the image features. The split is what makes CEM cheap: the trunk runs once per image,
the MLP and head once per scored action. Everything tunable is in `QNetConfig`, which travels in
the policy bundle so a loader rebuilds the same network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from fleet.methods.bundle_config import BundleConfig
from fleet.methods.layers import image_trunk, scoring_head
from fleet.methods.qtopt.encoding import (  # noqa: F401  (re-exported: the method's names)
    ACTION_DIMS, ACTION_ENCODING, ARCHITECTURE_NAME, ENCODED_ACTION_DIMS, REGRASP_ENCODING,
    STATE_DIMS, STATE_ENCODING, encode_actions, encode_states, input_spec)
from fleet.methods.qtopt.gripper_network import GripperQConfig, GripperQNet


@dataclass(frozen=True)
class QNetConfig(BundleConfig):
    """Every tunable of the Q-network (saved verbatim in the policy bundle)."""

    image_height: int = 64
    image_width: int = 64
    #: Also take the image's aligned depth (m along the optical axis, 0 = no return) as a 4th
    #: channel, depth / depth_scale clipped to [0, 1].
    use_depth: bool = False
    depth_scale: float = 2.0
    #: Output channels of the image trunk; each conv halves the resolution (stride 2).
    trunk_channels: tuple[int, ...] = (16, 32, 32)
    first_kernel: int = 5
    #: Side of the feature map the state-action vector is tiled over (larger images pooled).
    merge_size: int = 8
    #: Hidden width of the state-action MLP.
    action_hidden: int = 64
    #: m per unit of translation the network sees: one step moves at most 5 cm per axis.
    motion_scale: float = 0.05
    #: m per unit of finger opening (the sim gripper opens 8 cm).
    opening_scale: float = 0.08
    #: m per unit of tool-point height (the workspace spans ~0.03-0.4 m).
    height_scale: float = 0.2
    #: Convs after the merge; the first has stride 2 (every CEM sample runs these).
    head_channels: tuple[int, ...] = (32, 32)
    fc_width: int = 64
    #: The action also has a gripper toggle (close or reopen within the attempt, re-grasping),
    #: apart from close-and-end. Off by default: the fleet's exploration never toggles, so
    #: until robots record re-grasps Q(toggle) would be guessed, not learned.
    regrasp: bool = False
    #: Average-pool the image (and depth) by this factor before the trunk: the network sees a
    #: 128x128 camera at 64x64 with 2, for a quarter of the trunk's work. The bundle still
    #: takes the camera's full size (input_spec), so robots need no other resize.
    input_pool: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "trunk_channels", tuple(int(c) for c in self.trunk_channels))
        object.__setattr__(self, "head_channels", tuple(int(c) for c in self.head_channels))
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError(f"images must be at least 16x16, got "
                             f"{self.image_height}x{self.image_width}")
        if self.input_pool < 1 or self.image_height % self.input_pool \
                or self.image_width % self.input_pool \
                or min(self.image_height, self.image_width) // self.input_pool < 16:
            raise ValueError(f"input_pool {self.input_pool} must divide the image size "
                             f"{self.image_height}x{self.image_width} and leave at least 16x16")
        if not self.trunk_channels or not self.head_channels:
            raise ValueError("trunk_channels and head_channels need at least one layer each")
        if min(self.trunk_channels + self.head_channels) < 1 or self.fc_width < 1 \
                or self.action_hidden < 1 or self.merge_size < 2:
            raise ValueError("channel counts, widths and merge_size must be positive "
                             "(merge_size >= 2)")
        scales = (self.depth_scale, self.motion_scale, self.opening_scale, self.height_scale)
        if min(scales) <= 0:
            raise ValueError(f"every *_scale must be positive, got {scales}")


class QNet(nn.Module):
    """Q(s, a) -> logit of the discounted success probability. Layout: the module docstring."""

    architecture = ARCHITECTURE_NAME

    def __init__(self, config: Optional[QNetConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or QNetConfig()
        cin = 4 if cfg.use_depth else 3
        # Larger cameras are pooled to the merge size so the per-sample head cost stays fixed.
        self.trunk, self.pool = image_trunk(cin, cfg.trunk_channels, cfg.first_kernel,
                                            cfg.image_height // cfg.input_pool,
                                            cfg.image_width // cfg.input_pool, cfg.merge_size)
        merge = cfg.trunk_channels[-1]
        self.action_width = ENCODED_ACTION_DIMS + int(cfg.regrasp)
        self.action_mlp = nn.Sequential(
            nn.Linear(STATE_DIMS + self.action_width, cfg.action_hidden), nn.ReLU(),
            nn.Linear(cfg.action_hidden, merge))
        self.head, self.fc = scoring_head(merge, cfg.head_channels, cfg.merge_size, cfg.fc_width)

    # -- what a bundle needs to rebuild and check this model ------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def input_spec(self) -> dict[str, Any]:
        cfg = self.config
        spec = input_spec(cfg)
        if cfg.use_depth:
            spec["depth"] = (f"I_t's aligned depth, H x W float32 m (0 = no return), "
                             f"/ {cfg.depth_scale} m clipped to [0, 1]")
        return spec

    # -- the two halves ---------------------------------------------------------------------------
    def image_features(self, image: torch.Tensor,
                       depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) float images in [0, 1] [+ (B, 1, H, W) depth, m] -> (B, C, m, m)."""
        cfg = self.config
        if tuple(image.shape[1:]) != (3, cfg.image_height, cfg.image_width):
            raise ValueError(f"image must be (B, 3, {cfg.image_height}, {cfg.image_width}), got "
                             f"{tuple(image.shape)}: resize it or load a bundle trained at "
                             f"this resolution")
        x = image - 0.5
        if cfg.use_depth:
            if depth is None or tuple(depth.shape) != (image.shape[0], 1) + tuple(image.shape[2:]):
                raise ValueError("this network takes the aligned depth image too (use_depth): "
                                 "pass depth (B, 1, H, W) in m, or use a bundle without depth")
            x = torch.cat([x, (depth / cfg.depth_scale).clamp(0.0, 1.0) - 0.5], 1)
        if cfg.input_pool > 1:
            x = nn.functional.avg_pool2d(x, cfg.input_pool)
        return self.pool(self.trunk(x))

    def score_features(self, features: torch.Tensor, states: torch.Tensor,
                       actions: torch.Tensor) -> torch.Tensor:
        """Logits (N,) of encoded states (N or 1, 5) and actions (N, 7) against features
        (N or 1, C, m, m); a single feature map and state broadcast over all N actions."""
        states = states[:, :STATE_DIMS].expand(actions.shape[0], -1)
        actions = actions[:, :self.action_width]
        e = self.action_mlp(torch.cat([states, actions], 1))[:, :, None, None]
        return self.fc(self.head((features + e).relu_())).squeeze(1)

    def score_batched(self, features: torch.Tensor, states: torch.Tensor,
                      actions: torch.Tensor) -> torch.Tensor:
        """Logits (B, N): N encoded actions (B, N, 7) per state (B, 5) and its features
        (B, C, m, m), each state's features tiled over its candidates (they are small)."""
        b, n = actions.shape[:2]
        return self.score_features(features.repeat_interleave(n, 0),
                                   states.repeat_interleave(n, 0),
                                   actions.reshape(b * n, -1)).reshape(b, n)

    def forward(self, image: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B,) for images (B, 3, H, W) in [0, 1], encoded states (B, 5), encoded
        actions (B, 7) [and depth (B, 1, H, W) m]."""
        return self.score_features(self.image_features(image, depth), state, action)


#: Either of the method's Q-networks: they share the interface (image_features, score_features,
#: score_batched, forward) and the encodings.
AnyQNet = Union[QNet, GripperQNet]


def q_network(config: Union[QNetConfig, GripperQConfig]) -> AnyQNet:
    """The network a config describes (the learner builds from the dataclass)."""
    return GripperQNet(config) if isinstance(config, GripperQConfig) else QNet(config)


def build_network(config: dict[str, Any]) -> AnyQNet:
    """Registry builder: a config dict (as saved in a bundle) -> an untrained network; its
    `view` picks the network ("gripper": gripper_network.py; none: the whole image)."""
    if config.get("view") is not None:
        return GripperQNet(GripperQConfig.from_dict(config))
    return QNet(QNetConfig.from_dict(config))
