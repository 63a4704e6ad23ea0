"""The fleet's processes, described once: the central ones (data server, learner, monitor) and
each arm's (a sim arm and its robot_node, from the plan), with the environment that keeps DDS
on loopback and the CURVE keys they use.

Why a module of its own: `fleet sim` starts them all on this machine (sim_fleet.py), and
`fleet sim --ray` (ray_fleet.py) starts the central ones here and each arm's on a Ray node; both
must build the very same command lines, so both take them from here.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from fleet.registry import DEFAULT_METHOD
from fleet.ops.plan import (CONFIG_DIR, ArmSpec, camera_flags, fleet_camera, fleet_depth,
                            fleet_image_size, load_arms, node_plan)
from fleet.ops.supervisor import ChildSpec

log = logging.getLogger("fleet.sim")


@dataclass
class SimFleetConfig:
    arms: Optional[int] = None  # None: as many as the machine has cores
    config: Path = CONFIG_DIR / "arms.yaml"
    data_dir: Path = Path("runs/sim")
    ros_domain_id: int = 77
    duration_s: Optional[float] = None  # stop by itself after this long (tests, demos)
    port: int = 5555  # data server port on 127.0.0.1
    # where the data server binds (HOST, HOST:PORT or an endpoint); None: 127.0.0.1:<port>.
    # Beyond loopback only for arms on other machines (`fleet sim --ray`, docs/scaling.md).
    bind: Optional[str] = None
    metrics_port: Optional[int] = 9100  # data server's Prometheus /metrics
    learner: bool = True  # also train and publish policies
    dashboard_port: Optional[int] = 8080  # `fleet monitor` web dashboard; None: no monitor
    learner_min_attempts: int = 50  # labelled attempts before the first training step
    learner_cycle_s: float = 120.0  # validate / checkpoint / maybe publish this often
    learner_cycle_steps: int = 400  # ... or after this many training steps
    learner_method: str = DEFAULT_METHOD  # fleet learn --method (fleet/methods)
    learner_samples_per_attempt: float = 32.0  # fleet.learner --samples-per-attempt (0: no cap)
    learner_ema_decay: float = 0.0  # fleet.learner --ema-decay (0: publish the latest weights)
    learner_q_view: str = "gripper"  # fleet.learner --q-view (a Q-learning method's network)
    # fleet.learner --workers: data worker processes (qtopt: each one a Bellman updater)
    learner_workers: int = 1
    # fleet.learner --step-cost (a Q-learning method's reward per step before the close);
    # None: the learner's own default
    learner_step_cost: Optional[float] = None
    # robot_node exploration_policy (e.g. aimed_descent); None: config/robot_node.yaml's
    exploration_policy: Optional[str] = None
    # any other robot_node parameters, over config/robot_node.yaml's (fleet sim --robot-param)
    robot_params: dict[str, Any] = field(default_factory=dict)


def robot_params(pairs: list[str]) -> dict[str, Any]:
    """`NAME=VALUE` strings (fleet sim --robot-param) -> robot_node parameters; each VALUE is
    read as YAML, as a params file would read it (0.8 a float, true a bool, [1, 2] a list)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--robot-param {pair!r}: expected NAME=VALUE, e.g. "
                             f"exploration_share=0.3")
        out[name.strip()] = yaml.safe_load(text)
    return out


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


@dataclass
class ArmFiles:
    """Where one arm's robot_node keeps its state and finds its keys: on this machine for
    `fleet sim`, in a node-local directory for an arm on a Ray node (fleet/ops/ray_fleet.py)."""

    spool: Path  # attempts not yet acked
    policy: Path  # bundles the server pushed
    server_public_key: Path
    robot_secret_key: Path


def arm_children(arms: list[ArmSpec], files: Callable[[str], ArmFiles], server_address: str,
                 env: dict[str, str], exploration_policy: Optional[str] = None,
                 extra_robot_params: Optional[dict[str, Any]] = None,
                 python: Optional[str] = None) -> list[ChildSpec]:
    """The processes of these arms (a sim arm and a robot_node each), from the plan.

    One function for both `fleet sim` and a Ray arm actor, so that an arm on a cluster node runs
    exactly the command lines and parameter files an arm on this machine does."""
    out = []
    for node in node_plan(arms, extra_robot_params=extra_robot_params):
        if node.module == "robot_node.node":
            where = files(node.arm)
            node.parameters.update({
                "spool_dir": str(where.spool),
                "bundle_path": str(where.policy),
                "server_address": server_address,
                "server_public_key": str(where.server_public_key),
                "robot_secret_key": str(where.robot_secret_key),
            })
            if exploration_policy:
                node.parameters["exploration_policy"] = exploration_policy
        out.append(ChildSpec(name=node.label, argv=node.argv(python or sys.executable), env=env))
    return out


