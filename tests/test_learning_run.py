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
@pytest.mark.parametrize("method, target, objects, offset, robot", [
    ("grasp_point", "0.8", 5, 0, {}),
    # the closed-loop method, on the clutter benchmark, its arms exploring as qtopt run 8's
    ("qtopt", "0.92", 15, 10, {"exploration_policy": "any_height_descent"}),
])
def test_quick_run_writes_curve_png_and_headline(tmp_path, method, target, objects, offset,
                                                 robot):
    data = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning_run.py"), "--quick",
         "--method", method, "--target-success", target, "--num-objects", str(objects),
         "--data", str(data), "--ros-domain-id", str(64 + offset),
         "--eval-ros-domain-id", str(65 + offset), "--port", str(5870 + offset),
         "--metrics-port", str(5871 + offset)]
        + [a for k, v in robot.items() for a in ("--robot-param", f"{k}={v}")],
        cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = HEADLINE.match(last)
    assert m, f"headline line has the wrong format: {last!r}"
    assert m.group("target") == target

    curve = json.loads((data / "learning_curve.json").read_text())
    assert curve["config"]["learner_method"] == method
    # which code made the curve (None only outside a git checkout)
    assert curve["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", curve["commit"])
    assert curve["config"]["num_objects"] == objects
    assert curve["config"]["robot_params"] == robot
    # --robot-param reached the fleet's robot_nodes: their exploration recorded its own kind
    exploring = {k.split()[0] for k in curve["store"]} & {"scripted", "scripted_any_height"}
    assert exploring == {"scripted_any_height" if robot else "scripted"}
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


def _curve(points: list[tuple[int, float, int]], objects: int = 5) -> dict:
    """A learning_curve.json as learning_run writes it, with (attempts, success, n) points."""
    from fleet.evaluation.counting import wilson_interval

    return {"format": 1, "commit": "ab" * 20, "config": {"num_objects": objects},
            "baselines": {"random": {"success": 0.1, "ci95": [0.05, 0.2], "n": 40},
                          "scripted": {"success": 0.2, "ci95": [0.1, 0.3], "n": 40}},
            "points": [{"attempts": a, "hours": a / 6000, "version": i + 1, "n": n,
                        "success": r, "ci95": list(wilson_interval(round(r * n), n))}
                       for i, (a, r, n) in enumerate(points)]}


def test_compare_curves_draws_runs_on_one_chart_and_says_whether_they_separate(tmp_path):
    """benchmarks/compare_curves.py as a user runs it: two runs and the planner's reference
    on one PNG; the table says which last intervals overlap the first run's; a file that is
    not a curve is refused with what to pass."""
    a, b, c = (tmp_path / f"{x}.json" for x in "abc")
    a.write_text(json.dumps(_curve([(1000, 0.50, 60), (5000, 0.90, 150)])))
    b.write_text(json.dumps(_curve([(1000, 0.40, 60), (5000, 0.60, 150)])))
    c.write_text(json.dumps(_curve([(1000, 0.45, 60), (5000, 0.85, 150)])))
    planner = tmp_path / "failures.json"
    planner.write_text(json.dumps({"planner_success": 0.88, "planner_attempts": 200}))
    out = tmp_path / "c.png"
    script = str(ROOT / "benchmarks" / "compare_curves.py")
    done = subprocess.run([sys.executable, script, f"qtopt={a}", f"grasp_point={b}",
                           f"other={c}", "--reference", f"planner={planner}", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert rows["grasp_point"].endswith("apart")  # 0.60 vs 0.90 at n = 150
    assert rows["other"].endswith("intervals overlap")  # 0.85 vs 0.90
    assert "0.90 (0.84-0.94) @  5000" in rows["qtopt"] and "ababababa" in rows["qtopt"]
    assert "reference planner: 0.88 (0.83-0.92, n=200)" in done.stdout
    assert out.read_bytes().startswith(b"\x89PNG")
    bad = subprocess.run([sys.executable, script, f"x={planner}"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "is not a learning_curve.json" in bad.stderr
    worse = subprocess.run([sys.executable, script, str(a)], capture_output=True, text=True,
                           timeout=120)
    assert worse.returncode == 2 and "give LABEL=PATH" in worse.stderr
