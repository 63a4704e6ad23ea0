"""Files written by commit 4065821 stay readable: its episode store (Parquet shards and a WAL
never rolled), a robot_node spool, and a learner's policies folder (two bundles, latest.json,
pin.json), read with the current code and checked against tests/data/compat_4065821/manifest.json.

The fixtures were made once with the old code (tests/data/compat_4065821/README.md) and must
never be regenerated. Every test copies them to tmp_path first: opening the store with Store
recovers its WAL and appends to it. No ROS, no sockets.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fleet.policy.bundle import load_bundle
from fleet.policy.base import Observation
from fleet.policy.factory import policy_for
from fleet.policy.folder import PolicyWatch, list_versions, read_json
from fleet.wire.records import Attempt, Step, decode, encode
from fleet.store.writer import Store
from fleet.store.reader import StoreReader
from fleet.store.types import StoreConfig
from robot_node.spool import Spool

FIXTURES = Path(__file__).resolve().parent / "data" / "compat_4065821"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
STORE, SPOOL, POLICIES = MANIFEST["store"], MANIFEST["spool"], MANIFEST["policies"]
SIZE = MANIFEST["image_size"]
ROLLED = [a for a in STORE["attempts"] if a["location"] != "wal"]
WAL_ONLY = [a for a in STORE["attempts"] if a["location"] == "wal"]
BY_ID = {a["attempt_id"]: a for a in STORE["attempts"]}
#: float32 networks on the same probes; the probes' outputs differ from each other by ~1e-4
PROBE_ATOL = 2e-6


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    copy = tmp_path / "compat_4065821"
    shutil.copytree(FIXTURES, copy)
    return copy


def assert_attempt(a: Attempt, want: dict) -> None:
    """An attempt read back is exactly the one the old code wrote (images by sha256)."""
    for key in ("attempt_id", "robot_id", "policy_version", "policy_kind", "outcome", "label",
                "gripper_after_lift", "started_at", "ended_at", "image_height", "image_width",
                "ground_truth", "extra"):
        assert getattr(a, key) == want[key], key
    assert list(a.final_pose) == want["final_pose"]
    assert a.has_depth is want["depth"]
    assert len(a.steps) == want["num_steps"]
    for step, w in zip(a.steps, want["steps"]):
        assert list(step.ee_pose) == w["ee_pose"] and list(step.motion) == w["motion"]
        assert (step.gripper, step.stamp) == (w["gripper"], w["stamp"])
        assert sha(step.image_jpeg) == w["jpeg_sha256"]
        assert (None if step.depth_png is None else sha(step.depth_png)) == w["depth_sha256"]


# -- the episode store ---------------------------------------------------------------------------

def test_store_reader_lists_and_reads_the_rolled_attempts(fixtures):
    reader = StoreReader(fixtures / STORE["root"])
    assert reader.num_attempts() == len(ROLLED) == 4
    index = reader.attempts()
    for column, key in (("attempt_id", "attempt_id"), ("robot_id", "robot_id"),
                        ("label", "label"), ("outcome", "outcome"), ("depth", "depth"),
                        ("num_steps", "num_steps"), ("policy_version", "policy_version"),
                        ("stored_at", "stored_at"), ("encoded_bytes", "encoded_bytes"),
                        ("final_pose", "final_pose")):
        assert index.column(column).to_pylist() == [a[key] for a in ROLLED], column
    assert reader.attempts(depth=True).column("attempt_id").to_pylist() == [
        a["attempt_id"] for a in ROLLED if a["depth"]]
    assert reader.attempts(robot_id="arm-b").column("attempt_id").to_pylist() == [
        a["attempt_id"] for a in ROLLED if a["robot_id"] == "arm-b"]
    assert reader.attempts(outcome="aborted").num_rows == 1
    for want in ROLLED:
        assert_attempt(reader.read_attempt(want["attempt_id"]), want)
    for want in WAL_ONLY:  # acked but never rolled: not in any shard yet
        with pytest.raises(KeyError):
            reader.read_attempt(want["attempt_id"])

    samples = reader.sample_steps(64, np.random.default_rng(0))
    labelled = {a["attempt_id"] for a in ROLLED if a["label"] is not None}
    assert {s.attempt_id for s in samples} == labelled  # 64 draws reach both of them
    for s in samples:
        want = BY_ID[s.attempt_id]
        w = want["steps"][s.step]
        assert (s.label, s.robot_id, s.num_steps) == (want["label"], want["robot_id"],
                                                    want["num_steps"])
        assert sha(s.image_jpeg) == w["jpeg_sha256"]
        assert (None if s.depth_png is None else sha(s.depth_png)) == w["depth_sha256"]
        assert s.ee_pose.tolist() == w["ee_pose"] and s.final_pose.tolist() == want["final_pose"]
    deep = reader.sample_steps(16, np.random.default_rng(1), require_depth=True)
    assert {s.attempt_id for s in deep} == {a for a in labelled if BY_ID[a]["depth"]}
    assert all(s.depth_png is not None for s in deep)
    steps = sum(chunk.num_rows for chunk, _ in reader.iter_steps())
    assert steps == sum(a["num_steps"] for a in ROLLED)


def test_store_recovers_the_wal_takes_a_new_attempt_and_rolls(fixtures):
    root = fixtures / STORE["root"]
    assert sorted(p.name for p in (root / "wal").iterdir()) == STORE["wal_segments"]
    cfg = StoreConfig(root, min_free_bytes=0, background_roll=False, roll_process=False)
    store = Store(cfg)
    try:
        assert all(store.contains(a["attempt_id"]) for a in STORE["attempts"])
        assert {rid: asdict(c) for rid, c in store.counters().items()} == STORE["counters"]
        health = store.health()
        assert (health.attempts, health.ok) == (len(STORE["attempts"]), True)
        # opening rolled the WAL's attempts into a third shard
        assert health.shards == len(STORE["shards"]) + 1 and health.sealed_segments == 0
        old = StoreReader(root).read_attempt(WAL_ONLY[0]["attempt_id"])
        again = store.append([(old, encode(old))])
        assert (again.new, again.duplicates) == ([], [old.attempt_id])
        fresh = _fresh_attempt()
        assert store.append([(fresh, encode(fresh))]).new == [fresh.attempt_id]
        store.roll()
        counters = store.counters()
        assert counters["arm-c"].attempts == 1 and counters["arm-c"].successes == 1
        assert counters[old.robot_id].duplicates == 1
    finally:
        store.close()
    reader = StoreReader(root)
    ids = [a["attempt_id"] for a in STORE["attempts"]] + [fresh.attempt_id]
    assert reader.attempts().column("attempt_id").to_pylist() == ids
    assert reader.attempts().column("label").to_pylist() == [
        a["label"] for a in STORE["attempts"]] + [True]
    for want in WAL_ONLY:
        assert_attempt(reader.read_attempt(want["attempt_id"]), want)
    assert reader.read_attempt(fresh.attempt_id) == fresh
    assert len(list((root / "attempts").glob("part-*.parquet"))) == len(STORE["shards"]) + 2


def _fresh_attempt() -> Attempt:
    """A new attempt with depth, as a robot of today sends it."""
    ok, jpeg = cv2.imencode(".jpg", np.full((SIZE, SIZE, 3), 90, np.uint8))
    assert ok
    ok, png = cv2.imencode(".png", np.full((SIZE, SIZE), 612, np.uint16))
    assert ok
    steps = [Step(jpeg.tobytes(), (0.5, 0.0, 0.3 - 0.05 * i, 1.0, 0.0, 0.0, 0.0),
                  (0.0, 0.0, -0.05, 0.0), 0.08, 0.1 * i, png.tobytes()) for i in range(2)]
    return Attempt("arm-c", 2, "grasp_point", steps, "success",
                   (0.5, 0.0, 0.03, 1.0, 0.0, 0.0, 0.0), 0.02, 1_770_000_000.0,
                   1_770_000_002.0, image_height=SIZE, image_width=SIZE,
                   attempt_id="f" * 32, extra={"fresh": True})


def test_store_shards_open_with_plain_pyarrow(fixtures):
    root = fixtures / STORE["root"]
    table = pq.read_table(root / "attempts")
    assert table.column("attempt_id").to_pylist() == [a["attempt_id"] for a in ROLLED]
    assert table.column("outcome").to_pylist() == [a["outcome"] for a in ROLLED]
    assert [sha(h) for h in table.column("header").to_pylist()] == [
        a["header_sha256"] for a in ROLLED]
    for name in STORE["shards"]:
        mine = [a for a in ROLLED if a["location"] == name]
        for d in ("attempts", "steps"):
            meta = pq.read_schema(root / d / name).metadata
            assert meta[b"fleet.shard_format"] == STORE["shard_format"].encode()
        steps = pq.read_table(root / "steps" / name)
        want = [(a["attempt_id"], i, w) for a in mine for i, w in enumerate(a["steps"])]
        assert steps.column("attempt_id").to_pylist() == [a for a, _, _ in want]
        assert steps.column("step").to_pylist() == [i for _, i, _ in want]
        assert [sha(b) for b in steps.column("image_jpeg").to_pylist()] == [
            w["jpeg_sha256"] for _, _, w in want]
        assert [None if b is None else sha(b) for b in steps.column("depth_png").to_pylist()] \
            == [w["depth_sha256"] for _, _, w in want]
        groups = pq.ParquetFile(root / "steps" / name).metadata.num_row_groups
        assert groups == math.ceil(len(want) / STORE["steps_row_group"])


# -- the robot's spool ---------------------------------------------------------------------------

def test_spool_lists_and_decodes_its_attempts(fixtures):
    spool = Spool(fixtures / SPOOL["root"], max_bytes=10 * 2**20)
    assert [(e.name, e.size) for e in spool.entries()] == [
        (e["name"], e["size"]) for e in SPOOL["entries"]]
    assert len(spool) == 2 and spool.used_bytes == sum(e["size"] for e in SPOOL["entries"])
    for want in SPOOL["entries"]:
        frames = spool.read(want["name"])
        assert len(frames) == want["frames"] and sha(frames[0]) == want["header_sha256"]
        assert_attempt(decode(frames), want)


# -- the learner's policies folder ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["v1", "v2"])
def test_bundles_load_with_their_weights(fixtures, name):
    want = POLICIES["bundles"][name]
    directory = fixtures / POLICIES["root"] / name
    assert sha((directory / "model.safetensors").read_bytes()) == want["weights_sha256"]
    model, meta = load_bundle(directory, {"image_height": SIZE, "image_width": SIZE})
    assert (meta.version, meta.architecture, model.architecture) == (
        want["version"], want["architecture"], want["architecture"])
    assert meta.sha256 == want["weights_sha256"]
    assert (meta.config, meta.input_spec) == (want["config"], want["input_spec"])
    assert (meta.trained_on_attempts, meta.metrics, meta.created_at) == (
        want["trained_on_attempts"], want["metrics"], want["created_at"])
    np.testing.assert_allclose(_probe(model, want), want["probe_probabilities"],
                               rtol=0, atol=PROBE_ATOL)


def _probe(model: torch.nn.Module, want: dict) -> list[float]:
    """The network's success probabilities on the probes make_fixtures.py fed the old one."""
    image = torch.from_numpy(_probe_image()).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        if "probe_motions" in want:  # grasp_success_cnn: (image, encoded motion)
            m = torch.tensor(want["probe_motions"], dtype=torch.float32)
            scale = want["input_spec"]["motion_scale"]
            enc = torch.cat([m[:, :3] / scale, torch.sin(m[:, 3:]), torch.cos(m[:, 3:])], 1)
            logits = model(image.expand(len(m), -1, -1, -1), enc)
        else:  # grasp_point_cnn with depth: (I_0, grasps, depth)
            depth = torch.from_numpy(_probe_depth())[None, None]
            logits = model(image, torch.tensor(want["probe_grasps"], dtype=torch.float32),
                           depth=depth)
    return torch.sigmoid(logits).tolist()


