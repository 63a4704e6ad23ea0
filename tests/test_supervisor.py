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
