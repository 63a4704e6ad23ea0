"""The supervisor behind `fleet sim`, with real child processes."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fleet.ops.supervisor import ChildSpec, Supervisor, SupervisorConfig

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Ignores SIGINT and SIGTERM and spawns a grandchild: only SIGKILL of its group ends both.
STUBBORN = [sys.executable, "-c",
            "import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_crashed_child_is_restarted_and_logged(tmp_path: Path, caplog) -> None:
    crash = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
    sup = Supervisor([ChildSpec("crasher", crash), ChildSpec("sleeper", SLEEPER)],
                     SupervisorConfig(log_dir=tmp_path, restart_backoff_s=0.1))
    sup.start()
    try:
        sleeper_pid = sup.running()["sleeper"]
        assert _wait(lambda: (sup.poll(), sup.restarts()["crasher"] >= 2)[1], 20)
        assert sup.running()["sleeper"] == sleeper_pid, "a healthy child must not be touched"
        assert "exited with code 3" in caplog.text
        assert "boom" in (tmp_path / "crasher.log").read_text()
    finally:
        sup.stop()
    assert not _alive(sleeper_pid)


def test_stop_leaves_no_process_even_if_it_ignores_signals(tmp_path: Path) -> None:
    sup = Supervisor([ChildSpec("stubborn", STUBBORN), ChildSpec("sleeper", SLEEPER)],
                     SupervisorConfig(log_dir=tmp_path, stop_timeout_s=0.5))
    sup.start()
    log = tmp_path / "stubborn.log"
    assert _wait(lambda: log.exists() and log.read_text().strip(), 30)
    grandchild = int(log.read_text().split()[0])
    pids = [p for p in sup.running().values() if p]
    assert _alive(grandchild) and all(_alive(p) for p in pids)
    sup.stop()
    assert _wait(lambda: not _alive(grandchild) and not any(_alive(p) for p in pids), 10)
    assert sup.running() == {"stubborn": None, "sleeper": None}


# A supervisor in a process of its own, as in a Ray arm actor: it prints its child's pid, then
# waits to be killed.
SUPERVISING = r"""
import sys, threading, time
from pathlib import Path
from fleet.ops.supervisor import ChildSpec, Supervisor, SupervisorConfig
sup = Supervisor([ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])],
                 SupervisorConfig(log_dir=Path(sys.argv[1]), die_with_parent=True))
def supervise():  # spawn from a thread, as the actor does: the child must still outlive nothing
    sup.start()
    print(sup.running()["sleeper"], flush=True)
    while True:
        time.sleep(0.2)
threading.Thread(target=supervise, daemon=True).start()
time.sleep(600)
"""


def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path: Path) -> None:
    """die_with_parent: kill -9 of the supervising process (a Ray worker whose node died) takes
    its children with it, although they run in process groups of their own."""
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", SUPERVISING, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert _alive(child)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait(lambda: not _alive(child), 10), "the child outlived its supervisor"
    finally:
        proc.kill()
        proc.wait()


# A supervisor in a process that blocks SIGINT and ignores SIGCHLD, as a Ray worker does (its
# raylet's signal state survives fork and exec): the child must still stop on SIGINT.
BLOCKED = r"""
import signal, sys, time
from pathlib import Path
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
from fleet.ops.supervisor import ChildSpec, Supervisor, SupervisorConfig
child = "import time\ntry:\n    time.sleep(600)\nexcept KeyboardInterrupt:\n    print('SIGINT')\n"
sup = Supervisor([ChildSpec("c", [sys.executable, "-c", child])],
                 SupervisorConfig(log_dir=Path(sys.argv[1]), stop_timeout_s=5))
sup.start()
time.sleep(1.5)
t = time.monotonic()
sup.stop()
print(f"stopped in {time.monotonic() - t:.1f} s", flush=True)
"""


def test_children_stop_on_sigint_when_the_supervisor_blocks_it(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert "stopped in" in out.stdout, out.stderr
    assert float(out.stdout.split("stopped in")[1].split()[0]) < 4.0, out.stdout + out.stderr
    assert "SIGINT" in (tmp_path / "c.log").read_text()
