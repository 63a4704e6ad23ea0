"""`fleet sim --ray ADDRESS`: the simulated fleet past one machine, each arm a Ray actor.

Why Ray, and why this shape: a fleet larger than one host needs something that places arms on
machines, notices when a machine dies and starts its arms elsewhere. Ray does exactly that for
actors, so each arm is one actor (`ArmActor`) that supervises the arm's two processes, the
PyBullet sim arm and its robot_node, on the node where it lands. The processes, their command
lines and parameter files are the ones `fleet sim` starts on one machine (fleet/ops/plan.py via
`sim_fleet.arm_children`), kept alive by the same Supervisor: Ray places and restarts actors,
it launches nothing of ours. The data server and monitor stay on the driver's machine, started
as `fleet sim` starts them; arms dial the server over ZeroMQ + CURVE as real robots do. The
learner stays there too unless the cluster has a GPU: then `LearnerActor` runs it on a node with
one (num_gpus), reading the store at the driver's path.

- DDS never leaves a node: every arm's processes get the project's Fast DDS loopback profile and
  a ROS_DOMAIN_ID of their own (the base plus the arm's index), so two arms that share a machine
  (or two Ray nodes on one machine, as in tests/test_ray_cluster.py) never see each other.
- Keys: the driver reads the server's public key and the arm's own secret key and hands them to
  the actor, which writes them into its arm directory on its node (directory 0700, secret 0600)
  before robot_node starts (robot_node refuses a secret others can read). See docs/scaling.md
  for what this means for the secret in transit.
- The arm directory (`--ray-arm-dir`/<run>/<arm>: keys, spool, policy, logs) is per arm, not per
  node: when Ray restarts an arm on a machine that sees the same directory (the same host, or
  storage every node mounts) its robot_node finds the spool it left and uploads what was not
  acked; the server deduplicates by attempt id. On another machine's local disk it starts empty,
  and the driver logs how many attempts the lost spool held at the last report.
- Actors are created with max_restarts=-1: a dead actor or node means a restart elsewhere, which
  the driver logs with the node. Children die with their actor (Supervisor die_with_parent), so
  an arm never runs twice on one machine.

The driver side (placing, watching, stopping the actors) is ray_driver.py. Ray is imported
only by these two modules, and only when `fleet sim --ray` runs (the `cluster` extra).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fleet.ops.plan import ArmSpec, PlanError
from fleet.ops.processes import ArmFiles, arm_children, ros_env
from fleet.ops.supervisor import Supervisor, SupervisorConfig

log = logging.getLogger("fleet.ray")

#: The highest ROS_DOMAIN_ID Fast DDS maps to valid UDP ports (7400 + 250 * id + offsets).
MAX_DOMAIN_ID = 232
#: Where each arm's state is written down for operators and tests: <data>/ray-arms.json.
PLACEMENTS_FILE = "ray-arms.json"


@dataclass
class RayFleetConfig:
    """`fleet sim --ray` settings beyond SimFleetConfig's."""

    address: str = "auto"  # `ray start --head` HOST:PORT, or auto (RAY_ADDRESS / a local head)
    server_host: Optional[str] = None  # arms dial the server here; None: from the bind (below)
    arm_dir: Path = Path("/tmp/fleet-ray")  # on each node: <arm_dir>/<run>/<arm>/
    cpus_per_arm: float = 1.0  # Ray CPUs an arm actor reserves
    status_every_s: float = 2.0  # the driver asks each arm for its status this often
    status_timeout_s: float = 30.0  # ... and asks again if an answer takes longer
    stop_timeout_s: float = 45.0  # arms stopping cleanly at the end, all together
    #: GPUs the learner's actor reserves; None: one when the cluster has a GPU, else the
    #: learner runs here beside the server (0 forces that).
    learner_gpus: Optional[float] = None
    learner_cpus: float = 1.0  # Ray CPUs the learner's actor reserves


@dataclass
class ArmJob:
    """Everything an arm actor needs, sent by the driver with the actor's creation (Ray keeps it
    to re-create the actor after a failure, so a restarted arm gets the same job)."""

    arm: ArmSpec
    index: int
    run: str  # names the arm directory, so two fleets on one node keep apart
    ros_domain_id: int
    server_address: str
    server_public_key: bytes
    robot_secret_key: bytes
    arm_dir: str
    exploration_policy: Optional[str] = None


def arm_domain_id(base: int, index: int) -> int:
    """The arm's own ROS_DOMAIN_ID: base + index, wrapping within [base, 232]. Arms that wrap
    onto one id only meet if Ray puts them on one machine, and their namespaces differ."""
    if not 0 <= base <= MAX_DOMAIN_ID:
        raise PlanError(f"--ros-domain-id {base}: must be 0-{MAX_DOMAIN_ID}")
    return base + index % (MAX_DOMAIN_ID + 1 - base)


def run_name(data_dir: Path) -> str:
    data = data_dir.resolve()
    return f"{data.name}-{hashlib.sha256(str(data).encode()).hexdigest()[:8]}"


