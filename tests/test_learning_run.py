"""benchmarks/learning_run.py --quick: the whole fleet from an empty store, then its curve.

Runs the real benchmark script (server, learner, sim arm, robot_node, eval arms: real
processes) on its smallest budget, on a DDS domain and ports of its own, and checks what it
promises: the JSON curve, the PNG, and the headline as the last line.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = re.compile(
    r"^learning_run: (?:(?P<rate>[01]\.\d\d) success on unseen objects(?: in trays of \d+)? "
    r"after (?P<att>\d+) attempts, (?P<h>\d+\.\d\d) h|no policy published after \d+ attempts, \d+\.\d\d h: "
    r"nothing to evaluate) \(random (?P<random>[01]\.\d\d|n/a), scripted "
    r"(?P<scripted>[01]\.\d\d|n/a); target (?P<target>[01]\.\d+) in 20000 attempts / 2 h\)$")


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("method, target, objects, offset", [
    ("grasp_point", "0.8", 5, 0),
    ("qtopt", "0.92", 15, 10),  # the closed-loop method, on the clutter benchmark
])
def test_quick_run_writes_curve_png_and_headline(tmp_path, method, target, objects, offset):
    data = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning_run.py"), "--quick",
         "--method", method, "--target-success", target, "--num-objects", str(objects),
         "--data", str(data), "--ros-domain-id", str(64 + offset),
         "--eval-ros-domain-id", str(65 + offset), "--port", str(5870 + offset),
         "--metrics-port", str(5871 + offset)],
        cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = HEADLINE.match(last)
    assert m, f"headline line has the wrong format: {last!r}"
    assert m.group("target") == target

    curve = json.loads((data / "learning_curve.json").read_text())
    assert curve["config"]["learner_method"] == method
    assert curve["config"]["num_objects"] == objects
    assert (f" in trays of {objects} " in last) == (objects != 5 and m.group("rate") is not None)
    if objects != 5:  # the fleet ran on a plan with the run's trays, kept beside the curve
        assert f"num_objects: {objects}" in (data / "arms.yaml").read_text()
    png = (data / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert set(curve["baselines"]) == {"random", "scripted"}
    for b in curve["baselines"].values():
        assert b["n"] <= 2 and 0.0 <= b["ci95"][0] <= b["ci95"][1] <= 1.0
    points = curve["points"]
    assert points, "no checkpoint was recorded"
    assert points[-1]["attempts"] > 0, "the fleet stored no attempt"
    assert [p["attempts"] for p in points] == sorted(p["attempts"] for p in points)
    for p in points:
        assert p["hours"] <= p["wall_hours"] + 1e-9
        if p["version"] == 0:
            assert p["success"] is None and p["n"] == 0
        else:
            assert 0 < p["n"] <= 2 and p["ci95"][0] <= p["success"] <= p["ci95"][1]
    # the training store holds what the fleet collected, all of it from the train split's run
    assert sum(d["attempts"] for d in curve["store"].values()) >= points[-1]["attempts"]
    if m.group("rate") is not None:  # the headline reports the best measured point
        best = max(p["success"] for p in points if p["success"] is not None)
        assert float(m.group("rate")) == pytest.approx(best, abs=0.005)
    random_rate = curve["baselines"]["random"]["success"]
    assert m.group("random") == ("n/a" if random_rate is None else f"{random_rate:.2f}")
