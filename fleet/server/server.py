"""The data server: a CURVE-authenticated ROUTER that validates uploads and acks them once durable.

One socket thread (this module) reads requests, validates them and answers everything but
uploads at once; valid uploads go to the group-commit writer (fleet/server/ingest.py), and their
ACKs go out only after `Store.append` has returned, i.e. after the fsync. Bad input of any kind gets
an ERROR naming the problem and the server serves everyone else on. When the store is slow the
socket thread stops reading (ZeroMQ's high-water marks then push back to the robots, which keep
spooling); when the store refuses writes (disk full) uploads are answered BUSY. The wire format
is fleet/wire/protocol.py; docs/protocol.md describes it all.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import zmq

from fleet import __version__
from fleet.wire import protocol as P
from fleet.wire import validation as V
from fleet.server.binding import check_server_bind, normalize_endpoint
from fleet.server.ingest import Committer, IngestQueue, Outcome
from fleet.server.keys import ZAP_DOMAIN, RobotAuthenticator, load_server_keypair
from fleet.server.metrics import ServerMetrics
from fleet.server.policy_service import PolicyService
from fleet.server.sessions import Sessions

log = logging.getLogger("fleet.server")


@dataclass
class ServerConfig:
    """Every tunable of the data server."""

    bind: str = "tcp://127.0.0.1:5555"
    key_dir: Path = Path("keys")
    limits: P.Limits = field(default_factory=P.Limits)
    max_steps: int = 256  # steps (images) per attempt
    queue_max_attempts: int = 4096  # validated, not yet durable
    queue_max_bytes: int = 128 * 1024 * 1024
    max_group: int = 1024  # attempts per group commit (one fsync)
    rcvhwm: int = 64  # messages ZeroMQ buffers per robot before pushing back
    busy_retry_after: float = 2.0  # seconds a BUSY robot should wait
    health_interval: float = 1.0  # how often a blocked server probes the store
    key_reload_interval: float = 2.0  # how often the allow-list directory is re-checked
    metrics_port: Optional[int] = None  # Prometheus /metrics on <metrics_host>:<port>
    metrics_host: str = "127.0.0.1"  # beyond loopback: allowed, with a warning (binding.py)
    commit_delay: float = 0.0  # artificial delay per commit: benchmarks of back-pressure only
    read_batch: int = 256  # messages read per wake-up at most
    log_interval: float = 10.0  # seconds between "acked N attempts (per robot)" log lines
    image_check_batch: int = 16  # uploads read before their images are checked and queued
    policies_dir: Optional[Path] = None  # the learner's <out>/policies: watched, distributed
    policy_poll_interval: float = 0.2  # how often latest.json / pin.json are stat()ed
    session_ttl: float = 30.0  # a robot whose last HELLO is older is offline (no pushes)
    max_policy_bytes: int = 64 * 1024 * 1024  # refuse to serve a bigger packed bundle


class DataServer:
    """Owns the socket, the authenticator, the committer thread and the store (closed on exit)."""

    def __init__(self, config: ServerConfig, store: Any):
        config = dataclasses.replace(config, bind=normalize_endpoint(config.bind))
        self.config, self.store = config, store
        check_server_bind(config.bind, config.key_dir)  # before anything listens
        self.metrics = ServerMetrics(config.metrics_port, config.metrics_host)
        self.sessions = Sessions(config.session_ttl)
        self.policy = None if config.policies_dir is None else PolicyService(
            config.policies_dir, config.max_policy_bytes, config.policy_poll_interval,
            self.metrics)
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.queue = IngestQueue(config.queue_max_attempts, config.queue_max_bytes)
        self.committer = Committer(store, self.queue, self._wake,
                                   config.max_group, config.health_interval,
                                   config.commit_delay, self.metrics.observe_commit)
        self.ctx = zmq.Context()
        self.auth = RobotAuthenticator(self.ctx, config.key_dir)
        self.socket = self._make_socket()
        self._last_blocked: Optional[str] = None
        self._queue_full_since: Optional[float] = None
        self._acked_since_report: dict[str, int] = {}  # robot id -> acks, for the log
        self._last_report = time.monotonic()
        self._uploads: list[tuple] = []  # validated but for their images

    def _make_socket(self) -> zmq.Socket:
        public, secret = load_server_keypair(self.config.key_dir)
        s = self.ctx.socket(zmq.ROUTER)
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = public, secret
        s.zap_domain = ZAP_DOMAIN.encode()
        s.maxmsgsize = self.config.limits.max_frame_bytes
        s.rcvhwm = self.config.rcvhwm
        s.sndhwm = 10000  # replies are small; a slow robot must not make us drop acks
        s.linger = 2000
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        s.router_mandatory = False  # a reply to a robot that went away is dropped, not fatal
        return s

    # ------------------------------------------------------------------ life cycle

    def serve(self, ready: Optional[Callable[[], None]] = None) -> None:
        """Run until stop() (or SIGINT/SIGTERM via install_signal_handlers)."""
        self.auth.start()
        if hasattr(self.store, "start_rolling"):  # its start-up CPU now, not mid-stream
            self.store.start_rolling()
        self.committer.start()
        try:
            try:
                self.socket.bind(self.config.bind)
            except zmq.ZMQError as exc:
                raise OSError(f"cannot bind {self.config.bind}: {exc} (is another server "
                              f"running there? pick another --bind)") from None
            log.info("serving on %s: %d robot key(s) admitted, limits %s", self.config.bind,
                     len(self.auth.robot_ids()), self.config.limits.as_dict())
            if self.policy is not None:  # know the served policy before the first HELLO
                self.policy.tick(self.sessions, self._send)
            if ready:
                ready()
            poller = zmq.Poller()
            poller.register(self.socket, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            next_housekeeping = 0.0
            wait_ms = int(min(200, self.config.policy_poll_interval * 1000))
            while not self._stopping.is_set():
                room = self._update_read_interest(poller)
                events = dict(poller.poll(wait_ms))
                if self.policy is not None:
                    self.policy.tick(self.sessions, self._send)
                if self._wake_r in events:
                    self._drain_wake()
                self._send_outcomes()
                if room and self.socket in events:
                    self._read_some()
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self.config.key_reload_interval
                    self.auth.reload(force=False)
                    self._report_state()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("%s: finishing the in-flight batch, then exiting",
                     signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _shutdown(self) -> None:
        """Stop reading, let the committer finish and ack what it holds, close everything."""
        self.committer.stop()
        self.committer.join(timeout=60)
        self._send_outcomes()
        self.store.close()
        self.socket.close(linger=2000)
        self.auth.stop()
        self.ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.metrics.close()
        log.info("stopped: %d attempts committed in %d group commits",
                 self.committer.committed, self.committer.commits)

    # ------------------------------------------------------------------ reading

    def _update_read_interest(self, poller: zmq.Poller) -> bool:
        """Read the socket only while the queue has room: that is the memory bound."""
        room = self.queue.has_room()
        poller.modify(self.socket, zmq.POLLIN if room else 0)
        if not room and self._queue_full_since is None:
            self._queue_full_since = time.monotonic()
            n, nbytes = self.queue.depth()
            log.warning("back-pressure: store behind, %d attempts (%.1f MB) waiting; "
                        "pausing reads", n, nbytes / 1e6)
            self.metrics.set_backpressure("queue_full")
        elif room and self._queue_full_since is not None:
            log.info("ingest queue has room again after %.1f s",
                     time.monotonic() - self._queue_full_since)
            self._queue_full_since = None
            self.metrics.set_backpressure(self.committer.blocked_reason and "store_refused")
        return room

    def _read_some(self) -> None:
        for _ in range(self.config.read_batch):
            if not self.queue.has_room():
                break
            try:
                identity = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(identity, *self._recv_rest())
            if len(self._uploads) >= self.config.image_check_batch:
                self._accept_uploads()
            if self.committer.outcomes:  # acks first: robots' windows wait on them
                self._send_outcomes()
        self._accept_uploads()

    def _accept_uploads(self) -> None:
        """Check the images of the uploads read so far, then queue the good ones for commit,
        waking the committer once for the lot.

        Inline: a helper thread for the decode (which releases the GIL) cost more in hand-over
        (ThreadPoolExecutor.submit, GIL convoys) than the 30 us decode it moved.
        """
        batch, self._uploads = self._uploads, []
        accepted = []
        for identity, seq, robot_id, attempt, record in batch:
            try:
                V.check_images(attempt)
            except P.ProtocolError as err:
                log.warning("refused a message from %s: %s", robot_id, err)
                self.metrics.refused(robot_id, err.code.name)
                self._send(identity, *P.error(seq, err.code, err.message))
                continue
            self.metrics.received(robot_id)
            blocked = self.committer.blocked_reason
            if blocked is not None:
                self.metrics.busy(robot_id)
                self._send(identity, *P.error(seq, P.ErrorCode.BUSY, blocked,
                                              self.config.busy_retry_after, attempt.attempt_id))
            else:
                accepted.append((attempt, record, (identity, seq)))
        if accepted:
            self.queue.offer_many(accepted)

    def _recv_rest(self) -> tuple[str, list[bytes], int]:
        """The rest of a message: (robot id, body frames, frame count).

        Only the first body frame is received as a zmq.Frame (it carries the connection's
        ZAP User-Id, i.e. the robot id bound to its key); the others as bytes, which is much
        cheaper for small frames. Frames past the limit are counted, not kept.
        """
        if not self.socket.get(zmq.RCVMORE):
            return "", [], 0
        first = self.socket.recv(copy=False)
        robot_id = first.get("User-Id")
        body, count = [first.bytes], 1
        keep = self.config.limits.max_frames
        while self.socket.get(zmq.RCVMORE):
            frame = self.socket.recv()
            count += 1
            if count <= keep:
                body.append(frame)
        return robot_id, body, count

    def _handle(self, identity: bytes, robot_id: str, body: list[bytes], count: int) -> None:
        seq = None
        try:
            if not body:
                raise P.ProtocolError(P.ErrorCode.MALFORMED, "empty message")
            if not robot_id:  # cannot happen with CURVE + ZAP; refuse rather than trust
                raise P.ProtocolError(P.ErrorCode.FORBIDDEN, "connection has no robot identity")
            P.check_sizes(body, self.config.limits, count)
            header = P.parse_header(body[0], self.config.limits)
            seq = header.get("seq")
            kind = header["type"]
            if kind == P.MsgType.UPLOAD:
                self._on_upload(identity, seq, robot_id, body[1:])
            elif kind == P.MsgType.HELLO:
                self._on_hello(identity, seq, robot_id, header)
            elif kind == P.MsgType.FETCH_POLICY:
                if self.policy is None:
                    raise P.ProtocolError(P.ErrorCode.NO_POLICY, "this server distributes no "
                                          "policies (started without --policies)")
                self._send(identity, *self.policy.reply(seq, robot_id))
            elif kind == P.MsgType.COUNTERS:
                self._send(identity, P.pack(P.MsgType.COUNTERS_REPLY, seq, **self.counters()))
            else:
                raise P.ProtocolError(P.ErrorCode.UNKNOWN_TYPE,
                                      f"{kind.name} is not a request this server serves")
        except P.ProtocolError as exc:
            log.warning("refused a message from %s: %s", robot_id or "?", exc)
            self.metrics.refused(robot_id or "?", exc.code.name)
            self._send(identity, *P.error(seq, exc.code, exc.message))
        except Exception:  # a bug must not take the fleet's only server down
            log.exception("internal error handling a message from %s", robot_id)
            self._send(identity, *P.error(seq, P.ErrorCode.INTERNAL, "internal server error",
                                          retry_after=self.config.busy_retry_after))

    def _on_upload(self, identity: bytes, seq, robot_id: str, record: list[bytes]) -> None:
        attempt = V.validate_record(record, robot_id, self.config.max_steps)
        self._uploads.append((identity, seq, robot_id, attempt, record))

    def _on_hello(self, identity: bytes, seq, robot_id: str, header: dict) -> None:
        claimed, policy_version = P.parse_hello(header)
        if claimed != robot_id:
            raise P.ProtocolError(P.ErrorCode.FORBIDDEN,
                                  f"this key belongs to robot {robot_id!r}, not {claimed!r}")
        status, host = P.parse_status(header), P.parse_host(header)
        self.sessions.hello(robot_id, identity, policy_version, status, host)
        self.metrics.hello(robot_id, policy_version, status)
        self._send(identity, P.pack(P.MsgType.WELCOME, seq, server_version=__version__,
                                    limits=self.config.limits.as_dict(),
                                    max_steps=self.config.max_steps,
                                    policy=self.policy.announcement() if self.policy else None))

    # ------------------------------------------------------------------ replies

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full, so the socket thread is already due to wake

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _send_outcomes(self) -> None:
        outcomes = self.committer.outcomes
        acked = self._acked_since_report
        while outcomes:
            o: Outcome = outcomes.popleft()
            a = o.pending.attempt
            if o.stored:
                acked[a.robot_id] = acked.get(a.robot_id, 0) + 1
                self.metrics.acked(a.robot_id, o.duplicate)
                msgs = [P.ack(seq, a.attempt_id, o.duplicate) for _, seq in o.pending.waiters]
            else:
                code = P.ErrorCode.BUSY if o.error == "busy" else P.ErrorCode.INTERNAL
                self.metrics.busy(a.robot_id)
                msgs = [P.error(seq, code, o.reason, self.config.busy_retry_after, a.attempt_id)
                        for _, seq in o.pending.waiters]
            for (identity, _), msg in zip(o.pending.waiters, msgs):
                self._send(identity, *msg)

    def _send(self, identity: bytes, *frames: bytes) -> None:
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the robot went away; it will re-send, we dedup
            log.debug("reply dropped: %s", exc)

    # ------------------------------------------------------------------ state

    def counters(self) -> dict[str, Any]:
        per_robot = self.store.counters()  # the store is thread-safe
        robots = {rid: _plain(c) for rid, c in per_robot.items()}
        n, nbytes = self.queue.depth()
        return {"robots": robots, "sessions": self.sessions.snapshot(),
                "policy": self.policy.status() if self.policy is not None else None,
                "server": {"commits": self.committer.commits,
                           "committed": self.committer.committed,
                           "queue_attempts": n, "queue_bytes": nbytes,
                           "blocked": self.committer.blocked_reason}}

    def _report_state(self) -> None:
        n, nbytes = self.queue.depth()
        self.metrics.set_queue(n, nbytes)
        now = time.monotonic()
        if self._acked_since_report and now - self._last_report >= self.config.log_interval:
            per_robot = ", ".join(f"{r} {k}" for r, k in sorted(self._acked_since_report.items()))
            log.info("acked %d attempts in %.0f s (%s); %d commits so far, %d waiting",
                     sum(self._acked_since_report.values()), now - self._last_report,
                     per_robot, self.committer.commits, n)
            self._acked_since_report = {}
            self._last_report = now
        blocked = self.committer.blocked_reason
        if blocked != self._last_blocked:
            self._last_blocked = blocked
            if self._queue_full_since is None:
                self.metrics.set_backpressure("store_refused" if blocked else None)
            if blocked is None:
                log.info("back-pressure cleared: accepting uploads again")


def _plain(value: Any) -> Any:
    """RobotCounters (a dataclass) -> msgpack-able dict."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value if isinstance(value, dict) else vars(value)
