"""`fleet eval`: the Wilson interval against published values, the counting rules on real
records and real spool files, and the whole command end to end with real sim arms and
robot_nodes (tiny budget)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fleet.policy.bundle import save_bundle
from fleet.evaluation.counting import SpoolScanner, read_spool_file, wilson_interval
from fleet.evaluation.evaluate import EvalConfig, EvalError, PolicyRun, expand_policies, summarise
from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet
from fleet.methods.levine.network import GraspSuccessNet
from fleet.wire.records import Attempt, Step, decode, encode
from fleet.evaluation.plot import format_table, plot_report
from robot_node.spool import Spool, unpack_frames

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- statistics

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score, no continuity correction), to 4 decimals.
NEWCOMBE_1998 = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
                 ((0, 20), (0.0000, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize("counts,expected", NEWCOMBE_1998)
def test_wilson_interval_matches_published_values(counts, expected):
    low, high = wilson_interval(*counts)
    assert (round(low, 4), round(high, 4)) == expected


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no data: know nothing
    assert wilson_interval(3, 3)[1] == 1.0 and wilson_interval(0, 3)[0] == 0.0
    low, high = wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0)  # symmetric about 1/2
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


# ----------------------------------------------------------------------------- counting


def _attempt(outcome: str, kind: str = "cem", version: int = 1, ended: float = 0.0,
             objects=("random_urdfs/10",), lifted: bool = False) -> Attempt:
    step = Step(image_jpeg=b"\xff\xd8jpeg", ee_pose=(0.5, 0, 0.3, 0, 0, 0, 1),
                motion=(0, 0, -0.03, 0), gripper=0.08, stamp=0.1)
    truth = {"any_lifted": lifted, "objects": [{"name": n} for n in objects]}
    return Attempt(robot_id="arm1", policy_version=version, policy_kind=kind, steps=[step],
                   outcome=outcome, final_pose=(0.5, 0, 0.03, 0, 0, 0, 1),
                   gripper_after_lift=0.01 if outcome == "success" else 0.0,
                   started_at=ended - 1, ended_at=ended, ground_truth=truth)


def test_summarise_counts_the_first_n_labelled_attempts_of_the_policy():
    run = PolicyRun(name="v1", kind="cem", bundle=Path("/b"), version=1)
    attempts = [
        _attempt("success", ended=1, lifted=True),
        _attempt("aborted", ended=2),                     # before the cut-off: reported
        _attempt("failure", kind="scripted", ended=3),    # another policy: not counted
        _attempt("failure", ended=4, lifted=True),        # label and truth disagree
        _attempt("success", version=2, ended=5),          # another version: not counted
        _attempt("failure", ended=6, objects=("random_urdfs/11",)),
        _attempt("aborted", ended=7),                     # after the cut-off: dropped
        _attempt("success", ended=8),                     # beyond N: dropped
    ]
    r = summarise(run, attempts, wanted=3, stopped_by="attempts", wall_s=1.0)
    assert (r.attempts, r.successes, r.aborted, r.unexpected_kind) == (3, 1, 1, 2)
    assert r.rate == pytest.approx(1 / 3) and r.ci95 == wilson_interval(1, 3)
    assert (r.ground_truth_known, r.ground_truth_agree) == (3, 2)
    assert r.non_test_objects == ["random_urdfs/11"] and r.complete
    stopped = summarise(run, attempts, wanted=10, stopped_by="timeout", wall_s=1.0, until=6.5)
    assert (stopped.attempts, stopped.aborted, stopped.complete) == (3, 1, False)
    empty = summarise(run, [], wanted=3, stopped_by="timeout", wall_s=1.0)
    assert empty.rate is None and empty.ci95 == (0.0, 1.0)


def test_spool_files_written_by_robot_node_read_back(tmp_path):
    """fleet reads robot_node's spool format without importing robot_node: keep them equal."""
    spool = Spool(tmp_path / "arm1", 1 << 20)
    written = [_attempt("success", ended=1.0), _attempt("aborted", ended=2.0)]
    for a in written:
        spool.put(a.attempt_id, encode(a))
    scanned = SpoolScanner(tmp_path).scan()
    assert [a.attempt_id for a in scanned] == [a.attempt_id for a in written]
    path = next((tmp_path / "arm1").glob("*.attempt"))
    assert read_spool_file(path) == unpack_frames(path.read_bytes())
    damaged = path.read_bytes()[:-1] + b"\0"
    path.write_bytes(damaged)
    assert len(SpoolScanner(tmp_path).scan()) == 1  # skipped with a warning, not a crash


