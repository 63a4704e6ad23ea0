"""benchmarks/close_auc.py, the offline probe of the gripper view's Q(s_T, close)."""
from __future__ import annotations

import subprocess
import sys

from test_qtopt import REPO, build_store


def test_close_auc_probe_runs_on_a_store(tmp_path):
    """benchmarks/close_auc.py as a user runs it: reads a store's closing steps, trains base
    and a variant on the same split, prints one line per variant; an empty store is refused."""
    store = build_store(tmp_path / "store", 80, depth=True)
    cmd = [sys.executable, str(REPO / "benchmarks" / "close_auc.py"), "--store", str(store),
           "--image-size", "64", "--steps", "250", "--seeds", "1", "--variants", "mirror"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "close_auc: 80 closing steps" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if "held-out AUC median" in ln]
    assert [ln.split()[1] for ln in lines] == ["base", "mirror"]
    assert all(0.0 <= float(ln.split("median ")[1].split()[0]) <= 1.0 for ln in lines)
    empty = build_store(tmp_path / "empty", 0, depth=True)
    proc = subprocess.run(cmd[:3] + [str(empty)] + cmd[4:], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "needs at least 50" in proc.stderr
