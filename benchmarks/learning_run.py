"""Prove it learns: a simulated fleet from an empty store, evaluated on objects it never saw.

The whole system runs as in `fleet sim` (data server, learner, N sim arms + robot_nodes, train
split, real processes, fleet.ops.sim_fleet.children()). At checkpoints (every K attempts stored or
every M minutes of collection) the newest published policy is measured with `fleet eval`'s
machinery (fleet.evaluation.evaluate.evaluate) on test-split objects, with no exploration; the random and
scripted baselines are measured once, before the fleet starts, the same way. The learning curve
(success on unseen objects against attempts stored and against hours) goes to
<data>/learning_curve.json and .png.

Evaluation pauses the fleet (SIGSTOP to every child's process group, SIGCONT after): on two cores
an eval running beside collection would slow both and blur the wall-clock axis. The curve's
`hours` is collection time (eval pauses subtracted); `wall_hours` includes them. The attempt in
flight when the fleet is paused may end aborted (its servo deadline passes): aborted attempts
are never trained on.

    .venv/bin/python benchmarks/learning_run.py --quick                    # smoke test, < 1 min
    .venv/bin/python benchmarks/learning_run.py --arms 2 --budget-minutes 30 --data runs/learn1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curve_report import headline, plot, source_commit, table  # noqa: E402
from fleet.policy.folder import read_pointer  # noqa: E402
from fleet.evaluation.evaluate import EvalConfig, evaluate  # noqa: E402
from fleet.ops.plan import CONFIG_DIR  # noqa: E402
from fleet.ops.sim_fleet import SimFleetConfig, children, robot_params  # noqa: E402
from fleet.ops.supervisor import Supervisor, SupervisorConfig  # noqa: E402

log = logging.getLogger("learning_run")
ARMS_YAML = CONFIG_DIR / "arms.yaml"


@dataclass
class RunConfig:
    """Every setting of a learning run; `quick()` is the smoke-test budget."""

    data_dir: Path = Path("runs/learning_run")
    arms: int = 2
    budget_attempts: int = 20000  # stop collecting after this many attempts stored ...
    budget_minutes: float = 120.0  # ... or this much collection time, whichever first
    checkpoint_attempts: int = 1000  # evaluate the newest policy every K attempts stored ...
    checkpoint_minutes: float = 10.0  # ... or every M minutes of collection
    eval_attempts: int = 40  # labelled test-split attempts per policy evaluated
    baseline_attempts: int = 40
    eval_arms: int = 2  # the fleet is paused while evaluating: eval may use every core
    eval_timeout_s: float = 300.0
    seed: int = 1  # eval scenes (sim arm i: seed+i); the fleet's arms use config/arms.yaml's
    ros_domain_id: int = 60  # the fleet's DDS domain
    eval_ros_domain_id: int = 61
    port: int = 5760  # data server on 127.0.0.1
    metrics_port: int = 5761  # its Prometheus /metrics: the attempts counter read here
    learner_min_attempts: int = 50
    learner_cycle_s: float = 120.0
    learner_cycle_steps: int = 400
    learner_method: str = "grasp_point"
    learner_samples_per_attempt: float = 32.0
    learner_ema_decay: float = 0.0  # learner --ema-decay (run 7: 0.995)
    learner_q_view: str = "gripper"  # learner --q-view for qtopt (qtopt runs 1-2: image)
    learner_workers: int = 1  # learner --workers (qtopt: Bellman updater processes)
    learner_step_cost: Optional[float] = None  # learner --step-cost (qtopt); None: its default
    exploration_policy: str = ""  # robot_node exploration_policy; "": config/robot_node.yaml's
    # other robot_node parameters for the fleet's arms (--robot-param NAME=VALUE, as fleet sim)
    robot_params: dict = field(default_factory=dict)
    # objects per tray, for the fleet and for evaluation: 5 (config/arms.yaml's) or 15, the
    # clutter benchmark (success = any object lifted, as the sim labels every attempt)
    num_objects: int = 5
    target_success: float = 0.8
    target_attempts: int = 20000
    target_hours: float = 2.0
    fresh: bool = False  # delete an existing data dir first

    @staticmethod
    def quick(**over) -> "RunConfig":
        base = dict(data_dir=Path("runs/learning_run_quick"), arms=1, budget_attempts=30,
                    budget_minutes=0.5, checkpoint_attempts=10**9, checkpoint_minutes=10**9,
                    eval_attempts=2, baseline_attempts=2, eval_arms=1, eval_timeout_s=20.0,
                    learner_min_attempts=5, learner_cycle_s=5.0, learner_cycle_steps=20,
                    fresh=True)
        base.update(over)
        return RunConfig(**base)


@dataclass
class Point:
    """One checkpoint of the learning curve."""

    attempts: int  # attempts the fleet had stored (acked by the server)
    hours: float  # collection time (eval pauses subtracted)
    wall_hours: float  # since the fleet started, eval pauses included
    version: int  # policy in service (0: none published yet: nothing to evaluate)
    trained_on_attempts: Optional[int]
    success: Optional[float]
    ci95: tuple[float, float]
    n: int
    eval_wall_s: float
    reused: bool = False  # same version as the previous point: its measurement repeated


@dataclass
class Clock:
    """Collection time = wall time minus the time the fleet was paused."""

    started: float = field(default_factory=time.monotonic)
    paused_s: float = 0.0

    def collect_s(self) -> float:
        return time.monotonic() - self.started - self.paused_s

    def wall_s(self) -> float:
        return time.monotonic() - self.started


# --------------------------------------------------------------------------- the fleet


def attempts_stored(metrics_port: int) -> Optional[int]:
    """Attempts the data server acked (durable), summed over robots; None if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(sum(s.value for fam in text_string_to_metric_families(text)
                   if fam.name == "fleet_attempts_acked" for s in fam.samples
                   if s.name == "fleet_attempts_acked_total"))


