"""A scripted top-down grasp: the exploration policy before any model exists, and the workload
of the throughput benchmark.

It commands the arm only through SimArm's public command methods (`move_to`, `servo`,
`set_fingers`), the same ones the ROS node exposes. It *chooses* its target with privileged
simulator knowledge (`SimArm.object_boxes`, the objects' bounding boxes), which a real robot
does not have: that is the "scripted" in scripted grasp. Its verdict is the gripper's own
reading, as on a real arm; the simulator's ground truth is only used to check that verdict.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .core import SimArm, SimConfig

# Paper (Levine et al. 2016): success when the gripper is not fully closed after closing and
# lifting, "opening over 1 cm". Measured here (docs/sim.md): an empty panda gripper closes to
# under 1 mm; the thinnest grasped random_urdfs parts hold it open by about 1 cm, so the paper's
# threshold is kept but could go lower without false positives.
SUCCESS_OPENING = 0.01  # m


def grasp_label(opening: float) -> bool:
    """The gripper's verdict after closing and lifting: something holds the fingers apart."""
    return opening > SUCCESS_OPENING


@dataclass
class ScriptedGraspConfig:
    approach_height: float = 0.05  # m above the grasp height where the descent starts
    grasp_depth: float = 0.03  # m the fingertips reach below the object's top under them
    # Tool height above the tray floor after closing: objects held near their top (up to ~0.1 m
    # tall) then hang clear of the 0.1 m ground-truth threshold.
    lift_height: float = 0.25
    candidates_per_object: int = 12  # grasp centres tried per object
    yaws: int = 6  # yaws tried per centre, evenly over a half turn
    # Panda hand geometry (m): fingertips below the tool point, finger half-width, the gap
    # between open fingers, and finger thickness.
    tip_below_tool: float = 0.011
    finger_half_width: float = 0.012
    open_half_gap: float = 0.04
    finger_thickness: float = 0.015
    min_points_between: int = 3  # object vertices that must lie between the fingers
    # The hand body above the fingers: its underside above the fingertips, half its length
    # along the closing direction and half its width.
    hand_above_tips: float = 0.045
    hand_half_length: float = 0.11
    hand_half_width: float = 0.035


@dataclass
class GraspPlan:
    x: float
    y: float
    z: float  # tool point height at closing, base_link, m
    yaw: float
    object_name: str


def scripted_grasp(arm: SimArm, rng: np.random.Generator,
                   config: ScriptedGraspConfig | None = None,
                   on_command: Callable[[], None] | None = None) -> bool:
    """One top-down grasp of the best-looking object; returns the gripper's label.

    `on_command` is called after every command (a robot takes a camera frame there).
    """
    c = config or ScriptedGraspConfig()
    after = on_command or (lambda: None)
    plan = plan_grasp(arm, rng, c)
    if plan is None:  # nothing graspable in reach: close on air, honestly a failure
        arm.set_fingers([0.0, 0.0])
        after()
        return grasp_label(arm.gripper_opening())
    for _ in range(2):  # objects may still shift: look again from above before descending
        z = plan.z + c.approach_height
        arm.move_to([plan.x, plan.y, z], plan.yaw)
        after()
        fresh = plan_grasp(arm, rng, c, only=plan.object_name)
        if fresh is None or np.hypot(fresh.x - plan.x, fresh.y - plan.y) + abs(fresh.z - plan.z) < 0.01:
            break
        plan = fresh
    # Descend as a servoing policy would: twists held for command_duration at full speed.
    step = arm.config.max_linear_speed * arm.config.command_duration
    while z - plan.z > 1e-6:
        dz = min(step, z - plan.z)
        arm.servo([0.0, 0.0, -dz / arm.config.command_duration], 0.0)
        z -= dz
        after()
    arm.set_fingers([0.0, 0.0])
    after()
    arm.move_to([plan.x, plan.y, arm.config.tray_floor_z + c.lift_height], plan.yaw)
    after()
    return grasp_label(arm.gripper_opening())


