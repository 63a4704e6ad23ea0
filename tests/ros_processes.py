"""Real ROS 2 processes for tests: an isolated DDS domain, nodes started as `ros2 launch` would
start them, torn down for certain, and an in-test rclpy node with a background executor.

Why this exists: tests run real DDS traffic between real processes (no mocks), on a machine
where teammates run their own ROS graphs at the same time. So every test session claims its own
ROS_DOMAIN_ID (a lock file per id, released by the kernel when the session dies) and confines
DDS to loopback with the project's Fast DDS profile; every process is started in its own
process group and the whole group is signalled on teardown, because the ROS wheels' bootstrapper
re-executes each Python process (and a node may fork helpers) so the PID we spawned is not
necessarily the only process to stop.

conftest.py turns these into fixtures; other test modules import the helpers directly
(`from ros_processes import RosTestNode, wait_for`).
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds-loopback.xml"

#: Test sessions draw their domain from here; teammates use 41-46 by hand.
TEST_DOMAIN_RANGE = range(100, 201)
DOMAIN_LOCK_DIR = Path("/tmp/fleet-ros-test-domains")

T = TypeVar("T")


# --------------------------------------------------------------------------------- waiting


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition",
             interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; return that value.

    Wall clock, never simulated time (which stands still while a simulated arm is idle).
    Raises AssertionError naming `what` on timeout, so a test failure says what never happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------- domain


@dataclass
class RosDomain:
    """A claimed ROS_DOMAIN_ID plus the environment that confines DDS to loopback."""

    domain_id: int
    env: dict[str, str]
    _lock_fd: int = field(repr=False, default=-1)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1


def interrupt(proc: "subprocess.Popen", timeout: float) -> int:
    """Ctrl-C a running command (if it still runs), as an operator stops `fleet sim`; its exit
    code, or that of kill -9 after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def ros_env(domain_id: int, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for ROS processes of a test session on `domain_id`."""
    env = dict(os.environ if base is None else base)
    # Let each child re-execute through the ROS wheels' bootstrapper as it would when started
    # from a shell or a launch file, rather than inherit this process's "already done" mark.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        FASTDDS_DEFAULT_PROFILES_FILE=str(FASTDDS_PROFILE),
        # Not LOCALHOST: measured with rmw_fastrtps 9.3 / Fast DDS 3.2, LOCALHOST makes the rmw
        # add its own transports, which bind 0.0.0.0 and the machine's other interface beside
        # the profile's loopback ones; with SUBNET the profile alone decides, and every socket
        # binds 127.0.0.1 (tests/test_ros_fixture.py checks it).
        ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
    )
    return env


def claim_domain(candidates: Iterable[int] = TEST_DOMAIN_RANGE, exclude: Iterable[int] = ()
                 ) -> RosDomain:
    """Claim a domain id no other live test session holds (flock on a per-id file).

    The search starts at a pid-derived offset so concurrent sessions rarely even contend.
    """
    ids = [i for i in candidates if i not in set(exclude)]
    DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    start = os.getpid() % len(ids)
    for domain_id in ids[start:] + ids[:start]:
        fd = os.open(DOMAIN_LOCK_DIR / f"{domain_id}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return RosDomain(domain_id, ros_env(domain_id), fd)
    raise RuntimeError(f"every ROS test domain in {candidates} is held by another test session; "
                       f"wait for them to finish or remove stale locks in {DOMAIN_LOCK_DIR}")


# --------------------------------------------------------------------------------- processes


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # comm (field 2) may hold spaces or parentheses: parse after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


@dataclass
class StopResult:
    """How a process group ended: the leader's exit code and the signal that ended it."""

    returncode: Optional[int]
    signal: Optional[signal.Signals]  # None: it had already exited on its own
    leftover: list[int]  # group members still alive after SIGKILL (should be empty)


class RosProcess:
    """One child process in its own process group, output captured to a log file."""

    def __init__(self, argv: list[str], name: str, log_path: Path, env: Mapping[str, str],
                 cwd: Path = REPO_ROOT):
        self.argv = argv
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                      start_new_session=True)
        self.pgid = self.popen.pid  # start_new_session: the child leads its own group
        self.result: Optional[StopResult] = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, tail_chars: int = 20000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail_chars:]

    def wait_for_log(self, needle: str, timeout: float) -> None:
        """Wait until the process has written `needle`; fail early if it died instead."""

        def seen() -> bool:
            if needle in self.log_text(10**7):
                return True
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.popen.returncode} before "
                                     f"logging {needle!r}; its log:\n{self.log_text()}")
            return False

        wait_for(seen, timeout, f"{self.name} to log {needle!r}")

    def _group_gone(self) -> bool:
        self.popen.poll()  # reap the leader so it does not linger as a zombie
        return self.popen.returncode is not None and not group_members(self.pgid)

    def stop(self, grace: float = 5.0) -> StopResult:
        """SIGINT the group, wait; SIGTERM, wait; SIGKILL. Idempotent.

        `grace` is the wait after each of SIGINT and SIGTERM. The result records which signal
        ended the group, so a test can assert that a node exits cleanly on SIGINT.
        """
        if self.result is not None:
            return self.result
        ended_by: Optional[signal.Signals] = None
        if not self._group_gone():
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace),
                              (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    pass
                ended_by = sig
                deadline = time.monotonic() + wait
                while not self._group_gone() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if self._group_gone():
                    break
        self._log.close()
        if self in LIVE_PROCESSES:
            LIVE_PROCESSES.remove(self)
        self.result = StopResult(self.popen.returncode, ended_by, group_members(self.pgid))
        return self.result


class ProcessGroup:
    """The processes a fixture started; stops them all (newest first) on close."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]):
        self.log_dir = log_dir
        self.env = dict(env)
        self.processes: list[RosProcess] = []

    def start(self, argv: list[str], name: str, env: Optional[Mapping[str, str]] = None
              ) -> RosProcess:
        log = self.log_dir / f"{name}-{len(self.processes)}.log"
        proc = RosProcess(argv, name, log, env if env is not None else self.env)
        self.processes.append(proc)
        LIVE_PROCESSES.append(proc)
        return proc

    def start_node(self, module: str, name: str, namespace: Optional[str] = None,
                   params_file: Optional[Path] = None, params: Optional[Mapping[str, Any]] = None,
                   remaps: Optional[Mapping[str, str]] = None,
                   env: Optional[Mapping[str, str]] = None) -> RosProcess:
        """Start `python -m module --ros-args ...` the way a launch file's Node action would."""
        argv = [sys.executable, "-m", module] + ros_args(namespace, params_file, params, remaps)
        return self.start(argv, name, env)

    def close(self, grace: float = 5.0) -> list[StopResult]:
        results = []
        for proc in reversed(self.processes):
            results.append(proc.stop(grace))
        leftovers = {p.name: r.leftover for p, r in zip(reversed(self.processes), results)
                     if r.leftover}
        assert not leftovers, f"processes survived SIGKILL of their group: {leftovers}"
        return results


#: Processes started and not yet stopped; conftest attaches their logs to failing tests.
LIVE_PROCESSES: list[RosProcess] = []


def ros_args(namespace: Optional[str] = None, params_file: Optional[Path] = None,
             params: Optional[Mapping[str, Any]] = None,
             remaps: Optional[Mapping[str, str]] = None) -> list[str]:
    """The `--ros-args` tail of a node's command line."""
    args = ["--ros-args"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    for src, dst in (remaps or {}).items():
        args += ["-r", f"{src}:={dst}"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for key, value in (params or {}).items():
        args += ["-p", f"{key}:={param_literal(value)}"]
    return args


def param_literal(value: Any) -> str:
    """A -p value as rcl's YAML parser reads it (bools lower case, strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(param_literal(v) for v in value) + "]"
    return repr(value)


# --------------------------------------------------------------------------------- rclpy


class MessageLog:
    """Messages a subscription received, thread-safe; waiters wake as soon as one arrives."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list[Any] = []

    def append(self, msg: Any) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self._cond:
            return list(self._messages)

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def latest(self) -> Any:
        with self._cond:
            return self._messages[-1] if self._messages else None

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait(self, timeout: float, where: Callable[[Any], bool] = lambda m: True,
             what: str = "a message") -> Any:
        """The newest received message satisfying `where` (already received ones count),
        waiting up to `timeout` s of wall time; AssertionError naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in reversed(self._messages):
                    if where(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
                self._cond.wait(remaining)


class RosTestNode:
    """An rclpy node inside the test process, spun by a background executor thread.

    Uses its own rclpy Context, so tests never depend on (or break) rclpy's global state.
    Use as a context manager; callbacks run on the executor's thread, test code on its own.
    `cli_args` are the node's own `--ros-args` (e.g. a /clock remap), `parameter_overrides`
    rclpy Parameters (e.g. use_sim_time).
    """

    def __init__(self, name: str = "test_client", namespace: str = "",
                 parameter_overrides: Optional[list] = None, domain_id: Optional[int] = None,
                 cli_args: Optional[list[str]] = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)  # None: ROS_DOMAIN_ID
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context,
                                      parameter_overrides=parameter_overrides or [],
                                      cli_args=cli_args)
        # Single-threaded: rclpy 9.1.2's MultiThreadedExecutor stalls deliveries for up to
        # ~2 s (see sim_bridge/node.py, "Concurrency design"); callbacks here only store.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def subscribe(self, msg_type: Any, topic: str, qos: Any = 10) -> MessageLog:
        log = MessageLog()
        self.node.create_subscription(msg_type, topic, log.append, qos)
        return log

    def publisher(self, msg_type: Any, topic: str, qos: Any = 10,
                  wait_subscribers: int = 1, timeout: float = 10.0) -> Any:
        """A publisher, returned once `wait_subscribers` subscribers have matched it."""
        pub = self.node.create_publisher(msg_type, topic, qos)
        if wait_subscribers:
            wait_for(lambda: pub.get_subscription_count() >= wait_subscribers, timeout,
                     f"a subscriber on {pub.topic_name}")
        return pub

    def call(self, srv_type: Any, name: str, request: Any = None, timeout: float = 10.0) -> Any:
        """Call a service and return its response (waits for the server first)."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {client.srv_name} not available after {timeout} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            wait_for(future.done, timeout, f"a response from {client.srv_name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "RosTestNode":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