def signal_fleet(sup: Supervisor, sig: signal.Signals) -> None:
    """SIGSTOP/SIGCONT every child's process group (each child leads its own group)."""
    for name, pid in sup.running().items():
        if pid is None:
            continue
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            log.warning("%s (pid %d) is gone; the supervisor will restart it", name, pid)


def eval_config(cfg: RunConfig, out: Path, policies: list[Path], attempts: int,
                baselines: tuple[str, ...] = ()) -> EvalConfig:
    return EvalConfig(policies=policies, out=out, attempts=attempts, arms=cfg.eval_arms,
                      baselines=baselines, seed=cfg.seed, timeout_s=cfg.eval_timeout_s,
                      ros_domain_id=cfg.eval_ros_domain_id, num_objects=cfg.num_objects,
                      robot_params=cfg.robot_params)


def measure(cfg: RunConfig, out: Path, policies: list[Path], attempts: int,
            baselines: tuple[str, ...] = ()) -> list[dict]:
    report = evaluate(eval_config(cfg, out, policies, attempts, baselines), show_progress=False)
    return report["results"]


def checkpoint(cfg: RunConfig, sup: Supervisor, clock: Clock, attempts: int,
               points: list[Point]) -> Point:
    """Pause the fleet, evaluate the policy in service (if new), resume; return the point."""
    pointer = read_pointer(cfg.data_dir / "learner")
    version = int(pointer["version"]) if pointer else 0
    hours, wall_hours = clock.collect_s() / 3600, clock.wall_s() / 3600
    if version == 0:
        log.info("checkpoint at %d attempts: no policy published yet", attempts)
        return Point(attempts, hours, wall_hours, 0, None, None, (0.0, 1.0), 0, 0.0)
    last = points[-1] if points else None
    if last and last.version == version and last.success is not None:
        log.info("checkpoint at %d attempts: v%d again (measured at the previous point)",
                 attempts, version)
        return Point(attempts, hours, wall_hours, version, last.trained_on_attempts,
                     last.success, last.ci95, last.n, 0.0, reused=True)
    paused_at = time.monotonic()
    signal_fleet(sup, signal.SIGSTOP)
    try:
        bundle = cfg.data_dir / "learner" / "policies" / pointer["path"]
        r = measure(cfg, cfg.data_dir / "eval" / f"at-{attempts:06d}-v{version}", [bundle],
                    cfg.eval_attempts)[0]
    finally:
        signal_fleet(sup, signal.SIGCONT)
        clock.paused_s += time.monotonic() - paused_at
    point = Point(attempts, hours, wall_hours, version, r["trained_on_attempts"], r["rate"],
                  tuple(r["ci95"]), r["attempts"], r["wall_s"])
    rate = "n/a" if r["rate"] is None else "%.2f (%.2f-%.2f)" % (r["rate"], *r["ci95"])
    log.info("checkpoint at %d attempts, %.2f h: v%d success %s, n=%d", attempts, hours,
             version, rate, r["attempts"])
    return point


