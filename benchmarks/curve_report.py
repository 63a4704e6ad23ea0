"""A learning curve (benchmarks/learning_run.py's learning_curve.json) as a chart and as text.

Shared by learning_run.py (one run, written at its end) and compare_curves.py (several runs on
one chart): the points with their 95% intervals and the baselines are drawn by the same code,
so a comparison chart reads exactly as each run's own.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

NAME = "learning_run"
#: The two panels: x key in each point, axis label.
AXES = (("attempts", "attempts collected by the fleet"),
        ("hours", "collection time, h (eval pauses excluded)"))
Y_LABEL = "grasp success, unseen (test) objects"


def measured(curve: dict) -> list[dict]:
    """The points at which a policy was measured (success not None)."""
    return [p for p in curve["points"] if p["success"] is not None]


def figure():
    """(pyplot, fig, the two axes) with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100, sharey=True)
    return plt, fig, axes


def draw_points(ax, pts: list[dict], xkey: str, colour: str, label: str,
                versions: bool = False) -> None:
    """One curve's measured points with their 95% Wilson intervals."""
    if not pts:
        return
    xs, ys = [p[xkey] for p in pts], [p["success"] for p in pts]
    err = [[p["success"] - p["ci95"][0] for p in pts], [p["ci95"][1] - p["success"] for p in pts]]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=colour, label=label)
    if versions:
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"v{p['version']}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)


def draw_baselines(ax, curve: dict, colours: dict[str, str], prefix: str = "",
                   shade: bool = True) -> None:
    """The run's random and scripted baselines as dashed lines (their intervals shaded)."""
    for name, colour in colours.items():
        b = curve["baselines"].get(name)
        if b and b["success"] is not None:
            ax.axhline(b["success"], color=colour, linestyle="--", linewidth=0.9,
                       label=f"{prefix}{name} {b['success']:.2f} (n={b['n']})")
            if shade:
                ax.axhspan(*b["ci95"], color=colour, alpha=0.1)


def finish(plt, fig, axes, title: str, path: Path) -> None:
    for ax, (_, xlabel) in zip(axes, AXES):
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(Y_LABEL)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot(curve: dict, path: Path) -> None:
    """One run: its points (versions annotated), baselines and target."""
    plt, fig, axes = figure()
    pts = measured(curve)
    for ax, (xkey, _) in zip(axes, AXES):
        draw_baselines(ax, curve, {"random": "tab:red", "scripted": "tab:orange"})
        ax.axhline(curve["target"]["success"], color="tab:green", linestyle=":",
                   label=f"target {curve['target']['success']}")
        draw_points(ax, pts, xkey, "tab:blue", "learned policy (95% CI)", versions=True)
    c = curve["config"]
    finish(plt, fig, axes, f"learning run ({c.get('learner_method')}, "
                           f"{c.get('num_objects', 5)} objects per tray): {c['arms']} arm(s), "
                           f"{c['eval_attempts']} eval attempts per policy", path)


def headline(curve: dict) -> str:
    """The run's last line: the best rate measured, where it was first measured."""
    pts = measured(curve)
    b, t = curve["baselines"], curve["target"]

    def rate(name: str) -> str:
        r = b.get(name, {}).get("success")
        return "n/a" if r is None else f"{r:.2f}"

    tail = (f"(random {rate('random')}, scripted {rate('scripted')}; target {t['success']} in "
            f"{t['attempts']} attempts / {t['hours']:g} h)")
    if not pts:
        last = curve["points"][-1] if curve["points"] else {"attempts": 0, "hours": 0.0}
        return (f"{NAME}: no policy published after {last['attempts']} attempts, "
                f"{last['hours']:.2f} h: nothing to evaluate {tail}")
    # the best rate, where it was first measured; with nothing above zero, the run's end
    best = max(pts, key=lambda p: (p["success"], -p["attempts"]))
    best = best if best["success"] > 0 else pts[-1]
    n = int(curve["config"].get("num_objects", 5))
    where = "" if n == 5 else f" in trays of {n}"
    return (f"{NAME}: {best['success']:.2f} success on unseen objects{where} after "
            f"{best['attempts']} "
            f"attempts, {best['hours']:.2f} h {tail}")


def table(curve: dict) -> str:
    rows = ["attempts  hours  wall_h  policy  trained_on  success  95% CI         n  eval_s"]
    for p in curve["points"]:
        s = "   -   " if p["success"] is None else f"{p['success']:7.2f}"
        rows.append(f"{p['attempts']:8d}  {p['hours']:5.2f}  {p['wall_hours']:6.2f}  "
                    f"v{p['version']:<5d}  {p['trained_on_attempts'] or 0:10d}  {s}  "
                    f"{p['ci95'][0]:.2f}-{p['ci95'][1]:.2f}  {p['n']:6d}  {p['eval_wall_s']:6.1f}"
                    + ("  (same version)" if p["reused"] else ""))
    for name, r in curve["baselines"].items():
        s = "n/a" if r["success"] is None else f"{r['success']:.2f}"
        rows.append(f"baseline {name}: {s} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}, n={r['n']})")
    return "\n".join(rows)


def source_commit() -> Optional[str]:
    """The checkout's commit, "-dirty" appended with uncommitted changes to tracked files:
    which code made a curve (the issue compares methods on the same commit); None without
    git."""
    repo = str(Path(__file__).resolve().parents[1])
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
