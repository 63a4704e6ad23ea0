"""Where a learned policy fails: its grasps against a privileged planner's, scene by scene.

    .venv/bin/python benchmarks/grasp_failures.py --policy runs/learn/run/learner/policies/v9

Runs the bundle's policy (greedy, as `fleet eval` does) through robot_node's own GraspLoop on
in-process simulated arms (benchmarks/grasp_harness.py's InProcessArm, no ROS) over test-split
objects, and for every attempt records, from the simulator's privileged knowledge, how far the
chosen grasp centre lands from the nearest object's centre and from its nearest mesh vertex,
and what the network scores the grasp the privileged planner (sim_bridge.scripted.plan_grasp)
would make on the same image. The reference, measured in the same run on the same scene seeds,
is that planner's own success through the same grasp loop: the figure is the policy's success
as a share of it. A grasp-point bundle's grasp is the one it picks on I_0; a QT-Opt bundle's
(closed loop) is where the gripper is when the policy closes, and its scores are Q(s_T, close)
there and at the planner's grasp on the same frame. docs/RESULTS.md ("Session 4 studies") has a run and what it showed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grasp_harness import InProcessArm  # noqa: E402

from fleet.policy.bundle import BundleError, load_bundle  # noqa: E402
from fleet.evaluation.counting import wilson_interval  # noqa: E402
from fleet.policy.base import Decision, Observation  # noqa: E402
from fleet.policy.exploration import RandomDescentPolicy  # noqa: E402
from fleet.policy.geometry import half_turn, yaw_of_pose  # noqa: E402
from fleet.methods.grasp_point.policy import GraspPointPolicy  # noqa: E402
from fleet.methods.qtopt.encoding import ARCHITECTURE_NAME as QTOPT_ARCHITECTURE  # noqa: E402
from fleet.methods.qtopt.policy import QTOptPolicy  # noqa: E402
from robot_node.grasp_loop import GraspLoop  # noqa: E402
from robot_node.params import NodeConfig  # noqa: E402
from sim_bridge.core import SimArm, SimConfig  # noqa: E402
from sim_bridge.messages import top_down_quaternion  # noqa: E402
from sim_bridge.scripted import plan_grasp  # noqa: E402

#: The bundle architectures this diagnostic reads.
ARCHITECTURES = ("grasp_point_cnn", QTOPT_ARCHITECTURE)

#: Bins of the grasp centre's distance to the nearest object's centre, m.
CENTRE_BINS = (0.0, 0.01, 0.02, 0.04, math.inf)


class ProbedPolicy(GraspPointPolicy):
    """The bundle's policy, noting what the simulator knows about each grasp it chooses."""

    def __init__(self, model, version: int, sim: SimArm, notes: list[dict[str, Any]]) -> None:
        super().__init__(model, version=version)
        self.sim, self.notes = sim, notes

    def _choose_target(self, obs):
        target = super()._choose_target(obs)
        plan = plan_grasp(self.sim, np.random.default_rng(0))
        image = obs.initial_image if obs.initial_image is not None else obs.image
        grasp = self.grasp
        planned = math.nan
        if plan is not None:
            score = self.scorer.prepare(image, obs.initial_depth)
            planned = float(score(np.array([[plan.x, plan.y, plan.yaw]]))[0])
        self.notes.append({"p_chosen": self.p_best, "p_planner": planned,
                           **distances(self.sim, grasp[:2])})
        return target


def distances(sim: SimArm, xy: np.ndarray) -> dict[str, float]:
    """How far a grasp centre lands from the nearest object's centre and mesh vertex (m)."""
    points = [p[:, :2] for _, p in sim.object_points()]
    return {"to_centre": min(float(np.linalg.norm(p.mean(axis=0) - xy)) for p in points),
            "to_vertex": min(float(np.min(np.linalg.norm(p - xy, axis=1))) for p in points)}


def yawed(pose: np.ndarray, x: float, y: float, yaw: float) -> np.ndarray:
    """The top-down pose at (x, y) turned to `yaw`, its height kept."""
    return np.array([x, y, pose[2], *top_down_quaternion(yaw)])


