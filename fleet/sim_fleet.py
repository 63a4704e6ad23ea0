"""`fleet sim`: a whole simulated fleet on this machine, as real separate processes.

Per arm a sim_bridge arm and a robot_node, started from the plan (fleet/plan.py) the way
`ros2 launch` starts nodes; DDS is kept on loopback with the project's Fast DDS profile and the
fleet's own ROS_DOMAIN_ID. Crashed children are restarted and logged; Ctrl-C stops everything.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fleet.plan import CONFIG_DIR, load_arms, node_plan
from fleet.supervisor import ChildSpec, Supervisor, SupervisorConfig

log = logging.getLogger("fleet.sim")


@dataclass
class SimFleetConfig:
    arms: Optional[int] = None  # None: as many as the machine has cores
    config: Path = CONFIG_DIR / "arms.yaml"
    data_dir: Path = Path("runs/sim")
    ros_domain_id: int = 77
    duration_s: Optional[float] = None  # stop by itself after this long (tests, demos)


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


def children(cfg: SimFleetConfig) -> list[ChildSpec]:
    arms = load_arms(cfg.config, count=cfg.arms or default_arm_count(), sim=True)
    env = ros_env(cfg.ros_domain_id)
    spool_root = cfg.data_dir.resolve() / "spool"
    nodes = node_plan(arms)
    out = []
    for node in nodes:
        if node.module == "robot_node.node":
            node.parameters.setdefault("spool_dir", str(spool_root / node.arm))
        out.append(ChildSpec(name=node.label, argv=node.argv(), env=env))
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
    print(f"  data: {cfg.data_dir.resolve()}")
    print(f"  logs: {(cfg.data_dir / 'logs').resolve()}")
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
