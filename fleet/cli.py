"""The `fleet` command line: one subcommand per job (keys, serve, learn, policy, eval, sim,
status, monitor).

Each subcommand registers itself with an `add_<name>(subparsers)` function that sets
`func=<handler>`; to add one, write the function and list it in SUBCOMMANDS. Subcommands that
live with their room (learn: fleet/learner/cli.py, sim: fleet/ops/sim_fleet.py, status and
monitor: fleet/monitor/status.py) import only argparse-level code here; the work is imported
when the command runs.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from fleet import __version__
from fleet.learner.cli import add_learn
from fleet.ops.sim_fleet import add_sim
from fleet.monitor.status import add_monitor, add_status
from fleet.export.cli import add_export


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from fleet.server.keys import create_robot_key, server_key_paths

    for name in args.name:
        key = create_robot_key(args.dir, name)
        print(f"created robot {key.robot_id}: public {key.public_path}, secret {key.secret_path}")
    print(f"copy to each robot: secrets/<robot id>.key_secret and {server_key_paths(args.dir)[0]}")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from fleet.server.keys import list_robots, server_key_paths

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
    from fleet.server.binding import check_server_bind, normalize_endpoint
    from fleet.server.keys import load_server_keypair
    from fleet.server.server import DataServer, ServerConfig
    from fleet.store.writer import Store, StoreConfig, StoreLockedError

    bind = normalize_endpoint(args.bind)
    # fail early, with what to do, before opening the store (DataServer checks again, and warns)
    check_server_bind(bind, args.keys, warn=False)
    load_server_keypair(args.keys)
    store_cfg = StoreConfig(root=args.data, roll_process=True)  # rolls off the ack path
    if args.min_free_bytes is not None:
        store_cfg.min_free_bytes = args.min_free_bytes
    if args.policies is not None and not args.policies.is_dir():
        raise OSError(f"--policies {args.policies} is not a directory: pass the learner's "
                      f"<out>/policies (create it empty if the learner has not published yet)")
    config = ServerConfig(bind=bind, key_dir=args.keys, metrics_port=args.metrics_port,
                          metrics_host=args.metrics_host, commit_delay=args.commit_delay,
                          policies_dir=args.policies)
    logging.getLogger("fleet").info("opening store %s (recovering its WAL if needed)", args.data)
    try:
        store = Store(store_cfg)
    except StoreLockedError as exc:
        raise OSError(f"{exc}: another server is using {args.data}") from None
    server = DataServer(config, store)
    server.install_signal_handlers()
    server.serve(ready=lambda: print(f"fleet serve: ready on {bind}", flush=True))
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the data server (ingest of grasp attempts)")
    p.add_argument("--data", type=Path, required=True, help="store directory")
    p.add_argument("--keys", type=Path, default=Path("keys"), help="key directory")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="where robots connect: HOST, HOST:PORT (port 5555 if left out) or a "
                        "ZeroMQ endpoint. Beyond loopback (0.0.0.0, a LAN address) it needs the "
                        "CURVE keys of `fleet keys create` and a server secret only its owner "
                        "can read; it is refused otherwise, saying why")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on METRICS_HOST:PORT")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address for /metrics (default loopback; 0.0.0.0 lets a Prometheus on "
                        "another machine scrape it, unauthenticated: a warning says so)")
    p.add_argument("--min-free-bytes", type=int, default=None,
                   help="refuse writes (answer BUSY) when the disk has less free space")
    p.add_argument("--policies", type=Path, default=None,
                   help="distribute the policies in this directory (the learner's "
                        "<out>/policies: latest.json, pin.json, v<N>/)")
    p.add_argument("--commit-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)


def _cmd_policy(args: argparse.Namespace) -> int:
    from fleet.policy import folder as R

    if args.policy_command == "pin":
        path = R.pin(args.policies, args.version, args.reason)
        print(f"pinned the fleet to policy v{args.version} ({path}); a running server switches "
              f"every robot within a second. `fleet policy unpin` returns to the newest")
    elif args.policy_command == "unpin":
        had = R.unpin(args.policies)
        print("unpinned: the server serves the newest version again" if had
              else "no pin was set")
    else:
        latest = R.read_json(args.policies / R.POINTER_FILE)
        pinned = R.read_json(args.policies / R.PIN_FILE)
        records, behind = (_fleet_records(args.store) if args.store is not None
                           else (None, set()))
        print(f"{'version':>7}  {'created_at':<26} {'trained_on':>10}  "
              f"{_FLEET_HEADER if records is not None else ''}state")
        for row in R.list_versions(args.policies):
            tags = [t for t, on in (("latest", latest and latest["version"] == row["version"]),
                                    ("PINNED", pinned and pinned["version"] == row["version"]))
                    if on]
            state = "ok" if row["ok"] else f"CORRUPT: {row['problem']}"
            fleet = ""
            if records is not None:
                fleet = _fleet_columns(records.get(row["version"]))
                tags += ["BELOW-EXPLORATION"] if row["version"] in behind else []
            print(f"{row['version']:>7}  {row['created_at']:<26} "
                  f"{row['trained_on_attempts']:>10}  {fleet}{state} {' '.join(tags)}")
        if records is not None and 0 in records:
            r = records[0]
            print(f"before any policy: {r.exploration_attempts} exploration attempts, "
                  f"success {r.exploration_rate:.2f}")
        served = pinned or latest
        print(f"served: v{served['version']} ({'pinned' if pinned else 'newest'})" if served
              else "served: nothing (no latest.json, no pin)")
    return 0


#: `fleet policy list --store` columns: each version's learned attempts on the robots, their
#: success, exploration's success while it served, median steps and close height.
_FLEET_HEADER = f"{'fleet':>6} {'success':>7} {'explore':>7} {'steps':>5} {'close_z':>7}  "


def _fleet_records(store: Path) -> tuple[dict, set]:
    """(VersionRecord by version, the versions the learner's publish rule counts as losing
    to exploration, with its default evidence: fleet.learner.publish_rule.losing)."""
    from fleet.learner.publish_rule import (PublishSettings, in_service_record, losing,
                                            version_records)
    from fleet.store.reader import StoreReader

    if not (store / "attempts").is_dir():
        raise SystemExit(f"fleet policy list: {store} holds no store (no attempts/ directory): "
                         f"pass the server's --data directory")
    reader = StoreReader(store)
    try:
        records = version_records(reader)
        after = PublishSettings().replace_losing_after
        return records, {v for v in records
                         if losing(in_service_record(records, v), v, after)}
    finally:
        reader.close()


def _fleet_columns(r) -> str:
    """One version's fleet columns (zeros and dashes when it never ran)."""
    if r is None or r.learned_attempts == 0:
        return f"{0:>6} {'-':>7} {'-':>7} {'-':>5} {'-':>7}  "
    explore = f"{r.exploration_rate:.2f}" if r.exploration_attempts else "-"
    return (f"{r.learned_attempts:>6} {r.learned_rate:>7.2f} {explore:>7} "
            f"{r.median_steps:>5.0f} {r.median_close_z:>7.3f}  ")