class ProbedQTOpt(QTOptPolicy):
    """A QT-Opt bundle's closed loop, noting where the gripper is when it closes, and what
    Q(s_T, close) says of the planner's grasp on the same frame."""

    def __init__(self, model, version: int, sim: SimArm, notes: list[dict[str, Any]]) -> None:
        super().__init__(model, version=version)
        self.sim, self.notes = sim, notes

    def decide(self, obs: Observation) -> Decision:
        decision = super().decide(obs)
        if decision.close:
            plan = plan_grasp(self.sim, np.random.default_rng(0))
            planned = math.nan
            if plan is not None:
                there = dataclasses.replace(obs, ee_pose=yawed(np.asarray(obs.ee_pose, float),
                                                               plan.x, plan.y, plan.yaw))
                planned = self.scorer.prepare(there)[1]
            self.notes.append({"p_chosen": decision.p_noop, "p_planner": planned,
                               "step": obs.step, "z": float(obs.position[2]),
                               **distances(self.sim, obs.position[:2])})
        return decision


class PlannerPolicy(RandomDescentPolicy):
    """The reference: the privileged planner's x, y, yaw, then the same scripted descent."""

    def __init__(self, sim: SimArm) -> None:
        super().__init__()
        self.sim = sim

    def _choose_target(self, obs):
        target = super()._choose_target(obs)
        plan = plan_grasp(self.sim, self._rng)
        if plan is not None:
            target[0], target[1] = plan.x, plan.y
            self._yaw_left = half_turn(plan.yaw - yaw_of_pose(obs.ee_pose))
        return target


def run_chunk(job: tuple[str, str, int, int, int, int]) -> list[dict[str, Any]]:
    """One worker: n attempts of one policy ('bundle' or 'planner') from one scene seed, with
    `objects` per tray (5, or 15 for the clutter benchmark), at the camera side `size` (the
    bundle's own when there is one)."""
    which, bundle, seed, n, objects, size = job
    torch.set_num_threads(1)
    model, meta = load_bundle(bundle) if bundle else (None, None)
    if meta is not None:
        size = meta.input_spec["image_height"]
    node = NodeConfig(arm_id="probe", seed=seed, image_width=size, image_height=size)
    notes: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    with SimArm(SimConfig(split="test", seed=seed, image_width=size, image_height=size,
                          num_objects=objects)) as sim:
        attempts: list = []
        loop = GraspLoop(node, InProcessArm(sim), attempts.append)
        if which == "bundle":
            probe = ProbedQTOpt if meta.architecture == QTOPT_ARCHITECTURE else ProbedPolicy
            policy = probe(model, meta.version, sim, notes)
        else:
            policy = PlannerPolicy(sim)
        rng = np.random.default_rng(seed)
        for _ in range(n):
            before = len(notes)
            attempt = loop.run_attempt(policy, rng)
            if attempt.label is None:
                continue
            row = dict(notes[-1]) if len(notes) > before else {}
            rows.append({**row, "success": bool(attempt.label)})
    return rows


