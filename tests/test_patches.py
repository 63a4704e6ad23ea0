"""Gripper-aligned patches through the camera model (fleet/methods/patches.py), which the
grasp-point network and QT-Opt's gripper view share: the grids against the pinhole projection
and against the real simulated camera, the camera's defaults agreeing wherever they live, and
the gripper's symmetries (a half turn is the patch upside down; the mirrors score as it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet
from fleet.methods.patches import PatchSampler
from fleet.policy.geometry import TableCamera
from fleet.policy.images import images_to_tensor
from test_learner import REPO

CFG = GraspPointConfig()


def test_patch_grid_is_every_patch_point_projected_through_the_pinhole():
    """PatchSampler's grids (affine in the patch offsets, broadcast in float32) against the
    plain per-point pinhole projection in float64, at random poses and yaws on every plane:
    the same to ~1e-6 of the image's half-width."""
    from fleet.policy.geometry import camera_axes, focal_px

    cfg = GraspPointConfig(image_height=128, image_width=128, patch_planes=(0.02, 0.06, 0.10))
    rng = np.random.default_rng(3)
    grasps = np.c_[rng.uniform(0.35, 0.75, 50), rng.uniform(-0.2, 0.2, 50),
                   rng.uniform(-np.pi, np.pi, 50)]
    grid = PatchSampler(cfg)(torch.tensor(grasps, dtype=torch.float32)).numpy()
    eye = np.asarray(cfg.camera_eye)
    forward, right, down = camera_axes(eye, np.asarray(cfg.camera_target))
    f = focal_px(cfg.image_height, cfg.camera_fov_deg)
    ticks = (np.arange(cfg.patch_size) + 0.5) / cfg.patch_size * cfg.patch_extent \
        - cfg.patch_extent / 2
    b, a = np.meshgrid(ticks, ticks, indexing="ij")  # rows along tool y, columns along tool x
    want = []
    for x, y, yaw in grasps.astype(np.float32).astype(np.float64):
        c, s = math.cos(yaw), math.sin(yaw)
        for z in cfg.patch_planes:
            p = np.stack([x + a * c - b * s, y + a * s + b * c, np.full_like(a, z)], -1) - eye
            cam = p @ np.stack([right, down, forward]).T
            want.append(cam[..., :2] / cam[..., 2:] * [2 * f / cfg.image_width,
                                                        2 * f / cfg.image_height])
    np.testing.assert_allclose(grid, np.array(want), atol=2e-6, rtol=0)


@pytest.mark.parametrize("planes", [(0.035,), (0.02, 0.10)])
def test_patch_centre_lands_where_the_table_camera_looks(planes):
    """The network's projection and the aimed exploration's back-projection (two
    implementations of the same calibration) agree to a small fraction of a pixel, on every
    plane of the sweep: plane k's patch is centred where a point at that height projects."""
    cfg = GraspPointConfig(patch_planes=planes)
    net = GraspPointNet(cfg)
    rows, cols = np.array([10, 32, 50, 61]), np.array([5, 32, 40, 60])
    s = cfg.patch_size
    for k, z in enumerate(planes):
        xy = TableCamera().table_points(rows, cols, 64, 64, z)
        grid = net.sampler(torch.tensor(np.c_[xy, np.zeros(4)], dtype=torch.float32))
        grid = grid.reshape(4, len(planes), s, s, 2)[:, k]
        centre = grid[:, s // 2 - 1:s // 2 + 1, s // 2 - 1:s // 2 + 1].mean(dim=(1, 2)).numpy()
        pixel = (centre + 1) / 2 * 64 - 0.5  # grid_sample, align_corners=False -> pixel index
        np.testing.assert_allclose(pixel, np.c_[cols, rows], atol=0.05)
    image = images_to_tensor(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))
    assert net.patches(image, torch.zeros(5, 3)).shape == (5, 3 * len(planes), s, s)


def test_every_default_camera_is_the_simulated_one():
    """The camera's defaults live in four places that must agree: the simulator (SimConfig and
    config/sim_arm.yaml), the network's model (GraspPointConfig) and the aimed exploration's
    back-projection (TableCamera); arms.yaml's camera_* override all of them together."""
    import yaml

    from fleet.policy.geometry import camera_model
    from sim_bridge.config import SimConfig

    sim = SimConfig()
    yaml_params = yaml.safe_load((REPO / "config" / "sim_arm.yaml").read_text())
    yaml_params = yaml_params["/**"]["ros__parameters"]
    table = TableCamera()
    want = {"camera_eye": sim.camera_eye, "camera_target": sim.camera_target,
            "camera_fov_deg": sim.camera_fov_deg}
    for source in (camera_model({}), yaml_params,
                   {"camera_eye": table.eye, "camera_target": table.target,
                    "camera_fov_deg": table.vertical_fov_deg}):
        for key, value in want.items():
            np.testing.assert_allclose(source[key], value, err_msg=key)
    assert camera_model({"camera_fov_deg": 30.0})["camera_fov_deg"] == 30.0


def test_a_patch_on_a_simulated_object_shows_it_and_a_patch_on_the_tray_does_not():
    from sim_bridge.core import SimArm, SimConfig

    with SimArm(SimConfig(split="test", seed=5, num_objects=1)) as arm:
        arm.reset()
        image = arm.render()
        (_, lo, hi), = arm.object_boxes()
    centre = (np.asarray(lo) + np.asarray(hi)) / 2
    on, off = [centre[0], centre[1], 0.3], [centre[0], -0.13 if centre[1] > 0 else 0.13, 0.3]
    patches = GraspPointNet(CFG).patches(images_to_tensor(image), torch.tensor([on, off])) + 0.5
    rgb = patches.permute(0, 2, 3, 1).numpy()
    saturation = rgb.max(-1) - rgb.min(-1)
    middle = slice(CFG.patch_size // 3, 2 * CFG.patch_size // 3)
    assert saturation[0, middle, middle].mean() > 3 * saturation[1, middle, middle].mean()


def test_half_turn_is_the_patch_turned_upside_down():
    net = GraspPointNet(CFG)
    image = images_to_tensor(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    g = torch.tensor([[0.52, 0.03, 0.4], [0.61, -0.08, -1.2]])
    turned = g + torch.tensor([0.0, 0.0, math.pi])
    np.testing.assert_allclose(net.patches(image, turned).numpy(),
                               net.patches(image, g).flip(-1).flip(-2).numpy(), atol=1e-4)
    mirror = torch.tensor([[True, True], [False, False]])
    with torch.no_grad():
        logits = net(image, g, mirror)
        assert float(logits[0]) == pytest.approx(float(net(image, turned[:1])[0]), abs=1e-4)