def fleet_plan(cfg: RunConfig) -> Path:
    """config/arms.yaml, or a copy in the run's data dir with the run's objects per tray (the
    copy is kept beside the curve, so the run says what it trained on)."""
    import yaml

    plan = yaml.safe_load(ARMS_YAML.read_text())
    if plan["arms"]["defaults"].get("num_objects") == cfg.num_objects:
        return ARMS_YAML
    plan["arms"]["defaults"]["num_objects"] = cfg.num_objects
    path = cfg.data_dir / "arms.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def collect(cfg: RunConfig) -> tuple[list[Point], Clock, dict[str, int]]:
    """Run the fleet for the budget, with a checkpoint every K attempts / M minutes and one
    at the end; returns the points, the clock and the supervisor's restart counts."""
    fleet = SimFleetConfig(arms=cfg.arms, config=fleet_plan(cfg),
                           data_dir=cfg.data_dir, ros_domain_id=cfg.ros_domain_id,
                           port=cfg.port, metrics_port=cfg.metrics_port,
                           learner_min_attempts=cfg.learner_min_attempts,
                           learner_cycle_s=cfg.learner_cycle_s,
                           learner_cycle_steps=cfg.learner_cycle_steps,
                           learner_method=cfg.learner_method,
                           learner_samples_per_attempt=cfg.learner_samples_per_attempt,
                           learner_ema_decay=cfg.learner_ema_decay,
                           learner_q_view=cfg.learner_q_view,
                           learner_workers=cfg.learner_workers,
                           learner_step_cost=cfg.learner_step_cost,
                           exploration_policy=cfg.exploration_policy or None,
                           robot_params=cfg.robot_params)
    sup = Supervisor(children(fleet), SupervisorConfig(log_dir=cfg.data_dir / "logs"))
    clock, points, attempts = Clock(), [], 0
    next_attempts, next_s = cfg.checkpoint_attempts, cfg.checkpoint_minutes * 60
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    sup.start()
    log.info("fleet: %d arm(s), data %s, logs %s", cfg.arms, cfg.data_dir, cfg.data_dir / "logs")
    try:
        while not stop["requested"]:
            sup.poll()
            attempts = attempts_stored(cfg.metrics_port) or attempts
            done = (attempts >= cfg.budget_attempts
                    or clock.collect_s() >= cfg.budget_minutes * 60)
            if done:
                break
            if attempts >= next_attempts or clock.collect_s() >= next_s:
                points.append(checkpoint(cfg, sup, clock, attempts, points))
                next_attempts = attempts + cfg.checkpoint_attempts
                next_s = clock.collect_s() + cfg.checkpoint_minutes * 60
            time.sleep(1.0)
        # the final point: the learner gets no more data, but what it published counts
        points.append(checkpoint(cfg, sup, clock, attempts, points))
    except KeyboardInterrupt:
        log.warning("interrupted: writing what was measured")
    finally:
        signal_fleet(sup, signal.SIGCONT)
        sup.stop()
    return points, clock, sup.restarts()


# --------------------------------------------------------------------------- evidence


def store_summary(store: Path) -> dict:
    """Attempts and success rate per policy kind / version in the training store (train split,
    exploration included): what the fleet itself experienced."""
    from fleet.store.reader import StoreReader

    try:
        reader = StoreReader(store)
    except FileNotFoundError:
        return {}
    t = reader.attempts().select(["policy_kind", "policy_version", "outcome"]).to_pylist()
    reader.close()
    out: dict[str, dict] = {}
    for row in t:
        key = f"{row['policy_kind']} v{row['policy_version']}"
        d = out.setdefault(key, {"attempts": 0, "success": 0, "failure": 0, "aborted": 0})
        d["attempts"] += 1
        d[row["outcome"]] = d.get(row["outcome"], 0) + 1
    for d in out.values():
        labelled = d["success"] + d["failure"]
        d["success_rate"] = round(d["success"] / labelled, 3) if labelled else None
    return dict(sorted(out.items()))


