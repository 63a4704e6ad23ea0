"""`fleet sim`: a whole simulated fleet on this machine, as real separate processes.

The data server, the learner, and per arm a sim_bridge arm and a robot_node, started from the
plan (fleet/ops/plan.py) the way `ros2 launch` starts nodes. Keys are made on the first run (the
server's pair and one per arm); DDS is kept on loopback with the project's Fast DDS profile and
the fleet's own ROS_DOMAIN_ID; ZeroMQ binds 127.0.0.1. Crashed children are restarted and
logged; Ctrl-C stops everything.

Layout of the data directory:

    keys/            server and robot CURVE keys (fleet keys)
    store/           the episode store (docs/store.md)
    learner/         checkpoint, policies/v<N>/ + latest.json, tensorboard/
    robots/<arm>/    spool/ (attempts not yet acked), policy/ (bundles the server pushed)
    logs/            one log per process
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fleet.registry import DEFAULT_METHOD, method_names
from fleet.ops.plan import (CONFIG_DIR, camera_flags, fleet_camera, fleet_depth, fleet_image_size,
                            load_arms, node_plan)
from fleet.ops.supervisor import ChildSpec, Supervisor, SupervisorConfig

log = logging.getLogger("fleet.sim")


@dataclass
class SimFleetConfig:
    arms: Optional[int] = None  # None: as many as the machine has cores
    config: Path = CONFIG_DIR / "arms.yaml"
    data_dir: Path = Path("runs/sim")
    ros_domain_id: int = 77
    duration_s: Optional[float] = None  # stop by itself after this long (tests, demos)
    port: int = 5555  # data server port on 127.0.0.1
    metrics_port: Optional[int] = 9100  # data server's Prometheus /metrics
    learner: bool = True  # also train and publish policies
    dashboard_port: Optional[int] = 8080  # `fleet monitor` web dashboard; None: no monitor
    learner_min_attempts: int = 50  # labelled attempts before the first training step
    learner_cycle_s: float = 120.0  # validate / checkpoint / maybe publish this often
    learner_cycle_steps: int = 400  # ... or after this many training steps
    learner_method: str = DEFAULT_METHOD  # fleet learn --method (fleet/methods)
    learner_samples_per_attempt: float = 32.0  # fleet.learner --samples-per-attempt (0: no cap)
    learner_ema_decay: float = 0.0  # fleet.learner --ema-decay (0: publish the latest weights)
    # robot_node exploration_policy (e.g. aimed_descent); None: config/robot_node.yaml's
    exploration_policy: Optional[str] = None


def default_arm_count() -> int:
    """One arm per core: each simulated arm (physics + its robot_node) keeps about one core
    busy while it collects."""
    return max(1, os.cpu_count() or 1)


def ros_env(domain_id: int) -> dict[str, str]:
    """DDS confined to loopback and to this fleet's domain."""
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(CONFIG_DIR / "fastdds-loopback.xml"),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "PYTHONUNBUFFERED": "1",
    }


def ensure_keys(key_dir: Path, arms: list[str]) -> None:
    """The server's key pair and one per arm, created on the first run only."""
    from fleet.server.keys import create_robot_key, ensure_server_keys

    ensure_server_keys(key_dir)
    for arm in arms:
        if not (key_dir / "robots" / f"{arm}.key").exists():
            create_robot_key(key_dir, arm)


def children(cfg: SimFleetConfig) -> list[ChildSpec]:
    """Every process of the fleet: server, learner, then the nodes of each arm."""
    arms = load_arms(cfg.config, count=cfg.arms or default_arm_count(), sim=True)
    data = cfg.data_dir.resolve()
    keys, store, learner = data / "keys", data / "store", data / "learner"
    policies = learner / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    ensure_keys(keys, [a.name for a in arms] + (["monitor"] if cfg.dashboard_port else []))
    python = sys.executable
    server = [python, "-m", "fleet.cli", "serve", "--data", str(store), "--keys", str(keys),
              "--bind", f"tcp://127.0.0.1:{cfg.port}", "--policies", str(policies)]
    if cfg.metrics_port:
        server += ["--metrics-port", str(cfg.metrics_port)]
    out = [ChildSpec(name="server", argv=server, env={"PYTHONUNBUFFERED": "1"})]
    if cfg.learner:
        out.append(ChildSpec(name="learner", env={"PYTHONUNBUFFERED": "1"}, argv=[
            python, "-m", "fleet.learner", "--data", str(store), "--out", str(learner),
            "--min-attempts", str(cfg.learner_min_attempts),
            "--image-size", str(fleet_image_size(arms)), *camera_flags(fleet_camera(arms)),
            "--depth" if fleet_depth(arms) else "--no-depth",
            "--cycle-every-seconds", str(cfg.learner_cycle_s),
            "--cycle-every-steps", str(cfg.learner_cycle_steps),
            "--method", cfg.learner_method,
            "--samples-per-attempt", str(cfg.learner_samples_per_attempt),
            "--ema-decay", str(cfg.learner_ema_decay), "--no-progress"]))
    if cfg.dashboard_port:
        out.append(ChildSpec(name="monitor", env={"PYTHONUNBUFFERED": "1"}, argv=[
            python, "-m", "fleet.cli", "monitor", "--server", f"tcp://127.0.0.1:{cfg.port}",
            "--keys", str(keys), "--key-name", "monitor", "--port", str(cfg.dashboard_port),
            "--learner-dir", str(learner)]))
    env = ros_env(cfg.ros_domain_id)
    for node in node_plan(arms):
        if node.module == "robot_node.node":
            robot = data / "robots" / node.arm
            node.parameters.update({
                "spool_dir": str(robot / "spool"),
                "bundle_path": str(robot / "policy"),
                "server_address": f"tcp://127.0.0.1:{cfg.port}",
                "server_public_key": str(keys / "server.key"),
                "robot_secret_key": str(keys / "secrets" / f"{node.arm}.key_secret"),
            })
            if cfg.exploration_policy:
                node.parameters["exploration_policy"] = cfg.exploration_policy
        out.append(ChildSpec(name=node.label, argv=node.argv(python), env=env))
    return out


