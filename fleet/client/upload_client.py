"""The upload client core: a bounded window of unacked attempts over a CURVE DEALER socket.

This module owns the socket (connection, CURVE, reconnects, HELLO heartbeats, policy fetches);
the window's state machine (in flight, re-send deadlines, Done events) is
fleet/client/window.py. No ROS here: robot_node's uploader wraps this around its spool. The contract
with the caller:

- `submit(attempt_id, frames)` while `room() > 0`; the caller keeps its own durable copy.
- `poll(timeout)` returns `Done` events. `acked` means the attempt is durable on the server and
  the caller may delete its copy; `acked=False` means the server refused it for good (the code
  says why: quarantine it, do not resend). Retryable trouble never surfaces as an event: the
  client re-sends unacked attempts after a timeout that backs off, and waits the server's
  `retry_after` on BUSY.
- Either side may restart at any time. The DEALER reconnects by itself; anything unacked is
  re-sent; the server deduplicates by attempt id, so the stream resumes without loss or
  duplication. After a robot restart the caller simply submits its spool again.

Policies and status (docs/protocol.md, "Policy distribution"):

- `hello(policy_version=None, status=None)` sends a HELLO now; both are kept for the periodic
  heartbeats. policy_version: what the robot runs; status: a `RobotStatus`. `set_status(s)`
  only keeps it for the next heartbeat (every `hello_interval` s).
- The client fetches and verifies (size, sha256, `unpack_bundle`) any announced policy whose
  version differs from policy_version. `take_policy()` returns the newest verified
  `PolicyUpdate(version, blob, sha256, pinned, meta)` once, else None; `poll()` returns early
  when one arrives. The robot writes it (`fleet.policy.bundle.save_packed(update.blob, dir,
  expected_input_spec)`), swaps between attempts, then calls `hello(policy_version=version)`.
  A refused payload never surfaces: logged, in `stats.last_error`; the running policy stays.
"""
from __future__ import annotations

import itertools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from fleet.wire import protocol as P
from fleet.client.window import ClientStats, Done, UploadWindow
from fleet.server.keys import ClientKeys
from fleet.client.policy_fetch import PolicyFetcher, PolicyRefused, PolicyUpdate

__all__ = ["ClientConfig", "ClientStats", "Done", "PolicyUpdate", "RobotStatus", "UploadClient"]
RobotStatus = P.RobotStatus

log = logging.getLogger(__name__)


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_HANDSHAKE_EVENTS = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


@dataclass
class ClientConfig:
    """Every tunable of an uploader."""

    endpoint: str
    robot_id: str
    keys: ClientKeys
    window: int = 8  # unacked uploads in flight
    ack_timeout: float = 5.0  # re-send an unacked upload after this long (then doubling)
    max_backoff: float = 30.0
    hello_interval: float = 5.0  # HELLO doubles as the heartbeat carrying the policy version
    policy_version: int = 0
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    max_policy_bytes: int = 64 * 1024 * 1024  # refuse (and never fetch) bigger policies
    #: the machine (or Ray node) this robot runs on, sent in every HELLO so the dashboard and
    #: `fleet status` show where each arm is; None: not sent (as an older robot)
    host: Optional[str] = field(default_factory=socket.gethostname)


