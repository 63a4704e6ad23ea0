"""`fleet export`: the real CLI over a small store, read back only with the formats' own readers
(mcap_ros2 for MCAP) and checked value by value against the store read with pyarrow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from fleet.store.writer import Store, StoreConfig
from fleet.wire.depth_image import encode_depth_png
from fleet.wire.records import Attempt, Step, encode

REPO = Path(__file__).resolve().parents[1]
SIZE = 24


def _jpeg(rng: np.random.Generator) -> bytes:
    img = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (3, 3), 0)
    ok, data = cv2.imencode(".jpg", img)
    assert ok
    return data.tobytes()


def make_attempt(rng, robot: str, version: int, outcome: str, n_steps: int, depth: bool,
                 t0: float, test_split: bool = False) -> Attempt:
    steps = []
    for i in range(n_steps):
        png = encode_depth_png(rng.integers(300, 900, (SIZE, SIZE)).astype(np.uint16)) \
            if depth else None
        steps.append(Step(_jpeg(rng), tuple(float(v) for v in rng.normal(size=7)),
                          tuple(float(v) for v in rng.normal(size=4) * 0.01),
                          float(rng.uniform(0, 0.08)), t0 + 0.1 * i + 0.000123, png))
    folder = "random_urdfs/120" if test_split else "random_urdfs/123"
    return Attempt(robot, version, "random", steps, outcome,
                   tuple(float(v) for v in rng.normal(size=7)), 0.01, t0 - 1, t0 + n_steps,
                   image_height=SIZE, image_width=SIZE,
                   ground_truth={"objects": [{"name": folder, "lifted": outcome == "success"}]})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(7)
    plan = [("arm1", 0, "success", 3, True, False), ("arm2", 1, "failure", 2, False, False),
            ("arm1", 1, "aborted", 2, True, True), ("arm2", 1, "success", 4, False, True),
            ("arm1", 2, "failure", 1, True, False)]
    attempts = [make_attempt(rng, *p[:5], t0=1_764_000_000.0 + 100 * i, test_split=p[5])
                for i, p in enumerate(plan)]
    with Store(StoreConfig(root=root, min_free_bytes=0)) as s:
        s.append([(a, encode(a)) for a in attempts[:3]])
        s.maybe_roll()
    with Store(StoreConfig(root=root, min_free_bytes=0)) as s:  # a second shard
        s.append([(a, encode(a)) for a in attempts[3:]])
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli", "export", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def store_tables(root: Path):
    attempts = pq.read_table(root / "attempts").to_pylist()
    steps = pq.read_table(root / "steps").to_pylist()
    return attempts, steps


@dataclass
class Msg:
    schema: object
    log_time_ns: int
    publish_time_ns: int
    ros_msg: object


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_mcap_export_matches_the_store_exactly(store, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    before = _snapshot(store)
    out = tmp_path / "mcap"
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(out))
    assert r.returncode == 0, r.stderr
    attempts, steps = store_tables(store)
    assert f"fleet export: 5 attempts, {len(steps)} frames" in r.stdout
    assert _snapshot(store) == before  # the store is only read
    assert sorted(p.name for p in out.glob("*.mcap")) == ["arm1.mcap", "arm2.mcap"]
    for robot in ("arm1", "arm2"):
        mine = [a for a in attempts if a["robot_id"] == robot]
        ids = {a["attempt_id"] for a in mine}
        my_steps = sorted((s for s in steps if s["attempt_id"] in ids), key=lambda s: s["stamp"])
        by_topic: dict[str, list] = {}
        with open(out / f"{robot}.mcap", "rb") as f:
            for schema, channel, message, ros_msg in make_reader(
                    f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
                by_topic.setdefault(channel.topic, []).append(
                    Msg(schema, message.log_time, message.publish_time, ros_msg))
        has_depth = any(a["depth"] for a in mine)
        expected_topics = {f"/{robot}/{t}" for t in
                           ("camera/image_raw", "camera/camera_info", "ee_pose", "fleet/motion", "fleet/gripper",
                            "fleet/attempt", "fleet/label")}
        if has_depth:
            expected_topics.add(f"/{robot}/camera/aligned_depth_to_color/image_raw")
        assert set(by_topic) == expected_topics
        images = by_topic[f"/{robot}/camera/image_raw"]
        assert len(images) == len(my_steps)
        assert images[0].schema.name == "sensor_msgs/msg/Image"
        for m, s in zip(images, my_steps):
            ns = int(round(s["stamp"] * 1e9))
            assert m.log_time_ns == m.publish_time_ns == ns
            st = m.ros_msg.header.stamp
            assert st.sec * 1_000_000_000 + st.nanosec == ns
            assert (m.ros_msg.encoding, m.ros_msg.height, m.ros_msg.width) == ("rgb8", SIZE, SIZE)
            want = cv2.cvtColor(cv2.imdecode(np.frombuffer(s["image_jpeg"], np.uint8),
                                             cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            got = np.frombuffer(bytes(m.ros_msg.data), np.uint8).reshape(SIZE, SIZE, 3)
            np.testing.assert_array_equal(got, want)
        infos = by_topic[f"/{robot}/camera/camera_info"]
        assert [m.log_time_ns for m in infos] == [m.log_time_ns for m in images]
        info = infos[0].ros_msg
        f = SIZE / (2 * np.tan(np.radians(45.0) / 2))  # fleet's camera model, 45 deg vertical
        assert infos[0].schema.name == "sensor_msgs/msg/CameraInfo"
        assert (info.height, info.width, info.distortion_model) == (SIZE, SIZE, "plumb_bob")
        np.testing.assert_allclose(list(info.k), [f, 0, SIZE / 2 - 0.5, 0, f, SIZE / 2 - 0.5,
                                                  0, 0, 1])
        if has_depth:
            depths = by_topic[f"/{robot}/camera/aligned_depth_to_color/image_raw"]
            with_depth = [s for s in my_steps if s["depth_png"] is not None]
            assert len(depths) == len(with_depth)
            for m, s in zip(depths, with_depth):
                assert m.ros_msg.encoding == "16UC1" and m.log_time_ns == int(round(s["stamp"] * 1e9))
                want = cv2.imdecode(np.frombuffer(s["depth_png"], np.uint8), cv2.IMREAD_UNCHANGED)
                got = np.frombuffer(bytes(m.ros_msg.data), "<u2").reshape(SIZE, SIZE)
                np.testing.assert_array_equal(got, want)
        for m, s in zip(by_topic[f"/{robot}/ee_pose"], my_steps, strict=True):
            p = m.ros_msg.pose
            assert [p.position.x, p.position.y, p.position.z, p.orientation.x,
                    p.orientation.y, p.orientation.z, p.orientation.w] == list(s["ee_pose"])
            assert m.ros_msg.header.frame_id == "base_link"
        for m, s in zip(by_topic[f"/{robot}/fleet/motion"], my_steps, strict=True):
            t = m.ros_msg.twist
            assert [t.linear.x, t.linear.y, t.linear.z, t.angular.z] == list(s["motion"])
        assert [m.ros_msg.data for m in by_topic[f"/{robot}/fleet/gripper"]] == \
            [s["gripper"] for s in my_steps]
        labelled = sorted((a for a in mine if a["label"] is not None),
                          key=lambda a: a["started_at"])
        assert [m.ros_msg.data for m in by_topic[f"/{robot}/fleet/label"]] == \
            [a["label"] for a in labelled]
        meta = [json.loads(m.ros_msg.data) for m in by_topic[f"/{robot}/fleet/attempt"]]
        assert [(d["attempt_id"], d["outcome"], d["policy_version"]) for d in meta] == \
            [(a["attempt_id"], a["outcome"], a["policy_version"])
             for a in sorted(mine, key=lambda a: a["started_at"])]


def test_filters_select_exactly_the_matching_attempts(store, tmp_path):
    attempts, _ = store_tables(store)
    cases = [(["--robot", "arm2"], lambda a: a["robot_id"] == "arm2"),
             (["--policy-version", "1", "--outcome", "success"],
              lambda a: a["policy_version"] == 1 and a["outcome"] == "success"),
             (["--split", "test"], lambda a: "/120" in (a["ground_truth_json"] or "")),
             (["--split", "train", "--robot", "arm1", "--robot", "arm2"],
              lambda a: "/120" not in (a["ground_truth_json"] or ""))]
    for i, (flags, keep) in enumerate(cases):
        out = tmp_path / f"o{i}"
        r = run_cli("--store", str(store), "--format", "mcap", "--out", str(out), *flags)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((out / "fleet_export.json").read_text())
        assert manifest["attempt_ids"] == [a["attempt_id"] for a in attempts if keep(a)], flags
    last = max(a["stored_at"] for a in attempts)
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(tmp_path / "t"),
                "--since", str(last))
    manifest = json.loads((tmp_path / "t" / "fleet_export.json").read_text())
    assert manifest["attempt_ids"] == [a["attempt_id"] for a in attempts if a["stored_at"] >= last]


def test_an_unknown_robot_or_version_is_refused_naming_the_known_ones(store, tmp_path):
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(tmp_path / "x"),
                "--robot", "arm9")
    assert r.returncode == 2
    assert "unknown robot arm9" in r.stderr and "arm1, arm2" in r.stderr
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(tmp_path / "x"),
                "--policy-version", "7")
    assert r.returncode == 2 and "unknown policy version 7" in r.stderr and "0, 1, 2" in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_second_export_into_the_same_out_is_refused_unless_overwrite(store, tmp_path):
    out = tmp_path / "o"
    assert run_cli("--store", str(store), "--format", "mcap", "--out", str(out)).returncode == 0
    first = _snapshot(out)
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(out))
    assert r.returncode == 2 and "is not empty" in r.stderr and "--overwrite" in r.stderr
    assert _snapshot(out) == first
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(out), "--overwrite",
                "--robot", "arm1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.mcap")) == ["arm1.mcap"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    r = run_cli("--store", str(store), "--format", "mcap", "--out", str(other), "--overwrite")
    assert r.returncode == 2 and "not an export" in r.stderr
    assert (other / "notes.txt").read_text() == "keep"


def test_a_corrupt_shard_is_named(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("LOCK"))
    victim = sorted((copy / "steps").glob("part-*.parquet"))[-1]
    data = bytearray(victim.read_bytes())
    data[-12:-4] = b"\xff" * 8  # the footer's length: pyarrow cannot open the file
    victim.write_bytes(bytes(data))
    r = run_cli("--store", str(copy), "--format", "mcap", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "corrupt shard file" in r.stderr and str(victim) in r.stderr


LEROBOT_READER = """
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, dump = sys.argv[1], sys.argv[2]
ds = LeRobotDataset(json.load(open(root + "/meta/info.json")).get("repo_id", "fleet/l"), root=root)
rows = []
for i in range(len(ds)):
    f = ds[i]
    row = {k: (f[k].numpy().tolist() if hasattr(f[k], "numpy") else f[k]) for k in f
           if k not in ("observation.image", "observation.depth")}
    row["image"] = np.round(f["observation.image"].numpy() * 255).astype(int).tolist()
    if "observation.depth" in f:
        row["depth"] = f["observation.depth"].numpy().astype(int).tolist()
    rows.append(row)
