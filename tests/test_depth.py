"""Depth images from the record to the network: the PNG form, record versions 1 and 2, the data
server's checks, the store's column (pandas reads it), the height channel's geometry, and a
learner that can only succeed by looking at depth (colour says nothing in its scenes).

The ROS side (the simulated camera's aligned depth topic, robot_node recording it) is tested in
test_sim_node.py and test_robot_node.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from fleet.wire import validation as V
from fleet.policy.bundle import load_bundle
from fleet.learner.dataset import labelled_attempt_counts
from fleet.wire.depth_image import (DepthImageError, decode_depth_png, encode_depth_png,
                                    png_header_error)
from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet
from fleet.policy.geometry import camera_axes
from fleet.methods.grasp_point.learner import GraspPointCollate
from fleet.methods.grasp_point.policy import GraspPointPolicy
from fleet.learner.config import LearnerConfig
from fleet.learner.loop import run
from fleet.learner.checkpoint import CheckpointError
from fleet.policy.images import images_to_tensor
from fleet.policy.factory import policy_for
from fleet.wire.protocol import ErrorCode, ProtocolError
from fleet.wire.records import Attempt, RecordError, Step, decode, encode
from fleet.store.writer import Store, StoreConfig
from fleet.store.reader import StoreReader

SIZE = 64
CFG = GraspPointConfig(image_height=SIZE, image_width=SIZE, use_depth=True)
WS_LO, WS_HI = np.array([0.40, -0.15, 0.027]), np.array([0.70, 0.15, 0.40])
FLOOR, BLOCK_TOP, BLOCK_HALF = 0.015, 0.065, 0.02


def top_down(x: float, y: float, z: float, yaw: float) -> tuple[float, ...]:
    return (x, y, z, math.cos(yaw / 2), math.sin(yaw / 2), 0.0, 0.0)


def ray_coefficients(cfg: GraspPointConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the ray eye + t * d with d's optical-axis component 1 (so t is the depth)."""
    eye = np.asarray(cfg.camera_eye)
    forward, right, down = camera_axes(eye, np.asarray(cfg.camera_target))
    f = cfg.image_height / (2 * math.tan(math.radians(cfg.camera_fov_deg) / 2))
    u = (np.arange(cfg.image_width) + 0.5 - cfg.image_width / 2) / f
    v = (np.arange(cfg.image_height) + 0.5 - cfg.image_height / 2) / f
    d = right * u[None, :, None] + down * v[:, None, None] + forward
    return eye, d, f


def block_scene_depth(cfg: GraspPointConfig, block_xy) -> np.ndarray:
    """Depth (m) of a floor at FLOOR with a square block (top at BLOCK_TOP) on it, ray-cast
    through the camera model (the block's sides are ignored: only its top and the floor)."""
    eye, d, _ = ray_coefficients(cfg)
    t_top = (BLOCK_TOP - eye[2]) / d[..., 2]
    hit = eye + t_top[..., None] * d
    on_top = np.all(np.abs(hit[..., :2] - np.asarray(block_xy)) < BLOCK_HALF, axis=-1)
    t_floor = (FLOOR - eye[2]) / d[..., 2]
    return np.where(on_top, t_top, t_floor).astype(np.float32)


def jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


GREY = jpeg(np.full((SIZE, SIZE, 3), 120, np.uint8))


def block_attempt(rng: np.random.Generator, depth: bool = True, n_steps: int = 2) -> Attempt:
    """A scene whose colour image is plain grey: only depth shows where the block is. Grasps
    within 1 cm of the block's centre succeed, others fail."""
    block = rng.uniform(WS_LO[:2] + 0.05, WS_HI[:2] - 0.05)
    success = bool(rng.random() < 0.5)
    if success:
        grasp = block + rng.uniform(-0.01, 0.01, 2)
    else:
        while np.linalg.norm((grasp := rng.uniform(WS_LO[:2], WS_HI[:2])) - block) < 0.04:
            pass
    png = encode_depth_png(block_scene_depth(CFG, block)) if depth else None
    steps = [Step(GREY, top_down(0.55, 0.0, 0.3 - 0.05 * i, 0.0), (0.0, 0.0, -0.05, 0.0),
                  0.08, 0.1 * i, png) for i in range(n_steps)]
    now = time.time()
    return Attempt("arm1", 0, "scripted", steps, "success" if success else "failure",
                   top_down(float(grasp[0]), float(grasp[1]), 0.03,
                            float(rng.uniform(-1.5, 1.5))), 0.02, now - 2, now,
                   image_height=SIZE, image_width=SIZE)


# -- the PNG form and the record ----------------------------------------------------------------