def count_spool(spool: Path) -> int:
    """Attempts waiting in a spool for an ack (robot_node's `<ns>-<id>.attempt` files)."""
    try:
        return sum(1 for p in spool.iterdir() if p.name.endswith(".attempt"))
    except OSError:
        return 0


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write a file that is never, not for a moment, readable beyond `mode` (temp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _SupervisedActor:
    """Processes supervised on the node where Ray placed this actor.

    All process work happens on one thread the actor owns (children die with the thread that
    spawned them: Supervisor die_with_parent), so the actor's methods only read state."""

    def _place(self) -> None:
        """Where this actor runs: Ray's node id and IP, and `host` as `fleet status` shows it."""
        import ray

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        ctx = ray.get_runtime_context()
        self.node_id: str = ctx.get_node_id()
        self.node_ip: str = ray.util.get_node_ip_address()
        self.host = f"{self.node_ip}/{self.node_id[:12]}"
        with warnings.catch_warnings():  # Ray 2.60 warns about its own property's internals
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(ctx.was_current_actor_reconstructed)

    def _begin(self, specs: list, log_dir: Path) -> None:
        self._sup = Supervisor(specs, SupervisorConfig(log_dir=log_dir, die_with_parent=True))
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)

    def _supervise(self) -> None:
        try:
            self._sup.start()
            self._started.set()
            while not self._stop.wait(0.2):
                self._sup.poll()
        finally:
            self._started.set()
            self._sup.stop()
            self._stopped.set()

    def _base_status(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "node_ip": self.node_ip, "host": self.host,
                "pid": os.getpid(), "restarted": self.restarted, "running": self._sup.running(),
                "child_restarts": self._sup.restarts(), "stopped": self._stopped.is_set()}

    def stop(self, timeout_s: float = 40.0) -> dict[str, Any]:
        """Stop the processes cleanly (SIGINT first: robot_node finishes its spool writes, the
        learner its checkpoint)."""
        self._stop.set()
        self._stopped.wait(timeout_s)
        return self.status()

    def status(self) -> dict[str, Any]:
        raise NotImplementedError


class ArmActor(_SupervisedActor):
    """One arm on the node where Ray placed it: its sim arm and robot_node, supervised."""

    def __init__(self, job: ArmJob):
        self._place()
        self.job = job
        self.root = Path(job.arm_dir) / job.run / job.arm.name
        keys = self.root / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        os.chmod(keys, 0o700)
        _write_private(keys / "server.key", job.server_public_key, 0o644)
        _write_private(keys / f"{job.arm.name}.key_secret", job.robot_secret_key, 0o600)
        self.files = ArmFiles(spool=self.root / "spool", policy=self.root / "policy",
                              server_public_key=keys / "server.key",
                              robot_secret_key=keys / f"{job.arm.name}.key_secret")
        self.spool_at_start = count_spool(self.files.spool)
        self.domain_id = job.ros_domain_id
        # each child bootstraps the ROS wheels' library path itself, as from a shell
        env = {**ros_env(self.domain_id), "_ROS_WHEELS_BOOTSTRAP_COMPLETE": ""}
        specs = arm_children([job.arm], lambda _arm: self.files, job.server_address, env,
                             job.exploration_policy, extra_robot_params={"host": self.host})
        self._begin(specs, self.root / "logs")
        log.info("%s on node %s (pid %d, ROS_DOMAIN_ID %d, %s; its spool holds %d attempts "
                 "from before)", job.arm.name, self.host, os.getpid(), self.domain_id,
                 "restarted by Ray" if self.restarted else "first start", self.spool_at_start)

    def status(self) -> dict[str, Any]:
        """Where the arm runs and how it is doing; the driver polls it."""
        return {**self._base_status(), "arm": self.job.arm.name,
                "ros_domain_id": self.domain_id, "arm_dir": str(self.root),
                "spool_dir": str(self.files.spool), "spool_at_start": self.spool_at_start,
                "spool_attempts": count_spool(self.files.spool)}

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of one child's log on this node (name: 'robot_node' or 'sim_arm')."""
        path = self.root / "logs" / f"{self.job.arm.name}_{name}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"


class LearnerActor(_SupervisedActor):
    """The learner process (`python -m fleet.learner`, the command line `fleet sim` gives its
    own) on the node where Ray placed this actor: one with a GPU when the driver asked for one
    (num_gpus), which Ray hands over in CUDA_VISIBLE_DEVICES. The store and the learner's run
    directory are the driver's paths: on another machine they must be mounted at the same path
    (docs/scaling.md)."""

    def __init__(self, spec: Any, log_dir: str):
        import ray

        self._place()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self._begin([spec], Path(log_dir))
        log.info("learner on node %s (pid %d, GPUs %s, %s)", self.host, os.getpid(),
                 self.gpu_ids or "none", "restarted by Ray" if self.restarted else "first start")

    def status(self) -> dict[str, Any]:
        return {**self._base_status(), "gpu_ids": self.gpu_ids,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
