"""What the data server knows of each robot from its HELLOs (the heartbeat).

Per robot: the policy version it runs, its latest status (state, spool backlog, attempts and
successes since start; fleet.wire.protocol.RobotStatus), when it was last heard from, and the ROUTER
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
              status: Optional[dict[str, Any]]) -> None:
        """Record a HELLO; a HELLO without status keeps the status last reported."""
        previous = self._by_robot.get(robot_id)
        session: dict[str, Any] = {"policy_version": policy_version, "last_hello": time.time()}
        if status is not None:
            session["status"] = status
        elif previous and "status" in previous:
            session["status"] = previous["status"]
        self._by_robot[robot_id] = session
        self._identities[robot_id] = identity
        if previous is None:
            log.info("robot %s connected, running policy v%d", robot_id, policy_version)
        elif previous["policy_version"] != policy_version:
            log.info("robot %s now runs policy v%d (was v%d)", robot_id, policy_version,
                     previous["policy_version"])

    def online(self) -> dict[str, bytes]:
        """robot id -> connection identity, for every robot heard from within ttl."""
        cutoff = time.time() - self.ttl
        return {r: self._identities[r] for r, s in self._by_robot.items()
                if s["last_hello"] >= cutoff}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """robot id -> {policy_version, last_hello, online, status (if ever reported)}."""
        cutoff = time.time() - self.ttl
        return {r: dict(s, online=s["last_hello"] >= cutoff) for r, s in self._by_robot.items()}
