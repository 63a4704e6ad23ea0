"""Several learning runs on one chart: success on unseen objects against attempts and hours.

    .venv/bin/python benchmarks/compare_curves.py \
        qtopt=runs/qtopt_5obj/learning_curve.json grasp_point=runs/gp_5obj/learning_curve.json \
        --reference planner=runs/gp_5obj/failures.json --out docs/curves_5obj.png

Each LABEL=PATH is a `benchmarks/learning_run.py` output (learning_curve.json); each curve is
drawn with its 95% Wilson intervals and its run's scripted baseline as a dashed line of the
curve's colour (benchmarks/curve_report.py, the code that draws each run's own chart). `--reference LABEL=PATH` adds a fixed reference measured elsewhere, such as
`benchmarks/grasp_failures.py --json`'s privileged planner (`planner_success` over
`planner_attempts`), as a dotted line with its interval. The table printed gives each run's
commit, tray, best and last point, and whether its last interval overlaps the first run's: the
issue's "intervals not overlapping" test, made a command. Why a separate script: the runs take
hours each and are made one at a time, often in different sessions; this only reads them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curve_report import AXES, draw_baselines, draw_points, figure, finish, measured  # noqa: E402
from fleet.evaluation.counting import wilson_interval  # noqa: E402

COLOURS = ("tab:blue", "tab:purple", "tab:brown", "tab:cyan", "tab:olive", "tab:pink")


def labelled(text: str) -> tuple[str, Path]:
    """LABEL=PATH -> (label, path), for argparse."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=PATH, e.g. "
                                         f"qtopt=runs/q/learning_curve.json")
    return label, Path(path)


def load_curve(path: Path) -> dict:
    """A learning_curve.json, with a message that says what to pass instead when it is not."""
    try:
        curve = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare_curves: cannot read {path}: {exc} (pass the "
                         f"learning_curve.json a benchmarks/learning_run.py run wrote)")
    if curve.get("format") != 1 or "points" not in curve:
        raise SystemExit(f"compare_curves: {path} is not a learning_curve.json (format 1)")
    return curve


def load_reference(path: Path) -> tuple[float, list[float], int]:
    """(success, ci95, n) of a grasp_failures.py --json summary's privileged planner."""
    try:
        d = json.loads(path.read_text())
        k, n = round(d["planner_success"] * d["planner_attempts"]), int(d["planner_attempts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"compare_curves: {path}: {exc!r} (pass a benchmarks/"
                         f"grasp_failures.py --json output)")
    return k / n, list(wilson_interval(k, n)), n


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def summary(curves: dict[str, dict]) -> str:
    rows = ["run          commit     objects  best (attempts, h)               last (attempts)"
            "                   last vs first run"]
    first = None
    for label, curve in curves.items():
        pts = measured(curve)
        objects = curve["config"].get("num_objects", 5)
        commit = (curve.get("commit") or "unknown")[:9]
        if not pts:
            rows.append(f"{label:12s} {commit:9s}  {objects:7d}  no policy measured")
            continue
        best = max(pts, key=lambda p: (p["success"], -p["attempts"]))
        last = pts[-1]
        first = first or last
        vs = "-" if last is first else (
            "intervals overlap" if overlaps(last["ci95"], first["ci95"]) else "apart")
        rows.append(f"{label:12s} {commit:9s}  {objects:7d}  {best['success']:.2f} "
                    f"({best['ci95'][0]:.2f}-{best['ci95'][1]:.2f}) @{best['attempts']:6d}, "
                    f"{best['hours']:.2f}    {last['success']:.2f} ({last['ci95'][0]:.2f}-"
                    f"{last['ci95'][1]:.2f}) @{last['attempts']:6d}   {vs}")
    return "\n".join(rows)


def plot(curves: dict[str, dict], references: dict[str, tuple], path: Path) -> None:
    plt, fig, axes = figure()
    for ax, (xkey, _) in zip(axes, AXES):
        for (label, curve), colour in zip(curves.items(), COLOURS):
            draw_baselines(ax, curve, {"scripted": colour}, prefix=f"{label}: ", shade=False)
            pts = measured(curve)
            draw_points(ax, pts, xkey, colour,
                        f"{label} (95% CI, n={pts[-1]['n']})" if pts else label)
        for (label, (rate, ci, n)), colour in zip(references.items(),
                                                  ("tab:green", "tab:gray", "black")):
            ax.axhline(rate, color=colour, linestyle=":", label=f"{label} {rate:.2f} (n={n})")
            ax.axhspan(*ci, color=colour, alpha=0.08)
    trays = sorted({c["config"].get("num_objects", 5) for c in curves.values()})
    finish(plt, fig, axes, f"learning runs, {' / '.join(map(str, trays))} objects per tray: "
                           + ", ".join(curves), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("curves", nargs="+", type=labelled, metavar="LABEL=PATH",
                   help="learning_curve.json of a learning_run, with the label to draw it by")
    p.add_argument("--reference", action="append", type=labelled, default=[],
                   metavar="LABEL=PATH", help="a grasp_failures.py --json summary: its "
                                              "planner's success as a fixed line")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="the chart (PNG)")
    args = p.parse_args(argv)
    curves = {label: load_curve(path) for label, path in args.curves}
    references = {label: load_reference(path) for label, path in args.reference}
    plot(curves, references, args.out)
    print(summary(curves))
    for label, (rate, ci, n) in references.items():
        print(f"reference {label}: {rate:.2f} ({ci[0]:.2f}-{ci[1]:.2f}, n={n})")
    print(f"compare_curves: {len(curves)} run(s) on one chart -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
