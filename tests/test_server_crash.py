"""Durability under adversity: `kill -9` of the server mid-stream, robot restarts, a full disk.

Nothing acked may be lost or stored twice, and the uploaders must finish on their own."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tmpfs import mounted_tmpfs

from fleet.wire.records import encode
from server_helpers import ServerProcess, client, make_attempt, make_keys, stored_ids


class Uploader(threading.Thread):
    """One robot streaming its attempts; `restart_after` closes and re-opens its client once
    (a robot_node restart: it re-submits everything its spool still holds, i.e. unacked)."""

    def __init__(self, keys: Path, robot: str, endpoint: str, n: int, restart_after: int = 0):
        super().__init__(daemon=True)
        self.keys, self.robot, self.endpoint = keys, robot, endpoint
        self.attempts = {a.attempt_id: a for a in (make_attempt(robot) for _ in range(n))}
        self.acked: set[str] = set()
        self.restart_after = restart_after
        self.error: BaseException | None = None

    def _stream(self, stop_after: int = 0) -> None:
        c = client(self.keys, self.robot, self.endpoint, ack_timeout=1.0, max_backoff=2.0)
        try:
            spool = [(aid, encode(a)) for aid, a in self.attempts.items()
                     if aid not in self.acked]
            for done in c.upload_all(spool, timeout=120):
                assert done.acked, done
                self.acked.add(done.attempt_id)
                if stop_after and len(self.acked) >= stop_after:
                    return
        finally:
            c.close()

    def run(self) -> None:
        try:
            if self.restart_after:
                self._stream(stop_after=self.restart_after)
            self._stream()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _total_acked(uploaders: list[Uploader]) -> int:
    return sum(len(u.acked) for u in uploaders)


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_acked(tmp_path):
    keys = make_keys(tmp_path / "keys", "arm1", "arm2", "arm3")
    srv = ServerProcess(tmp_path / "data", keys).start()
    uploaders = [Uploader(keys, "arm1", srv.endpoint, 150),
                 Uploader(keys, "arm2", srv.endpoint, 150, restart_after=60),
                 Uploader(keys, "arm3", srv.endpoint, 150)]
    try:
        for u in uploaders:
            u.start()
        for threshold in (60, 200):
            _wait_for(lambda: _total_acked(uploaders) >= threshold, 60, f"{threshold} acks")
            srv.kill()  # kill -9 in the middle of the stream
            acked_at_kill = _total_acked(uploaders)
            time.sleep(0.3)
            srv.start()
            assert acked_at_kill < 450, "the stream ended before the kill: test proves nothing"
        for u in uploaders:
            u.join(120)
            assert not u.is_alive() and u.error is None, u.error
        assert srv.stop() == 0, srv.log()
    finally:
        srv.kill()
    stored = stored_ids(tmp_path / "data")
    for u in uploaders:
        assert u.acked == set(u.attempts)
        assert all(stored[aid] == 1 for aid in u.attempts)
    assert sum(stored.values()) == 450 and max(stored.values()) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system, so the kernel itself says ENOSPC."""
    with mounted_tmpfs(tmp_path / "disk", "4m") as mnt:
        yield mnt


@pytest.mark.slow
def test_full_disk_gives_back_pressure_then_resumes(tmp_path, small_disk):
    keys = make_keys(tmp_path / "keys", "arm1", "monitor")
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (2 * 2**20))  # leaves ~2 MB, half of it the store's reserve
    srv = ServerProcess(small_disk, keys, extra=("--min-free-bytes", str(2**20))).start()
    uploader = Uploader(keys, "arm1", srv.endpoint, 120)  # ~2 MB of attempts: cannot all fit
    monitor = client(keys, "monitor", srv.endpoint)
    try:
        uploader.start()
        _wait_for(lambda: monitor.counters()["server"]["blocked"], 60, "back-pressure")
        time.sleep(0.5)
        acked_while_full = len(uploader.acked)
        time.sleep(2.0)
        assert len(uploader.acked) == acked_while_full, "acked while the disk was full"
        assert 0 < acked_while_full < 120
        assert "back-pressure" in srv.log()
        server_view = monitor.counters()
        assert server_view["robots"]["arm1"]["attempts"] == acked_while_full
        ballast.unlink()  # the operator frees space
        uploader.join(90)
        assert not uploader.is_alive() and uploader.error is None, uploader.error
        assert monitor.counters()["server"]["blocked"] is None
        assert srv.stop() == 0, srv.log()
    finally:
        monitor.close()
        srv.kill()
    stored = stored_ids(small_disk)
    assert set(stored) == set(uploader.attempts) and max(stored.values()) == 1
