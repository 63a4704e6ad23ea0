"""Prometheus metrics of the data server, in a registry the server owns.

Owning the registry (instead of prometheus_client's global one) lets several servers live in
one process (tests) and lets the monitor add its own collectors to exactly this registry later.
"""
from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fleet.server.binding import warn_if_http_exposed
from fleet.wire.protocol import ROBOT_STATES

BACKPRESSURE_REASONS = ("queue_full", "store_refused")


class ServerMetrics:
    def __init__(self, port: Optional[int] = None, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        self._children: dict = {}
        r = self.registry
        self._received = Counter("fleet_uploads_received", "Valid uploads received",
                                 ["robot"], registry=r)
        self._acked = Counter("fleet_attempts_acked", "Attempts acked once durable",
                              ["robot"], registry=r)
        self._dups = Counter("fleet_attempts_duplicate", "Re-sent attempts acked, stored once",
                             ["robot"], registry=r)
        self._refused = Counter("fleet_requests_refused", "Requests answered with an ERROR",
                                ["robot", "code"], registry=r)
        self._busy = Counter("fleet_uploads_busy", "Uploads answered BUSY (back-pressure)",
                             ["robot"], registry=r)
        self._policy = Gauge("fleet_robot_policy_version", "Policy version a robot reports",
                             ["robot"], registry=r)
        self._last_hello = Gauge("fleet_robot_last_hello_seconds", "Unix time of last HELLO",
                                 ["robot"], registry=r)
        self._robot_state = Gauge("fleet_robot_state", "1 for the state a robot reports",
                                  ["robot", "state"], registry=r)
        self._spool = Gauge("fleet_robot_spool_attempts", "Attempts in a robot's spool",
                            ["robot"], registry=r)
        self._spool_bytes = Gauge("fleet_robot_spool_bytes", "Bytes in a robot's spool",
                                  ["robot"], registry=r)
        self._served = Gauge("fleet_policy_served_version", "Policy version the server serves",
                             registry=r)
        self._pinned = Gauge("fleet_policy_pinned", "1 while an operator pins the version",
                             registry=r)
        self._queue = Gauge("fleet_ingest_queue_attempts", "Attempts waiting for a commit",
                            registry=r)
        self._queue_bytes = Gauge("fleet_ingest_queue_bytes", "Bytes waiting for a commit",
                                  registry=r)
        self._backpressure = Gauge("fleet_backpressure", "1 while the server withholds acks",
                                   ["reason"], registry=r)
        self._group = Histogram("fleet_commit_group_attempts", "Attempts per group commit",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                registry=r)
        self._commit = Histogram("fleet_commit_seconds", "Duration of one store append",
                                 registry=r)
        for reason in BACKPRESSURE_REASONS:
            self._backpressure.labels(reason).set(0)
        self._http = None
        if port is not None:  # beyond loopback: allowed, with a warning (fleet/server/binding.py)
            warn_if_http_exposed("the data server's /metrics", host, port)
            self._http, _ = start_http_server(port, addr=host, registry=r)

    def _child(self, metric, *labels: str):
        """labels() is slow enough to show per upload; children are cached per label set."""
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def received(self, robot: str) -> None:
        self._child(self._received, robot).inc()

    def acked(self, robot: str, duplicate: bool) -> None:
        self._child(self._acked, robot).inc()
        if duplicate:
            self._child(self._dups, robot).inc()

    def refused(self, robot: str, code: str) -> None:
        self._child(self._refused, robot, code).inc()

    def busy(self, robot: str) -> None:
        self._child(self._busy, robot).inc()

    def hello(self, robot: str, policy_version: int, status: Optional[dict] = None) -> None:
        self._policy.labels(robot).set(policy_version)
        self._last_hello.labels(robot).set(time.time())
        if status:
            for state in ROBOT_STATES:
                self._robot_state.labels(robot, state).set(1 if state == status["state"] else 0)
            self._spool.labels(robot).set(status["spool_attempts"])
            self._spool_bytes.labels(robot).set(status["spool_bytes"])

    def set_policy(self, served_version: int, pinned: bool) -> None:
        self._served.set(served_version)
        self._pinned.set(1 if pinned else 0)

    def observe_commit(self, attempts: int, seconds: float) -> None:
        self._group.observe(attempts)
        self._commit.observe(seconds)

    def set_queue(self, attempts: int, nbytes: int) -> None:
        self._queue.set(attempts)
        self._queue_bytes.set(nbytes)

    def set_backpressure(self, reason: Optional[str]) -> None:
        for r in BACKPRESSURE_REASONS:
            self._backpressure.labels(r).set(1 if r == reason else 0)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http = None