def publications(learner_dir: Path) -> list[dict]:
    """Every published version's metadata (val loss/AUC, attempts trained on)."""
    out = []
    for meta in sorted((learner_dir / "policies").glob("v*/policy.json"),
                       key=lambda p: int(p.parent.name[1:])):
        m = json.loads(meta.read_text())
        out.append({"version": m.get("version"), "trained_on_attempts":
                    m.get("trained_on_attempts"), "metrics": m.get("metrics", {})})
    return out


# --------------------------------------------------------------------------- output


def run(cfg: RunConfig) -> dict:
    commit = source_commit()
    if cfg.fresh and cfg.data_dir.exists():
        shutil.rmtree(cfg.data_dir)
    if (cfg.data_dir / "store").exists():
        raise SystemExit(f"{cfg.data_dir}/store exists: a learning run starts from an empty "
                         f"store; pass a new --data (or --fresh to delete it)")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.monotonic(), os.getloadavg()
    base = measure(cfg, cfg.data_dir / "eval" / "baselines", [], cfg.baseline_attempts,
                   ("random", "scripted"))
    baselines = {r["policy"]: {"success": r["rate"], "ci95": list(r["ci95"]), "n": r["attempts"],
                               "eval_wall_s": r["wall_s"]} for r in base}
    points, clock, restarts = collect(cfg)
    curve = {
        "format": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "target": {"success": cfg.target_success, "attempts": cfg.target_attempts,
                   "hours": cfg.target_hours},
        "baselines": baselines,
        "points": [asdict(p) for p in points],
        "collect_hours": round(clock.collect_s() / 3600, 4),
        "total_wall_s": round(time.monotonic() - t0, 1),
        "load_average": {"start": load0, "end": os.getloadavg()},
        "restarts": restarts,
        "store": store_summary(cfg.data_dir / "store"),
        "publications": publications(cfg.data_dir / "learner"),
    }
    (cfg.data_dir / "learning_curve.json").write_text(json.dumps(curve, indent=2))
    plot(curve, cfg.data_dir / "learning_curve.png")
    return curve


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budget, 1 arm, under a minute")
    d = RunConfig()
    for f in ("data_dir", "arms", "budget_attempts", "budget_minutes", "checkpoint_attempts",
              "checkpoint_minutes", "eval_attempts", "baseline_attempts", "eval_arms",
              "eval_timeout_s", "seed", "ros_domain_id", "eval_ros_domain_id", "port",
              "metrics_port", "learner_min_attempts", "learner_cycle_s", "learner_cycle_steps",
              "learner_method", "learner_samples_per_attempt", "learner_ema_decay",
              "learner_q_view", "learner_workers",
              "exploration_policy", "target_success", "num_objects"):
        flag = "--data" if f == "data_dir" else "--" + f.replace("_", "-")
        also = ("--method",) if f == "learner_method" else ()  # the name the issues use
        p.add_argument(flag, *also, dest=f, type=type(getattr(d, f)), default=None,
                       help=f"default {getattr(d, f)}")
    p.add_argument("--learner-step-cost", dest="learner_step_cost", type=float, default=None,
                   help="learner --step-cost for qtopt (default: the learner's, 0.05)")
    p.add_argument("--robot-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a robot_node parameter for the fleet's arms (repeatable; VALUE read as "
                        "YAML), e.g. cem_samples=128 (its evaluations run with them too)")
    p.add_argument("--fresh", action="store_true", help="delete the data dir first")
    args = p.parse_args(argv)
    over = {k: v for k, v in vars(args).items()
            if v is not None and k not in ("quick", "fresh", "robot_param")}
    over["robot_params"] = robot_params(args.robot_param)
    if args.fresh:
        over["fresh"] = True
    cfg = RunConfig.quick(**over) if args.quick else RunConfig(**over)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    curve = run(cfg)
    print(table(curve))
    if not any(p["success"] is not None for p in curve["points"]):
        print("no policy was published within the budget: the learner needs more attempts "
              "(or a shorter --learner-cycle-s) before anything can be evaluated")
    print(f"json: {cfg.data_dir / 'learning_curve.json'}  "
          f"png: {cfg.data_dir / 'learning_curve.png'}")
    print(headline(curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