def plan_grasp(arm: SimArm, rng: np.random.Generator, config: ScriptedGraspConfig | None = None,
               only: str | None = None) -> GraspPlan | None:
    """Pick a top-down grasp from the objects' collision vertices (privileged knowledge).

    A candidate (centre, yaw) is valid when no vertex of any object lies under either finger's
    landing zone above the fingertips or under the hand body, and enough vertices of the
    target lie between the fingers. The best candidates hold the most material between the fingers, centred.
    """
    c = config or ScriptedGraspConfig()
    objects = arm.object_points()
    if not objects:
        return None
    lo, hi = np.asarray(arm.config.workspace_min), np.asarray(arm.config.workspace_max)
    floor = arm.config.tray_floor_z
    everything = np.concatenate([points for _, points in objects])
    yaws = -math.pi / 2 + math.pi * (np.arange(c.yaws) + 0.5) / c.yaws
    w = np.stack([np.cos(yaws), np.sin(yaws)], axis=1)  # finger width direction (tool x)
    u = np.stack([np.sin(yaws), -np.cos(yaws)], axis=1)  # closing direction (tool y)
    best: list[tuple[float, GraspPlan]] = []
    for name, points in objects:
        if only is not None and name != only:
            continue
        centres = points[rng.choice(len(points), min(c.candidates_per_object, len(points)),
                                    replace=False), :2]
        centres = np.vstack([centres, points[:, :2].mean(axis=0)])
        inside = np.all((centres >= lo[:2]) & (centres <= hi[:2]), axis=1)
        centres = centres[inside]
        if len(centres) == 0:
            continue
        # Only points the hand can touch from over this object matter for collisions.
        reach = c.hand_half_length + 0.01
        near = everything[np.all((everything[:, :2] > points[:, :2].min(axis=0) - reach)
                                 & (everything[:, :2] < points[:, :2].max(axis=0) + reach), axis=1)]
        d_all = near[None, :, :2] - centres[:, None, :]  # (K, T, 2)
        s_all = d_all @ u.T  # (K, T, M): along the closing direction
        w_all = d_all @ w.T  # across it
        d_obj = points[None, :, :2] - centres[:, None, :]
        s_obj, w_obj = d_obj @ u.T, d_obj @ w.T
        in_slab = np.abs(w_obj) < c.finger_half_width
        between = in_slab & (np.abs(s_obj) < c.open_half_gap - 0.005)
        z_obj = points[None, :, 2, None]
        top = np.where(between, z_obj, -np.inf).max(axis=1)  # (K, M)
        tip = np.maximum(top - c.grasp_depth, lo[2] - c.tip_below_tool)
        held = (between & (z_obj > tip[:, None, :])).sum(axis=1)
        landing = ((np.abs(w_all) < c.finger_half_width)
                   & (np.abs(s_all) > c.open_half_gap - 0.005)
                   & (np.abs(s_all) < c.open_half_gap + c.finger_thickness)
                   & (near[None, :, 2, None] > tip[:, None, :] - 0.002))
        under_hand = ((np.abs(w_all) < c.hand_half_width) & (np.abs(s_all) < c.hand_half_length)
                      & (near[None, :, 2, None] > tip[:, None, :] + c.hand_above_tips))
        blocked = landing.any(axis=1) | under_hand.any(axis=1)
        offset = np.abs(np.where(between, s_obj, 0.0).sum(axis=1) / np.maximum(held, 1))
        score = held - 200.0 * offset + rng.uniform(0, 1, size=held.shape)
        score[blocked | (held < c.min_points_between) | ~np.isfinite(top)] = -np.inf
        k, m = np.unravel_index(np.argmax(score), score.shape)
        if np.isfinite(score[k, m]):
            z = float(np.clip(tip[k, m] + c.tip_below_tool, lo[2], hi[2]))
            best.append((float(score[k, m]), GraspPlan(float(centres[k, 0]), float(centres[k, 1]),
                                                       z, float(yaws[m]), name)))
    if not best:
        return None
    best.sort(key=lambda item: -item[0])
    # Vary which object is grasped: any of the best two.
    return best[int(rng.integers(min(2, len(best))))][1]


def evaluate(attempts: int, split: str = "train", seed: int = 0) -> dict:
    """Scripted grasps on fresh objects: the gripper label's success rate, the ground truth's,
    and how often they agree (the label is what a real robot records; the truth only checks it)."""
    labels, truths = [], []
    with SimArm(SimConfig(split=split, seed=seed)) as arm:
        rng = np.random.default_rng(seed)
        for _ in range(attempts):
            arm.reset()
            labels.append(scripted_grasp(arm, rng))
            truths.append(arm.ground_truth()["any_lifted"])
    labels_, truths_ = np.asarray(labels), np.asarray(truths)
    return {"attempts": attempts, "split": split, "seed": seed,
            "label_success": float(labels_.mean()), "true_success": float(truths_.mean()),
            "agreement": float((labels_ == truths_).mean())}


def main(argv: list[str] | None = None) -> None:
    """`python -m sim_bridge.scripted --attempts 200 --split test --seed 12`"""
    parser = argparse.ArgumentParser(description="Success rate of the scripted grasp.")
    parser.add_argument("--attempts", type=int, default=100)
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = evaluate(args.attempts, args.split, args.seed)
    print(f"{result['attempts']} attempts on {result['split']} objects (seed {result['seed']}): "
          f"gripper label {result['label_success']:.1%}, ground truth {result['true_success']:.1%}, "
          f"agreement {result['agreement']:.1%}")


if __name__ == "__main__":
    main()
