"""The fleet monitor's core: poll the data server's counters, keep a short history per robot,
and turn cumulative counts into what an operator watches (rates, success, state, backlog).

No HTTP here (fleet/monitor/dashboard.py serves it, fleet/monitor/status.py prints it). The server
only knows cumulative counts (per robot: attempts stored, successes, ... since the store began) and
each robot's latest heartbeat; *rates* exist only as differences between polls, so the monitor
keeps a bounded time series of (time, attempts, successes, failures) per robot and reads rates
off it. Everything here degrades to None (shown as "—") when the server's reply lacks a field,
so a monitor keeps working against an older or newer server.

The monitor connects with a CURVE key of its own (`fleet keys create --name monitor`): it sends
COUNTERS requests only, never HELLO or UPLOAD, so the server never lists it as a robot.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("fleet.monitor")

#: What `state` can be: a robot's own report (fleet.wire.protocol.ROBOT_STATES), or derived here.
OFFLINE = "offline"
WINDOWS = {"5m": 300.0, "1h": 3600.0}


@dataclass
class MonitorConfig:
    """Every tunable of the monitor."""

    endpoint: str = "tcp://127.0.0.1:5555"
    key_dir: Path = Path("keys")
    key_name: str = "monitor"  # keys/secrets/<key_name>.key_secret, admitted in keys/robots/
    poll_interval: float = 2.0  # seconds between COUNTERS requests
    request_timeout: float = 5.0
    offline_after: float = 30.0  # no heartbeat and no stored attempt for this long: offline
    history_seconds: float = 3600.0  # what the 1 h rate needs
    max_samples: int = 4000  # per robot; bounds memory whatever the poll interval
    min_rate_span: float = 10.0  # no rate until the history spans this long (noise, not data)
    learner_dir: Optional[Path] = None  # learner --out (or its policies/): latest.json metrics


@dataclass
class Sample:
    t: float  # monitor clock (unix s) when the counters were read
    attempts: int
    successes: int
    failures: int


@dataclass
class RobotHistory:
    """Bounded series of cumulative counts for one robot, and the derived points for plots."""

    samples: deque = field(default_factory=deque)
    points: deque = field(default_factory=deque)  # (t, attempts/h over 5 min, success ratio)
    min_span: float = 0.0  # MonitorConfig.min_rate_span

    def add(self, s: Sample, cfg: MonitorConfig) -> None:
        if self.samples and s.attempts < self.samples[-1].attempts:
            self.samples.clear()  # the store was replaced or reset: old differences mean nothing
        self.samples.append(s)
        cutoff = s.t - cfg.history_seconds
        # keep the newest sample at or before the cutoff: the 1 h difference starts there
        while len(self.samples) > cfg.max_samples or (len(self.samples) > 1 and
                                                       self.samples[1].t <= cutoff):
            self.samples.popleft()
        self.points.append((s.t, self.rate(WINDOWS["5m"]), self.window_success(WINDOWS["5m"])))
        while len(self.points) > cfg.max_samples or (self.points and self.points[0][0] < cutoff):
            self.points.popleft()

    def _base(self, window: float) -> Optional[Sample]:
        """The sample a window's difference starts from: the newest one at least `window` old,
        else the oldest one kept (a partial window, while the monitor is young). None while the
        history is shorter than min_rate_span: a batch of 4 acked within the first second of
        watching is not a rate of 14,000 attempts/h."""
        if len(self.samples) < 2 or self.span() < self.min_span:
            return None
        start = self.samples[-1].t - window
        base = self.samples[0]
        for s in self.samples:
            if s.t > start:
                break
            base = s
        return base if base is not self.samples[-1] else None

    def rate(self, window: float) -> Optional[float]:
        """Attempts stored per hour over the last `window` seconds (None before two polls)."""
        base = self._base(window)
        if base is None:
            return None
        last = self.samples[-1]
        dt = last.t - base.t
        return (last.attempts - base.attempts) * 3600.0 / dt if dt > 0 else None

    def window_success(self, window: float) -> Optional[float]:
        """Success ratio of the attempts labelled within the window (None if none were)."""
        base = self._base(window)
        if base is None:
            return None
        last = self.samples[-1]
        ok, bad = last.successes - base.successes, last.failures - base.failures
        return ok / (ok + bad) if ok + bad > 0 else None

    def span(self) -> float:
        return self.samples[-1].t - self.samples[0].t if len(self.samples) > 1 else 0.0


def success_ratio(successes: Optional[int], failures: Optional[int]) -> Optional[float]:
    """successes / labelled attempts; aborted attempts have no label and do not count."""
    if successes is None or failures is None or successes + failures == 0:
        return None
    return successes / (successes + failures)


def robot_row(robot_id: str, counters: dict[str, Any], session: dict[str, Any],
              history: Optional[RobotHistory], now: float, offline_after: float
              ) -> dict[str, Any]:
    """One robot's line of the status table, from its store counters and heartbeat session.

    Any field the server did not send is None. The state is the robot's own report while it is
    heard from; `offline` once neither a heartbeat nor a stored attempt came for offline_after.
    """
    status = session.get("status") or {}
    last_hello = session.get("last_hello")
    last_stored = counters.get("last_seen") or None
    seen = [t for t in (last_hello, last_stored) if isinstance(t, (int, float)) and t > 0]
    last_seen = max(seen) if seen else None
    age = now - last_seen if last_seen is not None else None
    state = OFFLINE if age is None or age > offline_after else status.get("state")
    successes, failures = counters.get("successes"), counters.get("failures")
    rates = {k: history.rate(w) if history else None for k, w in WINDOWS.items()}
    return {
        "robot_id": robot_id,
        "state": state,  # None: heard from, but it reports no state (an older robot)
        "attempts": counters.get("attempts"),
        "successes": successes,
        "failures": failures,
        "aborted": counters.get("aborted"),
        "success_rate": success_ratio(successes, failures),
        "success_rate_5m": history.window_success(WINDOWS["5m"]) if history else None,
        "attempts_per_hour_5m": rates["5m"],
        "attempts_per_hour_1h": rates["1h"],
        "rate_span_s": history.span() if history else 0.0,
        # what the robot says it runs now; else the version of its latest stored attempt
        "policy_version": session.get("policy_version", counters.get("policy_version")),
        "last_seen": last_seen,
        "last_seen_age_s": age,
        "spool_attempts": status.get("spool_attempts"),
        "spool_bytes": status.get("spool_bytes"),
        "bytes_stored": counters.get("bytes"),
        "attempts_since_start": status.get("attempts"),
        "host": session.get("host"),  # the machine (or Ray node) it says it runs on
    }


def read_learner(learner_dir: Optional[Path]) -> Optional[dict[str, Any]]:
    """The learner's latest publication (<out>/policies/latest.json), or None / {"error"}."""
    if learner_dir is None:
        return None
    learner_dir = Path(learner_dir)
    pointer = learner_dir / "latest.json"
    if not pointer.exists():
        pointer = learner_dir / "policies" / "latest.json"
    try:
        latest = json.loads(pointer.read_text())
    except FileNotFoundError:
        return {"error": f"{pointer} does not exist yet (nothing published)"}
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read {pointer}: {exc}"}
    if not isinstance(latest, dict):
        return {"error": f"{pointer} is not a JSON object"}
    return {"version": latest.get("version"), "created_at": latest.get("created_at"),
            "trained_on_attempts": latest.get("trained_on_attempts"),
            "metrics": latest.get("metrics") or {}}


