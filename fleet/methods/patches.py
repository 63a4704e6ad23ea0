"""Gripper-aligned image patches through the camera model, shared by the methods that look
only where the gripper is or would be (grasp_point: at a candidate grasp; qtopt's gripper view:
at the pose a candidate step leads to).

`PatchSampler` turns poses (x, y, yaw) in base_link into grid_sample grids into the camera
image, one per plane height (a plane sweep); `DepthToHeight` turns an aligned depth image into
the height above base_link z = 0 of what each pixel sees. Both take any config with the camera
model's fields (`PatchGeometry`): the networks' own config dataclasses have them by name.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from fleet.policy.geometry import camera_axes, focal_px


def mirror_patches(patches: torch.Tensor, mirror: torch.Tensor | None) -> torch.Tensor:
    """Patches (N, C, S, S), each flipped left-right where mirror[n, 0] and upside down where
    mirror[n, 1] (mirror (N, 2) bool; None: unchanged). A parallel gripper is mirror-symmetric
    in both axes of its patch, so the mirrored scene grasped the mirrored way has the same
    outcome: exact extra data for training."""
    if mirror is None:
        return patches
    m = mirror.to(patches.device)
    patches = torch.where(m[:, 0, None, None, None], patches.flip(-1), patches)
    return torch.where(m[:, 1, None, None, None], patches.flip(-2), patches)


class PatchGeometry(Protocol):
    """The fields a patch sampler reads from a network config."""

    image_height: int
    image_width: int
    camera_eye: tuple[float, float, float]
    camera_target: tuple[float, float, float]
    camera_fov_deg: float
    patch_planes: tuple[float, ...]
    patch_size: int
    patch_extent: float
    height_scale: float


class PatchSampler(nn.Module):
    """Candidate grasps (N, 3) -> grid_sample grids (N, S, S, 2) into the camera image.

    Patch row i, column j lies at offset (a_j, b_i) in the gripper's frame on the table plane:
    a along the fingers' width (tool x), b along the closing direction (tool y), so that after
    sampling the fingers always close along the patch's rows, whatever the yaw. The offsets are
    projected through the pinhole model; grid coordinates follow grid_sample's
    align_corners=False convention (-1 and +1 are the outer edges of the image)."""

    def __init__(self, cfg: PatchGeometry) -> None:
        super().__init__()
        eye = np.asarray(cfg.camera_eye, float)
        forward, right, down = camera_axes(eye, np.asarray(cfg.camera_target, float))
        f = focal_px(cfg.image_height, cfg.camera_fov_deg)
        half = cfg.patch_extent / 2
        ticks = (np.arange(cfg.patch_size) + 0.5) / cfg.patch_size * 2 * half - half
        self.register_buffer("planes", torch.tensor(cfg.patch_planes, dtype=torch.float64),
                             persistent=False)
        # float64 buffers: the projection divides by depth, keep it exact; not parameters
        self.register_buffer("eye", torch.tensor(eye), persistent=False)
        self.register_buffer("axes", torch.tensor(np.stack([right, down, forward])),
                             persistent=False)
        self.register_buffer("ticks", torch.tensor(ticks), persistent=False)
        self.register_buffer("scale", torch.tensor([2.0 * f / cfg.image_width,
                                                    2.0 * f / cfg.image_height]),
                             persistent=False)

    def forward(self, grasps: torch.Tensor) -> torch.Tensor:
        """(N, 3) grasps -> (N * P, S, S, 2) grids: for each grasp, one grid per plane.

        A patch point's camera coordinates are affine in its offsets (a, b), so each grasp and
        plane needs only its centre's coordinates and the two offset directions (in float64);
        the S x S points are then two broadcast multiply-adds in float32. Why: done point by
        point in float64 (a 3 x 3 product per point) this was most of a 32 px patch's cost in
        the Bellman updaters' CEM; the grids agree to ~1e-6 of the image width."""
        g = grasps.to(torch.float64)
        c, s = torch.cos(g[:, 2:3]), torch.sin(g[:, 2:3])
        ax, ay, az = self.axes[:, 0], self.axes[:, 1], self.axes[:, 2]  # base x, y, z in camera
        # tool x = (cos, sin), tool y = (-sin, cos) in base_link, for a top-down gripper
        along_a = c * ax + s * ay  # (N, 3): camera coordinates per metre along tool x
        along_b = c * ay - s * ax  # along tool y (closing)
        centre = (g[:, 0:1] - self.eye[0]) * ax + (g[:, 1:2] - self.eye[1]) * ay
        centre = centre[:, None] + (self.planes - self.eye[2])[None, :, None] * az  # (N, P, 3)
        t = self.ticks.to(torch.float32)
        offsets = (t[None, :, None, None] * along_b.to(torch.float32)[:, None, None]
                   + t[None, None, :, None] * along_a.to(torch.float32)[:, None, None])
        cam = centre.to(torch.float32)[:, :, None, None, :] + offsets[:, None]  # (N, P, S, S, 3)
        n, planes, size = g.shape[0], self.planes.shape[0], t.shape[0]
        uv = cam[..., :2] * (self.scale.to(torch.float32) / cam[..., 2:3].clamp_min(1e-6))
        return uv.reshape(n * planes, size, size, 2)


class DepthToHeight(nn.Module):
    """Aligned depth images (B, 1, H, W), m along the optical axis -> the height channel
    (B, 1, H, W): the base_link z of the surface each pixel sees, / height_scale, in [0, 1].

    A pixel's ray is eye + depth * (right * u' + down * v' + forward) with u', v' its offsets
    from the principal point over the focal length, so z = eye_z + depth * k(u, v) with k fixed
    by the camera model. Missing depth (0, NaN or inf: no return, as RGB-D cameras report it)
    reads as height 0, the floor."""

    def __init__(self, cfg: PatchGeometry) -> None:
        super().__init__()
        eye = np.asarray(cfg.camera_eye, float)
        forward, right, down = camera_axes(eye, np.asarray(cfg.camera_target, float))
        f = focal_px(cfg.image_height, cfg.camera_fov_deg)
        u = (np.arange(cfg.image_width) + 0.5 - cfg.image_width / 2) / f
        v = (np.arange(cfg.image_height) + 0.5 - cfg.image_height / 2) / f
        k = right[2] * u[None, :] + down[2] * v[:, None] + forward[2]
        self.register_buffer("k", torch.tensor(k, dtype=torch.float32)[None, None],
                             persistent=False)
        self.eye_z, self.scale = float(eye[2]), float(cfg.height_scale)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) depth in m -> height above z = 0 over height_scale, clamped to [0, 1]
        (the network's input range; higher than height_scale saturates)."""
        valid = torch.isfinite(depth) & (depth > 0)
        z = self.eye_z + torch.where(valid, depth, torch.zeros_like(depth)) * self.k
        return torch.where(valid, z / self.scale, torch.zeros_like(z)).clamp_(0.0, 1.0)
