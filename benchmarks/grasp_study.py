"""Offline grasp-learning study: collect -> train -> evaluate in one process tree, no ROS.

The fleet loop (ROS processes, data server, learner) takes ~30 min to say anything; this runs the
same pieces in-process so variations can be compared in minutes (the harness is
benchmarks/grasp_harness.py; this file is the study and its command line):

- attempts run through robot_node's own `GraspLoop` (same T, Decision semantics, workspace,
  close + lift + gripper-reading label) on a `SimArm` wrapped by `InProcessArm`, which does what
  sim_bridge.node does over ROS (a twist is `SimArm.servo` for command_duration, a gripper
  command is `set_fingers`, every state is a fresh render); one SimArm per worker process;
- policies are the fleet's: `robot_node.policy_runtime.make_exploration` by name, and
  `fleet.policy.GraspPolicy` over a `GraspSuccessNet` with robot_node's CEM settings (optionally
  mixed with exploration, `fleet.policy.exploration.MixedPolicy`, as robot_node runs it);
- training uses the learner's `LevineLearner.train_step` on batches built by its `LevineCollate`
  from `fleet.learner.dataset.samples_of_attempt` (every step: (I_t, p_T - p_t, label));
- evaluation is the greedy policy (no exploration) on test-split objects, Wilson 95% CI, beside
  the scripted and random baselines on the same scene seeds.

Collected datasets are cached in --cache (default /tmp/grasp_study) keyed by what produced them.

    .venv/bin/python benchmarks/grasp_study.py --quick            # ~1-2 min
    .venv/bin/python benchmarks/grasp_study.py collect --policy aimed --split test --seed 7
    .venv/bin/python benchmarks/grasp_study.py study --attempts 1000 --eval-attempts 100
    .venv/bin/python benchmarks/grasp_study.py rounds --attempts 600 --rounds 3

Last line: `grasp_study: <rate> success on unseen objects (...; target 0.8)`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grasp_harness import (PolicySpec, TrainSettings, collect, merge, run_attempts,  # noqa: E402
                           spec_of, success, train, train_job)
from fleet.learner.config import TrainingOptions  # noqa: E402
from fleet.methods.levine.network import GraspSuccessNet  # noqa: E402
from robot_node.params import NodeConfig  # noqa: E402

TARGET = 0.8


# -- the study ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variation:
    """One row of the study: how to train, and how the greedy policy servos."""

    name: str
    train: TrainSettings = field(default_factory=TrainSettings)
    policy: tuple = ()  # GraspPolicyConfig overrides at evaluation
    data: str = "base"  # which collected dataset: "base", "base+more", ...


def _options(**kw: Any) -> TrainingOptions:
    return TrainingOptions(**kw)


def variations(steps: int) -> dict[str, Variation]:
    """The registry of variations the CLI can name."""
    t = TrainSettings(steps=steps)
    v = [Variation("baseline", t),
         Variation("steps/3", replace(t, steps=max(1, steps // 3))),
         Variation("steps*2", replace(t, steps=2 * steps)),
         Variation("wd1e-4", replace(t, weight_decay=1e-4)),
         Variation("shift4", replace(t, options=_options(augment_shift=4))),
         Variation("shift4+colour", replace(t, options=_options(augment_shift=4,
                                                                augment_colour=0.2))),
         Variation("posw3", replace(t, options=_options(positive_weight=3.0))),
         Variation("close0.8", t, policy=(("close_ratio", 0.8),)),
         Variation("close0.95", t, policy=(("close_ratio", 0.95),)),
         Variation("noraise", t, policy=(("raise_ratio", 0.0),)),
         Variation("lr3e-4", replace(t, lr=3e-4)),
         Variation("wd1e-3", replace(t, weight_decay=1e-3)),
         Variation("initial_image", replace(t, network=(("use_initial_image", True),))),
         Variation("aimed", t, data="aimed"),
         Variation("base+aimed", t, data="base+aimed"),
         Variation("base+aimed shift4+colour", replace(t, options=_options(
             augment_shift=4, augment_colour=0.2)), data="base+aimed")]
    v.append(Variation("initial_image+shift4+colour", replace(
        t, network=(("use_initial_image", True),),
        options=_options(augment_shift=4, augment_colour=0.2))))
    return {x.name: x for x in v}


def variation(reg: dict[str, Variation], name: str) -> Variation:
    """A registered variation; "name@3" is the same with training seed 3."""
    base, _, seed = name.partition("@")
    if base not in reg:
        raise SystemExit(f"unknown variation {base!r}; choose from {sorted(reg)}")
    v = reg[base]
    return replace(v, name=name, train=replace(v.train, seed=int(seed))) if seed else v


def fmt(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['success']:.2f} ({r['k']}/{r['n']}, {lo:.2f}-{hi:.2f})"


def baselines(args: argparse.Namespace) -> dict[str, dict]:
    out = {}
    for name in ("random_descent", "random", "aimed"):
        d = collect(PolicySpec(name), "test", args.eval_seed, args.eval_attempts, args.workers,
                    args.cache, node=args.node)
        out[name] = success(d)
        print(f"baseline {name:15s} test: {fmt(out[name])}", flush=True)
    return out


def evaluate_model(model: GraspSuccessNet, policy: tuple, args: argparse.Namespace) -> dict:
    return evaluate_spec(spec_of(model, policy=policy), args)


def evaluate_spec(spec: PolicySpec, args: argparse.Namespace) -> dict:
    """The greedy policy (no exploration) on test objects, same scenes as the baselines."""
    d = run_attempts(spec, "test", args.eval_seed, args.eval_attempts, args.workers,
                     node=args.node)
    r = success(d)
    r["mean_steps"] = float(np.mean([m["steps"] for m in d["meta"]]))
    #: closed more than 4 cm above the workspace floor: in the air over the objects
    r["closed_high"] = float(np.mean([m["close_z"] > NodeConfig().workspace_min[2] + 0.04
                                      for m in d["meta"]]))
    return r


def datasets(args: argparse.Namespace) -> dict[str, tuple[Path, ...]]:
    """The training sets variations may name, collected (or found in the cache) on demand."""
    base = collect(PolicySpec(args.policy), "train", args.seed, args.attempts, args.workers,
                   args.cache, node=args.node)
    out = {"base": (base["path"],)}
    report = [("base", base)]
    if args.aimed_attempts:
        aimed = collect(PolicySpec("aimed"), "train", args.seed + 1, args.aimed_attempts,
                        args.workers, args.cache, node=args.node)
        out.update(aimed=(aimed["path"],), **{"base+aimed": (base["path"], aimed["path"])})
        report.append(("aimed", aimed))
    for name, d in report:
        took = "cached" if d["cached"] else f"{d['wall_s']:.0f} s"
        print(f"data {name}: {len(d['meta'])} {d['meta'][0]['kind']} attempts on train "
              f"objects: {fmt(success(d))}, {len(d['arrays']['label'])} steps ({took})",
              flush=True)
    return out


def cmd_study(args: argparse.Namespace) -> float:
    data = datasets(args)
    bl = baselines(args)
    reg = variations(args.steps)
    names = args.variations.split(",") if args.variations else list(reg)
    reg = {n: variation(reg, n) for n in names}
    jobs = list(dict.fromkeys((data[reg[n].data], reg[n].train) for n in names))
    with mp.get_context("spawn").Pool(args.workers) as pool:  # one training per core
        done = dict(zip(jobs, pool.map(train_job, jobs, chunksize=1)))
    trained = [done[(data[reg[n].data], reg[n].train)] for n in names]
    print("\n| variation | data | success on test objects | mean steps | closed high | val loss "
          "| val AUC | train loss | train s |\n|---|---|---|---|---|---|---|---|---|",
          flush=True)
    rows, best = [], 0.0
    for name, (spec, m) in zip(names, trained):
        var = reg[name]
        r = evaluate_spec(replace(spec, policy=var.policy), args)
        best = max(best, r["success"])
        rows.append({"variation": name, "data": var.data, **r, **m})
        print(f"| {name} | {var.data} | {fmt(r)} | {r['mean_steps']:.1f} | "
              f"{r['closed_high']:.2f} | {m['val_loss']:.3f} | {m['val_auc']:.3f} | "
              f"{m['train_loss']:.3f} | {m['train_s']:.0f} |", flush=True)
    out = args.cache / f"study-{int(time.time())}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "baselines": bl, "rows": rows}, indent=1))
    print(f"results: {out}")
    print(f"grasp_study: {best:.2f} success on unseen objects, best of {len(rows)} variations "
          f"(scripted {bl['random_descent']['success']:.2f}, random {bl['random']['success']:.2f}"
          f"; target {TARGET})")
    return best


def cmd_collect(args: argparse.Namespace) -> float:
    d = collect(PolicySpec(args.policy), args.split, args.seed, args.attempts, args.workers,
                args.cache, node=args.node)
    r = success(d)
    rate = "cached" if d["cached"] else f"{args.attempts / d['wall_s']:.2f} attempts/s"
    print(f"{args.attempts} {args.policy} attempts on {args.split}: {fmt(r)}, agreement "
          f"{r['agreement']:.2f}, {len(d['arrays']['label'])} steps, {rate} -> {d['path']}")
    print(f"grasp_study: {r['success']:.2f} success of {args.policy} on {args.split} objects "
          f"(target {TARGET})")
    return r["success"]


def cmd_rounds(args: argparse.Namespace) -> float:
    """The fleet's loop in miniature: explore, train, then collect with the learned policy plus
    an exploration share, retrain on everything, evaluate after every round."""
    data = collect(PolicySpec(args.policy), "train", args.seed, args.attempts, args.workers,
                   args.cache, node=args.node)
    bl = baselines(args)
    reg = variations(args.steps)
    var = reg[args.variations.split(",")[0] if args.variations else "baseline"]
    print("\n| round | attempts | collected by | its success (train) | greedy on test objects "
          "| mean steps | val AUC |\n|---|---|---|---|---|---|---|", flush=True)
    collected_by, best = args.policy, 0.0
    model: Optional[GraspSuccessNet] = None
    for rnd in range(args.rounds + 1):
        if rnd > 0:
            spec = spec_of(model, share=args.share, exploration=args.policy, policy=var.policy)
            new = collect(spec, "train", args.seed + rnd, args.round_attempts, args.workers,
                          args.cache, node=args.node)
            data = merge(data, new)
            collected_by = f"cem+{args.share:.0%} {args.policy}"
        own = success(data if rnd == 0 else new)
        steps = int(var.train.steps * (len(data["meta"]) / args.attempts) ** args.steps_growth)
        model, m = train(data, replace(var.train, steps=steps))
        r = evaluate_model(model, var.policy, args)
        best = max(best, r["success"])
        print(f"| {rnd} | {len(data['meta'])} | {collected_by} | {fmt(own)} | {fmt(r)} | "
              f"{r['mean_steps']:.1f} | {m['val_auc']:.3f} |", flush=True)
    print(f"grasp_study: {best:.2f} success on unseen objects after {args.rounds} rounds "
          f"(scripted {bl['random_descent']['success']:.2f}, random {bl['random']['success']:.2f}"
          f"; target {TARGET})")
    return best


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="study", choices=("study", "collect", "rounds"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: under a minute or two")
    p.add_argument("--policy", default="random_descent", help="exploration policy collecting")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--attempts", type=int, default=1000, help="collected training attempts")
    p.add_argument("--seed", type=int, default=1, help="collection scenes (SimArm seeds)")
    p.add_argument("--aimed-attempts", type=int, default=0,
                   help="study: also collect this many aimed-descent attempts (seed + 1)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (batch 64)")
    p.add_argument("--eval-attempts", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=7, help="test-object scenes")
    p.add_argument("--variations", default="", help="comma-separated names; default all")
    p.add_argument("--rounds", type=int, default=3, help="rounds: on-policy rounds")
    p.add_argument("--round-attempts", type=int, default=500, help="rounds: attempts per round")
    p.add_argument("--share", type=float, default=0.2, help="rounds: exploration share")
    p.add_argument("--steps-growth", type=float, default=0.5,
                   help="rounds: training steps grow as (attempts / first) ** this")
    p.add_argument("--node", action="append", default=[], metavar="NAME=VALUE",
                   help="robot_node parameter override (repeatable), e.g. max_steps=12")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/grasp_study"))
    args = p.parse_args(argv)
    args.node = tuple((k, type(getattr(NodeConfig(), k))(v))
                      for k, v in (o.split("=", 1) for o in args.node))
    if args.quick:
        args.attempts, args.steps, args.eval_attempts = 50, 150, 25
        args.variations = args.variations or "baseline"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    {"study": cmd_study, "collect": cmd_collect, "rounds": cmd_rounds}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
