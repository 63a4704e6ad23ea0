"""What the data server knows of each robot from its HELLOs (the heartbeat).

Per robot: the policy version it runs, its latest status (state, spool backlog, attempts and
successes since start; fleet.wire.protocol.RobotStatus), the host (node) it says it runs on,
when it was last heard from, and the ROUTER
identity of its connection, which is where a POLICY_AVAILABLE push goes. A robot is *online*
while its last HELLO is younger than `ttl` (clients send one every 5 s). Nothing here is
durable: after a server restart every robot reappears with its next HELLO.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

log = logging.getLogger("fleet.server")


class Sessions:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self._by_robot: dict[str, dict[str, Any]] = {}
        self._identities: dict[str, bytes] = {}

    def hello(self, robot_id: str, identity: bytes, policy_version: int,
              status: Optional[dict[str, Any]], host: Optional[str] = None) -> None:
        """Record a HELLO; a HELLO without status (or host) keeps the one last reported."""
        previous = self._by_robot.get(robot_id)
        session: dict[str, Any] = {"policy_version": policy_version, "last_hello": time.time()}
        for key, value in (("status", status), ("host", host)):
            if value is not None:
                session[key] = value
            elif previous and key in previous:
                session[key] = previous[key]
        self._by_robot[robot_id] = session
        self._identities[robot_id] = identity
        _log_changes(robot_id, previous, session)

    def online(self) -> dict[str, bytes]:
        """robot id -> connection identity, for every robot heard from within ttl."""
        cutoff = time.time() - self.ttl
        return {r: self._identities[r] for r, s in self._by_robot.items()
                if s["last_hello"] >= cutoff}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """robot id -> {policy_version, last_hello, online, status and host (if ever reported)}."""
        cutoff = time.time() - self.ttl
        return {r: dict(s, online=s["last_hello"] >= cutoff) for r, s in self._by_robot.items()}


def _log_changes(robot_id: str, previous: Optional[dict[str, Any]],
                 session: dict[str, Any]) -> None:
    """Say when a robot appears, moves to another host (an arm restarted elsewhere) or swaps
    its policy: the events an operator looks for in the server's log."""
    version, host = session["policy_version"], session.get("host")
    on = f" on {host}" if host else ""
    if previous is None:
        log.info("robot %s connected%s, running policy v%d", robot_id, on, version)
        return
    if host != previous.get("host"):
        log.info("robot %s now runs on %s (was %s)", robot_id, host, previous.get("host"))
    if previous["policy_version"] != version:
        log.info("robot %s now runs policy v%d (was v%d)", robot_id, version,
                 previous["policy_version"])
