"""Where the data server (and its HTTP neighbours) may listen, and what a bind beyond loopback
requires.

Why a module of its own: the same rules serve `fleet serve`, `fleet sim` and the HTTP endpoints
(the server's /metrics, `fleet monitor`), and they must run *before* anything binds, so that a
refused bind never listened, not even for a moment.

- A bind address is what a robotics engineer types: `0.0.0.0`, `10.0.0.5:5555` or the full
  ZeroMQ endpoint `tcp://0.0.0.0:5555`; `normalize_endpoint` turns each into the endpoint.
- The ZeroMQ side beyond loopback needs CURVE keys: without the server's key pair it is refused
  with what to run (`fleet keys create`), and a server secret key file every user of the machine
  can read is refused there too (on loopback it is only warned about: nothing changes for a
  fleet on one machine).
- The HTTP side (dashboard, /api/status, /metrics) has no authentication and only GET routes
  that read counters: beyond loopback it is allowed, with a warning naming what it exposes and
  how to protect it (docs/monitoring.md, "Beyond loopback").
"""
from __future__ import annotations

import ipaddress
import logging
import stat
from pathlib import Path
from typing import Optional

from fleet.server.keys import KeyFileError, list_robots, server_key_paths

log = logging.getLogger("fleet.server")

DEFAULT_PORT = 5555
LOOPBACK = "127.0.0.1"
#: Hosts that mean "every interface": a robot on this machine reaches them on loopback.
ANY_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]"})
_LOCAL_TRANSPORTS = ("ipc://", "inproc://")  # never leave the machine


def normalize_endpoint(bind: str, default_port: int = DEFAULT_PORT) -> str:
    """`HOST`, `HOST:PORT` or a ZeroMQ endpoint -> a ZeroMQ endpoint (`tcp://HOST:PORT`).

    An endpoint with a transport (`tcp://`, `ipc://`, ...) is returned as it is, so everything
    `--bind` took before still means the same.
    """
    bind = bind.strip()
    if not bind:
        raise ValueError("the bind address is empty: give a host (127.0.0.1, 0.0.0.0), "
                         "HOST:PORT or tcp://HOST:PORT")
    if "://" in bind:
        return bind
    host, sep, port = bind.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):  # bare host, or bare IPv6
        host, port = (f"[{bind}]" if ":" in bind else bind), str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bind address {bind!r}: the port must be 1-65535 (HOST:PORT)")
    return f"tcp://{host}:{port}"


def endpoint_host(endpoint: str) -> Optional[str]:
    """The host part of a tcp:// endpoint; None for local transports (ipc://, inproc://)."""
    if endpoint.startswith(_LOCAL_TRANSPORTS):
        return None
    rest = endpoint.split("://", 1)[-1]
    host = rest.rpartition(":")[0] if ":" in rest else rest
    return host.split(";")[-1]  # a "source;dest" endpoint binds dest


def is_loopback(host: Optional[str]) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost).

    Anything else counts as reachable from the network, names of interfaces (eth0) and hosts
    included: when in doubt, the stricter rules apply.
    """
    if host is None:
        return True
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(bind_host: str) -> str:
    """Where a process on this machine connects to reach a server bound to `bind_host`."""
    return LOOPBACK if bind_host in ANY_HOSTS else bind_host


def world_readable(path: Path) -> bool:
    """The file's mode lets every user of the machine read it."""
    return bool(Path(path).stat().st_mode & stat.S_IROTH)


def secret_mode_problem(path: Path) -> Optional[str]:
    """Why a secret key file is unsafe (every user can read it), with the fix; else None."""
    if not world_readable(path):
        return None
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    return (f"secret key file {path} is readable by every user of this machine (mode "
            f"{mode:04o}): anyone here could act with this key. Fix: chmod 600 {path}")


def check_server_bind(endpoint: str, key_dir: Path, warn: bool = True) -> None:
    """Refuse, before anything binds, a data server that would listen beyond loopback without
    CURVE keys (or with a server secret key anyone can read); say what to do.

    On loopback a missing key pair is refused as before (the server cannot run without one) and
    a world-readable secret is only warned about.
    """
    key_dir = Path(key_dir)
    public, secret = server_key_paths(key_dir)
    host = endpoint_host(endpoint)
    remote = not is_loopback(host)
    if not secret.exists():
        if remote:
            raise KeyFileError(
                f"refusing to bind {endpoint}: it is reachable from other machines, and there "
                f"are no CURVE keys in {key_dir} (no {secret.name}), so nothing would "
                f"authenticate the robots. Create them first: `fleet keys create --dir "
                f"{key_dir} --name <arm id>` (one --name per arm; it creates the server's pair "
                f"too), copy {public.name} and each arm's secrets/<arm id>.key_secret to that "
                f"arm's machine (docs/real-robots.md, section 2), then serve again")
        raise KeyFileError(f"no server key pair in {key_dir}: run `fleet keys create --dir "
                           f"{key_dir} --name <robot id>` (it creates the server's pair too)")
    problem = secret_mode_problem(secret)
    if problem and remote:
        raise KeyFileError(f"refusing to bind {endpoint} (reachable from other machines): "
                           f"{problem}")
    if problem and warn:
        log.warning("%s (allowed on loopback; a bind beyond loopback refuses it)", problem)
    if remote and warn:
        _warn_about_secrets_left_here(key_dir)


def _warn_about_secrets_left_here(key_dir: Path) -> None:
    """Robots' secret keys still on the server machine: each belongs on its arm's machine."""
    left = [k.robot_id for k in list_robots(key_dir) if k.secret_path is not None]
    if left:
        log.warning("the secret keys of %d robot(s) are still in %s (%s): copy each to its "
                    "arm's machine with mode 0600, then delete it here (docs/real-robots.md, "
                    "section 2)", len(left), key_dir / "secrets", ", ".join(left[:8]))


def warn_if_http_exposed(what: str, host: str, port: int) -> bool:
    """Log a warning when an unauthenticated HTTP endpoint listens beyond loopback.

    Allowed, not refused: its routes only read (GET of counters, states, host names, policy
    versions; nothing controls an arm), Prometheus scrapes across the network by design, and
    `fleet monitor --host 0.0.0.0` already worked. True if it warned.
    """
    if is_loopback(host):
        return False
    log.warning("%s on http://%s:%d/ is reachable from other machines WITHOUT authentication: "
                "anyone who can reach it reads robot ids, hosts, counts and policy versions "
                "(it cannot control the fleet). Limit it with a firewall, put a reverse proxy "
                "with authentication in front, or bind 127.0.0.1 and use `ssh -L`", what,
                host, port)
    return True
