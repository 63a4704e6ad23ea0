"""Feeds the spool to the data server (fleet.client.UploadClient) and deletes a spool file only
once the server has acknowledged it (it is then durable there).

Runs on its own thread, because UploadClient is single-threaded and the grasp loop must never
wait for the network. A spool file's frames go out unchanged. An attempt the server refuses for
good (e.g. malformed) is quarantined in the spool (renamed `.corrupt`), never deleted; one that
cannot be read back is quarantined too. After a restart the whole spool is simply submitted
again: the server deduplicates by attempt id.

It is also the robot's voice to the server: every HELLO heartbeat carries the node's latest
`status` (a fleet.client.RobotStatus the node sets), and a change of the policy in service (set
by the node after the swap between attempts, never at download) is sent in a HELLO at once, so
the server, its metrics and the monitor see the new version within a poll (0.2 s), not at the
next 5 s heartbeat.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Optional

from fleet.client.upload_client import ClientConfig, RobotStatus, UploadClient
from fleet.server.binding import secret_mode_problem
from fleet.server.keys import ClientKeys
from robot_node.params import ConfigError, NodeConfig
from robot_node.policy_runtime import PIN_FILE, bundle_dir_name
from robot_node.spool import SUFFIX, Spool, SpoolError

log = logging.getLogger(__name__)


def attempt_id_of(name: str) -> str:
    """`<ns>-<attempt_id>.attempt` -> attempt_id."""
    return name[:-len(SUFFIX)].split("-", 1)[1]


class SpoolUploader:
    """Upload thread: spool -> UploadClient window -> ack -> delete."""

    def __init__(self, spool: Spool, client_config: ClientConfig, idle_poll: float = 0.2,
                 bundle_dir: Optional[Path] = None):
        self.spool = spool
        self.bundle_dir = bundle_dir  # where policies the server pushes are installed
        self.policies_installed = 0
        self.client_config = client_config
        self.idle_poll = idle_poll
        self.acked = 0
        self.refused = 0
        self.last_error = ""
        #: Set by the node (any thread): the policy version in service and the heartbeat.
        self.policy_version = 0
        self.status: Optional[RobotStatus] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._names: dict[str, str] = {}  # attempt id -> spool file name, while in flight

    @classmethod
    def from_config(cls, config: NodeConfig, spool: Spool) -> "SpoolUploader":
        if not (config.robot_secret_key and config.server_public_key):
            raise ConfigError("server_address is set, so robot_secret_key and "
                              "server_public_key must name this robot's secret key file and "
                              "the server's public key file (see `fleet keys create`)")
        problem = Path(config.robot_secret_key).exists() and \
            secret_mode_problem(Path(config.robot_secret_key))
        if problem:  # as ssh does with a private key: refuse, and say how to fix it
            raise ConfigError(f"robot_secret_key: {problem}")
        keys = ClientKeys.from_files(Path(config.robot_secret_key),
                                     Path(config.server_public_key))
        bundle_dir = Path(config.bundle_path) if config.bundle_path else None
        if bundle_dir is None:
            log.warning("bundle_path is empty: policies the server pushes are not installed")
        return cls(spool, ClientConfig(endpoint=config.server_address, robot_id=config.arm_id,
                                       keys=keys, host=config.host or socket.gethostname()),
                   bundle_dir=bundle_dir)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        return len(self._names)

    def _run(self) -> None:
        client = UploadClient(self.client_config)
        try:
            while not self._stop.is_set():
                self._heartbeat(client)
                self._fill(client)
                for done in client.poll(self.idle_poll):
                    self._finish(done)
                update = client.take_policy()
                if update is not None and self.bundle_dir is not None:
                    self._install(update)
                if client.stats.last_error:
                    self.last_error = client.stats.last_error
        except Exception as exc:  # the upload thread must say why it died, then stay dead
            self.last_error = f"uploader stopped: {exc!r}"
            log.exception("uploader stopped")
        finally:
            client.close()

    def _heartbeat(self, client: UploadClient) -> None:
        """The node's status goes with the next heartbeat; a new policy version goes now."""
        status, version = self.status, self.policy_version
        if status is not None:
            client.set_status(status)
        if version != client.config.policy_version:
            client.hello(policy_version=version)
            log.info("told the server: running policy v%d", version)

    def _fill(self, client: UploadClient) -> None:
        """Submit the oldest spooled attempts not yet in flight, while the window has room."""
        if client.room() <= 0:
            return
        for entry in self.spool.entries():
            if client.room() <= 0:
                return
            attempt_id = attempt_id_of(entry.name)
            if attempt_id in self._names:
                continue
            try:
                frames = self.spool.read(entry.name)
            except SpoolError as exc:
                log.error("spool file unreadable, set aside: %s", exc)
                self.spool.quarantine(entry.name)
                continue
            self._names[attempt_id] = entry.name
            client.submit(attempt_id, frames)

    def _install(self, update) -> None:
        """Write a verified policy into bundle_dir, where the policy runtime picks it up
        between attempts; a pinned one (an operator's rollback) is also named in PINNED."""
        from fleet.policy.bundle import BundleError, save_packed

        target = self.bundle_dir / bundle_dir_name(update.version)
        try:
            if not (target / "policy.json").exists():
                save_packed(update.blob, target)
            pin = self.bundle_dir / PIN_FILE
            if update.pinned:
                pin.write_text(target.name + "\n")
            else:
                pin.unlink(missing_ok=True)
        except (BundleError, OSError) as exc:
            self.last_error = f"cannot install policy v{update.version}: {exc}"
            log.error(self.last_error)
            return
        self.policies_installed += 1
        log.info("installed policy v%d from the server into %s%s", update.version, target,
                 " (pinned)" if update.pinned else "")

    def _finish(self, done) -> None:
        name = self._names.pop(done.attempt_id, None)
        if name is None:
            return
        if done.acked:
            self.spool.remove(name)  # durable on the server: now the copy may go
            self.acked += 1
            self.last_error = ""
        else:
            self.spool.quarantine(name)
            self.refused += 1
            self.last_error = f"server refused {done.attempt_id}: {done.code} {done.message}"
            log.error("%s; kept in the spool as %s.corrupt", self.last_error, name)