def test_depth_png_round_trip_keeps_millimetres_and_marks_missing_returns():
    depth = np.full((4, 5), 0.8734, np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, np.inf, 0.0, 70.0
    mm = decode_depth_png(encode_depth_png(depth))
    assert mm.dtype == np.uint16 and mm.shape == (4, 5)
    assert mm[0, 1] == 873 and mm[0, 0] == mm[1, 1] == mm[2, 2] == mm[3, 3] == 0
    png = encode_depth_png(depth)
    assert png_header_error(png, 4, 5) is None
    assert "4x5" in png_header_error(png, 5, 4)
    assert "IEND" in png_header_error(png[:-12], 4, 5)
    ok, eight_bit = cv2.imencode(".png", np.zeros((4, 5), np.uint8))
    assert "16-bit" in png_header_error(eight_bit.tobytes(), 4, 5)
    assert "not a PNG" in png_header_error(GREY, 4, 5)
    with pytest.raises(DepthImageError, match="16-bit"):
        decode_depth_png(eight_bit.tobytes())
    with pytest.raises(DepthImageError, match=r"\(H, W\)"):
        encode_depth_png(np.zeros((2, 2, 1), np.float32))


def test_a_record_with_depth_is_version_2_and_one_without_stays_version_1():
    rng = np.random.default_rng(0)
    with_depth, without = block_attempt(rng), block_attempt(rng, depth=False)
    frames = encode(with_depth)
    assert len(frames) == 1 + 2 * len(with_depth.steps)
    back = decode(frames)
    assert back.has_depth and [s.depth_png for s in back.steps] == \
        [s.depth_png for s in with_depth.steps]
    import msgpack
    assert msgpack.unpackb(frames[0])["record_version"] == 2
    plain = encode(without)
    assert len(plain) == 1 + len(without.steps)
    assert msgpack.unpackb(plain[0])["record_version"] == 1  # older servers still take it
    assert not decode(plain).has_depth
    with pytest.raises(RecordError, match="with depth, which needs 4 image frames, but 3"):
        decode(frames[:-1])
    with pytest.raises(RecordError, match="depth image is not a PNG"):
        decode(frames[:-1] + [GREY])
    v1_with_depth = msgpack.unpackb(frames[0])
    v1_with_depth["record_version"] = 1  # v1 has no depth: its frames would not add up
    with pytest.raises(RecordError, match="version 1 header cannot carry depth"):
        decode([msgpack.packb(v1_with_depth)] + frames[1:])
    mixed = block_attempt(rng)
    mixed.steps[1].depth_png = None
    with pytest.raises(RecordError, match="every step"):
        encode(mixed)


def test_the_server_refuses_a_bad_depth_image_and_names_it():
    rng = np.random.default_rng(1)
    good = block_attempt(rng)
    assert V.validate_upload(encode(good), "arm1", 256).has_depth
    small = encode_depth_png(np.ones((32, 32), np.float32))
    png = good.steps[0].depth_png
    corrupt = png[:60] + bytes(b ^ 0xFF for b in png[60:80]) + png[80:]  # inside IDAT
    for bad, words in ((small, "is 32x32, the record declares 64x64"),
                       (corrupt, "does not decode")):
        frames = encode(good)
        frames[-1] = bad  # the last step's
        with pytest.raises(ProtocolError, match="step 1 depth image " + words) as err:
            for _ in range(20):  # the whole-decode check adds one later image at random
                V.validate_upload(frames, "arm1", 256)
        assert err.value.code == ErrorCode.BAD_IMAGE
    frames = encode(good)
    frames[1 + len(good.steps)] = corrupt  # I_0's depth, which the learner reads: every time
    for _ in range(5):
        with pytest.raises(ProtocolError, match="step 0 depth image does not decode"):
            V.validate_upload(frames, "arm1", 256)


def test_the_store_keeps_depth_beside_attempts_without_it_and_pandas_reads_it(tmp_path):
    rng = np.random.default_rng(2)
    attempts = [block_attempt(rng, depth=i % 2 == 0) for i in range(6)]
    with Store(StoreConfig(root=tmp_path, min_free_bytes=0)) as store:
        store.append([(a, encode(a)) for a in attempts])
    reader = StoreReader(tmp_path)
    for a in attempts:
        assert encode(reader.read_attempt(a.attempt_id)) == encode(a)
    samples = reader.sample_steps(40, np.random.default_rng(0))
    by_id = {a.attempt_id: a for a in attempts}
    for s in samples:
        assert s.depth_png == by_id[s.attempt_id].steps[s.step].depth_png
    assert {s.depth_png is None for s in samples} == {True, False}
    # a depth learner draws only the attempts with depth, and counts only those
    assert reader.attempts(depth=True)["attempt_id"].to_pylist() == \
        [a.attempt_id for a in attempts if a.has_depth]
    assert sum(labelled_attempt_counts(reader, 0.0, require_depth=True)) == 3
    assert sum(labelled_attempt_counts(reader, 0.0)) == 6
    drawn = reader.sample_steps(40, np.random.default_rng(1), require_depth=True)
    assert all(by_id[s.attempt_id].has_depth and s.depth_png is not None for s in drawn)
    reader.close()
    # a colour-only learner does not read the depth column at all
    colour = StoreReader(tmp_path, include_depth=False)
    assert all(s.depth_png is None for s in colour.sample_steps(40, np.random.default_rng(0)))
    colour.close()
    steps = pd.read_parquet(tmp_path / "steps")
    assert steps["depth_png"].isna().sum() == 3 * 2
    first = steps.dropna(subset=["depth_png"]).iloc[0]["depth_png"]
    assert cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_UNCHANGED).shape == \
        (SIZE, SIZE)


