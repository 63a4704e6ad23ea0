"""Grasp attempts per second on one core: sim_bridge's SimArm with the scripted grasp, against
PyBullet's own KukaDiverseObjectEnv (random actions, its defaults) measured in the same run.

One attempt, ours: reset (fresh objects dropped and settled) + scripted top-down grasp + one
camera frame after the reset and after every command (what robot_node takes: at least one per
servo step). Theirs: env.reset() + random actions until the episode ends (it closes and lifts
by itself), one frame per step as the env renders it.

    .venv/bin/python benchmarks/sim_throughput.py [--quick] [--runs N]

Rates are attempts per second of this process's CPU time (one core: the process is pinned),
so other processes on a busy machine do not skew the ratio; wall-clock rates are printed too.
Prints a table (median over interleaved runs) and, last, `sim_throughput: <ratio> x (target 5)`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import random
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pybullet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sim_bridge.core import SimArm, SimConfig  # noqa: E402
from sim_bridge.scripted import scripted_grasp  # noqa: E402

TARGET = 5.0


@dataclass
class RunResult:
    attempts: int
    seconds: float  # CPU time of this process: other processes' load does not count
    wall: float
    successes: int  # the env's own verdict: gripper label (ours), reward (theirs)
    lifted: int  # simulator ground truth
    physics_steps: int
    renders: int
    resets: int

    @property
    def rate(self) -> float:
        return self.attempts / self.seconds

    @property
    def wall_rate(self) -> float:
        return self.attempts / self.wall


@dataclass
class Totals:
    runs: list[RunResult] = field(default_factory=list)

    def median_rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def median_wall_rate(self) -> float:
        return statistics.median(r.wall_rate for r in self.runs)

    def per_attempt(self, name: str) -> float:
        return sum(getattr(r, name) for r in self.runs) / sum(r.attempts for r in self.runs)


def run_ours(attempts: int, seed: int) -> RunResult:
    arm = SimArm(SimConfig(seed=seed))
    rng = np.random.default_rng(seed)
    successes = lifted = 0
    start, wall = time.process_time(), time.perf_counter()
    for _ in range(attempts):
        arm.reset()
        arm.render()
        successes += scripted_grasp(arm, rng, on_command=arm.render)
        lifted += arm.ground_truth()["any_lifted"]
    seconds, wall = time.process_time() - start, time.perf_counter() - wall
    result = RunResult(attempts, seconds, wall, successes, lifted, arm.physics_steps, arm.renders,
                       attempts)
    arm.close()
    return result


def load_kuka_diverse_object_env() -> type:
    """KukaDiverseObjectEnv without executing pybullet_envs/__init__ (it registers through an
    API that today's gym lacks): stand-in package modules with the real search paths."""
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pybullet_envs is missing: install pybullet (the sim extra) into .venv")
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("pybullet_envs", root), ("pybullet_envs.bullet", os.path.join(root, "bullet"))):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
    if importlib.util.find_spec("pkg_resources") is None:
        # setuptools >= 81 dropped pkg_resources; the env only wants parse_version from it.
        from packaging.version import parse
        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("pybullet_envs.bullet.kuka_diverse_object_gym_env")
    return module.KukaDiverseObjectEnv


class _Counting:
    """Counts calls of pybullet functions the reference env makes (it uses the module-level
    API on its default client), restoring them afterwards."""

    def __init__(self, *names: str):
        self.names, self.counts, self._saved = names, dict.fromkeys(names, 0), {}

    def __enter__(self):
        for name in self.names:
            original = self._saved[name] = getattr(pybullet, name)
            setattr(pybullet, name, self._wrap(name, original))
        return self

    def _wrap(self, name: str, original: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)
        return counted

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(pybullet, name, original)


def run_theirs(env_class: type, attempts: int, seed: int) -> RunResult:
    random.seed(seed)
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = env_class(renders=False, isDiscrete=False)
    successes = lifted = 0
    with _Counting("stepSimulation", "getCameraImage", "resetSimulation") as counting:
        start, wall = time.process_time(), time.perf_counter()
        for _ in range(attempts):
            env.reset()
            done, reward, info = False, 0.0, {}
            while not done:
                _, reward, done, info = env.step(env.action_space.sample())
            successes += reward > 0
            lifted += info.get("grasp_success", 0) > 0
        seconds, wall = time.process_time() - start, time.perf_counter() - wall
    c = counting.counts
    del env  # its __del__ disconnects its client
    return RunResult(attempts, seconds, wall, successes, lifted, c["stepSimulation"],
                     c["getCameraImage"], c["resetSimulation"])


def pin_to_one_core() -> str:
    """Both sides run in this one process on one core, so neither gets a second core."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    except (AttributeError, OSError) as error:
        return f"not pinned ({error})"


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs per side")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    ours_n, theirs_n = (12, 4) if args.quick else (40, 10)
    pinned = pin_to_one_core()
    env_class = load_kuka_diverse_object_env()
    ours, theirs = Totals(), Totals()
    for run in range(runs):
        ours.runs.append(run_ours(ours_n, seed=run))
        theirs.runs.append(run_theirs(env_class, theirs_n, seed=run))
        print(f"run {run + 1}/{runs}: ours {ours.runs[-1].rate:.2f}, KukaDiverseObjectEnv "
              f"{theirs.runs[-1].rate:.2f} attempts per CPU second", flush=True)
    ratio = ours.median_rate() / theirs.median_rate()
    print_table(ours, theirs, runs, pinned)
    print(f"sim_throughput: {ratio:.1f} x (target {TARGET:g})")
    return ratio


def print_table(ours: Totals, theirs: Totals, runs: int, pinned: str) -> None:
    c = SimConfig()
    rows = [
        ("attempts per CPU s (median)", f"{ours.median_rate():.2f}", f"{theirs.median_rate():.2f}"),
        ("attempts per wall s (median)", f"{ours.median_wall_rate():.2f}", f"{theirs.median_wall_rate():.2f}"),
        ("attempts timed", str(sum(r.attempts for r in ours.runs)), str(sum(r.attempts for r in theirs.runs))),
        ("success, env's verdict", f"{ours.per_attempt('successes'):.0%} (gripper > 1 cm)",
         f"{theirs.per_attempt('successes'):.0%} (reward)"),
        ("success, ground truth", f"{ours.per_attempt('lifted'):.0%} (> 0.1 m)", f"{theirs.per_attempt('lifted'):.0%} (> 0.2 m)"),
        ("physics steps/attempt", f"{ours.per_attempt('physics_steps'):.0f} @ {c.physics_hz:g} Hz, "
         f"{c.solver_iterations} solver it.", f"{theirs.per_attempt('physics_steps'):.0f} @ 240 Hz, 150 solver it."),
        ("renders/attempt", f"{ours.per_attempt('renders'):.1f} @ {c.image_width}x{c.image_height}",
         f"{theirs.per_attempt('renders'):.1f} @ 48x48"),
        ("scene resets/attempt", f"{ours.per_attempt('resets'):.0f} (pooled objects placed)",
         f"{theirs.per_attempt('resets'):.0f} (resetSimulation + reload)"),
        ("objects", f"{c.num_objects}, panda + tray", "5, kuka + tray + table"),
    ]
    widths = [max(len(row[i]) for row in rows + [("", "ours (SimArm + scripted)", "KukaDiverseObjectEnv")])
              for i in range(3)]
    header = ("", "ours (SimArm + scripted)", "KukaDiverseObjectEnv")
    print(f"\n{runs} interleaved runs per side, one process, {pinned}")
    for row in [header] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
