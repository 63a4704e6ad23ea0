"""The `fleet` command line: one subcommand per job (keys, serve, and more as the system grows).

Each subcommand registers itself with an `add_<name>(subparsers)` function that sets
`func=<handler>`; to add one, write the function and list it in SUBCOMMANDS.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from fleet import __version__


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from fleet.keys import create_robot_key, server_key_paths

    for name in args.name:
        key = create_robot_key(args.dir, name)
        print(f"created robot {key.robot_id}: public {key.public_path}, secret {key.secret_path}")
    print(f"copy to each robot: secrets/<robot id>.key_secret and {server_key_paths(args.dir)[0]}")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from fleet.keys import list_robots, server_key_paths

    robots = list_robots(args.dir)
    public, secret = server_key_paths(args.dir)
    print(f"server key pair: {'present' if secret.exists() else 'MISSING'} ({public})")
    print(f"{'robot':<20} {'public key (z85)':<42} secret here")
    for k in robots:
        print(f"{k.robot_id:<20} {k.public_key.decode():<42} "
              f"{'yes' if k.secret_path else 'no (moved to the robot)'}")
    print(f"{len(robots)} robot(s) admitted")
    return 0


def add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create and list CURVE keys of the server and robots")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key pair for each named robot "
                                       "(and the server's pair if missing)")
    c.add_argument("--name", action="append", required=True,
                   help="robot id (repeat for several robots)")
    c.add_argument("--dir", type=Path, default=Path("keys"), help="key directory")
    c.set_defaults(func=_cmd_keys_create)
    ls = ksub.add_parser("list", help="list admitted robots")
    ls.add_argument("--dir", type=Path, default=Path("keys"), help="key directory")
    ls.set_defaults(func=_cmd_keys_list)


def _cmd_serve(args: argparse.Namespace) -> int:
    from fleet.keys import load_server_keypair
    from fleet.server import DataServer, ServerConfig
    from fleet.store import Store, StoreConfig, StoreLockedError

    load_server_keypair(args.keys)  # fail early, with what to do, before opening the store
    store_cfg = StoreConfig(root=args.data)
    if args.min_free_bytes is not None:
        store_cfg.min_free_bytes = args.min_free_bytes
    config = ServerConfig(bind=args.bind, key_dir=args.keys, metrics_port=args.metrics_port,
                          commit_delay=args.commit_delay)
    logging.getLogger("fleet").info("opening store %s (recovering its WAL if needed)", args.data)
    try:
        store = Store(store_cfg)
    except StoreLockedError as exc:
        raise OSError(f"{exc}: another server is using {args.data}") from None
    server = DataServer(config, store)
    server.install_signal_handlers()
    server.serve(ready=lambda: print(f"fleet serve: ready on {args.bind}", flush=True))
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the data server (ingest of grasp attempts)")
    p.add_argument("--data", type=Path, required=True, help="store directory")
    p.add_argument("--keys", type=Path, default=Path("keys"), help="key directory")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on 127.0.0.1:PORT")
    p.add_argument("--min-free-bytes", type=int, default=None,
                   help="refuse writes (answer BUSY) when the disk has less free space")
    p.add_argument("--commit-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_keys, add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # user errors: say what was wrong, no traceback
        print(f"fleet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