def test_a_format_1_shard_reads_as_attempts_without_depth(tmp_path):
    """Shards written before depth have neither the steps' depth_png nor the attempts' depth
    column; a reader of today fills depth with false and samples them as colour only."""
    rng = np.random.default_rng(5)
    attempts = [block_attempt(rng, depth=False) for _ in range(4)]
    with Store(StoreConfig(root=tmp_path, min_free_bytes=0)) as store:
        store.append([(a, encode(a)) for a in attempts])
    for d, column in (("attempts", "depth"), ("steps", "depth_png")):
        (path,) = (tmp_path / d).glob("part-*.parquet")
        pq.write_table(pq.read_table(path).drop_columns([column]), path)
    reader = StoreReader(tmp_path)
    assert reader.attempts()["depth"].to_pylist() == [False] * 4
    assert all(s.depth_png is None for s in reader.sample_steps(8, np.random.default_rng(0)))
    with pytest.raises(LookupError, match="depth images"):
        reader.sample_steps(8, np.random.default_rng(0), require_depth=True)
    reader.close()


# -- the height channel -------------------------------------------------------------------------

def test_the_height_channel_recovers_heights_through_the_camera_model():
    net = GraspPointNet(CFG)
    eye, d, _ = ray_coefficients(CFG)
    for z in (0.0, 0.05, 0.12):
        depth = torch.tensor((z - eye[2]) / d[..., 2], dtype=torch.float32)[None, None]
        heights = net.height(depth) * CFG.height_scale
        np.testing.assert_allclose(heights.numpy(), z, atol=1e-5)
    # a grasp over the block sees its top in the height layer of the patch; one beside it, floor
    block = np.array([0.55, 0.02])
    depth = torch.tensor(block_scene_depth(CFG, block))[None, None]
    image = images_to_tensor(np.full((SIZE, SIZE, 3), 120, np.uint8))
    patches = net.patches(image, torch.tensor([[*block, 0.0], [0.55, -0.10, 0.0]]), depth)
    height = (patches[:, 3::4] + 0.5) * CFG.height_scale  # every plane's height layer
    mid = slice(CFG.patch_size // 2 - 2, CFG.patch_size // 2 + 2)
    # on the plane at the block's height (z = 0.06) the rays through the patch centre meet the
    # block's top in place (off by 5 mm of parallax); on the others they miss it by ~4 cm
    top = height[0, 1, mid, mid].mean()
    assert abs(float(top) - BLOCK_TOP) < 0.005
    assert abs(float(height[1, :, mid, mid].mean()) - FLOOR) < 0.005


def test_missing_depth_reads_as_the_floor_and_a_depth_network_refuses_to_run_without_it():
    net = GraspPointNet(CFG)
    holes = torch.zeros(1, 1, SIZE, SIZE)
    holes[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -1.0])
    assert torch.equal(net.height(holes), torch.zeros(1, 1, SIZE, SIZE))
    image = images_to_tensor(np.full((SIZE, SIZE, 3), 120, np.uint8))
    with pytest.raises(ValueError, match="takes a depth image"):
        net(image, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="takes no depth"):
        GraspPointNet(GraspPointConfig(image_height=SIZE, image_width=SIZE))(
            image, torch.zeros(2, 3), depth=torch.zeros(1, 1, SIZE, SIZE))
    policy = GraspPointPolicy(net)
    policy.reset(np.random.default_rng(0))
    with pytest.raises(ValueError, match="depth_topic"):
        policy.choose_grasp(np.full((SIZE, SIZE, 3), 120, np.uint8), WS_LO, WS_HI)
    assert "depth" in net.input_spec() and "depth" not in GraspPointNet(
        GraspPointConfig()).input_spec()


