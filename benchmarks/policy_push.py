"""Policy push benchmark: from the learner publishing a version to every robot running it.

A real `fleet serve --policies DIR` process on loopback and 16 robots (UploadClient instances,
one thread and CURVE socket each, no simulator). Each publish is what the learner does
(`fleet.learner.checkpoint.write_policy`: bundle v<N>/, then latest.json); the clock starts before it.
Each robot, on `take_policy()`, does what robot_node does (`save_packed`: full verification,
then an fsynced write of the bundle into its own directory) and reports the new version in a
HELLO; its latency is the time that HELLO goes out. Per publish: the median and the worst
robot. Headline: the median over publishes of the worst robot's latency (target < 1 s).

Reference, measured in the same run: the round trip of one message of the packed bundle's size
over a raw CURVE DEALER/ROUTER pair on loopback (no server logic), and 16 of them in sequence
(the bytes the server must push per publish).

    .venv/bin/python benchmarks/policy_push.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleet.policy.bundle import pack_bundle, save_packed  # noqa: E402
from fleet.policy.folder import write_policy  # noqa: E402
from fleet.client.upload_client import ClientConfig, UploadClient  # noqa: E402
from fleet.server.keys import ClientKeys, create_robot_key, load_server_keypair  # noqa: E402
from fleet.methods.levine.network import GraspSuccessNet  # noqa: E402


@dataclass
class BenchConfig:
    robots: int = 16
    publishes: int = 7
    timeout: float = 20.0  # per publish, for every robot to report
    pause: float = 0.5  # between publishes
    reference_trips: int = 20


class Server:
    def __init__(self, root: Path, keys: Path, policies: Path, port: int):
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.log = open(root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "serve", "--data", str(root / "data"), "--keys",
             str(keys), "--bind", self.endpoint, "--policies", str(policies)],
            stdout=subprocess.PIPE, stderr=self.log, cwd=REPO)
        if b"ready" not in self.proc.stdout.readline():
            raise RuntimeError(f"server did not start; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


class Robot(threading.Thread):
    """One robot's upload thread: poll, install what arrives, report it."""

    def __init__(self, client: UploadClient, bundle_dir: Path, stop: threading.Event):
        super().__init__(daemon=True)
        self.client, self.bundle_dir, self.stop = client, bundle_dir, stop
        self.reported: dict[int, float] = {}  # version -> monotonic time of the HELLO
        self.errors: list[str] = []

    def run(self) -> None:
        c = self.client
        c.hello()
        while not self.stop.is_set():
            c.poll(0.05)
            update = c.take_policy()
            if update is None:
                continue
            try:
                save_packed(update.blob, self.bundle_dir / f"v{update.version}",
                            {"image_height": 64, "image_width": 64})
            except Exception as exc:  # noqa: BLE001 - reported, the benchmark then fails
                self.errors.append(repr(exc))
                continue
            c.hello(policy_version=update.version)
            self.reported[update.version] = time.monotonic()
        c.close()


def reference_round_trip(keys: Path, robot: str, size: int, trips: int) -> float:
    """Median round trip of `size` bytes over a bare CURVE DEALER/ROUTER pair (seconds)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = load_server_keypair(keys)
    router.linger = 0
    router.bind("tcp://127.0.0.1:0")
    dealer = ctx.socket(zmq.DEALER)
    ClientKeys.from_dir(keys, robot).apply(dealer)
    dealer.linger = 0
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    payload, times = os.urandom(size), []
    try:
        for i in range(trips + 1):
            t = time.perf_counter()
            dealer.send_multipart([b"fetch"])
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, b"policy", payload])
            dealer.recv_multipart()
            if i:  # the first includes the CURVE handshake
                times.append(time.perf_counter() - t)
    finally:
        dealer.close()
        router.close()
        ctx.term()
    return statistics.median(times)


def one_publish(out: Path, version: int, robots: list[Robot],
                timeout: float) -> tuple[float, list[float]]:
    """Publish v<version>; (seconds the learner's write took, each robot's latency)."""
    torch.manual_seed(version)
    net = GraspSuccessNet()
    t0 = time.monotonic()
    write_policy(out, net, version=version, trained_on_attempts=version, metrics={})
    written = time.monotonic() - t0
    end = t0 + timeout
    while time.monotonic() < end and not all(version in r.reported for r in robots):
        time.sleep(0.01)
    missing = [r.client.config.robot_id for r in robots if version not in r.reported]
    if missing:
        errors = [e for r in robots for e in r.errors]
        raise RuntimeError(f"v{version}: robots {missing} never reported it in {timeout} s; "
                           f"errors: {errors[:3]}")
    return written, [r.reported[version] - t0 for r in robots]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer publishes (under a minute)")
    args = p.parse_args()
    cfg = BenchConfig(publishes=4 if args.quick else BenchConfig.publishes)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="policy-push-"))
    names = [f"arm{i:02d}" for i in range(cfg.robots)]
    keys = root / "keys"
    for name in names:
        create_robot_key(keys, name)
    out = root / "learner"
    (out / "policies").mkdir(parents=True)
    server = Server(root, keys, out / "policies", _free_port())
    stop = threading.Event()
    ctx = zmq.Context()
    robots = [Robot(UploadClient(ClientConfig(server.endpoint, n, ClientKeys.from_dir(keys, n)),
                                 ctx), root / "robots" / n, stop) for n in names]
    rows = []
    try:
        for r in robots:
            r.start()
        time.sleep(1.0)  # every robot has said HELLO
        for k in range(cfg.publishes):
            written, lat = one_publish(out, k + 1, robots, cfg.timeout)
            rows.append((k + 1, written, statistics.median(lat), max(lat)))
            time.sleep(cfg.pause)
        probe = UploadClient(ClientConfig(server.endpoint, names[0],
                                          ClientKeys.from_dir(keys, names[0])), ctx)
        sessions = probe.counters()["sessions"]
        probe.close()
        assert all(s["policy_version"] == cfg.publishes for s in sessions.values()), sessions
        size = len(pack_bundle(out / "policies" / f"v{cfg.publishes}"))
    finally:
        stop.set()
        for r in robots:
            r.join(10)
        server.stop()
        ctx.term()
    ref = reference_round_trip(keys, names[0], size, cfg.reference_trips)
    shutil.rmtree(root, ignore_errors=True)

    print(f"{cfg.robots} robots, packed bundle {size / 1e3:.0f} KB, server polls the "
          f"policies directory every 0.2 s")
    print(f"{'publish':>7} {'learner write s':>16} {'median robot s':>15} {'worst robot s':>14}")
    for version, written, med, worst in rows:
        print(f"{version:>7} {written:>16.3f} {med:>15.3f} {worst:>14.3f}")
    worst_median = statistics.median(w for *_, w in rows)
    print(f"reference: raw CURVE loopback round trip of {size / 1e3:.0f} KB: {ref * 1e3:.2f} ms; "
          f"x{cfg.robots} in sequence: {ref * cfg.robots * 1e3:.1f} ms")
    print(f"median over publishes: median robot {statistics.median(r[2] for r in rows):.3f} s, "
          f"worst robot {worst_median:.3f} s (worst ever {max(r[3] for r in rows):.3f} s), "
          f"{worst_median / (ref * cfg.robots):.0f} x the 16 raw round trips")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"policy_push: {worst_median:.2f} s (target 1)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
