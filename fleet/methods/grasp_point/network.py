"""The grasp-point network: p(success | pre-grasp image I_0, top-down grasp at x, y, yaw).

The second grasping method beside Levine et al. 2016's g(I_t, v) (fleet/methods/levine/network.py),
after Pinto & Gupta 2016 ("Supersizing self-supervision": an image patch around the grasp point,
turned to the gripper's angle, classified as graspable or not). Why it exists: the Levine
network, trained from scratch on 1,000-2,000 attempts, never separated good from bad grasps on
held-out attempts (AUC 0.50 +- 0.05, docs/RESULTS.md), while a privileged planner's (x, y, yaw)
executed by the same grasp loop succeeds 0.94 of the time on unseen objects: the whole problem
is *where* and *at which angle* to close, and a network that must also learn that a pixel
patch moves with the gripper's motion needs far more data than this budget.

Here the geometry is not learned. The camera is calibrated (a real arm has camera_info and its
extrinsics; fleet/policy/geometry.py holds the model), so for each candidate grasp the
network looks only at the patch of I_0 under the gripper, resampled onto the table plane and
turned so that the fingers always close along the patch's vertical axis:

    candidate (x, y, yaw) in base_link  --camera model-->  sampling grid (S x S) in I_0
    I_0 (H x W x 3)  --grid_sample-->  patch (3 P x S x S), gripper-aligned, patch_extent wide,
                                       one 3-colour layer per plane height (P planes)
    patch  --conv 3x3 x3 with pooling, fc-->  logit of p(success)

So one attempt teaches every place and every angle that looks the same (translation and
rotation equivariance by construction), and the half-turn symmetry of a parallel gripper and
its mirror symmetry become exact data augmentations. Scoring a candidate costs one small CNN on
an S x S patch; `GraspPointPolicy` (fleet/methods/grasp_point/policy.py) scores a few hundred per
attempt with the cross-entropy method.

The closing height is not an input: the policy always descends to the tray floor (or until the
arm's contact stop), as the scripted exploration does; where that fails (fingers landing on an
object), the label says so.
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
from fleet.policy.geometry import DEFAULT_EYE, DEFAULT_FOV_DEG, DEFAULT_TARGET

#: The bundle architecture name of this network (fleet/methods/grasp_point registers it).
ARCHITECTURE_NAME = "grasp_point_cnn"

#: The grasp encoding the network takes, as recorded in a bundle's input spec.
GRASP_ENCODING = ("x, y (m, base_link) of the tool point at closing, yaw (rad) of the tool "
                  "about base z; the gripper closes at the tray floor")


@dataclass(frozen=True)
class GraspPointConfig(BundleConfig):
    """Every tunable of the grasp-point network, including the camera model it samples with
    (saved verbatim in the policy bundle: a bundle is only valid for the camera it saw)."""

    image_height: int = 64
    image_width: int = 64
    #: Camera position, the point it looks at (base_link, m; up = +z) and its vertical field of
    #: view: a pinhole with square pixels and the principal point at the image centre, as the
    #: simulated camera (sim_bridge SimConfig.camera_*). A real arm puts its calibration here.
    camera_eye: tuple[float, float, float] = DEFAULT_EYE
    camera_target: tuple[float, float, float] = DEFAULT_TARGET
    camera_fov_deg: float = DEFAULT_FOV_DEG
    #: Heights (base_link z, m) of the planes the patch is resampled on, 3 channels each. From
    #: the oblique camera a point 5 cm above a plane appears ~5 cm away from where it is, in a
    #: direction that turns with the grasp's yaw in the patch; a sweep of planes shows the
    #: network each height in place (plane sweep), so it need not infer the parallax.
    patch_planes: tuple[float, ...] = (0.02, 0.06, 0.10)
    #: Side of the patch in pixels, and in metres on the table: 0.16 m covers the open gripper
    #: (0.08 m between the fingers, 0.11 m with them) with room around it; 32 px = 5 mm per
    #: pixel, about a 128 x 128 camera's resolution on the tray.
    patch_size: int = 32
    patch_extent: float = 0.16
    #: Output channels of the convs (each followed by 2x2 max pooling).
    channels: tuple[int, ...] = (16, 32, 64)
    fc_width: int = 64
    #: Also take the camera's aligned depth image (m along the optical axis, an RGB-D camera's
    #: aligned_depth_to_color): each pixel becomes the height above base_link z = 0 of the
    #: surface it sees (through the camera model), sampled on every plane beside the colours.
    #: Whether a finger lands on top of an object, and how tall what lies between the fingers
    #: is, is geometry that colour only hints at.
    use_depth: bool = False
    #: Heights are divided by this (m) and clipped to [0, 1], as colours are.
    height_scale: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "patch_planes", tuple(float(z) for z in self.patch_planes))
        object.__setattr__(self, "camera_eye", tuple(float(v) for v in self.camera_eye))
        object.__setattr__(self, "camera_target", tuple(float(v) for v in self.camera_target))
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError(f"images must be at least 16x16, got "
                             f"{self.image_height}x{self.image_width}")
        if len(self.camera_eye) != 3 or len(self.camera_target) != 3:
            raise ValueError("camera_eye and camera_target need 3 numbers (x, y, z)")
        if not 1.0 < self.camera_fov_deg < 179.0:
            raise ValueError(f"camera_fov_deg must be in (1, 179), got {self.camera_fov_deg}")
        if self.patch_size < 2 ** len(self.channels) or self.patch_extent <= 0:
            raise ValueError(f"patch_size {self.patch_size} must be >= 2**{len(self.channels)} "
                             f"(one pooling per conv) and patch_extent > 0")
        if not self.patch_planes:
            raise ValueError("patch_planes needs at least one height")
        if not self.channels or min(self.channels) < 1 or self.fc_width < 1:
            raise ValueError("channels need at least one positive entry; fc_width > 0")
        if not self.height_scale > 0:
            raise ValueError(f"height_scale must be > 0 m, got {self.height_scale}")

    @property
    def image_channels(self) -> int:
        """Channels the patch sampler reads: RGB, plus height with use_depth."""
        return 4 if self.use_depth else 3


class GraspPointNet(nn.Module):
    """logit p(success | I_0, grasp). `patches` and `score_patches` are the two halves."""

    architecture = ARCHITECTURE_NAME

    def __init__(self, config: Optional[GraspPointConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or GraspPointConfig()
        self.sampler = PatchSampler(cfg)
        self.height = DepthToHeight(cfg) if cfg.use_depth else None
        layers, cin, side = patch_convs(cfg.image_channels * len(cfg.patch_planes),
                                        cfg.channels, cfg.patch_size)
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, cfg.fc_width),
                                nn.ReLU(inplace=True), nn.Linear(cfg.fc_width, 1))

    # -- what a bundle needs to rebuild and check this model ------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def input_spec(self) -> dict[str, Any]:
        cfg = self.config
        spec = {"image_height": cfg.image_height, "image_width": cfg.image_width,
                "image_channels": 3, "image_encoding": "rgb8 / 255", "image": "I_0 (pre-grasp)",
                "grasp_encoding": GRASP_ENCODING}
        if cfg.use_depth:
            spec["depth"] = ("I_0's aligned depth image, float32 m along the optical axis "
                             "(0 = no return)")
        return spec

    # -- the two halves ---------------------------------------------------------------------------
    def patches(self, images: torch.Tensor, grasps: torch.Tensor,
                depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B or 1, 3, H, W) float images in [0, 1] and (N, 3) grasps -> (N, C P, S, S) patches
        (P planes, C = 3 colours [+ height] each), centred (minus 0.5). One image is shared by
        every grasp (the policy's case). `depth` (same B, 1, H, W; m) is required with
        use_depth and refused without it."""
        cfg = self.config
        if tuple(images.shape[1:]) != (3, cfg.image_height, cfg.image_width):
            raise ValueError(f"images must be (B, 3, {cfg.image_height}, {cfg.image_width}), "
                             f"got {tuple(images.shape)}")
        if grasps.ndim != 2 or grasps.shape[1] != 3:
            raise ValueError(f"grasps must be (N, 3) x, y, yaw, got {tuple(grasps.shape)}")
        if self.height is not None:
            want = (images.shape[0], 1, cfg.image_height, cfg.image_width)
            if depth is None or tuple(depth.shape) != want:
                got = None if depth is None else tuple(depth.shape)
                raise ValueError(f"this network takes a depth image beside the colour image "
                                 f"(use_depth): depth must be {want}, got {got}")
            images = torch.cat([images, self.height(depth)], 1)
        elif depth is not None:
            raise ValueError("this network takes no depth image (use_depth is off)")
        n, planes, size = grasps.shape[0], len(cfg.patch_planes), cfg.patch_size
        grid = self.sampler(grasps)  # (N * P, S, S, 2)
        if images.shape[0] == 1:
            images = images.expand(n * planes, -1, -1, -1)
        elif planes > 1:
            images = images.repeat_interleave(planes, dim=0)
        # outside the image: mid-grey after centring (0), as an unseen place should look
        out = F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.reshape(n, planes * cfg.image_channels, size, size)

    def score_patches(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(patches)).squeeze(1)

    def forward(self, images: torch.Tensor, grasps: torch.Tensor,
                mirror: Optional[torch.Tensor] = None,
                depth: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (N,) of grasps (N, 3) on images (N or 1, 3, H, W) in [0, 1] (and their depth
        images (N or 1, 1, H, W) in m, with use_depth).

        `mirror` (N, 2) bool, for training: flip patch n left-right (column 0) and/or upside
        down (column 1) before scoring. A parallel gripper is mirror-symmetric in both axes, so
        the mirrored scene grasped the mirrored way has the same outcome: exact extra data.
        (It is an argument of forward, not a step outside it, so DistributedDataParallel sees
        the whole computation.)"""
        return self.score_patches(mirror_patches(self.patches(images, grasps, depth), mirror))


def build_network(config: dict[str, Any]) -> GraspPointNet:
    """Registry builder: a config dict (as saved in a bundle) -> an untrained network."""
    return GraspPointNet(GraspPointConfig.from_dict(config))