def summarise(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    ok = np.array([r["success"] for r in rows])
    ref = np.array([r["success"] for r in reference])
    centre = np.array([r["to_centre"] for r in rows])
    vertex = np.array([r["to_vertex"] for r in rows])
    chosen = np.array([r["p_chosen"] for r in rows])
    planner = np.array([r["p_planner"] for r in rows])
    bins = []
    for lo, hi in zip(CENTRE_BINS[:-1], CENTRE_BINS[1:]):
        m = (centre >= lo) & (centre < hi)
        bins.append({"from_m": lo, "to_m": None if math.isinf(hi) else hi,
                     "attempts": int(m.sum()),
                     "success": float(ok[m].mean()) if m.any() else None})
    return {
        "attempts": len(rows), "success": float(ok.mean()),
        "ci95": wilson_interval(int(ok.sum()), len(ok)),
        "planner_success": float(ref.mean()), "planner_attempts": len(ref),
        "ratio_to_planner": float(ok.mean() / max(ref.mean(), 1e-9)),
        "by_distance_to_object_centre": bins,
        "on_an_object_share": float(np.mean(vertex < 0.015)),
        "score_chosen_median": float(np.median(chosen)),
        "score_of_planner_grasp_median": float(np.nanmedian(planner)),
        "planner_grasp_scored_higher_share": float(np.nanmean(planner > chosen)),
        "score_chosen_success": float(chosen[ok].mean()) if ok.any() else math.nan,
        "score_chosen_failure": float(chosen[~ok].mean()) if (~ok).any() else math.nan,
        **closing(rows, ok),
    }


def closing(rows: list[dict[str, Any]], ok: np.ndarray) -> dict[str, Any]:
    """A closed-loop policy's closes: median step and height, successes and failures apart."""
    if not rows or "step" not in rows[0]:
        return {}
    step, z = np.array([r["step"] for r in rows]), np.array([r["z"] for r in rows])
    return {f"close_{name}_median_{which}": float(np.median(v[m])) if m.any() else None
            for name, v in (("step", step), ("z", z))
            for which, m in (("success", ok), ("failure", ~ok))}


def scene_chunks(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(scene seed, attempts) per worker job: one seed per chunk, so a policy and the planner
    see the same scenes."""
    return [(args.seed + k, min(args.chunk, args.attempts - k * args.chunk))
            for k in range(math.ceil(args.attempts / args.chunk))]


def planner_only(args: argparse.Namespace) -> int:
    """The privileged planner alone on the scenes a --policy run would use (same seeds)."""
    t0 = time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        jobs = [("planner", "", s, n, args.num_objects, args.image_size)
                for s, n in scene_chunks(args)]
        rows = [r for part in pool.map(run_chunk, jobs, chunksize=1) for r in part]
    ok = np.array([r["success"] for r in rows])
    lo, hi = wilson_interval(int(ok.sum()), len(ok))
    summary = {"policy": None, "seed": args.seed, "num_objects": args.num_objects,
               "image_size": args.image_size, "wall_s": round(time.time() - t0, 1),
               "planner_success": float(ok.mean()), "planner_attempts": len(rows),
               "planner_ci95": [lo, hi]}
    print(f"privileged planner: success {ok.mean():.2f} ({lo:.2f}-{hi:.2f}, n={len(rows)}), "
          f"{args.num_objects} objects per tray, scene seeds {args.seed}-"
          f"{args.seed + len(jobs) - 1}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", type=Path, default=None,
                   help="a grasp-point or QT-Opt bundle directory; without it only the "
                        "privileged planner runs (its success on these scenes)")
    p.add_argument("--attempts", type=int, default=100, help="per policy (default 100)")
    p.add_argument("--seed", type=int, default=500, help="first scene seed (one per chunk)")
    p.add_argument("--chunk", type=int, default=25, help="attempts per worker job")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    p.add_argument("--num-objects", type=int, default=5,
                   help="objects per tray (default 5; 15: the clutter benchmark)")
    p.add_argument("--image-size", type=int, default=128,
                   help="camera side for the planner alone (with --policy: the bundle's)")
    args = p.parse_args(argv)
    if args.policy is None:
        return planner_only(args)
    try:
        _, meta = load_bundle(args.policy)
    except (BundleError, OSError) as exc:
        p.error(f"--policy {args.policy}: {exc} (pass a bundle directory such as "
                f"<learner out>/policies/v3)")
    if meta.architecture not in ARCHITECTURES:
        p.error(f"--policy {args.policy} is a {meta.architecture!r} bundle; this diagnostic "
                f"reads grasp-point and QT-Opt bundles ({', '.join(ARCHITECTURES)})")
    chunks = scene_chunks(args)
    t0 = time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        jobs = [(w, str(args.policy), s, n, args.num_objects, args.image_size)
                for w in ("bundle", "planner") for s, n in chunks]
        parts = pool.map(run_chunk, jobs, chunksize=1)
    half = len(chunks)
    rows = [r for part in parts[:half] for r in part]
    reference = [r for part in parts[half:] for r in part]
    summary = {"policy": str(args.policy), "version": meta.version, "seed": args.seed,
               "num_objects": args.num_objects,
               "wall_s": round(time.time() - t0, 1), **summarise(rows, reference)}
    s = summary
    print(f"v{meta.version}: success {s['success']:.2f} ({s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}, "
          f"n={s['attempts']}); privileged planner on the same scenes {s['planner_success']:.2f}"
          f" -> ratio {s['ratio_to_planner']:.2f}")
    print(f"grasps on an object (within 1.5 cm of a vertex): {s['on_an_object_share']:.2f}")
    for b in s["by_distance_to_object_centre"]:
        rate = "-" if b["success"] is None else f"{b['success']:.2f}"
        span = f"> {b['from_m'] * 100:.0f}" if b["to_m"] is None else \
            f"{b['from_m'] * 100:.0f}-{b['to_m'] * 100:.0f}"
        print(f"  centre distance {span} cm: "
              f"{b['attempts']:3d} attempts, success {rate}")
    print(f"network score: chosen grasp median {s['score_chosen_median']:.2f} (successes "
          f"{s['score_chosen_success']:.2f}, failures {s['score_chosen_failure']:.2f}); the "
          f"planner's grasp median {s['score_of_planner_grasp_median']:.2f}, scored higher than "
          f"the chosen one in {s['planner_grasp_scored_higher_share']:.2f} of scenes")
    if "close_step_median_success" in s:
        print(f"closes: median step {s['close_step_median_success']} / "
              f"{s['close_step_median_failure']} and height {s['close_z_median_success']} / "
              f"{s['close_z_median_failure']} m (successes / failures)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2).replace("NaN", "null"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
