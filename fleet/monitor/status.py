"""`fleet status` (the per-robot table in a terminal) and `fleet monitor` (the dashboard process).

Both read the data server through fleet.monitor.Monitor with the monitor's own CURVE key.
Rates need two polls: a one-shot `fleet status` polls twice, `--sample` seconds apart, and says
over how long its rates were measured; `--watch` keeps polling, so its rates grow to the full
5-minute and 1-hour windows. Heavy imports (rich, http, prometheus) happen in the handlers so
`fleet --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

DASH = "\u2014"


def _fmt_num(v: Optional[float], digits: int = 0) -> str:
    return DASH if v is None else f"{v:,.{digits}f}"


def _fmt_pct(v: Optional[float]) -> str:
    return DASH if v is None else f"{100 * v:.1f}%"


def _fmt_bytes(v: Optional[float]) -> str:
    if v is None:
        return DASH
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1000:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} TB"


def _fmt_age(s: Optional[float]) -> str:
    if s is None:
        return DASH
    if s < 90:
        return f"{max(0, s):.0f} s ago"
    return f"{s / 60:.0f} min ago" if s < 5400 else f"{s / 3600:.1f} h ago"


def _fmt_state(state: Optional[str]) -> str:
    return {"estopped": "e-stopped", None: DASH}.get(state, state)


COLUMNS = ("robot", "state", "att/h 5m", "att/h 1h", "attempts", "successes", "success",
           "policy", "last seen", "spool", "stored", "host")
_STYLE = {"collecting": "green", "estopped": "bold red", "error": "bold red",
          "offline": "dim", "paused": "yellow", "starting": "yellow"}


def table_rows(snap: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table's cells as text, one tuple per robot (also what the tests read)."""
    rows = []
    for r in snap["robots"]:
        spool = DASH if r["spool_attempts"] is None else (
            f"{r['spool_attempts']} ({_fmt_bytes(r['spool_bytes'])})")
        rows.append((r["robot_id"], _fmt_state(r["state"]), _fmt_num(r["attempts_per_hour_5m"]),
                     _fmt_num(r["attempts_per_hour_1h"]), _fmt_num(r["attempts"]),
                     _fmt_num(r["successes"]), _fmt_pct(r["success_rate"]),
                     DASH if r["policy_version"] is None else f"v{r['policy_version']}",
                     _fmt_age(r["last_seen_age_s"]), spool, _fmt_bytes(r["bytes_stored"]),
                     r.get("host") or DASH))
    return rows


def render(snap: dict[str, Any]):
    """A rich Table of the snapshot, with the served policy and data server in its caption."""
    from rich.table import Table

    server, policy = snap["server"], snap.get("policy") or {}
    served = policy.get("served_version")
    title = f"fleet: {snap['totals']['robots']} robot(s), data server {server['endpoint']}"
    if not server["reachable"]:
        title += f"  [bold red]NOT ANSWERING: {server['error'] or 'no reply yet'}[/]"
    span = max((r["rate_span_s"] for r in snap["robots"]), default=0.0)
    caption = (f"served policy {DASH if served is None else f'v{served}'}"
               f"{' (pinned)' if policy.get('pinned') else ''}; rates measured over "
               f"{span:.0f} s (full windows: 5 min, 1 h)")
    learner = snap.get("learner") or {}
    if learner.get("version") is not None:
        metrics = learner.get("metrics") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                          if k.startswith("val_") and isinstance(v, float))
        caption += f"; learner v{learner['version']}: {shown or DASH}"
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for r, cells in zip(snap["robots"], table_rows(snap)):
        table.add_row(*cells, style=_STYLE.get(r["state"] or ""))
    t = snap["totals"]
    table.add_row(f"fleet ({t['robots']})", "", _fmt_num(t["attempts_per_hour_5m"]),
                  _fmt_num(t["attempts_per_hour_1h"]), _fmt_num(t["attempts"]),
                  _fmt_num(t["successes"]), _fmt_pct(t["success_rate"]), "", "", "",
                  _fmt_bytes(t["bytes_stored"]), style="bold", end_section=True)
    return table


def _monitor(args: argparse.Namespace, min_rate_span: float = 10.0):
    from fleet.monitor.monitor import Monitor, MonitorConfig

    return Monitor(MonitorConfig(endpoint=args.server, key_dir=args.keys,
                                 key_name=args.key_name, poll_interval=args.interval,
                                 request_timeout=args.timeout,
                                 offline_after=args.offline_after,
                                 min_rate_span=min_rate_span, learner_dir=args.learner_dir))


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    # one-shot: the operator chose how long to sample, so rates come from that span
    monitor = _monitor(args, min_rate_span=min(10.0, args.sample * 0.9))
    console = Console()
    try:
        if args.watch:
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    monitor.poll_once()
                    live.update(render(monitor.snapshot()), refresh=True)
                    time.sleep(args.interval)
        if monitor.poll_once():
            time.sleep(args.sample)
            monitor.poll_once()
        snap = monitor.snapshot()
        if args.json:
            print(json.dumps(snap, indent=1))
        else:
            console.print(render(snap))
        return 0 if snap["server"]["reachable"] else 1
    except KeyboardInterrupt:
        return 0
    finally:
        monitor.close()


def _cmd_monitor(args: argparse.Namespace) -> int:
    from fleet.monitor.dashboard import DashboardConfig, serve

    serve(_monitor(args, args.min_rate_span), DashboardConfig(host=args.host, port=args.port),
          ready=lambda url: print(f"fleet monitor: ready on {url}", flush=True))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="tcp://127.0.0.1:5555",
                   help="the data server's ZeroMQ endpoint")
    p.add_argument("--keys", type=Path, default=Path("keys"),
                   help="key directory holding server.key and secrets/<key-name>.key_secret")
    p.add_argument("--key-name", default="monitor",
                   help="the monitor's own key (create it: fleet keys create --name monitor)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the data server's reply")
    p.add_argument("--offline-after", type=float, default=30.0,
                   help="a robot silent for this many seconds is shown offline")
    p.add_argument("--learner-dir", type=Path, default=None,
                   help="the learner's --out (or its policies/): show its latest metrics")


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per-robot collection table (rates, success, state)")
    _common(p)
    p.add_argument("--watch", action="store_true", help="keep refreshing until Ctrl-C")
    p.add_argument("--sample", type=float, default=2.0,
                   help="one-shot mode: seconds between the two polls the rates come from")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.set_defaults(func=_cmd_status)


def add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="web dashboard, /api/status and Prometheus /metrics")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="HTTP address to bind")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (0: pick a free one)")
    p.add_argument("--min-rate-span", type=float, default=10.0,
                   help="show no rate until this many seconds of history exist")
    p.set_defaults(func=_cmd_monitor)

