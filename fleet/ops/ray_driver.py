"""The driver of `fleet sim --ray`: the central processes here, one ArmActor per arm on the
cluster, and a watch over where each arm runs.

Why it is apart from the actor (ray_fleet.py): the actor is what runs on every node and must
stay small and obvious; this side places the arms, polls them (one status call in flight per
arm, never blocking the loop that also supervises the server), logs starts and restarts with the
node, writes <data>/ray-arms.json, and stops everything cleanly on Ctrl-C.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleet.ops.plan import ArmSpec, load_arms
from fleet.ops.processes import (SimFleetConfig, central_children, default_arm_count,
                                 print_banner, server_endpoints, stop_on_signals)
from fleet.ops.ray_fleet import (PLACEMENTS_FILE, ArmActor, ArmJob, LearnerActor,
                                 RayFleetConfig, arm_domain_id, run_name)
from fleet.ops.supervisor import Supervisor, SupervisorConfig

log = logging.getLogger("fleet.ray")


@dataclass
class _Watch:
    """The driver's view of one arm actor."""

    actor: Any
    last: Optional[dict[str, Any]] = None
    pending: Any = None
    sent_at: float = -1e9
    restarts: int = 0
    lost: bool = False
    history: list[str] = field(default_factory=list)  # hosts it ran on, in order


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise OSError(f"fleet sim --ray needs Ray ({exc}): install the cluster extra, "
                      f"pip install -e '.[cluster]' (docs/scaling.md)") from None
    return ray