json.dump({"episodes": ds.num_episodes, "frames": ds.num_frames, "fps": ds.fps,
           "features": sorted(ds.features), "rows": rows}, open(dump, "w"))
"""


def one(value):
    """A shape-(1,) feature as LeRobotDataset returns it (a 0-d or 1-element tensor)."""
    return value[0] if isinstance(value, list) else value


def lerobot_python() -> Path:
    from fleet.export.lerobot import DEFAULT_PYTHON

    if not DEFAULT_PYTHON.is_file():
        if os.environ.get("FLEET_REQUIRE_LEROBOT") == "1":  # scripts/test.sh (CI) sets it
            pytest.fail(f"{DEFAULT_PYTHON} is missing: scripts/lerobot-venv.sh makes it")
        pytest.skip(f"no LeRobot venv ({DEFAULT_PYTHON}): run scripts/lerobot-venv.sh")
    return DEFAULT_PYTHON


def test_lerobot_export_reads_back_with_lerobots_own_dataset_class(store, tmp_path):
    python = lerobot_python()
    before = _snapshot(store)
    out = tmp_path / "lerobot"
    r = run_cli("--store", str(store), "--format", "lerobot", "--out", str(out),
                "--repo-id", "fleet/test")
    assert r.returncode == 0, r.stderr
    attempts, steps = store_tables(store)
    # lerobot 0.4.4 cannot hold a one-frame episode with a depth feature: the store's one
    # one-step attempt is left out, and said so
    short = [a["attempt_id"] for a in attempts if a["num_steps"] == 1]
    assert len(short) == 1
    attempts = [a for a in attempts if a["num_steps"] > 1]
    steps = [s for s in steps if s["attempt_id"] not in short]
    assert f"fleet export: 4 attempts, {len(steps)} frames" in r.stdout
    assert "1 one-step attempt(s) left out" in r.stdout
    assert _snapshot(store) == before
    dump = tmp_path / "read.json"
    read = subprocess.run([str(python), "-c", LEROBOT_READER, str(out), str(dump)],
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr
    got = json.loads(dump.read_text())
    assert got["episodes"] == len(attempts) and got["frames"] == len(steps)
    assert {"observation.image", "observation.depth", "observation.state", "action",
            "next.reward", "next.done", "next.success"} <= set(got["features"])
    by_attempt = {a["attempt_id"]: a for a in attempts}
    rows = got["rows"]
    order = [a["attempt_id"] for a in attempts]  # the store's order, one episode each
    assert [rows[i]["fleet.attempt_id"] for i in range(len(rows))
            if rows[i]["frame_index"] == 0] == order
    step_rows = {(s["attempt_id"], s["step"]): s for s in steps}
    for row in rows:
        a = by_attempt[row["fleet.attempt_id"]]
        s = step_rows[(a["attempt_id"], row["frame_index"])]
        last = row["frame_index"] == a["num_steps"] - 1
        success = last and a["outcome"] == "success"
        assert row["fleet.robot_id"] == a["robot_id"]
        assert one(row["fleet.policy_version"]) == a["policy_version"]
        assert row["fleet.outcome"] == a["outcome"]
        assert one(row["fleet.stamp_ns"]) == int(round(s["stamp"] * 1e9))
        np.testing.assert_allclose(row["observation.state"], [*s["ee_pose"], s["gripper"]],
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row["action"], s["motion"], rtol=1e-6, atol=1e-9)
        assert one(row["next.done"]) == last and one(row["next.success"]) == success
        assert one(row["next.reward"]) == (1.0 if success else 0.0)
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(s["image_jpeg"], np.uint8),
                                         cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(np.array(row["image"]).transpose(1, 2, 0), want)
        assert one(row["observation.has_depth"]) == a["depth"]
        depth = np.array(row["depth"]).reshape(SIZE, SIZE)
        if a["depth"]:
            want = cv2.imdecode(np.frombuffer(s["depth_png"], np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(depth, want)
        else:
            assert not depth.any()
    manifest = json.loads((out / "fleet_export.json").read_text())
    assert manifest["attempt_ids"] == order and manifest["format"] == "lerobot"
    assert manifest["left_out"] == short


def test_lerobot_without_its_venv_says_how_to_make_it_and_writes_nothing(store, tmp_path):
    r = run_cli("--store", str(store), "--format", "lerobot", "--out", str(tmp_path / "l"),
                "--lerobot-python", str(tmp_path / "no-such-python"))
    assert r.returncode == 2 and "scripts/lerobot-venv.sh" in r.stderr, r.stderr
    assert "torch<2.11" in r.stderr and not (tmp_path / "l").exists()