class UploadClient:
    """One robot's connection to the data server. Not thread-safe: use it from one thread."""

    def __init__(self, config: ClientConfig, context: Optional[zmq.Context] = None):
        self.config = config
        self.ctx = context or zmq.Context.instance()
        self.stats = ClientStats()
        self._seq = itertools.count(1)
        self._window = UploadWindow(config.window, config.ack_timeout, config.max_backoff,
                                    self.stats, self._send_upload, self._seq)
        self._replies: dict[int, P.Reply] = {}  # replies to synchronous requests
        self._next_hello = 0.0
        self._reconnect_at: Optional[float] = None
        self._auth_failures = 0
        self._link_lost = False
        self._status: Optional[dict[str, Any]] = None
        self._fetcher = PolicyFetcher(config.max_policy_bytes)
        self._fetch_seq: Optional[int] = None
        self._policy_update: Optional[PolicyUpdate] = None
        self._poller: Optional[zmq.Poller] = None
        self._limits_of: Optional[dict] = None  # the WELCOME _limits_cache was parsed from
        self._limits_cache = P.Limits()
        self.socket, self._monitor = self._connect()

    def _connect(self) -> tuple[zmq.Socket, zmq.Socket]:
        s = self.ctx.socket(zmq.DEALER)
        self.config.keys.apply(s)
        s.linger = 0  # unacked attempts live in the caller's spool, not in this socket
        s.immediate = True  # queue only to a live connection: a send fails fast otherwise
        s.reconnect_ivl = self.config.reconnect_ivl_ms
        s.reconnect_ivl_max = self.config.reconnect_ivl_max_ms
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        s.maxmsgsize = self.config.max_policy_bytes + 1024 * 1024  # bounds what a reply costs
        monitor = s.get_monitor_socket(_HANDSHAKE_EVENTS)
        s.connect(self.config.endpoint)
        return s, monitor

    # ------------------------------------------------------------------ uploads

    def room(self) -> int:
        return self._window.room()

    def in_flight(self) -> int:
        return len(self._window)

    def pending_ids(self) -> list[str]:
        return self._window.pending_ids()

    def submit(self, attempt_id: str, frames: Sequence[bytes]) -> None:
        """Start uploading one encoded attempt (fleet.wire.records.encode frames)."""
        if attempt_id in self._window:
            return
        try:  # an oversized frame would make ZeroMQ drop the whole connection, again and again
            P.check_sizes([b"", *frames], self._limits())
            problem = None
        except P.ProtocolError as exc:
            problem = exc
        self._window.add(attempt_id, frames, problem)

    def _limits(self) -> P.Limits:
        """The server's limits from its WELCOME, or the protocol's defaults before it (parsed
        once per WELCOME: this runs for every submitted attempt)."""
        welcome = self.stats.welcome
        if self._limits_of is not welcome:
            announced = welcome.get("limits") or {}
            try:
                self._limits_cache = P.Limits(**{k: int(v) for k, v in announced.items()
                                                 if k in P.Limits.__dataclass_fields__})
            except (TypeError, ValueError):
                self._limits_cache = P.Limits()
            self._limits_of = welcome
        return self._limits_cache

    def poll(self, timeout: float = 0.1) -> list[Done]:
        """Handle replies for up to `timeout` s, re-send what is due; return finished attempts."""
        end = time.monotonic() + timeout
        while True:
            self._housekeeping(time.monotonic())
            wait = max(0.0, min(end, self._next_deadline()) - time.monotonic())
            self._wait_and_drain(wait)
            if self._window.has_done() or self._policy_update or time.monotonic() >= end:
                break
        return self._window.take_done()

    def upload_all(self, items: Iterable[tuple[str, Sequence[bytes]]],
                   timeout: Optional[float] = None) -> Iterator[Done]:
        """Upload a stream of (attempt_id, frames), yielding each Done as it comes."""
        it = iter(items)
        exhausted = False
        end = None if timeout is None else time.monotonic() + timeout
        while not exhausted or len(self._window):
            while not exhausted and self.room() > 0:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                else:
                    self.submit(*nxt)
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"{len(self._window)} uploads still unacked")
            yield from self.poll(0.2)

    # ------------------------------------------------------------------ other requests

    def hello(self, policy_version: Optional[int] = None,
              status: Optional[P.RobotStatus | dict[str, Any]] = None) -> None:
        """Send a HELLO now (also sent every hello_interval while polling).

        policy_version: the version the robot runs from now on; status: its heartbeat
        (RobotStatus). Both are remembered for the periodic HELLOs.
        """
        if policy_version is not None:
            self.config.policy_version = int(policy_version)
        if status is not None:
            self.set_status(status)
        extra: dict[str, Any] = {"status": self._status} if self._status is not None else {}
        if self.config.host:
            extra["host"] = self.config.host
        sent = self._send_nowait(P.hello(next(self._seq), self.config.robot_id,
                                         self.config.policy_version, **extra))
        # not connected yet: say hello as soon as the connection is up
        self._next_hello = time.monotonic() + (self.config.hello_interval if sent else 0.2)

    def counters(self, timeout: float = 5.0) -> dict[str, Any]:
        """Per-robot counters from the server (raises TimeoutError if it does not answer)."""
        seq = next(self._seq)
        end = time.monotonic() + timeout
        sent = False
        while time.monotonic() < end:
            if not sent:
                sent = self._send_nowait(P.counters_request(seq))
            self._wait_and_drain(0.1)
            reply = self._replies.pop(seq, None)
            if reply is not None:
                if reply.type == P.MsgType.ERROR:
                    raise RuntimeError(f"server refused COUNTERS: {reply.fields.get('message')}")
                return reply.fields
        raise TimeoutError(f"no COUNTERS reply from {self.config.endpoint} in {timeout} s")

    def set_status(self, status: P.RobotStatus | dict[str, Any]) -> None:
        """Keep `status` for the next heartbeat HELLO without sending one now."""
        self._status = status.as_dict() if isinstance(status, P.RobotStatus) else dict(status)

    def take_policy(self) -> Optional[PolicyUpdate]:
        """The newest verified policy not yet taken (None if none): install it, then
        `hello(policy_version=update.version)`."""
        update, self._policy_update = self._policy_update, None
        return update

    @property
    def served_policy(self) -> Optional[dict[str, Any]]:
        """The server's last announcement {version, sha256, size, pinned}, or None."""
        return self._fetcher.announced

    def close(self) -> None:
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)

    # ------------------------------------------------------------------ internals

    def _send_nowait(self, frames: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _send_upload(self, seq: int, frames: Sequence[bytes]) -> bool:
        return self._send_nowait(P.upload(seq, frames))

    def _next_deadline(self) -> float:
        deadlines = [self._next_hello]
        upload = self._window.next_deadline()
        if upload is not None:
            deadlines.append(upload)
        if self._reconnect_at is not None:
            deadlines.append(self._reconnect_at)
        return min(deadlines)

    def _housekeeping(self, now: float) -> None:
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect()
        if now >= self._next_hello:
            self.hello()
        self._maybe_fetch_policy()
        self._window.resend_due(now)

    def _wait_and_drain(self, wait: float) -> None:
        if self._poller is None:  # one per socket pair: _reconnect() drops it
            self._poller = zmq.Poller()
            self._poller.register(self.socket, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
        events = dict(self._poller.poll(int(wait * 1000)))
        if self._monitor in events:
            self._on_monitor_events()
        if self.socket in events:
            self._drain()

    def _on_monitor_events(self) -> None:
        """Connection state: re-send at once on (re)connect; start over if our key is refused.

        libzmq does not retry a connection whose CURVE handshake the server refused, so a robot
        whose key is not (yet) admitted would stay silent forever; instead it logs why and
        reconnects with a fresh socket after a backoff.
        """
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._link_lost = True
                log.info("lost the connection to %s; unacked uploads will be re-sent",
                         self.config.endpoint)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._auth_failures = 0
                self._next_hello = 0.0
                if self._link_lost:  # whatever was in flight may have died with the link
                    self._link_lost = False
                    self._window.resend_all_now()
            elif event & _HANDSHAKE_FAILED:
                self._auth_failures += 1
                wait = min(self.config.ack_timeout * 2 ** min(self._auth_failures - 1, 6),
                           self.config.max_backoff)
                self.stats.last_error = "the server refused this robot's key (CURVE handshake)"
                log.error("%s at %s: is robot %s admitted (`fleet keys list`) and is the "
                          "server key right? reconnecting in %.0f s", self.stats.last_error,
                          self.config.endpoint, self.config.robot_id, wait)
                self._reconnect_at = time.monotonic() + wait

    def _reconnect(self) -> None:
        self._reconnect_at = None
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)
        self._poller = None
        self.socket, self._monitor = self._connect()

    def _drain(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = P.parse_reply(frames)
            except P.ProtocolError as exc:
                log.error("unreadable reply from the server: %s", exc)
                continue
            if reply.type == P.MsgType.POLICY:
                self._on_policy(reply, frames[1:])
            elif reply.seq is not None and reply.seq == self._fetch_seq:
                self._fetch_seq = None  # an ERROR answering our FETCH_POLICY
                self._fetcher.failed(str(reply.fields.get("message")))
            else:
                self._on_reply(reply)
        self._maybe_fetch_policy()

    # ------------------------------------------------------------------ policies

    def _maybe_fetch_policy(self) -> None:
        if self._fetcher.want(self.config.policy_version):
            seq = next(self._seq)
            if self._send_nowait(P.fetch_policy(seq, self._fetcher.announced["version"])):
                self._fetch_seq = seq
                self._fetcher.started()

    def _on_policy(self, reply: P.Reply, payload: list[bytes]) -> None:
        self._fetch_seq = None
        try:
            self._policy_update = self._fetcher.receive(reply.fields, payload)
        except PolicyRefused as exc:
            self.stats.last_error = str(exc)

    def _on_reply(self, reply: P.Reply) -> None:
        attempt_id = self._window.attempt_of(reply)
        if reply.type == P.MsgType.ACK:
            self._window.finish(Done(attempt_id, True, bool(reply.fields.get("duplicate"))))
        elif reply.type == P.MsgType.WELCOME:
            self.stats.welcome = reply.fields
            self._fetcher.announce(reply.fields.get("policy"))
        elif reply.type == P.MsgType.POLICY_AVAILABLE:
            self._fetcher.announce(reply.fields)
        elif reply.type == P.MsgType.ERROR and attempt_id in self._window:
            self._window.on_error(attempt_id, reply)
        elif reply.type == P.MsgType.ERROR and reply.seq not in self._replies:
            self.stats.last_error = str(reply.fields.get("message"))
            log.warning("server error: %s %s", reply.fields.get("name"), self.stats.last_error)
            if reply.seq is not None:
                self._replies[reply.seq] = reply
        elif reply.seq is not None:
            self._replies[reply.seq] = reply