def server_endpoints(cfg: SimFleetConfig) -> tuple[str, str]:
    """(where the server binds, where processes on this machine connect to it)."""
    from fleet.server.binding import connect_host, endpoint_host, normalize_endpoint

    bind = normalize_endpoint(cfg.bind or f"127.0.0.1:{cfg.port}", default_port=cfg.port)
    host = endpoint_host(bind) or "127.0.0.1"
    return bind, bind.replace(f"//{host}:", f"//{connect_host(host)}:", 1)


def central_children(cfg: SimFleetConfig, arms: list[ArmSpec]) -> list[ChildSpec]:
    """The fleet's central processes: data server, learner and monitor (keys made if missing)."""
    data = cfg.data_dir.resolve()
    keys, store, learner = data / "keys", data / "store", data / "learner"
    policies = learner / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    ensure_keys(keys, [a.name for a in arms] + (["monitor"] if cfg.dashboard_port else []))
    python = sys.executable
    bind, local = server_endpoints(cfg)
    server = [python, "-m", "fleet.cli", "serve", "--data", str(store), "--keys", str(keys),
              "--bind", bind, "--policies", str(policies)]
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
            "--ema-decay", str(cfg.learner_ema_decay), "--q-view", cfg.learner_q_view,
            "--workers", str(cfg.learner_workers), "--no-progress",
            *(() if cfg.learner_step_cost is None
              else ("--step-cost", str(cfg.learner_step_cost)))]))
    if cfg.dashboard_port:
        out.append(ChildSpec(name="monitor", env={"PYTHONUNBUFFERED": "1"}, argv=[
            python, "-m", "fleet.cli", "monitor", "--server", local,
            "--keys", str(keys), "--key-name", "monitor", "--port", str(cfg.dashboard_port),
            "--learner-dir", str(learner)]))
    return out


def fleet_arms(cfg: SimFleetConfig) -> list[ArmSpec]:
    return load_arms(cfg.config, count=cfg.arms or default_arm_count(), sim=True)


def children(cfg: SimFleetConfig) -> list[ChildSpec]:
    """Every process of the fleet on this machine: server, learner, then the nodes of each arm."""
    arms = fleet_arms(cfg)
    data = cfg.data_dir.resolve()
    keys = data / "keys"
    out = central_children(cfg, arms)

    def files(arm: str) -> ArmFiles:
        robot = data / "robots" / arm
        return ArmFiles(spool=robot / "spool", policy=robot / "policy",
                        server_public_key=keys / "server.key",
                        robot_secret_key=keys / "secrets" / f"{arm}.key_secret")

    return out + arm_children(arms, files, server_endpoints(cfg)[1], ros_env(cfg.ros_domain_id),
                              cfg.exploration_policy, extra_robot_params=cfg.robot_params)


def stop_on_signals() -> Callable[[], bool]:
    """Turn SIGINT/SIGTERM into a flag the supervising loop polls (it then stops children)."""
    stop = {"requested": False}

    def _request_stop(signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    return lambda: stop["requested"]


def print_banner(cfg: SimFleetConfig, headline: str) -> None:
    """Where to look: dashboard, server, metrics, learner, logs."""
    print(headline)
    data = cfg.data_dir.resolve()
    bind, local = server_endpoints(cfg)
    if cfg.dashboard_port:
        print(f"  dashboard:   http://127.0.0.1:{cfg.dashboard_port}/   "
              f"(or: fleet status --watch --keys {data / 'keys'} --server {local})")
    print(f"  data server: {bind}   store: {data / 'store'}")
    if cfg.metrics_port:
        print(f"  metrics:     http://127.0.0.1:{cfg.metrics_port}/metrics")
    if cfg.learner:
        print(f"  learner:     {data / 'learner'}   "
              f"(tensorboard --logdir {data / 'learner' / 'tensorboard'})")
    print(f"  logs:        {data / 'logs'}")
    print("  Ctrl-C stops everything.", flush=True)