def add_policy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="list policy versions; pin the fleet to one (rollback)")
    psub = p.add_subparsers(dest="policy_command", required=True)
    for name, text in (("list", "list the bundles, which one is latest and which is pinned"),
                       ("pin", "serve this version to every robot until unpinned"),
                       ("unpin", "serve the newest version again")):
        c = psub.add_parser(name, help=text)
        c.add_argument("--policies", type=Path, required=True,
                       help="the policies directory the server watches (<learner out>/policies)")
        if name == "list":
            c.add_argument("--store", type=Path, default=None,
                           help="the server's --data directory: add how each version did on "
                                "the robots (attempts, success, exploration's success while "
                                "it served, median steps, median close height in m)")
        if name == "pin":
            c.add_argument("--version", type=int, required=True, help="policy version N (v<N>)")
            c.add_argument("--reason", default="", help="why (kept in pin.json)")
        c.set_defaults(func=_cmd_policy)


def _cmd_eval(args: argparse.Namespace) -> int:
    import signal

    from fleet.evaluation.evaluate import EvalConfig, evaluate
    from fleet.evaluation.plot import format_table
    from fleet.ops.processes import robot_params

    cfg = EvalConfig(policies=args.policy, out=args.out, attempts=args.attempts, arms=args.arms,
                     baselines=tuple(b for b in args.baselines.split(",") if b),
                     image_size=args.image_size, max_steps=args.max_steps,
                     num_objects=args.num_objects, seed=args.seed, timeout_s=args.timeout_s,
                     ros_domain_id=args.ros_domain_id, arms_config=args.config,
                     robot_params=robot_params(args.robot_param))
    stop = {"requested": False}

    def _request_stop(signum, _frame):  # the supervisor stops the arms; the report is written
        stop["requested"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    report = evaluate(cfg, should_stop=lambda: stop["requested"])
    print(format_table(report))
    print(f"fleet eval: wrote {args.out / 'eval.json'} and {args.out / 'eval.png'}"
          f"{' (interrupted: partial results)' if report['interrupted'] else ''}")
    return 130 if report["interrupted"] else 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    from fleet.ops.plan import CONFIG_DIR

    p = sub.add_parser("eval", help="success rate of policy bundles on test-split objects in "
                                    "simulation, beside random and scripted grasps")
    p.add_argument("--policy", type=Path, action="append", default=[],
                   help="policy bundle directory, or a directory of versions (v<N>/); repeat "
                        "to compare several")
    p.add_argument("--attempts", type=int, default=50, help="labelled attempts per policy")
    p.add_argument("--arms", type=int, default=1, help="simulated arms per policy run")
    p.add_argument("--out", type=Path, required=True, help="output directory (eval.json, "
                                                           "eval.png, spools, logs)")
    p.add_argument("--baselines", default="random,scripted",
                   help="comma-separated baselines measured in the same run ('' for none)")
    p.add_argument("--image-size", type=int, default=None,
                   help="camera image side, px (default: the arms plan's image_size)")
    p.add_argument("--max-steps", type=int, default=None, help="servo steps T per attempt")
    p.add_argument("--num-objects", type=int, default=None, help="objects in each tray")
    p.add_argument("--robot-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a robot_node parameter for every policy run (repeatable; VALUE read "
                        "as YAML), e.g. cem_samples=128 as the fleet ran it")
    p.add_argument("--seed", type=int, default=1, help="scene and policy seed (same for all)")
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="time budget per policy; a run that runs out reports what it got")
    p.add_argument("--ros-domain-id", type=int, default=78,
                   help="ROS_DOMAIN_ID of the eval's arms (keep it apart from a running fleet)")
    p.add_argument("--config", type=Path, default=CONFIG_DIR / "arms.yaml", help="arms file")
    p.set_defaults(func=_cmd_eval)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_keys, add_serve, add_learn,
                                                                   add_policy, add_eval, add_sim,
                                                                   add_status, add_monitor,
                                                                   add_export]


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
