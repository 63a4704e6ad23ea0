"""Policy bundles: round trips, and every way a bundle must be refused (real files, no mocks)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import safetensors.torch
import torch

from fleet.registry import Method, register, unregister
from fleet.policy.bundle import (BundleError, load_bundle, pack_bundle, save_bundle, save_packed,
                                 unpack_bundle)
from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig, encode_motions
from fleet.policy.images import images_to_tensor


@pytest.fixture()
def model() -> GraspSuccessNet:
    torch.manual_seed(0)
    return GraspSuccessNet().eval()


@pytest.fixture()
def bundle(tmp_path: Path, model) -> Path:
    path = tmp_path / "v3"
    save_bundle(path, model, version=3, trained_on_attempts=1234, metrics={"val_acc": 0.71})
    return path


def _outputs(net) -> torch.Tensor:
    rng = np.random.default_rng(0)
    imgs = images_to_tensor(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        return net(imgs, encode_motions(rng.normal(0, 0.05, (4, 4)), 0.1))


def _edit_meta(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "policy.json").read_text())
    meta.update(changes)
    (bundle / "policy.json").write_text(json.dumps(meta))


def test_round_trip_gives_the_same_outputs(bundle, model):
    loaded, meta = load_bundle(bundle, expected_input_spec={"image_height": 64,
                                                            "image_width": 64})
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)
    assert (meta.version, meta.trained_on_attempts, meta.metrics) == (3, 1234, {"val_acc": 0.71})
    assert meta.architecture == "grasp_success_cnn" and not loaded.training
    # Also loadable from the path of its policy.json.
    load_bundle(bundle / "policy.json")


def test_policy_json_holds_the_documented_fields(bundle):
    meta = json.loads((bundle / "policy.json").read_text())
    assert set(meta) == {"bundle_format", "version", "architecture", "input_spec", "created_at",
                         "trained_on_attempts", "sha256", "metrics"}
    assert meta["sha256"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    assert NetworkConfig.from_dict(meta["architecture"]["config"]) == NetworkConfig()
    # Readable with safetensors alone, as docs/policy-bundle.md says.
    tensors = safetensors.torch.load_file(bundle / "model.safetensors")
    assert tensors.keys() == GraspSuccessNet().state_dict().keys()


def test_non_default_config_round_trips(tmp_path):
    cfg = NetworkConfig(image_height=96, image_width=128, use_initial_image=True,
                        head_channels=(16,))
    save_bundle(tmp_path / "b", GraspSuccessNet(cfg), version=1)
    loaded, meta = load_bundle(tmp_path / "b")
    assert loaded.config == cfg and meta.input_spec["uses_initial_image"] is True


def test_flipped_byte_in_the_weights_is_refused(bundle):
    w = bytearray((bundle / "model.safetensors").read_bytes())
    w[len(w) // 2] ^= 0x01
    (bundle / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle)


def test_truncated_safetensors_is_refused(bundle):
    w = (bundle / "model.safetensors").read_bytes()[:1000]
    (bundle / "model.safetensors").write_bytes(w)
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle)
    # Even with a checksum that matches the truncated file, the parse refuses it.
    _edit_meta(bundle, sha256=hashlib.sha256(w).hexdigest())
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        load_bundle(bundle)


def test_wrong_input_spec_is_refused(bundle):
    with pytest.raises(BundleError, match="wrong input spec.*image_height: bundle has 64, "
                                          "expected 128"):
        load_bundle(bundle, expected_input_spec={"image_height": 128, "image_width": 64})


def test_unknown_architecture_is_refused(bundle):
    meta = json.loads((bundle / "policy.json").read_text())
    meta["architecture"]["name"] = "qt_opt_q_network"
    (bundle / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown architecture 'qt_opt_q_network'"):
        load_bundle(bundle)


def test_weights_that_do_not_fit_the_architecture_are_refused(bundle, tmp_path):
    # A config that builds but whose shapes differ from the saved weights.
    meta = json.loads((bundle / "policy.json").read_text())
    meta["architecture"]["config"]["fc_width"] = 32
    (bundle / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit the architecture.*fc"):
        load_bundle(bundle)
    meta["architecture"]["config"]["fc_width"] = "wide"
    (bundle / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="config does not build"):
        load_bundle(bundle)


def test_nan_weights_are_refused(tmp_path, model):
    with torch.no_grad():
        model.fc[-1].bias.fill_(float("nan"))
    save_bundle(tmp_path / "nan", model, version=1)
    with pytest.raises(BundleError, match="NaN or inf"):
        load_bundle(tmp_path / "nan")


@pytest.mark.parametrize("field", ["version", "sha256", "architecture", "input_spec",
                                   "created_at", "trained_on_attempts", "metrics"])
def test_missing_metadata_fields_are_refused(bundle, field):
    meta = json.loads((bundle / "policy.json").read_text())
    del meta[field]
    (bundle / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"missing the field {field}"):
        load_bundle(bundle)


def test_bad_metadata_is_refused_with_a_reason(bundle):
    _edit_meta(bundle, bundle_format=2)
    with pytest.raises(BundleError, match="bundle_format 2 is not supported"):
        load_bundle(bundle)
    _edit_meta(bundle, bundle_format=1, version="3")
    with pytest.raises(BundleError, match="version must be a non-negative integer"):
        load_bundle(bundle)
    (bundle / "policy.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)
    (bundle / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="incomplete.*model.safetensors is missing"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="no policy bundle"):
        load_bundle(bundle / "nowhere")


def test_packed_form_round_trips_and_refuses_tampering(bundle, model, tmp_path):
    blob = pack_bundle(bundle)
    loaded, meta = unpack_bundle(blob, expected_input_spec={"image_width": 64})
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)
    assert meta.version == 3
    # A robot keeps what it received: verified, then written as a bundle directory.
    save_packed(blob, tmp_path / "received")
    torch.testing.assert_close(_outputs(load_bundle(tmp_path / "received")[0]),
                               _outputs(model), rtol=0, atol=0)

    files = msgpack.unpackb(blob)
    w = bytearray(files["model.safetensors"])
    w[-10] ^= 0x80
    files["model.safetensors"] = bytes(w)
    tampered = msgpack.packb(files)
    with pytest.raises(BundleError, match="checksum mismatch"):
        unpack_bundle(tampered)
    with pytest.raises(BundleError, match="checksum mismatch"):
        save_packed(tampered, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(BundleError, match="not valid msgpack"):
        unpack_bundle(blob[: len(blob) // 2])
    with pytest.raises(BundleError, match="must be a map"):
        unpack_bundle(msgpack.packb({"policy.json": "text"}))


def test_corrupt_bundle_is_never_packed(bundle):
    w = bytearray((bundle / "model.safetensors").read_bytes())
    w[100] ^= 0xFF
    (bundle / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(BundleError, match="checksum mismatch"):
        pack_bundle(bundle)


def test_a_second_architecture_can_register(tmp_path):
    class TinyQ(torch.nn.Module):
        architecture = "test_tiny_q"

        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width
            self.q = torch.nn.Linear(5, width)

        def config_dict(self):
            return {"width": self.width}

        def input_spec(self):
            return {"motion_encoding": "dx,dy,dz,sin,cos"}

    register(Method(name="test_tiny_q", architecture="test_tiny_q", policy_kind="tiny_q",
                    network=lambda cfg: TinyQ(**cfg), policy="unused:policy",
                    learner="unused:learner"))
    try:
        save_bundle(tmp_path / "q", TinyQ(7), version=1)
        loaded, meta = load_bundle(tmp_path / "q")
        assert isinstance(loaded, TinyQ) and loaded.width == 7
        assert meta.architecture == "test_tiny_q"
    finally:
        unregister("test_tiny_q")
    with pytest.raises(BundleError, match="unknown architecture"):
        load_bundle(tmp_path / "q")
