"""The `fleet eval` report as a terminal table and as a plot (matplotlib, Agg: no display).

The plot answers "is the learned policy better than exploring, and is it improving": each
policy version is a point with its 95% Wilson interval as error bars, at x = its version (or the
attempts it was trained on), and each baseline is a horizontal line with its interval shaded,
so every version is read against random and scripted grasps measured in the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

_BASELINE_COLOURS = {"random": "tab:red", "scripted": "tab:orange"}


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


def format_table(report: dict) -> str:
    """One row per policy: attempts, successes, rate, 95% CI, aborted, label/truth agreement."""
    head = (f"{'policy':<14} {'attempts':>8} {'successes':>9} {'rate':>7} {'95% CI':>16} "
            f"{'aborted':>7} {'agreement':>9}  note")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lo, hi = r["ci95"]
        notes = []
        if not r["complete"]:
            notes.append(f"incomplete ({r['stopped_by']})")
        if r["unexpected_kind"]:
            notes.append(f"{r['unexpected_kind']} by another policy")
        if r["non_test_objects"]:
            notes.append(f"NON-TEST OBJECTS {r['non_test_objects']}")
        lines.append(f"{r['policy']:<14} {r['attempts']:>8} {r['successes']:>9} "
                     f"{_pct(r['rate']):>7} {_pct(lo) + '-' + _pct(hi).strip():>16} "
                     f"{r['aborted']:>7} {_pct(r['agreement']):>9}  {', '.join(notes)}")
    return "\n".join(lines)


def plot_report(report: dict, path: Path, x: str = "version") -> Path:
    """Write the success-rate plot; x is "version" or "trained_on_attempts" (learned policies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    learned = [r for r in results if r["bundle"]]
    baselines = [r for r in results if not r["bundle"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    xs = [r[x] if r[x] is not None else r["version"] for r in learned]
    span = (min(xs) - 0.5, max(xs) + 0.5) if xs else (0.0, 1.0)
    if xs and span[1] - span[0] < 2:
        span = (span[0] - 0.5, span[1] + 0.5)
    for r in baselines:
        if r["rate"] is None:
            continue
        colour = _BASELINE_COLOURS.get(r["policy"], "tab:gray")
        ax.axhline(r["rate"], color=colour, linestyle="--",
                   label=f"{r['policy']}: {_pct(r['rate']).strip()} (n={r['attempts']})")
        ax.axhspan(*r["ci95"], color=colour, alpha=0.12)
    points = [(xv, r) for xv, r in zip(xs, learned) if r["rate"] is not None]
    if points:
        px = [p[0] for p in points]
        py = [p[1]["rate"] for p in points]
        err = [[max(0.0, p[1]["rate"] - p[1]["ci95"][0]) for p in points],
               [max(0.0, p[1]["ci95"][1] - p[1]["rate"]) for p in points]]
        ax.errorbar(px, py, yerr=err, fmt="o-", color="tab:blue", capsize=4,
                    label="learned policy (95% CI)")
        ax.set_xticks(px)
        ax.set_xticklabels([f"v{r['version']}\n{r['trained_on_attempts'] or 0} att."
                            for _, r in points])
    ax.set_xlim(*span)
    ax.set_ylim(0, 1)
    ax.set_xlabel("policy version (attempts trained on)" if x == "version"
                  else "attempts trained on")
    ax.set_ylabel("grasp success rate, test objects")
    n = report["config"]["attempts"]
    ax.set_title(f"fleet eval: {n} attempts per policy, {report['config']['arms']} arm(s)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
