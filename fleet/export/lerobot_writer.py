"""A LeRobotDataset (lerobot 0.4.4, format v3.0) from selected attempts, written through lerobot's
own API (`LeRobotDataset.create`, `add_frame`, `save_episode`, `finalize`): one episode per
attempt, one frame per step.

Runs in .venv-lerobot (scripts/lerobot-venv.sh), not in fleet's venv: lerobot pins torch<2.11
and fleet pins torch==2.13.0. `fleet export` (fleet/export/lerobot.py) starts it as
`.venv-lerobot/bin/python -m fleet.export.lerobot_writer JOB.json` with the checkout on
PYTHONPATH; this module imports only fleet.wire and fleet.store, which need no torch.

Features (docs/store.md, "Exporting"):
  observation.image    image (H, W, 3) RGB, the step's JPEG decoded (PNG inside the parquet)
  observation.depth    uint16 (H, W, 1) mm, when any selected attempt has depth
                       (observation.has_depth says which frames carry it; zeros otherwise).
                       Not an image feature: LeRobot's images are 8-bit. lerobot 0.4.4 cannot
                       aggregate the statistics of a one-frame episode with a 3-axis feature,
                       so with depth, one-step attempts are left out and counted (a flat
                       vector would avoid that but made the export 8x slower: per-pixel
                       quantiles)
  observation.state    float32 [x y z qx qy qz qw gripper]: ee pose in base_link, opening m
  action               float32 [dx dy dz dyaw]: the step's commanded motion (m, rad)
  next.reward          float32: 1.0 on the last frame of a successful attempt, else 0.0
  next.done            bool: True on each episode's last frame
  next.success         bool: True on the last frame of a successful attempt
  fleet.stamp_ns       int64: the step's own stamp (robot clock, unix ns, as the MCAP
                       export's). LeRobot's `timestamp` is frame_index / fps, as its format
                       requires; int64 because LeRobotDataset returns float64 as float32
  fleet.robot_id, fleet.attempt_id, fleet.policy_kind, fleet.outcome   string, per episode
  fleet.policy_version int64, per episode
Every frame's task is TASK. fps is the selection's median step rate, rounded (at least 1).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pyarrow as pa

from fleet.export.select import iter_attempts
from fleet.wire.depth_image import decode_depth_png
from fleet.wire.records import Attempt

TASK = "grasp an object from the tray and lift it"
STATE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "dyaw"]
EPISODE_STRINGS = ("robot_id", "attempt_id", "policy_kind", "outcome")


def features(height: int, width: int, depth: bool) -> dict:
    """The dataset's feature table, as LeRobotDataset.create takes it."""
    def vec(dtype: str, names: list[str] | None, n: int = 1) -> dict:
        return {"dtype": dtype, "shape": (len(names) if names else n,), "names": names}

    f = {"observation.image": {"dtype": "image", "shape": (height, width, 3),
                               "names": ["height", "width", "channels"]},
         "observation.state": vec("float32", STATE_NAMES),
         "action": vec("float32", ACTION_NAMES),
         "next.reward": vec("float32", None), "next.done": vec("bool", None),
         "next.success": vec("bool", None), "fleet.stamp_ns": vec("int64", None),
         "fleet.policy_version": vec("int64", None)}
    for key in EPISODE_STRINGS:
        f[f"fleet.{key}"] = {"dtype": "string", "shape": (1,), "names": None}
    if depth:
        f["observation.depth"] = {"dtype": "uint16", "shape": (height, width, 1),
                                  "names": ["height", "width", "channels"]}
        f["observation.has_depth"] = vec("bool", None)
    return f


def frames(a: Attempt, depth: bool) -> Iterable[dict]:
    """The attempt's steps as LeRobot frames."""
    last = len(a.steps) - 1
    for i, s in enumerate(a.steps):
        bgr = cv2.imdecode(np.frombuffer(s.image_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"attempt {a.attempt_id}: a step's JPEG does not decode")
        success = i == last and a.outcome == "success"
        frame = {"observation.image": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                 "observation.state": np.array([*s.ee_pose, s.gripper], np.float32),
                 "action": np.array(s.motion, np.float32),
                 "next.reward": np.array([1.0 if success else 0.0], np.float32),
                 "next.done": np.array([i == last]), "next.success": np.array([success]),
                 "fleet.stamp_ns": np.array([int(round(s.stamp * 1e9))], np.int64),
                 "fleet.policy_version": np.array([a.policy_version], np.int64),
                 "task": TASK}
        for key in EPISODE_STRINGS:
            frame[f"fleet.{key}"] = str(getattr(a, key))
        if depth:
            has = s.depth_png is not None
            d = decode_depth_png(s.depth_png) if has else \
                np.zeros((a.image_height, a.image_width), np.uint16)
            frame["observation.depth"] = d.astype(np.uint16)[:, :, None]
            frame["observation.has_depth"] = np.array([has])
        yield frame


def write(job: dict) -> dict:
    """Write the dataset the job describes; returns {"frames", "files", "attempt_ids" (those
    written, as episodes 0..n-1), "left_out" (one-step attempts, with depth only)}."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    datasets.disable_progress_bars()  # one "Map" bar per episode otherwise; ours counts attempts

    root, out = Path(job["store"]), Path(job["out"])
    selected = pa.table({"attempt_id": job["attempt_ids"], "shard_file": job["shard_files"]})
    ds = LeRobotDataset.create(job["repo_id"], fps=job["fps"], root=out, robot_type="fleet_arm",
                               features=features(job["height"], job["width"], job["depth"]),
                               use_videos=False)
    count, written, left_out = 0, [], []
    bar = tqdm(total=len(job["attempt_ids"]), unit="attempt", desc="export lerobot",
               disable=None, file=sys.stderr)
    try:
        for a in iter_attempts(root, selected):
            if len(a.steps) == 1 and job["depth"] or not a.steps:
                left_out.append(a.attempt_id)
            else:
                for frame in frames(a, job["depth"]):
                    ds.add_frame(frame)
                ds.save_episode()
                count += len(a.steps)
                written.append(a.attempt_id)
            bar.update(1)
    finally:
        bar.close()
        ds.finalize()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"frames": count, "files": files, "attempt_ids": written, "left_out": left_out}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = write(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
