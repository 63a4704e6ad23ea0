"""Ingest benchmark: durably acked attempts/s of the data server against the raw disk.

32 uploaders (each its own UploadClient thread with its own CURVE DEALER socket and robot key,
spread over 4 processes as robots are separate machines; `--procs 1` puts them all in one
process, the pre-2026-11-24 layout) stream attempts of 10 JPEG frames of 64x64 to a real
`fleet serve` process on loopback. Every uploader connects (CURVE handshake, HELLO/WELCOME)
before the clock starts. The table also shows the CPU the server and the uploaders use, in
cores, so a run says which side was the bottleneck. The reference, measured in
the same run on the same disk: writing the same encoded bytes to a file in batches of the
server's average group-commit size, one fdatasync per batch (what the server does at best, with
no network, crypto, validation or store format). Headline: the ratio (target >= 0.7).

Then the memory bound: uploaders with a huge window fire 10,000 attempts at a server whose
store is slowed down (an artificial delay per commit), and the server's peak RSS (VmHWM) is
reported (target < 512 MB).

    .venv/bin/python benchmarks/ingest.py [--quick] [--procs N]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import cv2
import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleet.client.upload_client import ClientConfig, UploadClient  # noqa: E402
from fleet.server.keys import ClientKeys, create_robot_key  # noqa: E402
from fleet.wire.records import Attempt, Step, encode  # noqa: E402


@dataclass
class BenchConfig:
    clients: int = 32
    uploader_procs: int = 4  # processes the clients are spread over (robots are machines)
    attempts_per_client: int = 60
    steps: int = 10
    window: int = 8
    runs: int = 3
    backlog_attempts: int = 10_000
    backlog_clients: int = 4
    backlog_commit_delay: float = 0.5


def camera_jpegs(n: int, rng: np.random.Generator) -> list[bytes]:
    """64x64 images that compress like a camera's view of a tray (smooth shapes plus noise)."""
    out = []
    for _ in range(n):
        img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64),
                         interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def make_attempts(robot: str, n: int, steps: int, jpegs: list[bytes],
                  rng: np.random.Generator) -> list[tuple[str, list[bytes]]]:
    pose = (0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0)
    out = []
    for _ in range(n):
        now = time.time()
        a = Attempt(robot, 1, "cem", [
            Step(jpegs[int(rng.integers(len(jpegs)))], pose, (0.01, 0.0, -0.02, 0.1), 0.08,
                 float(i)) for i in range(steps)], "success", pose, 0.02, now - 3, now)
        out.append((a.attempt_id, encode(a)))
    return out


class Server:
    def __init__(self, data: Path, keys: Path, port: int, extra: tuple[str, ...] = ()):
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.log = open(data.parent / f"server-{port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "serve", "--data", str(data), "--keys",
             str(keys), "--bind", self.endpoint, *extra],
            stdout=subprocess.PIPE, stderr=self.log, cwd=REPO)
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"server did not start; see {self.log.name}")

    def cpu_seconds(self) -> float:
        """CPU seconds of the server and the processes it started (its Parquet roller)."""
        return sum(_cpu_seconds(pid) for pid in _process_tree(self.proc.pid))

    def vm_hwm_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> float:
        """SIGTERM, wait; returns the process's CPU seconds at its end (from its rusage)."""
        self.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.log.close()
        self.peak_rss_mb = usage.ru_maxrss / 1024  # the largest of it and its roll process
        return usage.ru_utime + usage.ru_stime

    def roll_peak_rss_mb(self) -> float:
        """The roll process's peak RSS, from the server log ("roll process peak RSS N MB")."""
        text = Path(self.log.name).read_text(errors="replace")
        return max((float(m) for m in re.findall(r"roll process peak RSS (\d+) MB", text)),
                   default=0.0)


def _process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:  # the thread ended meanwhile
                pass
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, and of the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # it exited meanwhile
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _connect_all(clients: dict[str, UploadClient], timeout: float = 30.0) -> None:
    """Say HELLO on every socket and wait for each WELCOME: the CURVE handshakes and the first
    round trips are done before the clock starts (a robot connects once, uploads for hours)."""
    for c in clients.values():
        c.hello()
    end = time.monotonic() + timeout
    waiting = dict(clients)
    while waiting:
        if time.monotonic() > end:
            raise TimeoutError(f"{len(waiting)} uploaders got no WELCOME in {timeout} s")
        for robot, c in list(waiting.items()):
            c.poll(0.01)
            if c.stats.welcome:
                del waiting[robot]


