"""`fleet sim --ray` on a real two-node Ray cluster on this machine, and the death of a node.

A head node and a worker node (`ray start`, each with its own temp dir and a custom resource),
two arms placed one per node, each a Ray actor supervising its sim arm and robot_node there.
The server lists both arms with the node they run on. Then the worker node's raylet is killed
(kill -9, as if the machine died): its arm's processes die with their actor, Ray restarts the
actor on the head, and the arm collects again from there. In the end every attempt an arm logged
is in the store exactly once (or still in its spool, not yet acked), and no process is left.

Skips, saying why, only when Ray is not installed or will not start here; scripts/test.sh sets
FLEET_REQUIRE_RAY=1 so that CI fails instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from fleet.client.upload_client import ClientConfig, UploadClient
from fleet.server.keys import ClientKeys, create_robot_key
from ros_processes import REPO_ROOT, RosDomain, claim_domain, interrupt, wait_for
from server_helpers import stored_ids

pytestmark = [pytest.mark.slow, pytest.mark.ros]

ARMS = ("arm1", "arm2")
RAY = Path(sys.executable).with_name("ray")
#: The head notices a dead node after 3 missed health checks 1 s apart (Ray's defaults: 5 of
#: 3 s), so the worker's arm is restarted within seconds rather than half a minute.
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}


#: The test clusters bind loopback only: no token auth, said explicitly, because Ray turns it on
#: by itself wherever a ~/.ray/auth_token exists (any earlier ray.init on the machine writes one),
#: and then a worker node or a driver not told so is refused.
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def _skip_or_fail(why: str) -> None:
    if os.environ.get("FLEET_REQUIRE_RAY"):
        pytest.fail(f"{why} (FLEET_REQUIRE_RAY is set: scripts/test.sh installs the cluster "
                    f"extra)")
    pytest.skip(why)


#: Ports Ray takes by default when not told otherwise (GCS, client server, dashboard, its
#: agent's HTTP port): a random port must not be one of them, or `ray start` refuses it.
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365}


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def _node_ports() -> list[str]:
    """Ports of one node's agents, chosen free, so that two test runs never meet on Ray's
    fixed defaults."""
    return ["--dashboard-agent-listen-port", str(_free_port()), "--ray-client-server-port",
            str(_free_port())]


def _procs() -> Iterator[tuple[int, int, str]]:
    """(pid, ppid, command line) of every live process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            yield int(entry), int(fields[1]), cmd


def _trees_naming(needles: list[str]) -> list[int]:
    """Processes whose command line names one of `needles`, with all their descendants (Ray
    renames its workers `ray::ArmActor`, so they are found as the raylets' children)."""
    procs = list(_procs())
    found = {pid for pid, _, cmd in procs if any(n in cmd for n in needles)}
    grew = True
    while grew:
        more = {pid for pid, ppid, _ in procs if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found - {os.getpid()})


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _in_domains(domains: set[int]) -> list[str]:
    """Live processes in one of these ROS domains (the arms' nodes), but not this one."""
    found = []
    for pid, _, cmd in _procs():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid != os.getpid() and any(f"ROS_DOMAIN_ID={d}".encode() in env for d in domains):
            found.append(f"{pid}: {cmd[:200]}")
    return found


def _raylet(temp_dir: Path) -> tuple[int, str]:
    """(pid, node id) of the raylet of the node started with this temp dir."""
    for pid, _, cmd in _procs():
        if "/raylet/raylet " in cmd and f"--raylet_socket_name={temp_dir}/" in cmd:
            return pid, re.search(r"--node_id=([0-9a-f]+)", cmd).group(1)
    raise AssertionError(f"no raylet runs with temp dir {temp_dir}")


def _two_domains() -> tuple[RosDomain, RosDomain]:
    """Two consecutive ROS domains no other test session holds (arm i uses base + i)."""
    for _ in range(50):
        first = claim_domain()
        try:
            return first, claim_domain(candidates=[first.domain_id + 1])
        except RuntimeError:
            first.release()
    raise RuntimeError("no two consecutive free ROS test domains")


