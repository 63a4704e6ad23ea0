"""CURVE key pairs of the data server and of every robot, and the server's allow-list.

Layout of a key directory (what `fleet keys create` writes):

    keys/server.key              server public key: copy to every robot
    keys/server.key_secret       server secret key: stays on the server
    keys/robots/<robot_id>.key   a robot's public key: the allow-list; its name IS the robot id
    keys/secrets/<robot_id>.key_secret   that robot's secret key: copy to the robot, then delete

Identity is bound to the key: the server maps the CURVE public key of every connection to the
robot id of its file, and refuses uploads whose record names another robot. Adding a robot is
`fleet keys create --name armN`; a running server picks the new key up within seconds.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

ROBOT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SERVER_NAME = "server"
ZAP_DOMAIN = "fleet"  # the server socket's zap_domain; the allow-list applies to it


class KeyFileError(ValueError):
    """A key directory or robot name a user got wrong; the message says what to do."""


@dataclass(frozen=True)
class RobotKey:
    robot_id: str
    public_key: bytes  # z85
    public_path: Path
    secret_path: Optional[Path]  # None once the secret has been moved to the robot


def check_robot_id(robot_id: str) -> str:
    if not ROBOT_ID_RE.match(robot_id) or robot_id == SERVER_NAME:
        raise KeyFileError(f"robot id {robot_id!r} is not allowed: use 1-64 letters, digits, '_', "
                        f"'-' or '.', starting with a letter or digit (and not {SERVER_NAME!r})")
    return robot_id


def server_key_paths(key_dir: Path) -> tuple[Path, Path]:
    return key_dir / f"{SERVER_NAME}.key", key_dir / f"{SERVER_NAME}.key_secret"


def ensure_server_keys(key_dir: Path) -> Path:
    """Create the server key pair if the directory has none; return the public key's path."""
    key_dir = Path(key_dir)
    public, secret = server_key_paths(key_dir)
    if not secret.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(key_dir, SERVER_NAME, metadata={"role": "server"})
        os.chmod(secret, 0o600)
        log.info("created server key pair in %s", key_dir)
    return public


def create_robot_key(key_dir: Path, robot_id: str) -> RobotKey:
    """Create a robot's key pair (and the server's, if missing). Refuses to overwrite."""
    check_robot_id(robot_id)
    key_dir = Path(key_dir)
    ensure_server_keys(key_dir)
    robots, secrets = key_dir / "robots", key_dir / "secrets"
    public = robots / f"{robot_id}.key"
    if public.exists():
        raise KeyFileError(f"robot {robot_id!r} already has a key ({public}); delete that file "
                        f"first to replace it (the robot will need its new secret key)")
    robots.mkdir(parents=True, exist_ok=True)
    secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets, 0o700)
    # create_certificates writes both halves side by side; the secret then moves out of the
    # allow-list directory so that the server's allow-list holds public keys only.
    _, secret_tmp = zmq.auth.create_certificates(robots, robot_id,
                                                 metadata={"robot_id": robot_id})
    secret = secrets / f"{robot_id}.key_secret"
    shutil.move(secret_tmp, secret)
    os.chmod(secret, 0o600)
    return RobotKey(robot_id, load_public(public), public, secret)


def load_public(path: Path) -> bytes:
    public, _ = zmq.auth.load_certificate(path)
    return public


def list_robots(key_dir: Path) -> list[RobotKey]:
    """Every admitted robot, sorted by id. A malformed key file is logged and skipped."""
    key_dir = Path(key_dir)
    out = []
    for public in sorted((key_dir / "robots").glob("*.key")):
        robot_id = public.stem
        try:
            check_robot_id(robot_id)
            key = load_public(public)
        except (KeyFileError, OSError, ValueError) as exc:
            log.warning("skipping key file %s: %s", public, exc)
            continue
        secret = key_dir / "secrets" / f"{robot_id}.key_secret"
        out.append(RobotKey(robot_id, key, public, secret if secret.exists() else None))
    return out


def load_server_keypair(key_dir: Path) -> tuple[bytes, bytes]:
    public, secret = server_key_paths(Path(key_dir))
    if not secret.exists():
        raise KeyFileError(f"no server key pair in {key_dir}: run `fleet keys create --dir "
                        f"{key_dir} --name <robot id>` (it creates the server's pair too)")
    pub, sec = zmq.auth.load_certificate(secret)
    assert sec is not None
    return pub, sec


@dataclass(frozen=True)
class ClientKeys:
    """What a robot needs to connect: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_dir(cls, key_dir: Path, robot_id: str) -> "ClientKeys":
        """From a key directory laid out as above (tests, simulated fleets on one machine)."""
        key_dir = Path(key_dir)
        return cls.from_files(key_dir / "secrets" / f"{robot_id}.key_secret",
                              server_key_paths(key_dir)[0])

    @classmethod
    def from_files(cls, secret_file: Path, server_public_file: Path) -> "ClientKeys":
        for path in (secret_file, server_public_file):
            if not Path(path).exists():
                raise KeyFileError(f"key file {path} is missing: create it with `fleet keys "
                                f"create` on the server and copy it to this robot")
        pub, sec = zmq.auth.load_certificate(secret_file)
        if sec is None:
            raise KeyFileError(f"{secret_file} holds no secret key")
        return cls(pub, sec, load_public(server_public_file))

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        socket.curve_serverkey = self.server_public


class RobotAuthenticator(ThreadAuthenticator):
    """ZAP handler admitting only the robots in keys/robots/, with User-Id = robot id.

    A connection whose key is not listed fails the CURVE handshake inside libzmq: it never
    produces a message, so application code never sees it. `reload()` re-reads the directory
    (the server calls it when the directory changes), so robots can be added while it runs.
    """

    def __init__(self, context: zmq.Context, key_dir: Path):
        super().__init__(context)
        self.key_dir = Path(key_dir)
        self._by_key: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self.reload()
        self.configure_curve_callback(ZAP_DOMAIN, self)

    def _dir_stamp(self) -> tuple:
        robots = self.key_dir / "robots"
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in robots.glob("*.key")))
        except OSError:
            return ()

    def reload(self, force: bool = True) -> bool:
        """Re-read the allow-list if it changed (or always, with force). True if re-read."""
        stamp = self._dir_stamp()
        if not force and stamp == self._stamp:
            return False
        by_key = {k.public_key: k.robot_id for k in list_robots(self.key_dir)}
        with self._lock:
            self._by_key, self._stamp = by_key, stamp
        log.info("allow-list: %d robot key(s) from %s", len(by_key), self.key_dir / "robots")
        return True

    def robot_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._by_key.values())

    # the credentials-provider interface of zmq.auth (called in the authenticator's thread)
    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            robot = self._by_key.get(key)
        if robot is None:
            log.warning("refused a connection with an unknown CURVE key %s", key.decode()[:12])
        return robot is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        with self._lock:
            return self._by_key.get(z85.encode(client_public_key), "")