def test_collate_refuses_an_attempt_without_depth_for_a_depth_network(tmp_path):
    rng = np.random.default_rng(3)
    with Store(StoreConfig(root=tmp_path, min_free_bytes=0)) as store:
        store.append([(a, encode(a)) for a in (block_attempt(rng, depth=False),)])
    reader = StoreReader(tmp_path)
    samples = reader.sample_steps(2, np.random.default_rng(0), first_step_only=True)
    reader.close()
    with pytest.raises(ValueError, match="no depth image.*--no-depth"):
        GraspPointCollate(SIZE, SIZE, depth=True)(samples)
    assert "depth" not in GraspPointCollate(SIZE, SIZE)(samples)


@pytest.mark.slow
def test_a_depth_learner_finds_a_block_that_colour_does_not_show(tmp_path, caplog):
    """End to end through the store, the learner process's machinery, the bundle and the
    policy: the images are plain grey, so aiming at the block needs the depth channel."""
    root = tmp_path / "store"
    rng = np.random.default_rng(4)
    with Store(StoreConfig(root=root, min_free_bytes=0)) as store:
        # first, attempts of a robot with no depth camera: the depth learner leaves them out
        store.append([(a, encode(a)) for a in (block_attempt(rng, depth=False)
                                               for _ in range(100))])
        store.append([(a, encode(a)) for a in (block_attempt(rng) for _ in range(400))])
    cfg = LearnerConfig(data=root, out=tmp_path / "run", steps=300, batch_size=32,
                        min_attempts=10, cycle_every_steps=100, log_every_steps=50,
                        image_size=SIZE, depth=True, tensorboard=False, progress=False)
    with caplog.at_level("WARNING", logger="fleet.learner"):
        summary = run(cfg)
    assert summary["published_version"] >= 1
    assert "100 of 500 labelled attempts" in caplog.text  # the colour-only ones, left out
    model, meta = load_bundle(cfg.out / "policies" / f"v{summary['published_version']}",
                              {"image_height": SIZE, "image_width": SIZE})
    assert meta.config["use_depth"] is True and "depth" in meta.input_spec
    assert meta.metrics["val_auc"] > 0.9, meta.metrics
    policy = policy_for(model, meta.version)
    misses = []
    for _ in range(5):
        block = rng.uniform(WS_LO[:2] + 0.05, WS_HI[:2] - 0.05)
        policy.reset(rng)
        grasp, _ = policy.choose_grasp(np.full((SIZE, SIZE, 3), 120, np.uint8), WS_LO, WS_HI,
                                       block_scene_depth(CFG, block))
        misses.append(float(np.linalg.norm(grasp[:2] - block)))
    assert np.median(misses) < 0.02, misses
    # the same --out without depth: the checkpoint's network has another shape; say so
    with pytest.raises(CheckpointError, match="another network shape.*--depth/--no-depth"):
        run(replace(cfg, depth=False))


def test_the_height_channel_of_the_simulated_camera_gives_true_heights():
    """PyBullet's depth buffer, linearised (sim_bridge/camera.py), through the network's camera
    model (DepthToHeight): the floor outside the tray must read 0 and the top of a box standing
    in the tray its true height. Catches depth that is not along the optical axis or a network
    camera model that is not the simulated camera's."""
    import pybullet
    from sim_bridge.config import SimConfig
    from sim_bridge.core import SimArm
    top = 0.115
    with SimArm(SimConfig(num_objects=0, seed=0, image_width=SIZE, image_height=SIZE)) as arm:
        arm.reset()
        half = [0.03, 0.03, (top - arm.config.tray_floor_z) / 2]
        c = arm._client
        pybullet.createMultiBody(
            0, pybullet.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half,
                                             physicsClientId=c),
            pybullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, physicsClientId=c),
            (0.55, 0.0, top - half[2]), physicsClientId=c)
        _, depth = arm.render_rgbd()
    height = GraspPointNet(CFG).height(torch.tensor(depth)[None, None])[0, 0].numpy()
    height = height * CFG.height_scale
    floor = np.concatenate([height[-4:, :4].ravel(), height[-4:, -4:].ravel()])  # near corners
    assert np.abs(floor).max() < 0.002, floor
    eye, d, _ = ray_coefficients(CFG)  # the pixels whose rays meet the box's top, 5 mm in
    hit = eye + ((top - eye[2]) / d[..., 2])[..., None] * d
    on_top = np.all(np.abs(hit[..., :2] - (0.55, 0.0)) < half[0] - 0.005, axis=-1)
    assert on_top.sum() > 10
    np.testing.assert_allclose(height[on_top], top, atol=0.002)
