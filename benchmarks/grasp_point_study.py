"""The fleet's grasp-point loop in miniature, in-process: which network variant learns faster?

    .venv/bin/python benchmarks/grasp_point_study.py --quick
    .venv/bin/python benchmarks/grasp_point_study.py --variants rgb,rgbd --explore 1000 \
        --rounds 2 --round-attempts 500 --eval-attempts 150

A fleet run answers one question in an hour; this answers it in minutes on the same pieces:
attempts run through robot_node's own GraspLoop (benchmarks/grasp_harness.py's InProcessArm,
no ROS, no server) on SimArms with an RGB-D camera, with the fleet's policies (random_descent
exploration, GraspPointPolicy, MixedPolicy with the fleet's exploration share), and the
learner's own GraspPointLearner.train_step under the fleet's replay-ratio cap (samples per
attempt). Each variant starts from the same exploration data (cached on disk), then runs
`--rounds` of: train continually, evaluate greedy on test-split objects (the same scene seeds
for every variant, so the comparison is paired), collect `--round-attempts` more with its own
policy and exploration share. The headline is the best variant's success on unseen objects
after the last round, as a ratio to the first variant's (the reference) in the same run.

Recorded per attempt: I_0 as the fleet stores it (a JPEG of the first step, decoded), its
depth as the fleet stores it (uint16 mm), the closing x, y, yaw, the gripper label.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grasp_harness import InProcessArm  # noqa: E402

from fleet.learner.dataset import decode_rgb  # noqa: E402
from fleet.wire.depth_image import decode_depth_png  # noqa: E402
from fleet.evaluation.counting import wilson_interval  # noqa: E402
from fleet.policy.exploration import MixedPolicy  # noqa: E402
from fleet.methods.grasp_point.network import GraspPointConfig, GraspPointNet  # noqa: E402
from fleet.methods.grasp_point.learner import GraspPointLearner, closing_grasps  # noqa: E402
from fleet.methods.grasp_point.policy import GraspPointPolicy  # noqa: E402
from fleet.learner.config import TrainingOptions  # noqa: E402
from robot_node.grasp_loop import GraspLoop  # noqa: E402
from robot_node.params import NodeConfig  # noqa: E402
from robot_node.policy_runtime import make_exploration  # noqa: E402
from sim_bridge.core import SimArm, SimConfig  # noqa: E402

CACHE = Path("/tmp/grasp_point_study")
#: 2: depth is step 0's recorded PNG (1 took it from the arm state before the first step)
CACHE_FORMAT = 2
FIELDS = ("image", "depth", "grasp", "label")


# -- variants -----------------------------------------------------------------------------------

#: name -> GraspPointConfig overrides (image size comes from --image-size).
VARIANTS: dict[str, dict[str, Any]] = {
    "rgb": {},
    "rgbd": {"use_depth": True},
    "rgbd-1plane": {"use_depth": True, "patch_planes": (0.02,)},
    "rgbd-5planes": {"use_depth": True, "patch_planes": (0.02, 0.04, 0.06, 0.08, 0.10)},
    "rgbd-wide": {"use_depth": True, "channels": (32, 64, 128), "fc_width": 128},
}


# -- collection (worker processes) --------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    split: str
    seed: int
    attempts: int
    image_size: int
    weights: Optional[bytes] = None  # torch.save'd state_dict of a GraspPointNet; None: explore
    network: Optional[dict] = None
    share: float = 0.0  # exploration share beside the network


def run_job(job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    node = NodeConfig(arm_id=f"study{job.seed}", image_width=job.image_size,
                      image_height=job.image_size, seed=job.seed)
    explore = make_exploration("random_descent", node.exploration_max_step)
    policy = explore
    if job.weights is not None:
        model = GraspPointNet(GraspPointConfig.from_dict(job.network))
        model.load_state_dict(torch.load(io.BytesIO(job.weights), weights_only=True))
        policy = GraspPointPolicy(model, version=1)
        if job.share > 0:
            policy = MixedPolicy(policy, explore, job.share)
    sim_cfg = SimConfig(split=job.split, seed=job.seed, image_width=job.image_size,
                        image_height=job.image_size, workspace_min=tuple(node.workspace_min),
                        workspace_max=tuple(node.workspace_max))
    rows: dict[str, list] = {k: [] for k in FIELDS}
    meta: list[dict[str, Any]] = []
    with SimArm(sim_cfg) as sim:
        arm = InProcessArm(sim)
        attempts: list = []
        loop = GraspLoop(node, arm, attempts.append)
        rng = np.random.default_rng(job.seed)
        for _ in range(job.attempts):
            before = len(attempts)
            loop.run_attempt(policy, rng)
            a = attempts[-1] if len(attempts) > before else None
            if a is None or a.label is None or not a.steps:
                continue
            rows["image"].append(decode_rgb(a.steps[0].image_jpeg, job.image_size,
                                            job.image_size))
            rows["depth"].append(decode_depth_png(a.steps[0].depth_png))  # I_0's, as stored
            rows["grasp"].append(closing_grasps(np.asarray(a.final_pose))[0])
            rows["label"].append(float(a.label))
            meta.append({"label": bool(a.label), "kind": a.policy_kind,
                         "truth": bool((a.ground_truth or {}).get("any_lifted", False))})
    arrays = {k: np.stack(v) if v else np.zeros(0) for k, v in rows.items()}
    return {"arrays": arrays, "meta": meta}


def run_jobs(jobs: list[Job], workers: int) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(run_job, jobs, chunksize=1)
    return merge(*[p for p in parts if p["meta"]])


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    parts = tuple(p for p in parts if p["meta"])
    return {"arrays": {k: np.concatenate([p["arrays"][k] for p in parts]) for k in FIELDS},
            "meta": [m for p in parts for m in p["meta"]]}


def jobs_for(split: str, seed: int, n: int, image_size: int, chunk: int = 25,
             **policy: Any) -> list[Job]:
    """n attempts in chunks (chunk k: SimArm seed seed * 1000 + k)."""
    return [Job(split, seed * 1000 + k, min(chunk, n - k * chunk), image_size, **policy)
            for k in range(math.ceil(n / chunk))]


def exploration_data(n: int, seed: int, image_size: int, workers: int,
                     cache: Path = CACHE) -> dict[str, Any]:
    """n random_descent attempts on train objects, cached on disk."""
    path = cache / f"explore-v{CACHE_FORMAT}-{n}-{seed}-{image_size}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {"arrays": {k: z[k] for k in FIELDS}, "meta": json.loads(str(z["meta"]))}
    data = run_jobs(jobs_for("train", seed, n, image_size), workers)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, meta=json.dumps(data["meta"]), **data["arrays"])
    return data


# -- training and evaluation --------------------------------------------------------------------

def weights_of(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def train(learner: GraspPointLearner, data: dict[str, Any], steps: int, batch_size: int,
          rng: np.random.Generator) -> dict[str, float]:
    a = data["arrays"]
    n = len(data["meta"])
    for _ in range(steps):
        idx = rng.integers(0, n, batch_size)
        batch = {"image": torch.from_numpy(np.ascontiguousarray(
                     a["image"][idx].transpose(0, 3, 1, 2))),
                 "grasp": torch.from_numpy(a["grasp"][idx]),
                 "label": torch.from_numpy(a["label"][idx].astype(np.float32))}
        if learner.net.config.use_depth:
            batch["depth"] = torch.from_numpy(a["depth"][idx])[:, None]
        learner.train_step(batch)
    return learner.train_metrics()


def rate(meta: list[dict[str, Any]]) -> dict[str, Any]:
    k, n = sum(m["label"] for m in meta), len(meta)
    lo, hi = wilson_interval(k, n)
    return {"success": k / max(n, 1), "n": n, "ci95": [round(lo, 3), round(hi, 3)]}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="rgb,rgbd",
                   help=f"comma-separated, the first is the reference; of {sorted(VARIANTS)}")
    p.add_argument("--explore", type=int, default=1000, help="exploration attempts to start")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--round-attempts", type=int, default=500)
    p.add_argument("--share", type=float, default=0.2, help="exploration share in rounds")
    p.add_argument("--eval-attempts", type=int, default=150)
    p.add_argument("--samples-per-attempt", type=int, default=32, help="replay-ratio cap")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1, help="exploration and training")
    p.add_argument("--eval-seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=CACHE,
                   help=f"exploration data cache (default {CACHE})")
    p.add_argument("--quick", action="store_true",
                   help="40 exploration attempts, 1 round of 10, 10 eval attempts (~1 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.explore, args.rounds, args.round_attempts, args.eval_attempts = 40, 1, 10, 10
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    t0 = time.time()
    base = exploration_data(args.explore, args.seed, args.image_size, args.workers, args.cache)
    print(f"exploration: {len(base['meta'])} attempts, {rate(base['meta'])['success']:.2f} "
          f"success ({time.time() - t0:.0f} s)", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        torch.manual_seed(args.seed)
        torch.set_num_threads(2)
        cfg = replace(GraspPointConfig(image_height=args.image_size,
                                       image_width=args.image_size), **VARIANTS[name])
        learner = GraspPointLearner(cfg, args.lr, 0.0, torch.device("cpu"), TrainingOptions())
        rng = np.random.default_rng(args.seed)
        data, trained_for = base, 0
        rows = results[name] = []
        for r in range(args.rounds + 1):
            n = len(data["meta"])
            steps = (n - trained_for) * args.samples_per_attempt // args.batch_size
            m = train(learner, data, steps, args.batch_size, rng)
            trained_for = n
            spec = dict(weights=weights_of(learner.network()), network=cfg.to_dict())
            ev = run_jobs(jobs_for("test", args.eval_seed, args.eval_attempts, args.image_size,
                                   **spec), args.workers)
            row = {"attempts": n, "train_auc": round(m.get("auc", math.nan), 3),
                   **rate(ev["meta"]), "wall_s": round(time.time() - t0)}
            rows.append(row)
            print(f"{name:12s} {n:5d} attempts: unseen {row['success']:.2f} "
                  f"({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f}, n={row['n']}), train AUC "
                  f"{row['train_auc']:.3f}  [{row['wall_s']} s]", flush=True)
            if r == args.rounds:
                break
            more = run_jobs(jobs_for("train", args.seed * 100 + r + 1, args.round_attempts,
                                     args.image_size, share=args.share, **spec), args.workers)
            own = [m for m in more["meta"] if m["kind"] != "scripted"]
            rows[-1]["round_policy_success"] = rate(own)["success"] if own else None
            data = merge(data, more)
    print()
    print(f"{'variant':12s} " + " ".join(f"{r['attempts']:>6d}" for r in results[names[0]]))
    for name in names:
        print(f"{name:12s} " + " ".join(f"{r['success']:6.2f}" for r in results[name]))
    ref = results[names[0]][-1]["success"]
    best = max(names, key=lambda n: results[n][-1]["success"])
    final = results[best][-1]
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=2,
                                        default=str))
    print(f"grasp_point_study: {final['success'] / max(ref, 1e-9):.2f} x ({best} "
          f"{final['success']:.2f} vs {names[0]} {ref:.2f} on unseen objects after "
          f"{final['attempts']} attempts) (target > 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