@pytest.fixture
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A head and a worker node on this machine; every process of both killed at the end."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        _skip_or_fail(f"ray is not installed ({exc}): pip install -e '.[cluster]'")
    # short paths: Ray's unix sockets live under the temp dir (108-character limit)
    root = Path(tempfile.mkdtemp(prefix="fray-", dir="/tmp"))
    head, worker = root / "h", root / "w"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(FAST_HEALTH, RAY_USAGE_STATS_ENABLED="0", **NO_TOKEN)
    common = ["--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
              "--object-store-memory", str(100 * 2**20)]
    # the worker declares a GPU (to Ray a GPU is a resource it counts: no CUDA needed), so the
    # learner's actor has exactly one node to go to
    needles = [str(head), str(worker)]
    try:
        for argv in ([str(RAY), "start", "--head", "--port", str(port), "--resources",
                      '{"head": 1}', "--temp-dir", str(head), "--include-dashboard=false",
                      "--num-gpus", "0", *common, *_node_ports()],
                     [str(RAY), "start", "--address", f"127.0.0.1:{port}", "--resources",
                      '{"worker": 1}', "--temp-dir", str(worker), "--num-gpus", "1", *common,
                      *_node_ports()]):
            try:
                out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _skip_or_fail(f"`{' '.join(argv)}` did not run: {exc}")
            if out.returncode != 0:
                _skip_or_fail(f"`{' '.join(argv)}` failed ({out.returncode}):\n"
                              f"{(out.stdout + out.stderr)[-2000:]}")
        # Ray's client server names neither temp dir, only its node
        needles += [f"--node-id={_raylet(head)[1]}", f"--node-id={_raylet(worker)[1]}"]
        yield {"address": f"127.0.0.1:{port}", "head": head, "worker": worker, "env": env}
    finally:
        _kill(_trees_naming(needles))
        wait_for(lambda: not _trees_naming(needles), timeout=10,
                 what="every process of the test's Ray cluster to exit")
        shutil.rmtree(root, ignore_errors=True)


def _placements(data: Path) -> dict[str, Any]:
    try:
        return json.loads((data / "ray-arms.json").read_text())
    except (OSError, ValueError):
        return {}


def _sessions(client: UploadClient, seen: dict[str, Any]) -> dict[str, Any]:
    try:
        seen["counters"] = client.counters(timeout=3.0)
    except TimeoutError:
        return {}
    return seen["counters"]


def _logged_attempts(arm_dir: Path, arm: str) -> list[str]:
    """Attempt ids (8-character prefixes) robot_node logged having spooled, every incarnation:
    the completed ones (success or failure). An attempt aborted before its first step (as when
    the node stops mid-reset) has nothing to upload and is never spooled."""
    log = arm_dir / arm / "logs" / f"{arm}_robot_node.log"
    return re.findall(rf"\[{arm}\] attempt \d+ ([0-9a-f]{{8}}) (?:success|failure) ",
                      log.read_text(errors="replace"))


def _fleet_sim_on_ray(cluster: dict[str, Any], data: Path, arm_root: Path, domain: RosDomain,
                      port: int, out, extra: list[str]) -> subprocess.Popen:
    """`fleet sim --ray` on the test cluster (an observer key made first, for the counters),
    output to `out`; arm i in ROS domain domain + i."""
    create_robot_key(data / "keys", "observer")
    env = {**{k: v for k, v in domain.env.items() if not k.startswith("RAY_")}, **NO_TOKEN}
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "sim", "--ray", cluster["address"], "--data",
         str(data), "--ray-arm-dir", str(arm_root), "--ros-domain-id", str(domain.domain_id),
         "--port", str(port), "--metrics-port", "0", "--dashboard-port", "0", *extra],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)


