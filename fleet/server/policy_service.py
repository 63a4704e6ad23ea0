"""The data server's half of policy distribution: follow the policies directory, push
POLICY_AVAILABLE to every online robot when the served version changes, answer FETCH_POLICY.

Which version is served (newest, or pinned) and what is refused is fleet/policy/folder.py;
the socket stays the server's: this class only builds frames and says where they go.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

from fleet.wire import protocol as P
from fleet.server.metrics import ServerMetrics
from fleet.server.sessions import Sessions

log = logging.getLogger("fleet.server")


class PolicyService:
    def __init__(self, policies_dir: Path, max_bytes: int, poll_interval: float,
                 metrics: ServerMetrics):
        from fleet.policy.folder import PolicyWatch  # imports torch: only when used

        self.watch = PolicyWatch(policies_dir, max_bytes)
        self.poll_interval = poll_interval
        self.metrics = metrics
        self._next_poll = 0.0

    def announcement(self) -> Optional[dict[str, Any]]:
        """WELCOME's `policy` field: {version, sha256, size, pinned}, or None."""
        served = self.watch.served
        return served.announcement() if served else None

    def tick(self, sessions: Sessions, send: Callable[..., None]) -> None:
        """Poll the directory when due; announce a change to every online robot."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self.poll_interval
        if not self.watch.poll():
            return
        served = self.watch.served
        self.metrics.set_policy(served.version, served.pinned)
        header = P.pack(P.MsgType.POLICY_AVAILABLE, None, **served.announcement())
        online = sessions.online()
        for identity in online.values():
            send(identity, header)
        log.info("announced policy v%d to %d online robot(s)", served.version, len(online))

    def reply(self, seq: Optional[int], robot_id: str) -> list[bytes]:
        """POLICY frames (header, packed bundle) of the policy served now, whatever version was
        asked for: the fleet runs one policy. ProtocolError(NO_POLICY) before the first."""
        served = self.watch.served
        if served is None:
            raise P.ProtocolError(P.ErrorCode.NO_POLICY, "this server serves no policy yet "
                                  "(none published, or no valid bundle)")
        log.info("sending policy v%d to %s", served.version, robot_id)
        return [P.pack(P.MsgType.POLICY, seq, **served.announcement()), served.blob]

    def status(self) -> dict[str, Any]:
        return self.watch.status()