def _upload_threads(clients: dict[str, UploadClient], work: dict[str, list]) -> list[str]:
    """Upload everything, one thread per robot (UploadClient is single-threaded); errors."""
    errors: list[str] = []

    def upload(robot: str) -> None:
        try:
            for done in clients[robot].upload_all(work[robot], timeout=600):
                if not done.acked:
                    raise RuntimeError(f"refused: {done}")
        except BaseException as exc:  # reported to the parent, which fails the run
            errors.append(f"{robot}: {exc!r}")

    threads = [threading.Thread(target=upload, args=(r,)) for r in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def uploader_process(endpoint: str, keys: Path, work: dict[str, list], window: int,
                     conn: Connection) -> None:
    """One uploader process (a few robots): connect, say ready, wait for go, upload, report.

    Why processes: real robots are separate machines; 32 clients as threads of ONE Python
    process would share one GIL, and the benchmark would then measure itself.
    """
    ctx = zmq.Context(io_threads=2 if len(work) > 8 else 1)  # CURVE runs in IO threads
    clients = {r: UploadClient(ClientConfig(endpoint, r, ClientKeys.from_dir(keys, r),
                                            window=window, ack_timeout=30.0), ctx)
               for r in work}
    try:
        _connect_all(clients)
        conn.send("ready")
        conn.recv()  # go
        cpu0 = time.process_time()
        errors = _upload_threads(clients, work)
        conn.send({"errors": errors, "cpu": time.process_time() - cpu0})
    finally:
        for c in clients.values():
            c.close()
        ctx.destroy(linger=0)


def run_uploaders(server: Server, keys: Path, work: dict[str, list], window: int,
                  procs: int) -> dict:
    """Upload everything from `procs` processes (robots dealt round-robin); returns the wall
    time from go to the last ack, the CPU seconds of the uploaders and of the server in that
    time, and the server's counters."""
    endpoint = server.endpoint
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with ZeroMQ threads
    robots = list(work)
    shares = [{r: work[r] for r in robots[i::procs]} for i in range(procs)]
    pipes, children = [], []
    for share in shares:
        parent, child = spawn.Pipe()
        p = spawn.Process(target=uploader_process, args=(endpoint, keys, share, window, child),
                          daemon=True)
        p.start()
        pipes.append(parent)
        children.append(p)
    try:
        for c in pipes:
            if not c.poll(120) or c.recv() != "ready":
                raise RuntimeError("an uploader process did not connect")
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        for c in pipes:
            c.send("go")
        reports = [c.recv() for c in pipes]
        elapsed, server_cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    finally:
        for p in children:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = [e for r in reports for e in r["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed, first: {errors[0]}")
    ctx = zmq.Context()
    probe = UploadClient(ClientConfig(endpoint, robots[0], ClientKeys.from_dir(keys, robots[0])),
                         ctx)
    try:
        stats = probe.counters(timeout=30)["server"]
    finally:
        probe.close()
        ctx.destroy(linger=0)
    return {"elapsed": elapsed, "started": t0, "server_cpu": server_cpu, "uploader_cpu": sum(r["cpu"] for r in reports),
            "server": stats}


def raw_group_commit(path: Path, attempts: list[list[bytes]], group: int) -> float:
    """Attempts/s writing the same bytes in batches of `group`, one fdatasync per batch."""
    blobs = [b"".join(frames) for frames in attempts]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    for i in range(0, len(blobs), group):
        os.write(fd, b"".join(blobs[i:i + group]))
        os.fdatasync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return len(blobs) / elapsed


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput_run(cfg: BenchConfig, root: Path, keys: Path, robots: list[str],
                   jpegs: list[bytes], rng: np.random.Generator) -> dict:
    work = {r: make_attempts(r, cfg.attempts_per_client, cfg.steps, jpegs, rng) for r in robots}
    data = root / f"data-{time.monotonic_ns()}"
    server = Server(data, keys, free_port())
    try:
        up = run_uploaders(server, keys, work, cfg.window, cfg.uploader_procs)
        # A run this short may end before the store rolls its WAL into Parquet; stopping the
        # server rolls the rest, so the time and CPU up to the end of stop() include every
        # attempt's roll (the "rolled" columns): the cost a steady stream would pay too.
        cpu0 = server.cpu_seconds() - up["server_cpu"]  # the server's CPU at go
    finally:
        cpu_all = server.stop()
    cpu_acked, cpu_all = up["server_cpu"], cpu_all - cpu0
    rolled_elapsed = time.perf_counter() - up["started"]
    elapsed, stats = up["elapsed"], up["server"]
    total = sum(len(v) for v in work.values())
    group = max(1, round(stats["committed"] / max(1, stats["commits"])))
    all_frames = [frames for r in robots for _, frames in work[r]]
    # the shared disk's fsync latency swings run to run: median of three passes
    raw = statistics.median(raw_group_commit(root / "raw.bin", all_frames, group)
                            for _ in range(3))
    shutil.rmtree(data, ignore_errors=True)
    nbytes = sum(len(f) for frames in all_frames for f in frames)
    return {"attempts": total, "rate": total / elapsed, "raw": raw, "group": group,
            "ratio": (total / elapsed) / raw, "kb": nbytes / total / 1024,
            "cpu_ms": cpu_acked / total * 1000, "cpu_all_ms": cpu_all / total * 1000,
            "server_share": cpu_acked / elapsed, "uploader_share": up["uploader_cpu"] / elapsed,
            "rolled_ratio": (total / rolled_elapsed) / raw}


def backlog_run(cfg: BenchConfig, root: Path, keys: Path, robots: list[str],
                jpegs: list[bytes], rng: np.random.Generator) -> dict:
    per = cfg.backlog_attempts // cfg.backlog_clients
    work = {r: make_attempts(r, per, cfg.steps, jpegs, rng) for r in robots}
    server = Server(root / "data-backlog", keys, free_port(),
                    ("--commit-delay", str(cfg.backlog_commit_delay)))
    try:  # window = everything: the whole backlog is sent at once
        elapsed = run_uploaders(server, keys, work, per,
                                min(cfg.uploader_procs, len(robots)))["elapsed"]
        hwm = server.vm_hwm_mb()
    finally:
        server.stop()
    roll = server.roll_peak_rss_mb()
    hwm = max(hwm, server.peak_rss_mb if not roll else 0.0)  # with a roll process: its own
    return {"attempts": per * len(robots), "hwm_mb": hwm, "roll_mb": roll, "elapsed": elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer attempts and runs (< 1 min)")
    p.add_argument("--procs", type=int, default=None, help="uploader processes the 32 clients "
                   "are spread over (default 4; 1 = every client a thread of one process)")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp "
                   "dir under the repo, i.e. the disk a store would live on)")
    args = p.parse_args()
    cfg = BenchConfig()
    if args.quick:
        cfg.attempts_per_client, cfg.runs = 25, 3
        cfg.backlog_attempts, cfg.backlog_commit_delay = 4_000, 0.2  # the full run: 10,000
    if args.procs is not None:
        cfg.uploader_procs = max(1, min(args.procs, cfg.clients))
    root = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.dir or REPO))
    rng = np.random.default_rng(0)
    try:
        keys = root / "keys"
        robots = [f"bench{i:02d}" for i in range(cfg.clients)]
        for r in robots:
            create_robot_key(keys, r)
        jpegs = camera_jpegs(64, rng)
        runs = [throughput_run(cfg, root, keys, robots, jpegs, rng) for _ in range(cfg.runs)]
        backlog = backlog_run(cfg, root, keys, robots[:cfg.backlog_clients], jpegs, rng)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{cfg.clients} uploaders in {cfg.uploader_procs} process(es), window "
          f"{cfg.window}, {cfg.steps} JPEG frames of 64x64 per attempt")
    print(f"{'run':>4} {'attempts':>9} {'KB/att':>7} {'group':>6} {'CPU ms/att':>11} "
          f"{'+roll':>6} {'srv CPU':>8} {'upl CPU':>8} {'server att/s':>13} {'raw att/s':>10} "
          f"{'ratio':>6} {'+roll':>6}")
    for i, r in enumerate(runs):
        print(f"{i:>4} {r['attempts']:>9} {r['kb']:>7.1f} {r['group']:>6} {r['cpu_ms']:>11.2f} "
              f"{r['cpu_all_ms']:>6.2f} {r['server_share']:>8.2f} {r['uploader_share']:>8.2f} "
              f"{r['rate']:>13.0f} {r['raw']:>10.0f} {r['ratio']:>6.2f} {r['rolled_ratio']:>6.2f}")
    print("CPU ms/att: the server's CPU (all threads) per attempt until the last ack; +roll: "
          "until it exited, having rolled everything into Parquet. srv/upl CPU: cores busy in "
          "the server / the uploader processes while uploading. ratio: acked att/s over raw "
          "att/s; +roll: the same counting the time until everything was in Parquet")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"backlog: {backlog['attempts']} attempts fired at once at a slowed store "
          f"({cfg.backlog_commit_delay} s per commit): server peak RSS "
          f"{backlog['hwm_mb']:.0f} MB + its Parquet roll process {backlog['roll_mb']:.0f} MB = "
          f"{backlog['hwm_mb'] + backlog['roll_mb']:.0f} MB (target < 512), all acked in "
          f"{backlog['elapsed']:.1f} s")
    print(f"median ratio counting the roll: "
          f"{statistics.median(r['rolled_ratio'] for r in runs):.2f}")
    ratio = statistics.median(r["ratio"] for r in runs)
    print(f"ingest: {ratio:.2f} x (target 0.7)")


if __name__ == "__main__":
    main()
