"""The grasp success network: shapes, gradients, and that it learns a motion-dependent label."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig, encode_motions
from fleet.policy.images import images_to_tensor


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return images_to_tensor(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_forward_shapes_and_feature_split_agree():
    net = GraspSuccessNet().eval()
    imgs = _images(5)
    motions = encode_motions(np.random.default_rng(1).normal(0, 0.05, (5, 4)), 0.1)
    logits = net(imgs, motions)
    assert logits.shape == (5,)
    # The CEM path (features once, broadcast over motions) gives what a full pass gives.
    feats = net.image_features(imgs[:1])
    assert feats.shape == (1, 32, 8, 8)
    broadcast = net.score_features(feats, motions)
    full = net(imgs[:1].expand(5, -1, -1, -1), motions)
    torch.testing.assert_close(broadcast, full, rtol=1e-5, atol=1e-5)


def test_motion_changes_the_score():
    net = GraspSuccessNet().eval()
    feats = net.image_features(_images(1))
    a, b = encode_motions(np.array([[0, 0, -0.1, 0], [0.1, 0, 0, 1.0]]), 0.1)
    assert net.score_features(feats, a[None]) != net.score_features(feats, b[None])


def test_encode_motions_uses_sin_cos_and_scale():
    enc = encode_motions(np.array([[0.1, -0.2, 0.05, np.pi / 2]]), motion_scale=0.1)
    np.testing.assert_allclose(enc.numpy(), [[1.0, -2.0, 0.5, 1.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        encode_motions(np.zeros((3, 5)), 0.1)


def test_gradients_reach_every_parameter():
    net = GraspSuccessNet(NetworkConfig(use_initial_image=True))
    imgs = _images(4)
    loss = net(imgs, encode_motions(np.ones((4, 4)) * 0.02, 0.1), initial_image=imgs).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_larger_images_pool_to_the_same_head():
    cfg = NetworkConfig(image_height=128, image_width=96)
    net = GraspSuccessNet(cfg).eval()
    assert net.image_features(_images(2, 128)[:, :, :, :96]).shape == (2, 32, 8, 8)
    with pytest.raises(ValueError, match="image must be"):
        net.image_features(_images(1, 64))


def test_bad_config_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least 16x16"):
        NetworkConfig(image_height=8)
    with pytest.raises(ValueError, match="unknown NetworkConfig fields"):
        NetworkConfig.from_dict({"image_height": 64, "colour": "blue"})
    assert NetworkConfig.from_dict(NetworkConfig().to_dict()) == NetworkConfig()


@pytest.fixture()
def one_thread():
    """Small nets train fastest on one thread, and far faster than on two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learns_a_label_that_depends_on_the_motion(one_thread):
    """Success iff the motion goes down and |dx| is small: only the motion branch can tell."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = GraspSuccessNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    images = _images(256, seed=2)

    def batch(n: int):
        m = rng.uniform([-0.1, -0.1, -0.1, -1.5], [0.1, 0.1, 0.1, 1.5], (n, 4))
        y = ((m[:, 2] < 0) & (np.abs(m[:, 0]) < 0.04)).astype(np.float32)
        idx = rng.integers(0, len(images), n)
        return images[idx], encode_motions(m, 0.1), torch.from_numpy(y)

    def loss_on(b) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.binary_cross_entropy_with_logits(net(b[0], b[1]),
                                                                              b[2]))

    held_out = batch(256)
    before = loss_on(held_out)
    start = time.monotonic()
    for _ in range(100):
        imgs, m, y = batch(32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(imgs, m), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_on(held_out)
    assert time.monotonic() - start < 30
    assert after < 0.5 * before, (before, after)
    with torch.no_grad():
        acc = ((net(held_out[0], held_out[1]) > 0).float() == held_out[2]).float().mean()
    assert acc > 0.85


# -- the learner's training step options (fleet.learner.TrainingOptions) ------------------------

def _batch(n: int = 16, label: float = 1.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": torch.from_numpy(rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)),
            "motion": encode_motions(rng.uniform(-0.1, 0.1, (n, 4)), 0.1),
            "label": torch.full((n,), label)}


def test_augmentation_shifts_and_jitters_within_range():
    from fleet.learner.config import TrainingOptions
    from fleet.learner.supervised import augment
    img = torch.zeros(2, 3, 32, 32)
    img[:, :, 10, 12] = 1.0  # one bright pixel
    g = torch.Generator().manual_seed(0)
    moved = [augment(img, TrainingOptions(augment_shift=3), g) for _ in range(8)]
    where = {tuple((m[0, 0] == 1.0).nonzero()[0].tolist()) for m in moved}
    assert len(where) > 1  # the content moves ...
    assert all(abs(r - 10) <= 3 and abs(c - 12) <= 3 for r, c in where)  # ... by <= 3 px
    assert all(m.shape == img.shape for m in moved)
    jittered = augment(torch.rand(4, 3, 8, 8), TrainingOptions(augment_colour=0.5), g)
    assert jittered.min() >= 0 and jittered.max() <= 1
    with pytest.raises(ValueError):
        TrainingOptions(positive_weight=0)


def test_positive_weight_scales_the_loss_of_successes(one_thread):
    from fleet.methods.levine.learner import LevineLearner
    from fleet.learner.config import TrainingOptions
    losses = []
    for w in (1.0, 3.0):
        torch.manual_seed(0)
        learner = LevineLearner(NetworkConfig(), 1e-3, 0.0, torch.device("cpu"),
                                TrainingOptions(positive_weight=w))
        losses.append(learner.train_step(_batch(label=1.0))["loss"])
    assert losses[1] == pytest.approx(3 * losses[0], rel=1e-4)


def test_learner_trains_a_network_that_takes_the_pre_grasp_image(one_thread):
    from fleet.methods.levine.learner import LevineLearner
    from fleet.learner.config import TrainingOptions
    learner = LevineLearner(NetworkConfig(use_initial_image=True), 1e-3, 0.0,
                            torch.device("cpu"), TrainingOptions(augment_shift=2))
    batch = _batch()
    with pytest.raises(ValueError, match="pre-grasp"):
        learner.train_step(batch)
    batch["initial_image"] = batch["image"].flip(0)
    assert np.isfinite(learner.train_step(batch)["loss"])
    assert learner.evaluate([batch])["examples"] == 16
