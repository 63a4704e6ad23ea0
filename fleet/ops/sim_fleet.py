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
    ray-arms.json    with --ray: where each arm runs, its restarts (arms keep their state on
                     their nodes: fleet/ops/ray_fleet.py, docs/scaling.md)

The processes are described in processes.py; with --ray the arms run as Ray actors
(ray_fleet.py) and only the central processes run here.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional

from fleet.registry import DEFAULT_METHOD, method_names, methods
from fleet.ops.plan import CONFIG_DIR
# SimFleetConfig, children, ros_env, ensure_keys: imported from here by benchmarks, fleet eval
from fleet.ops.processes import (SimFleetConfig, children, default_arm_count,  # noqa: F401
                                 ensure_keys, print_banner, robot_params, ros_env,
                                 stop_on_signals)
from fleet.ops.supervisor import Supervisor, SupervisorConfig

log = logging.getLogger("fleet.sim")


def run(cfg: SimFleetConfig) -> int:
    """Start the fleet and supervise it until Ctrl-C/SIGTERM (or duration_s)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    specs = children(cfg)
    sup = Supervisor(specs, SupervisorConfig(log_dir=cfg.data_dir / "logs"))
    stop_requested = stop_on_signals()
    sup.start()
    print_banner(cfg, f"fleet sim: {len(specs)} processes for {cfg.arms or default_arm_count()} "
                      f"arms (ROS_DOMAIN_ID={cfg.ros_domain_id})")
    started = time.monotonic()
    try:
        while not stop_requested():
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
    cfg = SimFleetConfig(arms=args.arms, config=args.config, data_dir=args.data,
                         ros_domain_id=args.ros_domain_id, duration_s=args.duration,
                         port=args.port, bind=args.bind, learner=args.learner,
                         learner_min_attempts=args.learner_min_attempts,
                         learner_cycle_s=args.learner_cycle_s,
                         learner_cycle_steps=args.learner_cycle_steps,
                         learner_method=args.learner_method,
                         learner_samples_per_attempt=args.learner_samples_per_attempt,
                         learner_ema_decay=args.learner_ema_decay,
                         learner_q_view=args.learner_q_view,
                         learner_workers=args.learner_workers,
                         learner_step_cost=args.learner_step_cost,
                         exploration_policy=args.exploration_policy,
                         robot_params=robot_params(args.robot_param),
                         metrics_port=args.metrics_port or None,
                         dashboard_port=args.dashboard_port or None)
    if args.ray is None:
        return run(cfg)
    from fleet.ops.ray_driver import run_on_ray
    from fleet.ops.ray_fleet import RayFleetConfig

    return run_on_ray(cfg, RayFleetConfig(address=args.ray, server_host=args.ray_server_host,
                                          arm_dir=args.ray_arm_dir,
                                          cpus_per_arm=args.ray_cpus_per_arm,
                                          learner_gpus=args.ray_learner_gpus))


def _gpus(text: str) -> Optional[float]:
    """--ray-learner-gpus: a non-negative number, or auto (None)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of GPUs (0, 1, 0.5) or auto")
    return value


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
    p.add_argument("--bind", default=None,
                   help="where the data server listens: HOST or HOST:PORT (default "
                        "127.0.0.1:PORT); beyond loopback for arms on other machines (--ray)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run each arm as a Ray actor on the cluster at ADDRESS (HOST:PORT of "
                        "`ray start --head`, or auto); server, learner and monitor stay here. "
                        "Needs the cluster extra: pip install -e '.[cluster]' (docs/scaling.md)")
    p.add_argument("--ray-server-host", default=None,
                   help="the address arms on Ray nodes dial the server at (default: the --bind "
                        "host, or this machine's Ray node IP when binding 0.0.0.0)")
    p.add_argument("--ray-arm-dir", type=Path, default=Path("/tmp/fleet-ray"),
                   help="on each Ray node, where an arm keeps its keys, spool, policy and logs "
                        "(storage every node mounts carries spools across node deaths)")
    p.add_argument("--ray-cpus-per-arm", type=float, default=1.0,
                   help="Ray CPUs each arm actor reserves (default 1: an arm keeps a core busy)")
    p.add_argument("--ray-learner-gpus", type=_gpus, default=None, metavar="N|auto",
                   help="run the learner as a Ray actor with N GPUs on a node that has them "
                        "(auto, the default: 1 when the cluster has a GPU; 0: here, beside the "
                        "server). It reads the store at --data's path there (docs/scaling.md)")
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
                   help="learning method, from the registry: " + "; ".join(
                       f"{name}: {method.description}" for name, method in sorted(
                           methods().items())))
    p.add_argument("--learner-samples-per-attempt", type=float, default=32.0,
                   help="learner replay ratio: training samples per labelled attempt stored, "
                        "beyond which it waits for the fleet (0: no cap)")
    p.add_argument("--exploration-policy", default=None,
                   help="the robots' exploration policy: random_descent, any_height_descent, "
                        "aimed_descent, random or package.module:Class (default: "
                        "config/robot_node.yaml's)")
    p.add_argument("--robot-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a robot_node parameter for every arm, over config/robot_node.yaml's "
                        "(repeatable; VALUE is read as YAML), e.g. exploration_share=0.3")
    p.add_argument("--learner-ema-decay", type=float, default=0.0,
                   help="learner --ema-decay: publish a moving average of the weights with this "
                        "decay per step (0: the latest weights)")
    p.add_argument("--learner-q-view", default="gripper",
                   help="learner --q-view: what a Q-learning method's network sees, the patch "
                        "where a step leads (gripper, default) or the whole image (image)")
    p.add_argument("--learner-workers", type=int, default=1,
                   help="learner --workers: data worker processes; with qtopt each computes "
                        "Bellman targets (the learner's dear part: 2 gives it more of the CPU "
                        "the arms share)")
    p.add_argument("--learner-step-cost", type=float, default=None,
                   help="learner --step-cost: a Q-learning method's reward of -cost per step "
                        "before the close (default: the learner's, 0.05)")
    p.add_argument("--dashboard-port", type=int, default=8080,
                   help="web dashboard port on 127.0.0.1 (0: no dashboard)")
    p.set_defaults(func=_cmd_sim)
