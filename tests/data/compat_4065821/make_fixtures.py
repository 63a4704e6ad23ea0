"""Write the compatibility fixtures of this folder with the code of commit 4065821.

These files pin the on-disk formats of fleet as they were at commit 4065821 (the commit before
fleet/ was reorganised into subpackages): an episode store (Parquet shards + a WAL holding
attempts not yet rolled), a robot_node spool, and a learner's policies folder (two bundles,
latest.json and pin.json). tests/test_compat_formats.py reads them with the current code.

Run it ONLY against the old tree, never against newer code (the fixtures would then pin the new
formats, not the old ones), and only to create the fixtures once; they are checked in:

    mkdir -p /tmp/fleet_old && cd /work/main && git archive 4065821 | tar -x -C /tmp/fleet_old
    cd /tmp/fleet_old && PYTHONPATH=/tmp/fleet_old /work/main/.venv/bin/python \\
        /work/main/tests/data/compat_4065821/make_fixtures.py

It refuses to run when fleet is imported from the repository that holds this script, or when
the fixture folders exist already (pass --overwrite to replace them, which you should not).

Determinism: numpy and torch are seeded, attempt ids and robot timestamps are fixed, and the
store's server clock (stored_at), the spool's file-name clock and the wall clock of the bundles'
created_at and pin.json's pinned_at are replaced by fixed clocks for this process only: two
runs write the same bytes (with the same library versions: Parquet records pyarrow's in
"created_by", JPEG bytes depend on OpenCV's libjpeg).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import types
import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

import fleet
import fleet.bundle
import fleet.policy_registry
import fleet.store
import robot_node.spool
from fleet.checkpoint import write_policy
from fleet.depth_image import encode_depth_png
from fleet.grasp_point import GraspPointConfig, GraspPointNet
from fleet.network import GraspSuccessNet, NetworkConfig
from fleet.policy import NetworkScorer, Observation
from fleet.policy_registry import pin
from fleet.records import RECORD_VERSION, Attempt, Step, encode, header_of
from fleet.store import Store, StoreConfig
from robot_node.spool import Spool

OUT = Path(__file__).resolve().parent
COMMIT = "4065821"
SIZE = 64
T0 = 1_760_000_000.0  # robot clock of the first attempt (unix s)
STORED_T0 = 1_760_000_100.0  # the store's fixed server clock: first append
SPOOL_NS0 = 1_760_000_200_000_000_000  # the spool's fixed file-name clock (ns)
ROBOTS = ("arm-a", "arm-b")

# The probes tests/test_compat_formats.py feeds the networks (the same formulas are there).
PROBE_MOTIONS = [[0.0, 0.0, 0.0, 0.0], [0.02, -0.01, -0.03, 0.2], [-0.04, 0.03, 0.0, -0.5],
                 [0.01, 0.01, -0.05, 1.0]]
PROBE_GRASPS = [[0.55, 0.0, 0.0], [0.45, -0.1, 0.7], [0.65, 0.1, -1.2], [0.5, 0.05, 1.5]]
WS_MIN, WS_MAX = [0.40, -0.15, 0.027], [0.70, 0.15, 0.40]


def probe_image() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)


def probe_depth() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return (0.55 + 0.004 * y + 0.001 * x).astype(np.float32)


class _FixedClock:
    """Stands in for the `time` module of fleet.store / robot_node.spool in this process."""

    def __init__(self, start: float, step: float) -> None:
        self.next, self.step = start, step
        self.monotonic = time.monotonic
        self.sleep = time.sleep

    def time(self) -> float:
        t, self.next = self.next, self.next + self.step
        return t

    def time_ns(self) -> int:
        return int(self.time())


#: Stands in for the `datetime` module of fleet.bundle / fleet.policy_registry (created_at,
#: pinned_at): a fixed "now".
_FIXED_DATETIME = types.SimpleNamespace(timezone=_dt.timezone, datetime=types.SimpleNamespace(
    now=lambda tz=None: _dt.datetime(2025, 10, 9, 9, 20, 0, tzinfo=_dt.timezone.utc)))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scene(i: int, step: int) -> np.ndarray:
    """A small smooth RGB image (compresses to ~1 KB of JPEG): a tray with a coloured block."""
    img = np.full((SIZE, SIZE, 3), 110 + 5 * step, np.uint8)
    k = i % 6
    r, c = 10 + 7 * k, 12 + 5 * k + 3 * step
    img[r:r + 14, c:c + 12] = ((60 * i) % 256, (200 - 20 * i) % 256, (40 + 30 * step) % 256)
    return img


def jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def depth(i: int, step: int) -> bytes:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    d = 0.60 + 0.003 * y - 0.001 * x - 0.01 * step
    k = i % 6
    d[10 + 7 * k:24 + 7 * k, 20:34] -= 0.05  # the block is nearer the camera
    d[0, :3] = 0.0  # no return
    return encode_depth_png(d.astype(np.float32))


def make_attempt(i: int, robot: str, outcome: str, n_steps: int, with_depth: bool,
                 policy_version: int, policy_kind: str, rng: np.random.Generator,
                 ground_truth: bool) -> Attempt:
    steps = []
    for s in range(n_steps):
        pose = (0.55 + 0.01 * i, -0.02 * s, 0.30 - 0.05 * s, 1.0, 0.0, 0.0, 0.0)
        motion = tuple(float(round(v, 6)) for v in rng.uniform(-0.05, 0.05, 4))
        steps.append(Step(jpeg(scene(i, s)), pose, motion, 0.08, T0 + 10 * i + 0.1 * s,
                          depth(i, s) if with_depth else None))
    started = T0 + 10 * i
    return Attempt(
        robot_id=robot, policy_version=policy_version, policy_kind=policy_kind, steps=steps,
        outcome=outcome, final_pose=(0.5 + 0.01 * i, 0.02, 0.03, 1.0, 0.0, 0.0, 0.0),
        gripper_after_lift=0.021 if outcome == "success" else 0.0, started_at=started,
        ended_at=started + 2.5, image_height=SIZE, image_width=SIZE,
        attempt_id=f"c4065821{i:024x}",
        ground_truth={"lifted": outcome == "success", "object": f"cube_{i}"} if ground_truth
        else None,
        extra={"fixture": COMMIT, "n": i})


def describe(a: Attempt, frames: list[bytes]) -> dict:
    """What a test expects of this attempt, as plain JSON."""
    return {
        "attempt_id": a.attempt_id, "robot_id": a.robot_id, "policy_version": a.policy_version,
        "policy_kind": a.policy_kind, "outcome": a.outcome, "label": a.label,
        "num_steps": len(a.steps), "depth": a.has_depth,
        "record_version": header_of(a)["record_version"],
        "final_pose": list(a.final_pose), "gripper_after_lift": a.gripper_after_lift,
        "started_at": a.started_at, "ended_at": a.ended_at,
        "image_height": a.image_height, "image_width": a.image_width,
        "ground_truth": a.ground_truth, "extra": a.extra,
        "encoded_bytes": sum(map(len, frames)), "header_sha256": sha(frames[0]),
        "steps": [{"ee_pose": list(s.ee_pose), "motion": list(s.motion), "gripper": s.gripper,
                   "stamp": s.stamp, "jpeg_sha256": sha(s.image_jpeg),
                   "depth_sha256": None if s.depth_png is None else sha(s.depth_png)}
                  for s in a.steps],
    }


def write_store(rng: np.random.Generator) -> dict:
    root = OUT / "store"
    fleet.store.time = _FixedClock(STORED_T0, 1.0)  # stored_at: one fixed second per append
    # (index, robot, outcome, steps, depth, policy_version, kind, ground truth)
    plan = [
        (0, "arm-a", "success", 3, False, 0, "scripted", True),
        (1, "arm-b", "failure", 2, False, 0, "random", True),
        (2, "arm-a", "success", 3, True, 1, "cem", False),
        (3, "arm-b", "aborted", 1, True, 1, "cem", True),
        (4, "arm-a", "failure", 2, False, 1, "cem", False),  # stays in the WAL
        (5, "arm-b", "success", 2, True, 2, "grasp_point", True),  # stays in the WAL
    ]
    attempts = [make_attempt(i, r, o, n, d, v, k, rng, g) for i, r, o, n, d, v, k, g in plan]
    frames = [encode(a) for a in attempts]
    cfg = StoreConfig(root, min_free_bytes=0, steps_row_group=2, background_roll=False,
                      roll_on_close=False, roll_process=False)
    stored_at = {}
    store = Store(cfg)
    try:
        for batch, roll in (([0, 1], True), ([2, 3], True), ([4], False), ([5], False)):
            t = fleet.store.time.next
            result = store.append([(attempts[i], frames[i]) for i in batch])
            assert result.new == [attempts[i].attempt_id for i in batch], result
            stored_at.update({attempts[i].attempt_id: t for i in batch})
            if roll:
                store.roll()
        counters = {rid: asdict(c) for rid, c in store.counters().items()}
        health = store.health()
    finally:
        store.close()
    (root / "LOCK").unlink(missing_ok=True)
    shards = sorted(p.name for p in (root / "attempts").glob("part-*.parquet"))
    wal = sorted(p.name for p in (root / "wal").glob("*.log"))
    assert len(shards) == 2 and len(wal) == 1, (shards, wal)
    where = [shards[0]] * 2 + [shards[1]] * 2 + ["wal"] * 2
    rows = []
    for a, f, w in zip(attempts, frames, where):
        rows.append(dict(describe(a, f), stored_at=stored_at[a.attempt_id], location=w))
    return {"root": "store", "shards": shards, "wal_segments": wal, "steps_row_group": 2,
            "shard_format": "2", "attempts": rows, "counters": counters,
            "health_attempts": health.attempts, "health_shards": health.shards}


def write_spool(rng: np.random.Generator) -> dict:
    robot_node.spool.time = _FixedClock(SPOOL_NS0, 1_000_000_000)
    spool = Spool(OUT / "spool", max_bytes=10 * 2**20)
    entries = []
    for i, d, outcome in ((10, False, "success"), (11, True, "failure")):
        a = make_attempt(i, "arm-a", outcome, 2, d, 2, "grasp_point", rng, False)
        frames = encode(a)
        entry = spool.put(a.attempt_id, frames)
        entries.append(dict(describe(a, frames), name=entry.name, size=entry.size,
                            frames=len(frames)))
    assert [e.name for e in spool.entries()] == [e["name"] for e in entries]
    return {"root": "spool", "entries": entries}


def probes(model: torch.nn.Module) -> dict:
    """The network's outputs on the fixed probe inputs (to check weights land in place)."""
    image = probe_image()
    if isinstance(model, GraspSuccessNet):
        obs = Observation(image=image, ee_pose=np.array([0.55, 0.0, 0.3, 1.0, 0, 0, 0]), step=0,
                          max_steps=10, workspace_min=np.array(WS_MIN),
                          workspace_max=np.array(WS_MAX))
        p = NetworkScorer(model).prepare(obs)(np.array(PROBE_MOTIONS))
        return {"probe_motions": PROBE_MOTIONS, "probe_probabilities": p.tolist()}
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    dep = torch.from_numpy(probe_depth())[None, None]
    with torch.inference_mode():
        logits = model(images, torch.tensor(PROBE_GRASPS, dtype=torch.float32), depth=dep)
    return {"probe_grasps": PROBE_GRASPS, "probe_probabilities": torch.sigmoid(logits).tolist()}