def check_head(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, saying what to run, when nothing listens at a HOST:PORT head address
    (ray.init itself retries for minutes, printing only gRPC time-outs)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise OSError(f"no Ray head answers at {address} ({exc}): start one there with "
                      f"`ray start --head --port {port}` (docs/scaling.md)") from None


def _arms_server_address(ray, cfg: SimFleetConfig, rc: RayFleetConfig) -> str:
    """Where arms on Ray nodes dial the data server."""
    from fleet.server.binding import ANY_HOSTS, endpoint_host, is_loopback

    bind, _ = server_endpoints(cfg)
    host = endpoint_host(bind) or "127.0.0.1"
    port = bind.rsplit(":", 1)[1]
    dial = rc.server_host or (ray.util.get_node_ip_address() if host in ANY_HOSTS else host)
    here = ray.util.get_node_ip_address()
    elsewhere = sorted({n["NodeManagerAddress"] for n in ray.nodes()
                        if n["Alive"] and n["NodeManagerAddress"] != here})
    if is_loopback(dial) and elsewhere:
        log.warning("arms dial the server at %s, but nodes %s are other machines: start with "
                    "--bind 0.0.0.0:%s (docs/scaling.md)", dial, elsewhere, port)
    return f"tcp://{dial}:{port}"


def _alive_nodes(ray) -> list[dict[str, Any]]:
    """Alive nodes with CPUs, the head first (placement is round-robin over this list)."""
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    return sorted(nodes, key=lambda n: ("node:__internal_head__" not in n["Resources"],
                                        n["NodeID"]))


def start_arms(ray, cfg: SimFleetConfig, rc: RayFleetConfig,
               arms: list[ArmSpec]) -> dict[str, _Watch]:
    """One actor per arm, spread round-robin over the nodes (soft affinity: when that node is
    gone Ray places the restarted actor wherever the resources are)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    keys = cfg.data_dir.resolve() / "keys"
    server_address = _arms_server_address(ray, cfg, rc)
    nodes = _alive_nodes(ray)
    remote = ray.remote(ArmActor)
    watches = {}
    for i, arm in enumerate(arms):
        job = ArmJob(arm=arm, index=i, run=run_name(cfg.data_dir),
                     ros_domain_id=arm_domain_id(cfg.ros_domain_id, i),
                     server_address=server_address,
                     server_public_key=(keys / "server.key").read_bytes(),
                     robot_secret_key=(keys / "secrets" / f"{arm.name}.key_secret").read_bytes(),
                     arm_dir=str(rc.arm_dir), exploration_policy=cfg.exploration_policy)
        node = nodes[i % len(nodes)]
        actor = remote.options(
            max_restarts=-1, max_task_retries=0, num_cpus=rc.cpus_per_arm,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True),
        ).remote(job)
        watches[arm.name] = _Watch(actor=actor)
        log.info("%s: actor placed on node %s (%s), dialing %s", arm.name, node["NodeID"][:12],
                 node["NodeManagerAddress"], server_address)
    return watches


def _seen(name: str, watch: _Watch, status: dict[str, Any]) -> bool:
    """Take a status; log a start or a restart (and where). True if the placement changed."""
    prev, watch.last, watch.lost = watch.last, status, False
    if prev is not None and (prev["pid"], prev["node_id"]) == (status["pid"], status["node_id"]):
        return False
    watch.history.append(status["host"])
    if prev is None:
        extra = (f", ROS_DOMAIN_ID {status['ros_domain_id']}" if "ros_domain_id" in status
                 else f", GPUs {status.get('gpu_ids') or 'none'}")
        log.info("%s up on node %s (pid %d%s)", name, status["host"], status["pid"], extra)
        return True
    watch.restarts += 1
    spool = ""
    if "spool_dir" in status:
        spool = (f": its spool there held {prev['spool_attempts']} attempt(s) not yet acked at "
                 f"the last report; the spool here holds {status['spool_at_start']} at start "
                 f"({status['spool_dir']})")
    log.warning("%s restarted (#%d) on node %s, was on %s%s", name, watch.restarts,
                status["host"], prev["host"], spool)
    return True


def poll_arms(ray, watches: dict[str, _Watch], rc: RayFleetConfig) -> bool:
    """Ask each arm for its status (one call in flight per arm); True if a placement changed."""
    now, changed = time.monotonic(), False
    for name, w in watches.items():
        if w.pending is not None and now - w.sent_at > rc.status_timeout_s:
            w.pending = None  # stuck on a dead node: ask the (restarted) actor again
        if w.pending is None and now - w.sent_at >= rc.status_every_s:
            w.pending, w.sent_at = w.actor.status.remote(), now
    pending = {w.pending: (name, w) for name, w in watches.items() if w.pending is not None}
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in ready:
        name, w = pending[ref]
        w.pending = None
        try:
            changed |= _seen(name, w, ray.get(ref))
        except ray.exceptions.RayError as exc:
            if not w.lost:
                where = w.last["host"] if w.last else "its node"
                log.warning("%s: actor on %s unreachable (%s); Ray restarts it", name, where,
                            type(exc).__name__)
            w.lost = True
    return changed


def write_placements(path: Path, watches: dict[str, _Watch]) -> None:
    """<data>/ray-arms.json: where each arm runs now, how often it was restarted, where before."""
    out = {name: {**(w.last or {}), "restarts": w.restarts, "hosts": w.history}
           for name, w in watches.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_on_ray(cfg: SimFleetConfig, rc: RayFleetConfig) -> int:
    """`fleet sim --ray`: central processes here, arms as actors; until Ctrl-C or duration_s."""
    ray = _import_ray()
    check_head(rc.address)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    ray.init(address=rc.address, logging_level=logging.WARNING)
    sup: Optional[Supervisor] = None
    watches: dict[str, _Watch] = {}
    try:
        count = cfg.arms or max(1, int(ray.cluster_resources().get("CPU", default_arm_count())
                                       // rc.cpus_per_arm))
        arms = load_arms(cfg.config, count=count, sim=True)
        cpus = ray.cluster_resources().get("CPU", 0)
        if len(arms) * rc.cpus_per_arm > cpus:
            log.warning("%d arms x %g CPUs exceed the cluster's %g CPUs: the arms beyond wait "
                        "for a node to join (ray start --address ...)", len(arms),
                        rc.cpus_per_arm, cpus)
        central = central_children(cfg, arms)
        learner = next((c for c in central if c.name == "learner"), None)
        gpus = learner_gpus(ray, rc) if learner is not None else 0.0
        if gpus > 0:
            central.remove(learner)
        sup = Supervisor(central, SupervisorConfig(log_dir=cfg.data_dir / "logs"))
        stop_requested = stop_on_signals()
        sup.start()
        watches = start_arms(ray, cfg, rc, arms)
        if gpus > 0:
            watches["learner"] = start_learner(ray, learner, gpus, rc,
                                               cfg.data_dir.resolve() / "logs")
        nodes = ", ".join(f"{n['NodeManagerAddress']}/{n['NodeID'][:12]}"
                          for n in _alive_nodes(ray))
        print_banner(cfg, f"fleet sim: {len(arms)} arms as Ray actors on {nodes} "
                          f"(ROS_DOMAIN_ID {cfg.ros_domain_id} + arm index, one per arm)")
        placements = cfg.data_dir / PLACEMENTS_FILE
        started = time.monotonic()
        while not stop_requested():
            if cfg.duration_s is not None and time.monotonic() - started > cfg.duration_s:
                break
            sup.poll()
            if poll_arms(ray, watches, rc):
                write_placements(placements, watches)
            time.sleep(0.2)
    finally:
        log.info("stopping the fleet")
        _stop_arms(ray, watches, rc)
        if watches:
            write_placements(cfg.data_dir / PLACEMENTS_FILE, watches)
        if sup is not None:
            sup.stop()
        ray.shutdown()
    print("fleet sim: stopped; restarts:", sup.restarts() if sup else {},
          "; arm restarts (Ray):", {n: w.restarts for n, w in watches.items()}, flush=True)
    return 0


def _stop_arms(ray, watches: dict[str, _Watch], rc: RayFleetConfig) -> None:
    """Every actor stops its processes cleanly, all at once; then it goes."""
    refs = {name: w.actor.stop.remote(rc.stop_timeout_s - 5) for name, w in watches.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=rc.stop_timeout_s)
    for name, ref in refs.items():
        try:
            if ref in ready:
                final = ray.get(ref)
                left = (f": {final['spool_attempts']} attempt(s) left in its spool "
                        f"{final['spool_dir']}" if "spool_dir" in final else "")
                log.info("%s stopped on %s%s", name, final["host"], left)
            else:
                log.warning("%s did not stop within %.0f s; killing its actor", name,
                            rc.stop_timeout_s)
        except ray.exceptions.RayError as exc:
            log.warning("%s: could not stop cleanly (%s)", name, type(exc).__name__)
        ray.kill(watches[name].actor, no_restart=True)


def learner_gpus(ray, rc: RayFleetConfig) -> float:
    """GPUs for the learner's actor: as asked, or one when the cluster has any (0: none, the
    learner stays on the driver's machine)."""
    if rc.learner_gpus is not None:
        return max(0.0, rc.learner_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def start_learner(ray, spec: Any, gpus: float, rc: RayFleetConfig, log_dir: Path) -> _Watch:
    """The learner as an actor on a node with `gpus` GPUs free, restarted wherever one is when
    that node dies (it resumes from its checkpoint, as after any restart)."""
    remote = ray.remote(LearnerActor)
    actor = remote.options(max_restarts=-1, max_task_retries=0, num_cpus=rc.learner_cpus,
                           num_gpus=gpus).remote(spec, str(log_dir))
    log.info("learner: actor asks Ray for %g GPU(s) and %g CPU(s); it reads the store at the "
             "driver's path, which a node elsewhere must mount there", gpus, rc.learner_cpus)
    return _Watch(actor=actor)