class Monitor:
    """Polls one data server; `snapshot()` is what the CLI, the dashboard and /metrics show.

    `poll_once()` does one request; `run(stop)` polls until the event is set. Snapshots are
    taken under a lock, so an HTTP thread may read while the poller writes.
    """

    def __init__(self, config: MonitorConfig):
        self.config = config
        self._lock = threading.Lock()
        self._history: dict[str, RobotHistory] = {}
        self._reply: dict[str, Any] = {}
        self._polled_at: Optional[float] = None
        self._error: Optional[str] = None
        self._polls = 0
        self._client = None

    def _connect(self):
        from fleet.client.upload_client import ClientConfig, UploadClient
        from fleet.server.keys import ClientKeys

        keys = ClientKeys.from_dir(self.config.key_dir, self.config.key_name)
        return UploadClient(ClientConfig(self.config.endpoint, self.config.key_name, keys))

    def connect(self) -> None:
        """Open the connection (lazy, no network wait); a missing key raises KeyFileError,
        which callers let surface before they start threads."""
        if self._client is None:
            self._client = self._connect()

    def poll_once(self) -> bool:
        """One COUNTERS request; True if the server answered. Never raises on a dead server."""
        self.connect()
        try:
            reply = self._client.counters(timeout=self.config.request_timeout)
        except (TimeoutError, RuntimeError) as exc:
            with self._lock:
                if self._error is None:
                    log.warning("server %s not answering: %s", self.config.endpoint, exc)
                self._error = str(exc)
            return False
        self.ingest(reply, time.time())
        return True

    def ingest(self, reply: dict[str, Any], now: float) -> None:
        """Take one COUNTERS reply read at `now` (public so a test can feed known replies)."""
        robots = reply.get("robots") or {}
        with self._lock:
            if self._error is not None:
                log.info("server %s answering again", self.config.endpoint)
            self._error = None
            self._reply, self._polled_at = reply, now
            self._polls += 1
            for rid, c in robots.items():
                s = Sample(now, int(c.get("attempts") or 0), int(c.get("successes") or 0),
                           int(c.get("failures") or 0))
                history = self._history.get(rid)
                if history is None:
                    history = RobotHistory(min_span=self.config.min_rate_span)
                    self._history[rid] = history
                history.add(s, self.config)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            self.poll_once()
            stop.wait(max(0.0, self.config.poll_interval - (time.monotonic() - started)))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def snapshot(self, history_points: int = 240) -> dict[str, Any]:
        """Everything shown, as plain JSON-able data (the dashboard's /api/status)."""
        now = time.time()
        with self._lock:
            reply = self._reply
            robots_c = reply.get("robots") or {}
            sessions = reply.get("sessions") or {}
            ids = sorted(set(robots_c) | set(sessions))
            rows = [robot_row(r, robots_c.get(r) or {}, sessions.get(r) or {},
                              self._history.get(r), now, self.config.offline_after)
                    for r in ids]
            history = {r: _thin(list(h.points), history_points)
                       for r, h in self._history.items()}
            server = {"endpoint": self.config.endpoint, "reachable": self._error is None
                      and self._polled_at is not None, "error": self._error,
                      "polled_at": self._polled_at, "polls": self._polls,
                      **(reply.get("server") or {})}
        return {"time": now, "server": server, "policy": reply.get("policy"),
                "learner": read_learner(self.config.learner_dir), "robots": rows,
                "totals": totals(rows), "history": history,
                "config": {"poll_interval": self.config.poll_interval,
                           "offline_after": self.config.offline_after}}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleet-wide sums (None-valued fields count as 0) and robots per state."""
    def total(key: str) -> float:
        return sum(r[key] or 0 for r in rows)

    states: dict[str, int] = {}
    for r in rows:
        states[r["state"] or "unknown"] = states.get(r["state"] or "unknown", 0) + 1
    return {"robots": len(rows), "attempts": total("attempts"), "successes": total("successes"),
            "success_rate": success_ratio(int(total("successes")), int(total("failures"))),
            "attempts_per_hour_5m": total("attempts_per_hour_5m"),
            "attempts_per_hour_1h": total("attempts_per_hour_1h"),
            "bytes_stored": total("bytes_stored"), "states": states}


def _thin(points: list[tuple], n: int) -> list[list]:
    """At most n evenly spaced points (the newest always kept), for plots."""
    if n <= 0:
        return []
    if len(points) > n:
        step = len(points) / n
        points = [points[int(i * step)] for i in range(n - 1)] + [points[-1]]
    return [list(p) for p in points]
