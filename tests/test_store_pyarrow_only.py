"""A store directory is readable by pyarrow (and pandas, if installed) alone: a fresh,
isolated interpreter, run outside the repo, reads it without importing fleet."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from fleet.store.writer import Store, StoreConfig
from test_store import batch_of, make_attempt

READER = r"""
import json, sys
import pyarrow.parquet as pq
root = sys.argv[1]
attempts = pq.read_table(f"{root}/attempts")          # the attempt index, every shard
steps = pq.read_table(f"{root}/steps", columns=["attempt_id", "step", "ee_pose", "image_jpeg"])
# (Acero's join takes no list columns such as ee_pose: join on a projection, or use pandas)
joined = steps.select(["attempt_id", "step"]).join(
    attempts.select(["attempt_id", "robot_id", "label"]), "attempt_id")
out = {
    "attempts": attempts.num_rows,
    "steps": steps.num_rows,
    "joined": joined.num_rows,
    "successes": sum(1 for x in attempts.column("label").to_pylist() if x),
    "robots": sorted(set(attempts.column("robot_id").to_pylist())),
    "all_jpeg": all(b[:2] == b"\xff\xd8" for b in steps.column("image_jpeg").to_pylist()),
    "pose_len": len(steps.column("ee_pose")[0].as_py()),
    "ids": sorted(attempts.column("attempt_id").to_pylist()),
}
try:
    import pandas as pd
    df = pd.read_parquet(f"{root}/attempts")
    out["pandas_rows"] = len(df)
except ImportError:
    out["pandas_rows"] = None
out["fleet_imported"] = any(m == "fleet" or m.startswith("fleet.") for m in sys.modules)
out["sys_path"] = sys.path
print(json.dumps(out))
"""


def test_store_is_read_by_pyarrow_without_fleet(tmp_path):
    rng = np.random.default_rng(3)
    attempts = [make_attempt(rng, f"arm-{i % 2}", n_steps=2,
                             outcome=("success", "failure", "aborted")[i % 3]) for i in range(9)]
    root = tmp_path / "store"
    with Store(StoreConfig(root, min_free_bytes=2**20)) as store:
        store.append(batch_of(attempts[:4]))
        store.roll()
        store.append(batch_of(attempts[4:]))
    # -I: no PYTHONPATH, no user site, no script dir on sys.path; cwd outside the repo
    proc = subprocess.run([sys.executable, "-I", "-c", READER, str(root)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fleet_imported"] is False
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    assert repo not in out["sys_path"] and "" not in out["sys_path"]
    assert out["attempts"] == 9 and out["steps"] == out["joined"] == 18
    assert out["successes"] == 3 and out["robots"] == ["arm-0", "arm-1"]
    assert out["all_jpeg"] and out["pose_len"] == 7
    assert out["ids"] == sorted(a.attempt_id for a in attempts)
    assert out["pandas_rows"] in (None, 9)