def _probe_image() -> np.ndarray:  # the same formula as make_fixtures.probe_image
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)


def _probe_depth() -> np.ndarray:  # the same formula as make_fixtures.probe_depth
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return (0.55 + 0.004 * y + 0.001 * x).astype(np.float32)


def test_policies_folder_has_latest_v2_and_a_pin_on_v1(fixtures):
    policies = fixtures / POLICIES["root"]
    bundles = POLICIES["bundles"]
    assert [(r["version"], r["ok"], r["trained_on_attempts"], r["problem"])
            for r in list_versions(policies)] == [
        (b["version"], True, b["trained_on_attempts"], "") for b in bundles.values()]
    latest = read_json(policies / "latest.json")
    assert (latest["version"], latest["path"]) == (POLICIES["latest_version"], "v2")
    assert latest["sha256"] == bundles["v2"]["weights_sha256"]
    pinned = read_json(policies / "pin.json")
    assert (pinned["version"], pinned["reason"]) == (POLICIES["pinned_version"],
                                                     POLICIES["pin_reason"])
    watch = PolicyWatch(policies, max_bytes=16 * 2**20)
    assert watch.poll()
    assert (watch.served.version, watch.served.pinned) == (1, True)
    assert watch.served.weights_sha256 == bundles["v1"]["weights_sha256"]
    assert (watch.latest_version, watch.pinned_version) == (2, 1)


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_each_bundle_drives_its_policy_for_one_decision(fixtures, name):
    want = POLICIES["bundles"][name]
    model, meta = load_bundle(fixtures / POLICIES["root"] / name)
    policy = policy_for(model, meta.version)
    assert (policy.kind, policy.version) == (want["policy_kind"], want["version"])
    policy.reset(np.random.default_rng(0))
    ws_min, ws_max = np.array(POLICIES["workspace_min"]), np.array(POLICIES["workspace_max"])
    image = _probe_image()
    obs = Observation(image=image, ee_pose=np.array([0.55, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]),
                      step=0, max_steps=10, workspace_min=ws_min, workspace_max=ws_max,
                      initial_image=image,
                      initial_depth=_probe_depth() if meta.config.get("use_depth") else None)
    decision = policy.decide(obs)
    assert decision.motion.shape == (4,) and np.all(np.isfinite(decision.motion))
    assert 0.0 < decision.p_best < 1.0
    assert np.all(np.abs(decision.motion[:3]) <= 0.05 + 1e-9)  # one bounded step
    if want["architecture"] == "grasp_point_cnn":  # its choice, scored by the network itself
        grasp = policy.grasp
        assert np.all(grasp[:2] >= ws_min[:2]) and np.all(grasp[:2] <= ws_max[:2])
        rescored = _probe(model, {**want, "probe_grasps": [grasp.tolist()]})[0]
        assert rescored == pytest.approx(decision.p_best, abs=PROBE_ATOL)
    else:  # p(noop) is the network's score of the zero motion, probe 0
        assert decision.p_noop == pytest.approx(want["probe_probabilities"][0], abs=PROBE_ATOL)
