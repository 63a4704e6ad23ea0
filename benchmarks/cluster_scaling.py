"""Cluster scaling: N arms placed by Ray against the same N arms under `fleet sim`, same run.

Both modes run the real thing: `fleet sim --arms N --no-learner` as a subprocess (data server,
N PyBullet sim arms, N robot_nodes, DDS on loopback), once with `--ray ADDRESS` against a Ray
head this script starts (each arm a Ray actor supervising its two processes, fleet/ops/
ray_fleet.py), once without. Runs alternate (local, ray, local, ray, ...) so drift on a shared
machine hits both alike.

Per run: warm-up until every arm has stored an attempt, then attempts/s stored over a fixed
window, read from the server's own counters (an observer client over CURVE, as `fleet status`).
Then policy pushes through the fleet: the learner's publish (fleet.policy.folder.write_policy of
an untrained network of the default method: v1, v2, ...), timed until every arm reports that
version in service. That time includes finishing the attempt in progress (robot_node swaps
policies between attempts), so it is bounded below by an attempt's length, not by the network.

    .venv/bin/python benchmarks/cluster_scaling.py [--quick] [--arms N] [--runs R] [--window S]

Prints one row per run, the medians, and last
`cluster_scaling: <ray/local attempts/s> x (target 0.9); policy push to every arm p50 <s> s`.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleet.client.upload_client import ClientConfig, UploadClient  # noqa: E402
from fleet.ops.plan import fleet_depth, fleet_image_size, load_arms  # noqa: E402
from fleet.policy.folder import write_policy  # noqa: E402
from fleet.registry import DEFAULT_METHOD, get_method  # noqa: E402
from fleet.server.keys import ClientKeys, create_robot_key  # noqa: E402

TARGET = 0.9


@dataclass
class BenchConfig:
    arms: int = 2
    runs: int = 3  # per mode
    window_s: float = 60.0  # attempts/s measured over this, after the warm-up
    pushes: int = 3  # policy publishes per run
    warmup_timeout_s: float = 180.0
    push_timeout_s: float = 60.0
    ros_domain_id: int = 170  # with --ray, arm i uses this + i
    port: int = 47410


@dataclass
class RunResult:
    mode: str
    rate: float  # attempts stored per second over the window, all arms
    per_arm: dict[str, float]
    warmup_s: float  # start to every arm's first stored attempt
    pushes_s: list[float] = field(default_factory=list)  # publish -> every arm in service


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _counters(client: UploadClient) -> dict[str, Any]:
    try:
        return client.counters(timeout=3.0)
    except TimeoutError:
        return {}


def _attempts(counters: dict[str, Any], arms: list[str]) -> Optional[dict[str, int]]:
    robots = counters.get("robots", {})
    if not all(arm in robots for arm in arms):
        return None
    return {arm: int(robots[arm].get("attempts", 0)) for arm in arms}


def _in_service(counters: dict[str, Any], arms: list[str], version: int) -> bool:
    sessions = counters.get("sessions", {})
    return all(sessions.get(arm, {}).get("policy_version") == version for arm in arms)


def start_ray_head(cpus: int) -> tuple[str, Callable[[], None]]:
    """A Ray head in this process's care (ray.init starts one and stops it on shutdown): its
    GCS address for `fleet sim --ray`, and how to stop it. On loopback only, so without Ray's
    token auth, which a new ray.init cluster would otherwise turn on by writing
    ~/.ray/auth_token: a file that silently turns token auth on for every later `ray start
    --head` on this machine."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # inherited by the fleet sim drivers below
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR",
             _node_ip_address="127.0.0.1",
             _temp_dir=tempfile.mkdtemp(prefix="rbench-", dir="/tmp"))
    return ray.get_runtime_context().gcs_address, ray.shutdown


