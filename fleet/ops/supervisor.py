"""Run a set of child processes as one service: start them, restart any that crash (and log it),
and stop them all cleanly on SIGINT/SIGTERM.

This is what `fleet sim` uses to run the data server, the learner and every arm's nodes as real,
separate processes. It is deliberately not a launch system: it takes argv lists (computed by
fleet/ops/plan.py the way `ros2 launch` would pass them) and keeps them alive, nothing more.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("fleet.supervisor")


@dataclass
class ChildSpec:
    """A process to keep running."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True


@dataclass
class SupervisorConfig:
    log_dir: Path
    restart_backoff_s: float = 1.0  # first restart delay; doubles per crash, capped below
    restart_backoff_max_s: float = 30.0
    stable_after_s: float = 60.0  # a child up this long has its backoff reset
    stop_timeout_s: float = 10.0  # SIGINT, then SIGTERM, then SIGKILL, each after this long
    #: Children get SIGKILL when the supervising process dies, even by SIGKILL (Linux
    #: PR_SET_PDEATHSIG): a Ray actor that dies with its node (fleet/ops/ray_fleet.py) must not
    #: leave its arm running beside the one Ray restarts. Spawn from one long-lived thread: the
    #: signal follows the death of the thread that started the child.
    die_with_parent: bool = False


@dataclass
class _Child:
    spec: ChildSpec
    proc: Optional[subprocess.Popen] = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 0.0


class Supervisor:
    """Keeps children alive until stop(); every child runs in its own process group so that
    stopping it also stops whatever it spawned (ros-wheels-bootstrapper re-executes Python
    processes once, so the pid we start may not be the one doing the work)."""

    def __init__(self, children: list[ChildSpec], config: SupervisorConfig):
        self.config = config
        self._children = [_Child(c) for c in children]
        self._stopping = False
        config.log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        logfile = open(self.config.log_dir / f"{child.spec.name.replace('/', '_')}.log", "ab")
        env = {**os.environ, **child.spec.env}
        preexec = _child_setup(os.getpid(), self.config.die_with_parent)
        child.proc = subprocess.Popen(child.spec.argv, stdout=logfile, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                      preexec_fn=preexec)
        logfile.close()
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    def poll(self) -> None:
        """Restart children that exited, with exponential backoff. Call it periodically."""
        now = time.monotonic()
        for child in self._children:
            if child.proc is None:
                if not self._stopping and now >= child.next_start:
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > self.config.stable_after_s:
                    child.backoff = 0.0
                continue
            _kill_group(child.proc.pid, signal.SIGKILL)  # leave no grandchild behind
            child.proc = None
            if self._stopping or not child.spec.restart:
                log.warning("%s exited with code %s; not restarting", child.spec.name, code)
                continue
            child.restarts += 1
            child.backoff = min(max(child.backoff * 2, self.config.restart_backoff_s),
                                self.config.restart_backoff_max_s)
            child.next_start = now + child.backoff
            log.error("%s exited with code %s; restart #%d in %.1f s (log: %s)",
                      child.spec.name, code, child.restarts, child.backoff,
                      self.config.log_dir / f"{child.spec.name.replace('/', '_')}.log")

    def running(self) -> dict[str, Optional[int]]:
        """name -> pid of each child currently running (None while waiting to restart)."""
        return {c.spec.name: (c.proc.pid if c.proc else None) for c in self._children}

    def restarts(self) -> dict[str, int]:
        return {c.spec.name: c.restarts for c in self._children}

    def stop(self) -> None:
        """SIGINT every child (the clean-shutdown signal of ROS nodes and fleet processes),
        then SIGTERM, then SIGKILL what is still there, group by group."""
        self._stopping = True
        live = [c for c in self._children if c.proc is not None]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            for child in live:
                if child.proc.poll() is None:
                    _kill_group(child.proc.pid, sig)
            deadline = time.monotonic() + self.config.stop_timeout_s
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in live):
                time.sleep(0.05)
            if all(c.proc.poll() is not None for c in live):
                break
            log.warning("children still running after %s: %s", sig.name,
                        [c.spec.name for c in live if c.proc.poll() is None])
        for child in live:
            _kill_group(child.proc.pid, signal.SIGKILL)  # grandchildren, if any, go too
            log.info("stopped %s (exit code %s)", child.spec.name, child.proc.returncode)
            child.proc = None


_PR_SET_PDEATHSIG = 1
_RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


def _child_setup(parent: int, die_with_parent: bool):
    """A preexec_fn, or None when a plain start will do.

    Children start with every signal unblocked and SIGINT/SIGTERM/SIGCHLD at their defaults:
    a Ray worker inherits a raylet that blocks SIGINT and ignores SIGCHLD, both survive exec,
    and a node that never sees SIGINT cannot stop cleanly. With die_with_parent the child also
    gets SIGKILL when `parent` dies (and exits if it already has)."""
    odd = bool(signal.pthread_sigmask(signal.SIG_BLOCK, [])) or any(
        signal.getsignal(s) == signal.SIG_IGN for s in _RESET)
    if not (odd or die_with_parent):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in _RESET:
            libc.signal(int(sig), 0)  # SIG_DFL
        if die_with_parent:
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # it died between fork and prctl
                os._exit(1)

    return setup


def _kill_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
