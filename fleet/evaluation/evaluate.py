"""`fleet eval`: success rate of grasp policies on objects never trained on, with 95% intervals.

Every policy is measured the same way, in the same run: K simulated arms holding test-split
objects only (folders whose number ends in 0, docs/sim.md) and K robot_nodes, started as real
processes from the process plan (fleet/ops/plan.py) exactly as `fleet sim` starts them, one policy
after the other. A policy bundle runs with exploration share 0; the baselines are robot_node's
own exploration policies run with no bundle at all ("random": random motions, "scripted": the
random top-down descent). Each robot_node spools its attempts into the eval directory and
uploads nothing; attempts are counted from those spool files, so what is measured is exactly
what the robots recorded.

Why processes rather than an in-process loop: `fleet` imports no ROS and no PyBullet (it must
run on a GPU box), and measuring through the real robot_node means the number includes
everything a deployed robot does (its servo timing, its workspace clipping, its label).
Each run restarts its arms with the same seeds, so every policy faces the same sequence of
scenes (paired comparison).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from fleet.policy.bundle import META_FILE, BundleError, load_bundle
from fleet.policy.geometry import camera_mismatch, camera_model
from fleet.ops.plan import (CONFIG_DIR, fleet_camera, fleet_depth, fleet_image_size, load_arms,
                            node_plan)
from fleet.policy.exploration import EXPLORATIONS
from fleet.policy.factory import policy_kind
from fleet.evaluation.counting import SpoolScanner, is_test_object, wilson_interval
from fleet.wire.records import Attempt
from fleet.ops.sim_fleet import ros_env
from fleet.ops.supervisor import ChildSpec, Supervisor, SupervisorConfig

log = logging.getLogger("fleet.eval")

#: A baseline is one of robot_node's exploration policies run with no bundle, named by the
#: policy_kind its attempts record ("random", "scripted", "aimed") -> (its
#: `exploration_policy` parameter, that kind).
BASELINES: dict[str, tuple[str, str]] = {e.kind: (e.name, e.kind)
                                         for e in EXPLORATIONS.values()}
REPORT_FORMAT = 1
#: A child restarted this often is not going to work: stop the run and say where its log is.
MAX_RESTARTS = 3


class EvalError(ValueError):
    """Bad `fleet eval` input (a bundle that does not load, a bad count); says what to do."""


@dataclass
class EvalConfig:
    """Everything `fleet eval` can be told; defaults are the documented ones."""

    policies: list[Path]  # bundle directories, or directories of versions (v<N>/)
    out: Path
    attempts: int = 50  # labelled (success/failure) attempts per policy
    arms: int = 1
    baselines: tuple[str, ...] = ("random", "scripted")
    image_size: Optional[int] = None  # None: config/arms.yaml's (the fleet's camera size)
    max_steps: Optional[int] = None  # None: robot_node's configured T
    num_objects: Optional[int] = None  # None: config/arms.yaml's
    seed: int = 1
    timeout_s: float = 600.0  # per policy: report what was collected when it runs out
    ros_domain_id: int = 78
    arms_config: Path = CONFIG_DIR / "arms.yaml"
    poll_s: float = 0.5
    # robot_node parameters for every run (fleet eval --robot-param), e.g. the cem_samples the
    # fleet ran with: a policy is its network and these (each run's own bundle, exploration
    # and share still win)
    robot_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.image_size is None:
            self.image_size = fleet_image_size(load_arms(self.arms_config, count=1, sim=True))
        if self.attempts < 1:
            raise EvalError(f"--attempts must be at least 1, got {self.attempts}")
        if self.arms < 1:
            raise EvalError(f"--arms must be at least 1, got {self.arms}")
        if not 0 <= self.ros_domain_id <= 232:
            raise EvalError(f"--ros-domain-id must be in 0..232, got {self.ros_domain_id}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise EvalError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
        if not self.policies and not self.baselines:
            raise EvalError("nothing to evaluate: give --policy and/or --baselines")


@dataclass
class PolicyRun:
    """One policy to measure: a baseline (no bundle) or one bundle version."""

    name: str
    kind: str  # the policy_kind its attempts must record
    exploration_policy: str = "random_descent"
    bundle: Optional[Path] = None
    version: int = 0
    trained_on_attempts: Optional[int] = None

    def robot_params(self) -> dict:
        if self.bundle is None:
            return {"bundle_path": "", "exploration_policy": self.exploration_policy,
                    "exploration_share": 1.0}
        return {"bundle_path": str(self.bundle), "exploration_share": 0.0}


@dataclass
class PolicyResult:
    """What one policy achieved; `rate` is None when no labelled attempt came in."""

    policy: str
    kind: str
    bundle: Optional[str]
    version: int
    trained_on_attempts: Optional[int]
    attempts: int
    successes: int
    rate: Optional[float]
    ci95: tuple[float, float]
    aborted: int
    ground_truth_known: int
    ground_truth_agree: int
    agreement: Optional[float]
    unexpected_kind: int  # attempts recorded by another policy (e.g. a bundle it refused)
    objects: list[str]
    non_test_objects: list[str]
    complete: bool  # reached the requested attempts
    stopped_by: str  # "attempts", "timeout", "interrupt" or "failing process"
    wall_s: float


# ------------------------------------------------------------------------------- counting


def summarise(run: PolicyRun, attempts: list[Attempt], wanted: int, stopped_by: str,
              wall_s: float, until: Optional[float] = None) -> PolicyResult:
    """The first `wanted` labelled attempts of this policy, in the order they finished; aborted
    attempts before the cut-off are reported, not counted (a timeout is no grasp failure);
    those after it are dropped, and so is every attempt that ended after `until` (unix s, when
    the run began stopping: the attempt that stopping aborts says nothing about the policy)."""
    if until is not None:
        attempts = [a for a in attempts if a.ended_at <= until]
    mine = [a for a in attempts if a.policy_kind == run.kind
            and (run.bundle is None or a.policy_version == run.version)]
    counted, aborted = [], 0
    for a in mine:
        if len(counted) == wanted:
            break
        if a.label is None:
            aborted += 1
        else:
            counted.append(a)
    successes = sum(1 for a in counted if a.label)
    truths = [a for a in counted if a.ground_truth and "any_lifted" in a.ground_truth]
    agree = sum(1 for a in truths if bool(a.ground_truth["any_lifted"]) == a.label)
    objects = sorted({o["name"] for a in counted if a.ground_truth
                      for o in a.ground_truth.get("objects", []) if "name" in o})
    n = len(counted)
    return PolicyResult(
        policy=run.name, kind=run.kind, bundle=str(run.bundle) if run.bundle else None,
        version=run.version, trained_on_attempts=run.trained_on_attempts, attempts=n,
        successes=successes, rate=successes / n if n else None,
        ci95=wilson_interval(successes, n), aborted=aborted,
        ground_truth_known=len(truths), ground_truth_agree=agree,
        agreement=agree / len(truths) if truths else None,
        unexpected_kind=len(attempts) - len(mine), objects=objects,
        non_test_objects=[o for o in objects if not is_test_object(o)],
        complete=n >= wanted, stopped_by=stopped_by, wall_s=round(wall_s, 2))


# ------------------------------------------------------------------------------- policies


def expand_policies(paths: list[Path], image_size: int,
                    camera: Optional[dict[str, Any]] = None,
                    depth: Optional[bool] = None) -> list[PolicyRun]:
    """Bundle paths -> one run per bundle; a directory of versions (v<N>/ holding policy.json,
    e.g. a learner's <out>/policies) gives one run per version, oldest first. Each bundle is
    loaded here once so a broken one fails before any process starts. `camera` (camera_eye,
    camera_target, camera_fov_deg of the arms it will run on): a bundle whose network samples
    through another camera model is refused (it would look at the wrong pixels); so is one that
    takes depth when the arms' cameras give none (`depth` False)."""
    runs = []
    for path in paths:
        path = Path(path).expanduser()
        if (path / META_FILE).is_file():
            dirs = [path]
        elif path.is_dir():
            dirs = [d for d in path.iterdir() if d.is_dir() and (d / META_FILE).is_file()]
            if not dirs:
                raise EvalError(f"--policy {path}: neither a bundle (no {META_FILE}) nor a "
                                f"directory of bundle versions; pass a bundle directory such "
                                f"as <learner out>/policies/v3, or the policies directory")
        else:
            raise EvalError(f"--policy {path}: no such bundle directory")
        found = []
        for d in dirs:
            try:
                _, meta = load_bundle(d, {"image_height": image_size, "image_width": image_size})
            except BundleError as exc:
                raise EvalError(f"--policy {d}: {exc}") from None
            if camera and (wrong := camera_mismatch(meta.config, camera)):
                raise EvalError(f"--policy {d}: trained for another camera ({wrong}); evaluate "
                                f"it with an arms file (--arms-config) giving that camera")
            if depth is False and "depth" in meta.input_spec:
                raise EvalError(f"--policy {d}: its network takes a depth image and the arms "
                                f"file gives depth: false; evaluate it on RGB-D arms")
            found.append((meta, d))
        for meta, d in sorted(found, key=lambda md: (md[0].version, str(md[1]))):
            runs.append(PolicyRun(name=f"v{meta.version}", kind=policy_kind(meta.architecture),
                                  bundle=d.resolve(),
                                  version=meta.version,
                                  trained_on_attempts=meta.trained_on_attempts))
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # two bundles with one version number: tell them apart
        if names.count(run.name) > 1:
            run.name = f"{run.name}:{run.bundle.name if run.bundle else i}"
    return runs


def baseline_runs(names: tuple[str, ...]) -> list[PolicyRun]:
    return [PolicyRun(name=n, kind=BASELINES[n][1], exploration_policy=BASELINES[n][0])
            for n in names]


def children(cfg: EvalConfig, run: PolicyRun, run_dir: Path) -> list[ChildSpec]:
    """The plan's processes for one run: test-split sim arms and robot_nodes spooling into
    run_dir/spool/<arm>, uploading nothing, with this run's policy."""
    arms = load_arms(cfg.arms_config, count=cfg.arms, sim=True)
    arms = [replace(a, split="test", image_size=cfg.image_size, seed=cfg.seed + i,
                    num_objects=cfg.num_objects or a.num_objects) for i, a in enumerate(arms)]
    robot = {"image_width": cfg.image_size, "image_height": cfg.image_size,
             "server_address": "", **cfg.robot_params, **run.robot_params()}
    if cfg.max_steps is not None:
        robot["max_steps"] = cfg.max_steps
    env = ros_env(cfg.ros_domain_id)
    index = {a.name: i for i, a in enumerate(arms)}
    specs = []
    for node in node_plan(arms, extra_robot_params=robot):
        if node.module == "robot_node.node":
            node.parameters["spool_dir"] = str(run_dir / "spool" / node.arm)
            # 0 would mean "from the OS": every run must draw the same policy randomness
            node.parameters["seed"] = cfg.seed * 1000 + index[node.arm] + 1
        specs.append(ChildSpec(name=node.label, argv=node.argv(), env=env))
    return specs


# ------------------------------------------------------------------------------- running


def run_policy(cfg: EvalConfig, run: PolicyRun, should_stop: Callable[[], bool],
               progress: Optional[Callable[[int], None]] = None) -> PolicyResult:
    """Start the arms for one policy, wait for `attempts` labelled attempts (or the timeout, or
    should_stop()), stop every process, and summarise what the spool holds."""
    run_dir = (cfg.out / "runs" / run.name.replace(":", "_")).resolve()
    if run_dir.exists() and any(run_dir.glob("spool/*/*.attempt")):
        raise EvalError(f"{run_dir} already holds attempts from an earlier eval; pass a new --out "
                        f"(or delete it) so runs are never mixed")
    sup = Supervisor(children(cfg, run, run_dir), SupervisorConfig(log_dir=run_dir / "logs"))
    scanner = SpoolScanner(run_dir / "spool")
    started = time.monotonic()
    stopped_by = "timeout"
    sup.start()
    log.info("%s: %d arm(s) started (ROS_DOMAIN_ID=%d, logs %s)", run.name, cfg.arms,
             cfg.ros_domain_id, run_dir / "logs")
    try:
        while time.monotonic() - started < cfg.timeout_s:
            if should_stop():
                stopped_by = "interrupt"
                break
            sup.poll()
            failing = [n for n, k in sup.restarts().items() if k >= MAX_RESTARTS]
            if failing:
                log.error("%s: %s keep crashing; see %s", run.name, failing, run_dir / "logs")
                stopped_by = "failing process"
                break
            result = summarise(run, scanner.scan(), cfg.attempts, stopped_by, 0.0)
            if progress:
                progress(result.attempts)
            if result.complete:
                stopped_by = "attempts"
                break
            time.sleep(cfg.poll_s)
    finally:
        stopping_at = time.time()
        sup.stop()
    result = summarise(run, scanner.scan(), cfg.attempts, stopped_by,
                       time.monotonic() - started, until=stopping_at)
    if result.unexpected_kind and not result.attempts:
        log.error("%s: every attempt was run by another policy than %r: robot_node refused the "
                  "bundle? see %s", run.name, run.kind, run_dir / "logs")
    if result.non_test_objects:
        log.error("%s: objects outside the test split were used: %s", run.name,
                  result.non_test_objects)
    return result


def evaluate(cfg: EvalConfig, should_stop: Callable[[], bool] = lambda: False,
             show_progress: bool = True) -> dict:
    """Measure every baseline and bundle; write <out>/eval.json and <out>/eval.png; return the
    report (the dict written to eval.json)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from fleet.evaluation.plot import plot_report

    cfg.validate()
    plan = load_arms(cfg.arms_config, count=1, sim=True)
    camera = camera_model(fleet_camera(plan))
    runs = baseline_runs(cfg.baselines) + expand_policies(cfg.policies, cfg.image_size, camera,
                                                          fleet_depth(plan))
    cfg.out.mkdir(parents=True, exist_ok=True)
    results: list[PolicyResult] = []
    for run in runs:
        if should_stop():
            break
        bar = tqdm(total=cfg.attempts, desc=f"eval {run.name}", unit="attempt",
                   disable=not show_progress)

        def progress(n: int, bar=bar) -> None:
            bar.update(min(n, cfg.attempts) - bar.n)

        try:
            with logging_redirect_tqdm():  # log lines print above the bar, not through it
                results.append(run_policy(cfg, run, should_stop, progress))
        finally:
            bar.close()
    report = {
        "format": REPORT_FORMAT,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "split": "test",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                   if k not in ("policies", "poll_s")},
        "interrupted": should_stop(),
        "results": [asdict(r) for r in results],
    }
    report["config"]["policies"] = [str(p) for p in cfg.policies]
    _write_json(cfg.out / "eval.json", report)
    plot_report(report, cfg.out / "eval.png")
    return report


def _write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