def run(cfg: SimFleetConfig) -> int:
    """Start the fleet and supervise it until Ctrl-C/SIGTERM (or duration_s)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    specs = children(cfg)
    sup = Supervisor(specs, SupervisorConfig(log_dir=cfg.data_dir / "logs"))
    stop = {"requested": False}

    def _request_stop(signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    sup.start()
    print(f"fleet sim: {len(specs)} processes for {cfg.arms or default_arm_count()} arms "
          f"(ROS_DOMAIN_ID={cfg.ros_domain_id})")
    data = cfg.data_dir.resolve()
    if cfg.dashboard_port:
        print(f"  dashboard:   http://127.0.0.1:{cfg.dashboard_port}/   "
              f"(or: fleet status --watch --keys {data / 'keys'} "
              f"--server tcp://127.0.0.1:{cfg.port})")
    print(f"  data server: tcp://127.0.0.1:{cfg.port}   store: {data / 'store'}")
    if cfg.metrics_port:
        print(f"  metrics:     http://127.0.0.1:{cfg.metrics_port}/metrics")
    if cfg.learner:
        print(f"  learner:     {data / 'learner'}   "
              f"(tensorboard --logdir {data / 'learner' / 'tensorboard'})")
    print(f"  logs:        {data / 'logs'}")
    print("  Ctrl-C stops everything.")
    started = time.monotonic()
    try:
        while not stop["requested"]:
            if cfg.duration_s is not None and time.monotonic() - started > cfg.duration_s:
                break
            sup.poll()
            time.sleep(0.2)
    finally:
        log.info("stopping the fleet")
        sup.stop()
    print("fleet sim: stopped; restarts:", sup.restarts())
    return 0


def _cmd_sim(args) -> int:
    return run(SimFleetConfig(arms=args.arms, config=args.config, data_dir=args.data,
                              ros_domain_id=args.ros_domain_id, duration_s=args.duration,
                              port=args.port, learner=args.learner,
                              learner_min_attempts=args.learner_min_attempts,
                              learner_cycle_s=args.learner_cycle_s,
                              learner_cycle_steps=args.learner_cycle_steps,
                              learner_method=args.learner_method,
                              learner_samples_per_attempt=args.learner_samples_per_attempt,
                              learner_ema_decay=args.learner_ema_decay,
                              exploration_policy=args.exploration_policy,
                              metrics_port=args.metrics_port or None,
                              dashboard_port=args.dashboard_port or None))


def add_sim(sub) -> None:
    """`fleet sim`: registered by fleet/cli.py."""
    p = sub.add_parser("sim", help="run a whole simulated fleet on this machine")
    p.add_argument("--arms", type=int, default=None,
                   help=f"number of simulated arms (default: one per core, {default_arm_count()})")
    p.add_argument("--config", type=Path, default=CONFIG_DIR / "arms.yaml", help="arms plan")
    p.add_argument("--data", type=Path, default=Path("runs/sim"),
                   help="data directory: store, keys, policies, spools, logs")
    p.add_argument("--ros-domain-id", type=int, default=77,
                   help="ROS_DOMAIN_ID of the fleet's DDS traffic (loopback only)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop by itself after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--port", type=int, default=5555, help="data server port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=9100,
                   help="data server's Prometheus /metrics port on 127.0.0.1 (0: none)")
    p.add_argument("--learner", action=argparse.BooleanOptionalAction, default=True,
                   help="train and publish policies beside the fleet")
    p.add_argument("--learner-min-attempts", type=int, default=50,
                   help="labelled attempts stored before the learner's first step")
    p.add_argument("--learner-cycle-s", type=float, default=120.0,
                   help="how often the learner validates and maybe publishes, s")
    p.add_argument("--learner-cycle-steps", type=int, default=400,
                   help="... or after this many training steps, whichever comes first")
    p.add_argument("--learner-method", choices=method_names(), default=DEFAULT_METHOD,
                   help="learning method: grasp_point (where to close, from I_0) or levine "
                        "(Levine et al. 2016 servoing network)")
    p.add_argument("--learner-samples-per-attempt", type=float, default=32.0,
                   help="learner replay ratio: training samples per labelled attempt stored, "
                        "beyond which it waits for the fleet (0: no cap)")
    p.add_argument("--exploration-policy", default=None,
                   help="the robots' exploration policy: random_descent, aimed_descent, random "
                        "or package.module:Class (default: config/robot_node.yaml's)")
    p.add_argument("--learner-ema-decay", type=float, default=0.0,
                   help="learner --ema-decay: publish a moving average of the weights with this "
                        "decay per step (0: the latest weights)")
    p.add_argument("--dashboard-port", type=int, default=8080,
                   help="web dashboard port on 127.0.0.1 (0: no dashboard)")
    p.set_defaults(func=_cmd_sim)
