"""The robot side of policy distribution: when to fetch, and what to accept (used by UploadClient).

The server announces the policy it serves in every WELCOME (field `policy`) and pushes
POLICY_AVAILABLE to online robots when it changes. The client fetches when the announced version
differs from the one the robot runs and was not already handed over; it accepts a POLICY only if
the payload has the announced size and sha256, fits `max_bytes`, and verifies as a bundle
(`fleet.policy.bundle.unpack_bundle`: weights checksum, architecture, shapes). A refused payload is
logged and dropped, the robot keeps running what it runs, and the same bytes are not fetched
again before `retry_after` seconds.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

log = logging.getLogger("fleet.client")


@dataclass(frozen=True)
class PolicyUpdate:
    """A verified policy for the robot to install (`fleet.policy.bundle.save_packed(blob, dir)`)."""

    version: int
    blob: bytes  # fleet.policy.bundle.pack_bundle bytes, already verified by unpack_bundle
    sha256: str  # of blob
    pinned: bool  # the operator pinned the fleet to this version (a rollback)
    meta: Any = field(default=None, compare=False)  # fleet.policy.bundle.BundleMeta


class PolicyRefused(ValueError):
    """A POLICY reply that must not be installed; the message says why."""


@dataclass
class PolicyFetcher:
    max_bytes: int
    retry_after: float = 30.0  # before fetching bytes that were refused once again
    fetch_timeout: float = 10.0  # a FETCH unanswered this long is sent again
    announced: Optional[dict[str, Any]] = None
    delivered: Optional[tuple[int, str]] = None  # (version, sha256) handed to the caller
    fetching_since: Optional[float] = None
    refused: dict[str, float] = field(default_factory=dict)  # sha256 -> retry time
    last_refusal: str = ""

    def announce(self, fields: Optional[dict[str, Any]]) -> None:
        """Record the server's `policy` announcement (WELCOME, POLICY_AVAILABLE)."""
        if fields is None:
            self.announced = None
            return
        version, sha, size = fields.get("version"), fields.get("sha256"), fields.get("size")
        if not (isinstance(version, int) and isinstance(sha, str) and isinstance(size, int)):
            log.error("server announced a malformed policy %r; ignored", fields)
            return
        if self.announced != fields:
            log.debug("server serves policy v%d (%d bytes)", version, size)
        self.announced = dict(fields)

    def want(self, running: int, now: Optional[float] = None) -> bool:
        """Should a FETCH_POLICY go out now?"""
        a = self.announced
        if a is None or a["version"] == running or (a["version"], a["sha256"]) == self.delivered:
            return False
        now = time.monotonic() if now is None else now
        if self.refused.get(a["sha256"], 0.0) > now:
            return False
        if a["size"] > self.max_bytes:
            self._refuse(a["sha256"], f"policy v{a['version']} is {a['size']} bytes, over this "
                         f"client's max_policy_bytes {self.max_bytes}; raise it to accept it")
            return False
        return self.fetching_since is None or now - self.fetching_since > self.fetch_timeout

    def started(self) -> None:
        self.fetching_since = time.monotonic()

    def failed(self, message: str) -> None:
        """The server answered the FETCH with an ERROR (e.g. NO_POLICY)."""
        self.fetching_since = None
        if self.announced is not None:
            self._refuse(self.announced["sha256"], f"server refused FETCH_POLICY: {message}")

    def receive(self, fields: dict[str, Any], payload: Sequence[bytes]) -> PolicyUpdate:
        """Check a POLICY reply; PolicyRefused (logged, remembered) if it must not be used."""
        self.fetching_since = None
        sha = str(fields.get("sha256"))
        try:
            update = self._check(fields, payload)
        except PolicyRefused as exc:
            self._refuse(sha, str(exc))
            raise
        self.delivered = (update.version, update.sha256)
        return update

    def _check(self, fields: dict[str, Any], payload: Sequence[bytes]) -> PolicyUpdate:
        version, sha, size = fields.get("version"), fields.get("sha256"), fields.get("size")
        if not isinstance(version, int) or len(payload) != 1:
            raise PolicyRefused(f"POLICY reply malformed: version {version!r}, "
                                f"{len(payload)} payload frames (want 1)")
        blob = payload[0]
        if len(blob) > self.max_bytes:
            raise PolicyRefused(f"policy v{version} is {len(blob)} bytes, over max_policy_bytes "
                                f"{self.max_bytes}")
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != sha:
            raise PolicyRefused(f"policy v{version} payload does not match its announced size "
                                f"and sha256: corrupted on the way")
        from fleet.policy.bundle import BundleError, unpack_bundle  # torch: only on a policy

        try:
            _, meta = unpack_bundle(blob)
        except BundleError as exc:
            raise PolicyRefused(f"policy v{version} refused: {exc}") from None
        if meta.version != version:
            raise PolicyRefused(f"policy payload holds version {meta.version}, announced "
                                f"{version}")
        return PolicyUpdate(version, bytes(blob), sha, bool(fields.get("pinned")), meta)

    def _refuse(self, sha: str, reason: str) -> None:
        if sha not in self.refused:
            log.error("%s; keeping the running policy", reason)
        self.refused[sha] = time.monotonic() + self.retry_after
        self.last_refusal = reason