def test_bad_policy_paths_say_what_to_pass(tmp_path):
    with pytest.raises(EvalError, match="no such bundle"):
        expand_policies([tmp_path / "missing"], 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="directory of bundle versions"):
        expand_policies([tmp_path / "empty"], 64)
    save_bundle(tmp_path / "big", GraspSuccessNet(), version=1)
    with pytest.raises(EvalError, match="--policy"):
        expand_policies([tmp_path / "big"], 32)  # a 64 px network for a 32 px camera
    with pytest.raises(EvalError, match="--attempts"):
        EvalConfig(policies=[], out=tmp_path, attempts=0).validate()


def test_a_directory_of_versions_gives_one_run_per_version_and_a_plot(tmp_path):
    for version, trained in ((2, 900), (1, 300)):
        save_bundle(tmp_path / "policies" / f"v{version}", GraspSuccessNet(), version=version,
                    trained_on_attempts=trained)
    runs = expand_policies([tmp_path / "policies"], 64)
    assert [(r.name, r.trained_on_attempts) for r in runs] == [("v1", 300), ("v2", 900)]
    results = [summarise(r, [_attempt("success", version=r.version)], 1, "attempts", 1.0)
               for r in runs]
    report = {"config": {"attempts": 1, "arms": 1},
              "results": [r.__dict__ for r in results]}
    assert "v2" in format_table(report)
    png = plot_report(report, tmp_path / "eval.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fleet_eval_end_to_end(tmp_path, ros_domain):
    torch.manual_seed(0)
    # the default method's network at the fleet's camera size (config/arms.yaml: 128 px), which
    # `fleet eval` takes when --image-size is not given
    save_bundle(tmp_path / "bundle", GraspPointNet(GraspPointConfig(image_height=128,
                                                                    image_width=128)),
                version=1, trained_on_attempts=0)
    out = tmp_path / "eval"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "eval", "--policy", str(tmp_path / "bundle"),
         "--attempts", "3", "--arms", "1", "--out", str(out), "--max-steps", "12",
         "--ros-domain-id", str(ros_domain.domain_id), "--timeout-s", "60"],
        cwd=REPO, env={**os.environ, **ros_domain.env}, capture_output=True, text=True,
        timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"fleet eval took {time.monotonic() - started:.1f} s\n{proc.stdout}")

    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "test" and report["interrupted"] is False
    by_policy = {r["policy"]: r for r in report["results"]}
    assert list(by_policy) == ["random", "scripted", "v1"]
    for r in by_policy.values():
        assert r["attempts"] == 3 and r["complete"] and r["stopped_by"] == "attempts"
        assert 0.0 <= r["rate"] <= 1.0 and r["successes"] == round(r["rate"] * 3)
        low, high = r["ci95"]
        assert 0.0 <= low <= r["rate"] <= high <= 1.0
        # truth comes on a latched topic within ground_truth_wait; allow one late under load
        assert r["ground_truth_known"] >= 2 and 0.0 <= r["agreement"] <= 1.0
        assert r["objects"] and r["non_test_objects"] == []
    assert by_policy["v1"]["kind"] == "grasp_point" and by_policy["v1"]["bundle"]
    assert "v1" in proc.stdout and "95% CI" in proc.stdout  # the table
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Independently of fleet.evaluation.evaluate: what each run's robots actually spooled.
    expected_kind = {"random": ("random", 0), "scripted": ("scripted", 0),
                     "v1": ("grasp_point", 1)}
    for name, (kind, version) in expected_kind.items():
        files = sorted((out / "runs" / name / "spool").glob("*/*.attempt"))
        records = [decode(unpack_frames(f.read_bytes(), str(f))) for f in files]
        assert len([a for a in records if a.label is not None]) >= 3, name
        for a in records:
            assert (a.policy_kind, a.policy_version) == (kind, version), name
        names = [o["name"] for a in records if a.ground_truth for o in a.ground_truth["objects"]]
        assert names and all(int(n.rsplit("/", 1)[1]) % 10 == 0 for n in names), names
