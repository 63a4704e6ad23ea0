"""QT-Opt's Q(s, a) with the gripper view: Q looks at the newest frame where a step would take
the gripper, through the camera model.

Why: the whole-image Q-network (network.py) never found the objects from pixels on this budget
(2,000-5,000 attempts; docs/RESULTS.md, "QT-Opt"): its CEM drove every attempt to the same
corner of the workspace, whatever the scene. The grasp-point method learned from the same data
because its network sees only a gripper-aligned patch at the candidate grasp, so one attempt
teaches every place and angle that looks the same. Here Q gets that bias and stays closed-loop:

    action (dx, dy, dz, dyaw | close | toggle) + gripper pose now (x, y, z, yaw)
        --> the pose after the step (x + dx, y + dy, yaw + dyaw; height z + dz)
    newest frame I_t [+ its depth as height]  --camera model, grid_sample-->  patch at that
        pose, turned to its yaw, one layer per plane height (fleet/methods/patches.py)
    patch --conv x3 with pooling--> f;  [f, height after the step, opening, close, toggle]
        --MLP--> logit of Q

So Q(s, a) is the value of where the step leads (an afterstate value), read from what lies
there: it is translation and rotation equivariant by construction, and a motion towards empty
table looks like empty table wherever it is. Closing scores the patch at the pose now, which is
the grasp-point network's question asked at the gripper's real height. The image is the newest
frame, with the arm in it: the network sees its own fingers over the object as it descends.

The interface is the whole-image network's (image_features once per decision, score_features
per candidate, score_batched for the Bellman updaters' CEM), so the policy, the Bellman updater
and the learner take either; the bundle's config says which (`view`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fleet.methods.bundle_config import BundleConfig
from fleet.methods.layers import patch_convs
from fleet.methods.patches import DepthToHeight, PatchSampler, mirror_patches
from fleet.methods.qtopt.encoding import ARCHITECTURE_NAME, ENCODED_ACTION_DIMS, input_spec
from fleet.policy.geometry import DEFAULT_EYE, DEFAULT_FOV_DEG, DEFAULT_TARGET

#: The `view` of this network's config (a bundle's config picks its network by it).
GRIPPER_VIEW = "gripper"


@dataclass(frozen=True)
class GripperQConfig(BundleConfig):
    """Every tunable of the gripper-view Q-network (saved verbatim in the policy bundle,
    camera model included: a bundle is only valid for the camera it saw)."""

    view: str = GRIPPER_VIEW
    image_height: int = 64
    image_width: int = 64
    camera_eye: tuple[float, float, float] = DEFAULT_EYE
    camera_target: tuple[float, float, float] = DEFAULT_TARGET
    camera_fov_deg: float = DEFAULT_FOV_DEG
    #: Also take the aligned depth image, as the height above base_link z = 0 of what each
    #: pixel sees (fleet/methods/patches.py DepthToHeight), a channel beside the colours.
    use_depth: bool = False
    #: m per unit of height: of the depth channel's heights and of the tool point's height.
    height_scale: float = 0.2
    #: With use_depth: take each patch's height channel relative to the tool point's height
    #: after the step (surface minus gripper), so that a close in the air looks like air to
    #: the convs. Without it the gripper's height reaches the network only as one scalar
    #: beside the trunk's 1,024 patch features, and qtopt run 8's v6 scored a close at the
    #: 0.3 m start height nearly as well as one at the floor (Q 0.14 against 0.18).
    #: False in bundles written before it existed.
    relative_height: bool = False
    #: Plane heights (base_link z, m) the patch is resampled on (a plane sweep, as the
    #: grasp-point network's), and the patch's side in pixels and in metres on the table:
    #: 32 px over 0.16 m is 5 mm per pixel, about a 128 px camera's resolution on the tray.
    #: Why 32 and not 16 (until run 4): offline on run 4's 10,185 closes (close_auc.py) the
    #: held-out AUC of Q(s_T, close) is 0.857 against 0.834, and run 4's best policy closed
    #: 1-4 cm off the object's centre in 0.72 of its attempts (grasp_failures.py).
    patch_planes: tuple[float, ...] = (0.02, 0.06, 0.10)
    patch_size: int = 32
    patch_extent: float = 0.16
    #: Output channels of the patch convs (each followed by 2x2 max pooling; the grasp-point
    #: network's), and the first conv's stride (2: a patch of twice the pixels for about the
    #: cost of the smaller one; offline 0.843, below the full 32 px trunk's 0.857).
    channels: tuple[int, ...] = (16, 32, 64)
    first_stride: int = 1
    fc_width: int = 64
    #: m per unit of translation in the action encoding (one step moves at most 5 cm per axis).
    motion_scale: float = 0.05
    #: m per unit of finger opening (the sim gripper opens 8 cm).
    opening_scale: float = 0.08
    #: The action also has a gripper toggle (re-grasping); see QNetConfig.regrasp.
    regrasp: bool = False

    def __post_init__(self) -> None:
        for key in ("channels", "patch_planes", "camera_eye", "camera_target"):
            cast = int if key == "channels" else float
            object.__setattr__(self, key, tuple(cast(v) for v in getattr(self, key)))
        if self.view != GRIPPER_VIEW:
            raise ValueError(f"a GripperQConfig has view {GRIPPER_VIEW!r}, got {self.view!r}")
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError(f"images must be at least 16x16, got "
                             f"{self.image_height}x{self.image_width}")
        if len(self.camera_eye) != 3 or len(self.camera_target) != 3:
            raise ValueError("camera_eye and camera_target need 3 numbers (x, y, z)")
        if not self.channels or min(self.channels) < 1 or self.fc_width < 1:
            raise ValueError("channels need at least one positive entry; fc_width > 0")
        if self.first_stride not in (1, 2):
            raise ValueError(f"first_stride must be 1 or 2, got {self.first_stride}")
        if self.patch_size < self.first_stride * 2 ** len(self.channels) \
                or self.patch_extent <= 0 \
                or not self.patch_planes:
            raise ValueError(f"patch_size {self.patch_size} must be >= first_stride * "
                             f"2**{len(self.channels)}"
                             f", patch_extent > 0, and patch_planes not empty")
        if self.relative_height and not self.use_depth:
            raise ValueError("relative_height needs use_depth (it shifts the depth channel)")
        scales = (self.height_scale, self.motion_scale, self.opening_scale)
        if min(scales) <= 0:
            raise ValueError(f"every *_scale must be positive, got {scales}")


class GripperQNet(nn.Module):
    """Q(s, a) -> logit, read from the patch at the pose the step leads to. Layout: the module
    docstring. States are encoding.encode_states' (N, 5); actions encode_actions' (N, 7)."""

    architecture = ARCHITECTURE_NAME

    def __init__(self, config: Optional[GripperQConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or GripperQConfig()
        self.sampler = PatchSampler(cfg)
        self.height = DepthToHeight(cfg) if cfg.use_depth else None
        self.action_width = ENCODED_ACTION_DIMS + int(cfg.regrasp)
        layers, cin, side = patch_convs((4 if cfg.use_depth else 3) * len(cfg.patch_planes),
                                        cfg.channels, cfg.patch_size, cfg.first_stride)
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        # height after the step, opening, close [, toggle]
        extra = 3 + int(cfg.regrasp)
        self.fc = nn.Sequential(nn.Linear(cin * side * side + extra, cfg.fc_width),
                                nn.ReLU(inplace=True), nn.Linear(cfg.fc_width, cfg.fc_width),
                                nn.ReLU(inplace=True), nn.Linear(cfg.fc_width, 1))

    # -- what a bundle needs to rebuild and check this model ------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def input_spec(self) -> dict[str, Any]:
        cfg = self.config
        spec = {**input_spec(cfg), "view": cfg.view}
        if cfg.use_depth:
            spec["depth"] = "I_t's aligned depth, H x W float32 m (0 = no return)"
        return spec

    # -- the halves -------------------------------------------------------------------------------
    def image_features(self, image: torch.Tensor,
                       depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] [+ (B, 1, H, W) depth, m] -> (B, C, H, W), centred,
        the height channel appended: what the patches are sampled from."""
        cfg = self.config
        if tuple(image.shape[1:]) != (3, cfg.image_height, cfg.image_width):
            raise ValueError(f"image must be (B, 3, {cfg.image_height}, {cfg.image_width}), got "
                             f"{tuple(image.shape)}: resize it or load a bundle trained at "
                             f"this resolution")
        if self.height is None:
            return image - 0.5
        if depth is None or tuple(depth.shape) != (image.shape[0], 1) + tuple(image.shape[2:]):
            raise ValueError("this network takes the aligned depth image too (use_depth): "
                             "pass depth (B, 1, H, W) in m, or use a bundle without depth")
        return torch.cat([image, self.height(depth)], 1) - 0.5

    def score_batched(self, features: torch.Tensor, states: torch.Tensor,
                      actions: torch.Tensor,
                      mirror: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, N): N encoded actions (B, N, 7) per state (B, 5) and its features
        (B, C, H, W). One grid_sample per state serves all of its candidates. `mirror`
        (B * N, 2) bool, for training: flip each patch (patches.mirror_patches)."""
        cfg = self.config
        b, n = actions.shape[:2]
        a = actions.reshape(b * n, -1)
        s = states.repeat_interleave(n, 0)
        motion = a[:, :3] * cfg.motion_scale
        yaw = s[:, 4] + torch.atan2(a[:, 3], a[:, 4])
        poses = torch.stack([s[:, 2] + motion[:, 0], s[:, 3] + motion[:, 1], yaw], 1)
        planes, size, c = len(cfg.patch_planes), cfg.patch_size, features.shape[1]
        grid = self.sampler(poses).reshape(b, n * planes * size, size, 2)
        # outside the image: 0 after centring (mid-grey), as an unseen place should look
        out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B, C, n P S, S)
        patches = out.reshape(b, c, n, planes, size, size).permute(0, 2, 3, 1, 4, 5)
        height = s[:, 1:2] + motion[:, 2:3] / cfg.height_scale
        if cfg.relative_height:  # the last channel is the height (image_features)
            shift = torch.zeros(c, dtype=patches.dtype, device=patches.device)
            shift[-1] = 1.0
            patches = patches - height.reshape(b, n, 1, 1, 1, 1) * shift.reshape(1, 1, 1, c, 1, 1)
        patches = mirror_patches(patches.reshape(b * n, planes * c, size, size), mirror)
        low = torch.cat([height, s[:, 0:1], a[:, 5:self.action_width]], 1)
        return self.fc(torch.cat([self.trunk(patches), low], 1)).reshape(b, n)

    def score_features(self, features: torch.Tensor, states: torch.Tensor,
                       actions: torch.Tensor) -> torch.Tensor:
        """Logits (N,) of encoded states (N or 1, 5) and actions (N, 7) against features
        (N or 1, ...); a single feature map and state broadcast over all N actions."""
        if features.shape[0] == 1:
            return self.score_batched(features, states[:1], actions[None])[0]
        return self.score_batched(features, states, actions[:, None])[:, 0]

    def forward(self, image: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                depth: Optional[torch.Tensor] = None,
                mirror: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B,) for images (B, 3, H, W) in [0, 1], encoded states (B, 5), encoded
        actions (B, 7) [and depth (B, 1, H, W) m]; `mirror` (B, 2) bool flips the patches
        (training: the gripper is mirror-symmetric, so is the value of where a step leads;
        an argument of forward so that DistributedDataParallel sees the whole computation)."""
        features = self.image_features(image, depth)
        return self.score_batched(features, state, action[:, None], mirror)[:, 0]