def test_arms_on_two_ray_nodes_survive_the_death_of_one(tmp_path: Path, ray_cluster) -> None:
    data = tmp_path / "run"
    arm_root = Path(tempfile.mkdtemp(prefix="farms-", dir="/tmp"))
    first, second = _two_domains()
    port = _free_port()
    out = open(tmp_path / "fleet_sim.out", "w+")
    proc = _fleet_sim_on_ray(ray_cluster, data, arm_root, first, port, out,
                             ["--arms", "2", "--no-learner"])
    client: Optional[UploadClient] = None
    seen: dict[str, Any] = {}
    head_pid, head_id = _raylet(ray_cluster["head"])
    worker_pid, worker_id = _raylet(ray_cluster["worker"])
    code: Optional[int] = None

    def output(tail: int = 4000) -> str:
        out.flush()
        return (tmp_path / "fleet_sim.out").read_text(errors="replace")[-tail:]

    try:
        client = UploadClient(ClientConfig(f"tcp://127.0.0.1:{port}", "observer",
                                           ClientKeys.from_dir(data / "keys", "observer")))

        def collecting(extra: Optional[dict[str, int]] = None) -> bool:
            assert proc.poll() is None, f"fleet sim exited early:\n{output()}"
            placed, counters = _placements(data), _sessions(client, seen)
            robots, sessions = counters.get("robots", {}), counters.get("sessions", {})
            return all(
                robots.get(arm, {}).get("attempts", 0) > (extra or {}).get(arm, 0)
                and arm in placed and sessions.get(arm, {}).get("host") == placed[arm]["host"]
                for arm in ARMS)

        started = time.monotonic()
        try:
            wait_for(collecting, timeout=120, interval=2.0,
                     what="both arms storing attempts, each listed with its Ray node")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncounters: {seen.get('counters')}\nplacements: "
                                 f"{_placements(data)}\n{output()}") from None
        placed = _placements(data)
        print(f"both arms collecting after {time.monotonic() - started:.0f} s: {placed}")
        nodes = {arm: placed[arm]["node_id"] for arm in ARMS}
        assert sorted(nodes.values()) == sorted([head_id, worker_id]), \
            f"one arm per node expected: {nodes}, head {head_id}, worker {worker_id}"
        moved = next(arm for arm in ARMS if nodes[arm] == worker_id)
        assert seen["counters"]["sessions"][moved]["host"].endswith(worker_id[:12])

        before = {arm: seen["counters"]["robots"][arm]["attempts"] for arm in ARMS}
        os.kill(worker_pid, signal.SIGKILL)  # the worker machine "dies"
        killed_at = time.monotonic()

        def back_on_head() -> bool:
            p = _placements(data).get(moved, {})
            return (p.get("node_id") == head_id and p.get("restarts", 0) >= 1
                    and collecting({moved: before[moved]}))

        try:
            wait_for(back_on_head, timeout=90, interval=2.0,
                     what=f"{moved} restarted on the head node and storing again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncounters: {seen.get('counters')}\nplacements: "
                                 f"{_placements(data)}\n{output()}") from None
        print(f"{moved} back on the head after {time.monotonic() - killed_at:.0f} s")
        assert seen["counters"]["sessions"][moved]["host"].endswith(head_id[:12])
    finally:
        if client is not None:
            client.close()
        code = interrupt(proc, timeout=60)
        first.release()
        second.release()
    text = output(10**8)
    assert code == 0, f"fleet sim exited {code} after SIGINT:\n{text}"
    assert f"{moved} restarted (#1) on node" in text, text[-4000:]
    assert f"'{moved}': 1" in text.split("arm restarts (Ray):")[-1], text[-4000:]
    try:
        wait_for(lambda: not _in_domains({first.domain_id, second.domain_id}), timeout=10,
                 what="every arm process to exit", interval=0.5)
    except AssertionError:
        raise AssertionError(f"arm processes left behind: "
                             f"{_in_domains({first.domain_id, second.domain_id})}") from None

    # Exactly once: every attempt an arm logged is stored once, or still waits in its spool.
    stored = stored_ids(data / "store")
    assert stored and max(stored.values()) == 1, [i for i, n in stored.items() if n > 1]
    prefixes = Counter(i[:8] for i in stored)
    for arm in ARMS:
        spooled = {p.name.split("-", 1)[1][:8] for p in arm_root.glob(f"*/{arm}/spool/*.attempt")}
        logged = _logged_attempts(next(arm_root.iterdir()), arm)
        assert logged, f"{arm} logged no attempt"
        missing = [i for i in logged if i not in prefixes and i not in spooled]
        if missing:
            log = (next(arm_root.iterdir()) / arm / "logs" / f"{arm}_robot_node.log").read_text(
                errors="replace")
            lines = [ln for ln in log.splitlines() if any(m in ln for m in missing)]
            raise AssertionError(f"{arm}: logged but neither stored nor spooled: {missing}\n"
                                 f"robot log: {lines}\nrobot log tail: {log[-3000:]}\n"
                                 f"fleet sim: {text[-6000:]}")
        print(f"{arm}: {len(logged)} attempts logged, {sum(1 for i in logged if i in prefixes)} "
              f"stored once, {len(spooled)} still spooled")
    shutil.rmtree(arm_root, ignore_errors=True)