def write_policies() -> dict:
    fleet.bundle._dt = fleet.policy_registry._dt = _FIXED_DATETIME
    torch.manual_seed(4065821)
    nets = {1: GraspSuccessNet(NetworkConfig(image_height=SIZE, image_width=SIZE)),
            2: GraspPointNet(GraspPointConfig(image_height=SIZE, image_width=SIZE,
                                              use_depth=True))}
    metrics = {1: {"val_auc": 0.5, "val_loss": 0.69}, 2: {"val_auc": 0.75, "val_loss": 0.5}}
    kinds = {1: "cem", 2: "grasp_point"}
    out = {}
    for version, model in nets.items():
        model.eval()
        directory, meta = write_policy(OUT, model, version=version,
                                       trained_on_attempts=100 * version,
                                       metrics=metrics[version])
        weights = (directory / "model.safetensors").read_bytes()
        assert sha(weights) == meta.sha256
        out[f"v{version}"] = {
            "version": version, "architecture": meta.architecture, "config": meta.config,
            "input_spec": meta.input_spec, "trained_on_attempts": meta.trained_on_attempts,
            "metrics": meta.metrics, "weights_sha256": meta.sha256,
            "weights_bytes": len(weights), "policy_kind": kinds[version],
            "created_at": meta.created_at,
            "bundle_format": meta.bundle_format, **probes(model)}
    reason = "compat fixture: pinned to v1"
    pin(OUT / "policies", 1, reason=reason)
    return {"root": "policies", "bundles": out, "latest_version": 2, "pinned_version": 1,
            "pin_reason": reason, "workspace_min": WS_MIN, "workspace_max": WS_MAX}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing fixtures (they pin old formats: do not)")
    args = parser.parse_args()
    here_repo = OUT.parents[2]
    if Path(fleet.__file__).resolve().is_relative_to(here_repo):
        sys.exit(f"fleet is imported from {fleet.__file__}, the repository of these fixtures: "
                 f"run this with the OLD tree first on PYTHONPATH (see the docstring)")
    names = ("store", "spool", "policies", "manifest.json")
    existing = [n for n in names if (OUT / n).exists()]
    if existing and not args.overwrite:
        sys.exit(f"{OUT} already holds {existing}: these fixtures are written once, by commit "
                 f"{COMMIT}, and never regenerated")
    for n in existing:
        p = OUT / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    np.random.seed(0)
    rng = np.random.default_rng(4065821)
    manifest = {
        "commit": COMMIT, "fleet_file": str(Path(fleet.__file__).resolve()),
        "record_version": RECORD_VERSION, "image_size": SIZE,
        "store": write_store(rng), "spool": write_spool(rng), "policies": write_policies(),
    }
    assert all(math.isfinite(p) for b in manifest["policies"]["bundles"].values()
               for p in b["probe_probabilities"])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures written to {OUT} with {fleet.__file__}: {total / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
