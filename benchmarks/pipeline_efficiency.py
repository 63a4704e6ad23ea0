"""How much of a simulated arm's grasp rate survives the real pipeline.

Measures attempts/s of `sim_bridge` + `robot_node` as two processes talking over DDS (loopback,
own ROS_DOMAIN_ID), every attempt recorded (JPEG) and spooled durably, against the reference:
`sim_bridge.scripted.scripted_grasp` on an in-process `SimArm` (with a camera frame rendered
after every command, as a robot takes one there, and a scene reset per attempt), measured in
the same run. The figure is the ratio pipeline / reference, median over rounds; rounds
alternate so both see the same machine load.

robot_node runs its exploration policy (random_descent) with settings that make the same kind
of grasp as the scripted one (over a spot, down, close, lift at full speed): see PIPELINE_PARAMS.

    .venv/bin/python benchmarks/pipeline_efficiency.py            # 5 rounds of 15 attempts
    .venv/bin/python benchmarks/pipeline_efficiency.py --quick    # under a minute

Last line: `pipeline_efficiency: <ratio> x (target 0.8)`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from ros_processes import ProcessGroup, claim_domain, wait_for  # noqa: E402

TARGET = 0.8
#: robot_node settings of the measured pipeline (the rest are config/robot_node.yaml's).
PIPELINE_PARAMS = {
    "use_sim_time": True,
    "exploration_policy": "random_descent",
    "motion_mode": "pose",
    "exploration_max_step": 0.3,
    "max_steps": 4,
    "lift_height": 0.265,
}


def reference_rate(seconds: float, seed: int) -> tuple[float, int, int]:
    """(attempts/s, attempts, successes) of scripted grasps on an in-process SimArm."""
    from sim_bridge.core import SimArm, SimConfig
    from sim_bridge.scripted import scripted_grasp

    arm = SimArm(SimConfig(seed=seed))
    rng = np.random.default_rng(seed)
    try:
        arm.reset()
        n = ok = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            ok += scripted_grasp(arm, rng, on_command=arm.render)
            arm.reset()
            n += 1
        return n / (time.perf_counter() - start), n, ok
    finally:
        arm.close()


def spooled_times(spool: Path) -> list[float]:
    """Write times of the spooled attempts (the file names' nanosecond prefix), sorted."""
    return sorted(int(p.name.split("-", 1)[0]) / 1e9 for p in spool.glob("*.attempt"))


def pipeline_rate(group: ProcessGroup, spool: Path, attempts: int, warmup: int,
                  timeout: float) -> tuple[float, int]:
    """(attempts/s, successes) of a robot_node run against the already running sim arm."""
    from fleet.wire.records import decode
    from robot_node.spool import Spool

    params = dict(PIPELINE_PARAMS, spool_dir=str(spool), max_attempts=attempts + warmup)
    proc = group.start_node("robot_node.node", "robot_node", namespace="/arm1", params=params,
                            remaps={"/clock": "/arm1/clock"})
    try:
        wait_for(lambda: len(list(spool.glob("*.attempt"))) >= attempts + warmup, timeout,
                 f"{attempts + warmup} spooled attempts")
    finally:
        proc.stop()
    times = spooled_times(spool)[warmup - 1:]
    s = Spool(spool, 1 << 40)
    ok = sum(decode(s.read(e.name)).outcome == "success" for e in s.entries()[warmup:])
    return (len(times) - 1) / (times[-1] - times[0]), ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 short rounds (under a minute)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--attempts", type=int, default=15, help="measured attempts per round")
    ap.add_argument("--motion-mode", choices=("pose", "twist"), default="pose",
                    help="robot_node motion_mode (twist: every motion split into 0.1 s twists)")
    args = ap.parse_args()
    PIPELINE_PARAMS["motion_mode"] = args.motion_mode
    rounds, attempts = (3, 8) if args.quick else (args.rounds, args.attempts)
    warmup = 2

    domain = claim_domain()
    os.environ.update(domain.env)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeline-eff-") as tmp:
        group = ProcessGroup(Path(tmp) / "logs", domain.env)
        try:
            sim = group.start_node("sim_bridge.node", "sim_arm", namespace="/arm1",
                                   remaps={"/clock": "/arm1/clock"})
            sim.wait_for_log("simulated arm ready", 60)
            for r in range(rounds):
                spool = Path(tmp) / f"spool{r}"
                pipe, pipe_ok = pipeline_rate(group, spool, attempts, warmup, 120)
                ref, ref_n, ref_ok = reference_rate(attempts / max(pipe, 0.1) * 0.8, seed=r)
                rows.append((r, pipe, pipe_ok, ref, ref_n, ref_ok, pipe / ref))
                print(f"round {r}: pipeline {pipe:.2f} att/s ({pipe_ok}/{attempts} success), "
                      f"reference {ref:.2f} att/s ({ref_ok}/{ref_n}), ratio {pipe / ref:.2f}",
                      flush=True)
        finally:
            group.close()
            domain.release()
    print()
    print(f"{'round':>5} {'pipeline att/s':>15} {'reference att/s':>16} {'ratio':>7}")
    for r, pipe, _, ref, _, _, ratio in rows:
        print(f"{r:>5} {pipe:>15.2f} {ref:>16.2f} {ratio:>7.2f}")
    ratio = statistics.median(row[-1] for row in rows)
    print(f"robot_node: motion_mode={args.motion_mode}, {PIPELINE_PARAMS['exploration_policy']}"
          f" T={PIPELINE_PARAMS['max_steps']}; reference: scripted_grasp + render per command")
    print(f"pipeline_efficiency: {ratio:.2f} x (target {TARGET})")


if __name__ == "__main__":
    main()