def run_once(cfg: BenchConfig, mode: str, ray_address: Optional[str], root: Path,
             index: int) -> RunResult:
    data = root / f"{mode}-{index}"
    create_robot_key(data / "keys", "observer")
    arms = [f"arm{i + 1}" for i in range(cfg.arms)]
    port = cfg.port + index * 2 + (1 if mode == "ray" else 0)
    argv = [sys.executable, "-m", "fleet.cli", "sim", "--arms", str(cfg.arms), "--data",
            str(data), "--ros-domain-id", str(cfg.ros_domain_id), "--port", str(port),
            "--metrics-port", "0", "--dashboard-port", "0", "--no-learner"]
    if ray_address:
        argv += ["--ray", ray_address, "--ray-arm-dir", str(root / f"arms-{index}")]
    env = dict(os.environ)  # with RAY_AUTH_MODE as the head was started
    log = open(data / "fleet_sim.out", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    client = UploadClient(ClientConfig(f"tcp://127.0.0.1:{port}", "observer",
                                       ClientKeys.from_dir(data / "keys", "observer")))
    try:
        started = time.monotonic()

        def every_arm_stored() -> Optional[dict[str, int]]:
            if proc.poll() is not None:
                raise RuntimeError(f"fleet sim ({mode}) exited {proc.returncode}: see "
                                   f"{data / 'fleet_sim.out'}")
            counts = _attempts(_counters(client), arms)
            return counts if counts and min(counts.values()) > 0 else None

        first = _wait(every_arm_stored, cfg.warmup_timeout_s, f"{mode}: every arm storing",
                      1.0)
        t0, warmup = time.monotonic(), time.monotonic() - started
        time.sleep(cfg.window_s)
        last = _attempts(_counters(client), arms) or first
        elapsed = time.monotonic() - t0
        per_arm = {arm: (last[arm] - first[arm]) / elapsed for arm in arms}
        result = RunResult(mode, sum(per_arm.values()), per_arm, warmup)
        method = get_method(DEFAULT_METHOD)
        plan = load_arms(REPO / "config" / "arms.yaml", count=cfg.arms, sim=True)
        size = fleet_image_size(plan)  # what the robots' cameras give, as fleet sim's learner
        for version in range(1, cfg.pushes + 1):
            net = method.build_network({"image_height": size, "image_width": size,
                                        "use_depth": fleet_depth(plan)})
            pushed = time.monotonic()
            write_policy(data / "learner", net, version=version, trained_on_attempts=0,
                         metrics={"benchmark": "cluster_scaling"})
            _wait(lambda: _in_service(_counters(client), arms, version), cfg.push_timeout_s,
                  f"{mode}: every arm running v{version}", 0.05)
            result.pushes_s.append(time.monotonic() - pushed)
        return result
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 run per mode, 20 s window (unless --window), 1 push")
    p.add_argument("--arms", type=int, default=BenchConfig.arms)
    p.add_argument("--runs", type=int, default=BenchConfig.runs)
    p.add_argument("--window", type=float, default=BenchConfig.window_s)
    p.add_argument("--dir", type=Path, default=None, help="keep the runs' data here")
    p.add_argument("--port", type=int, default=BenchConfig.port,
                   help="first data server port (each run takes the next free pair)")
    p.add_argument("--ros-domain-id", type=int, default=BenchConfig.ros_domain_id,
                   help="ROS_DOMAIN_ID of the runs (with --ray, arm i takes this + i)")
    a = p.parse_args(argv)
    cfg = BenchConfig(arms=a.arms, runs=a.runs, window_s=a.window, port=a.port,
                      ros_domain_id=a.ros_domain_id)
    if a.quick:
        cfg.runs, cfg.pushes = 1, 1
        cfg.window_s = a.window if a.window != BenchConfig.window_s else 20.0
    try:
        address, stop_ray = start_ray_head(cfg.arms)
    except ImportError as exc:
        print(f"cluster_scaling needs Ray ({exc}): pip install -e '.[cluster]'", file=sys.stderr)
        return 2
    root = a.dir or Path(tempfile.mkdtemp(prefix="cscale-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{cfg.arms} arms, {cfg.runs} runs per mode, {cfg.window_s:.0f} s window; Ray head "
          f"{address}; data in {root}")
    results: list[RunResult] = []
    try:
        for i in range(cfg.runs):
            for mode in ("local", "ray"):
                r = run_once(cfg, mode, address if mode == "ray" else None, root, i)
                results.append(r)
                arms = ", ".join(f"{k} {v:.2f}" for k, v in r.per_arm.items())
                pushes = ", ".join(f"{s:.2f}" for s in r.pushes_s)
                print(f"run {i + 1} {mode:5s}: {r.rate:.2f} attempts/s ({arms}); warm-up "
                      f"{r.warmup_s:.0f} s; push to every arm {pushes} s", flush=True)
    finally:
        stop_ray()
    by_mode = {m: [r for r in results if r.mode == m] for m in ("local", "ray")}
    rate = {m: statistics.median(r.rate for r in rs) for m, rs in by_mode.items()}
    push = {m: statistics.median(s for r in rs for s in r.pushes_s) for m, rs in by_mode.items()}
    worst = {m: max(s for r in rs for s in r.pushes_s) for m, rs in by_mode.items()}
    ratios = [rr.rate / lr.rate for lr, rr in zip(by_mode["local"], by_mode["ray"])]
    print(f"median attempts/s: local {rate['local']:.2f}, ray {rate['ray']:.2f}; per-run ratios "
          f"{', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"policy push to every arm (publish -> in service): local p50 {push['local']:.2f} s "
          f"(worst {worst['local']:.2f}), ray p50 {push['ray']:.2f} s (worst {worst['ray']:.2f})")
    print(f"cluster_scaling: {statistics.median(ratios):.2f} x (target {TARGET}); policy push to "
          f"every arm p50 {push['ray']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