@pytest.mark.timeout(300)
def test_the_learner_runs_as_an_actor_on_the_node_with_a_gpu(tmp_path: Path,
                                                              ray_cluster) -> None:
    """With a GPU in the cluster, `fleet sim --ray` runs the learner as a Ray actor on the node
    that has it (Ray hands it over in CUDA_VISIBLE_DEVICES), reading the store at the driver's
    path; it trains on the arm's attempts and publishes, the arm runs that policy, and Ctrl-C
    stops the learner with the rest."""
    data = tmp_path / "run"
    arm_root = Path(tempfile.mkdtemp(prefix="farms-", dir="/tmp"))
    domain = claim_domain()
    port = _free_port()
    out = open(tmp_path / "fleet_sim.out", "w+")
    proc = _fleet_sim_on_ray(ray_cluster, data, arm_root, domain, port, out,
                             ["--arms", "1", "--learner-min-attempts", "20", "--learner-cycle-s",
                              "20", "--learner-cycle-steps", "100"])
    _, worker_id = _raylet(ray_cluster["worker"])
    client: Optional[UploadClient] = None
    seen: dict[str, Any] = {}

    def output() -> str:
        out.flush()
        return (tmp_path / "fleet_sim.out").read_text(errors="replace")

    try:
        client = UploadClient(ClientConfig(f"tcp://127.0.0.1:{port}", "observer",
                                           ClientKeys.from_dir(data / "keys", "observer")))

        def learner_placed() -> bool:
            assert proc.poll() is None, f"fleet sim exited early:\n{output()[-4000:]}"
            return _placements(data).get("learner", {}).get("node_id") == worker_id

        wait_for(learner_placed, timeout=60, interval=1.0,
                 what=f"the learner's actor on the GPU node {worker_id[:12]}")
        placed = _placements(data)["learner"]
        assert placed["gpu_ids"] == ["0"] and placed["cuda_visible_devices"] == "0", placed

        def arm_runs_a_learned_policy() -> bool:
            assert proc.poll() is None, f"fleet sim exited early:\n{output()[-4000:]}"
            session = _sessions(client, seen).get("sessions", {}).get("arm1", {})
            return session.get("policy_version", 0) >= 1

        try:
            wait_for(arm_runs_a_learned_policy, timeout=200, interval=2.0,
                     what="arm1 running a policy the learner on the GPU node published")
        except AssertionError as exc:
            log = data / "logs" / "learner.log"
            raise AssertionError(f"{exc}\ncounters: {seen.get('counters')}\nlearner log: "
                                 f"{log.read_text()[-3000:] if log.exists() else '(none)'}\n"
                                 f"{output()[-4000:]}") from None
    finally:
        if client is not None:
            client.close()
        code = interrupt(proc, timeout=60)
        domain.release()
        shutil.rmtree(arm_root, ignore_errors=True)
    text = output()
    assert code == 0, f"fleet sim exited {code} after SIGINT:\n{text[-4000:]}"
    assert "learner up on node" in text and "GPUs ['0']" in text, text[-4000:]
    assert "learner stopped on" in text, text[-4000:]
    assert (data / "learner" / "policies" / "latest.json").exists()


@pytest.mark.timeout(300)
def test_cluster_scaling_benchmark_runs_both_modes(tmp_path: Path) -> None:
    """benchmarks/cluster_scaling.py --quick: the same arms under `fleet sim` and on a Ray head
    (which the script starts with ray.init), each storing attempts and taking a policy push;
    the headline last. The ratio's floor is far below the 0.9 target (a 10 s window on a busy
    machine scatters), but a Ray mode whose arms do not collect fails it."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        _skip_or_fail(f"ray is not installed ({exc}): pip install -e '.[cluster]'")
    first, second = _two_domains()
    try:
        out = subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "cluster_scaling.py"), "--quick",
             "--window", "10", "--dir", str(tmp_path / "runs"), "--port", str(_free_port()),
             "--ros-domain-id", str(first.domain_id)],
            env={k: v for k, v in first.env.items() if not k.startswith("RAY_")},
            capture_output=True, text=True, timeout=280, cwd=REPO_ROOT)
    finally:
        first.release()
        second.release()
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    lines = out.stdout.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("run 1 local: ")], out.stdout
    assert [ln for ln in lines if ln.startswith("run 1 ray  : ")], out.stdout
    head = re.fullmatch(r"cluster_scaling: (\d+\.\d\d) x \(target 0\.9\); policy push to every "
                        r"arm p50 (\d+\.\d\d) s", lines[-1])
    assert head, lines[-1]
    assert float(head.group(1)) > 0.5, out.stdout
    assert float(head.group(2)) < 30, out.stdout
