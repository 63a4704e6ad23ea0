"""`fleet monitor`: the web dashboard, its JSON API and Prometheus /metrics, over one Monitor.

Routes (stdlib `http.server.ThreadingHTTPServer`, bound to 127.0.0.1 by default):

    GET /              the dashboard (dashboard.html: inline JS + hand-drawn SVG, no CDN)
    GET /api/status    Monitor.snapshot() as JSON: what the page polls
    GET /metrics       Prometheus text format, per-robot labels (a registry of its own)
    GET /healthz       "ok" once the first poll answered, else 503

The poller runs in a thread of its own; HTTP threads only read snapshots. SIGINT/SIGTERM stop
both and the process exits 0.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleet.monitor.monitor import WINDOWS, Monitor
from fleet.server.binding import warn_if_http_exposed

log = logging.getLogger("fleet.monitor")

#: Every state a robot may show; fleet_monitor_robot_state has one series per state (0 or 1),
#: the Prometheus way of exporting an enum.
STATES = ("collecting", "idle", "estopped", "paused", "starting", "error", "offline")


@dataclass
class DashboardConfig:
    host: str = "127.0.0.1"  # loopback: put a reverse proxy with auth in front to share it
    port: int = 8080


class MonitorCollector:
    """Turns a Monitor snapshot into metric families at scrape time (nothing cached twice)."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        snap = self.monitor.snapshot(history_points=0)
        yield from robot_metrics(snap["robots"])
        yield from fleet_metrics(snap)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"fleet_monitor_{name}", doc, labels=list(labels))


def robot_metrics(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-robot families; a field the server did not send is left out, never exported as 0."""
    attempts = CounterMetricFamily("fleet_monitor_attempts", "Attempts stored, by outcome",
                                   labels=["robot", "outcome"])
    stored = CounterMetricFamily("fleet_monitor_stored_bytes", "Encoded bytes stored",
                                 labels=["robot"])
    rate = _gauge("attempts_per_hour", "Attempts stored per hour over a trailing window",
                  ("robot", "window"))
    gauges = {key: _gauge(name, doc, ("robot",)) for key, name, doc in (
        ("success_rate", "success_ratio", "successes / (successes + failures), all time"),
        ("success_rate_5m", "success_ratio_5m", "success ratio of the last 5 minutes"),
        ("policy_version", "policy_version", "Policy version the robot runs"),
        ("last_seen", "last_seen_timestamp_seconds", "Unix time of last heartbeat or attempt"),
        ("spool_attempts", "spool_attempts", "Attempts waiting in the robot's spool"),
        ("spool_bytes", "spool_bytes", "Bytes waiting in the robot's spool"))}
    state = _gauge("robot_state", "1 for the robot's current state", ("robot", "state"))
    for r in rows:
        rid = r["robot_id"]
        for outcome, key in (("success", "successes"), ("failure", "failures"),
                             ("aborted", "aborted")):
            if r[key] is not None:
                attempts.add_metric([rid, outcome], r[key])
        if r["bytes_stored"] is not None:
            stored.add_metric([rid], r["bytes_stored"])
        for window in WINDOWS:
            value = r[f"attempts_per_hour_{window}"]
            if value is not None:
                rate.add_metric([rid, window], value)
        for key, family in gauges.items():
            if r[key] is not None:
                family.add_metric([rid], r[key])
        for s in STATES:
            state.add_metric([rid, s], 1.0 if r["state"] == s else 0.0)
    yield from (attempts, stored, rate, *gauges.values(), state)


def fleet_metrics(snap: dict[str, Any]) -> Iterator[Metric]:
    """Server reachability, the served policy, the learner's latest metrics."""
    up = _gauge("server_up", "1 if the data server answered the last poll")
    up.add_metric([], 1.0 if snap["server"]["reachable"] else 0.0)
    yield up
    policy = snap.get("policy") or {}
    if policy.get("served_version") is not None:
        served = _gauge("served_policy_version", "Policy version the data server serves")
        served.add_metric([], policy["served_version"])
        pinned = _gauge("policy_pinned", "1 while an operator pins the served version")
        pinned.add_metric([], 1.0 if policy.get("pinned") else 0.0)
        yield from (served, pinned)
    learner = snap.get("learner") or {}
    if learner.get("version") is not None:
        version = _gauge("learner_policy_version", "Version of the learner's latest publication")
        version.add_metric([], learner["version"])
        yield version
        metric = _gauge("learner_metric", "The learner's latest published metrics", ("name",))
        for name, value in sorted((learner.get("metrics") or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metric.add_metric([name], float(value))
        yield metric


def page() -> bytes:
    return resources.files("fleet.monitor").joinpath("dashboard.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.server.page)
        elif path == "/api/status":
            body = json.dumps(self.server.monitor.snapshot(), allow_nan=False).encode()
            self._send(HTTPStatus.OK, "application/json", body)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            ok = self.server.monitor.snapshot(history_points=0)["server"]["reachable"]
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                       b"ok\n" if ok else b"data server not answering\n")
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain",
                       b"not found: try /, /api/status or /metrics\n")

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http %s: " + fmt, self.address_string(), *args)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, monitor: Monitor, config: DashboardConfig):
        warn_if_http_exposed("the fleet monitor (dashboard, /api/status, /metrics)",
                             config.host, config.port)
        super().__init__((config.host, config.port), _Handler)
        self.monitor = monitor
        self.page = page()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MonitorCollector(monitor))


def serve(monitor: Monitor, config: DashboardConfig,
          ready: Optional[Callable[[str], None]] = None) -> None:
    """Poll and serve until SIGINT/SIGTERM (or until `serve_forever` is shut down)."""
    monitor.connect()  # key trouble is a user error: say so before any thread starts
    http = DashboardServer(monitor, config)
    stop = threading.Event()
    poller = threading.Thread(target=monitor.run, args=(stop,), name="monitor-poll",
                              daemon=True)

    def handler(signum, _frame):
        log.info("%s: stopping the monitor", signal.Signals(signum).name)
        stop.set()
        threading.Thread(target=http.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    poller.start()
    host, port = http.server_address[:2]
    log.info("monitoring %s every %.1f s; dashboard on http://%s:%d/",
             monitor.config.endpoint, monitor.config.poll_interval, host, port)
    if ready is not None:
        ready(f"http://{host}:{port}/")
    try:
        http.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        poller.join(monitor.config.request_timeout + 1.0)
        http.server_close()
        monitor.close()
