"""How fast a robot can servo: CEM decisions per second on one CPU core.

One decision is what GraspPolicy.decide does every servo step: 3 CEM iterations of 64 motions
scored by the grasp success network, plus the do-nothing motion for the close/raise heuristics.
The policy computes the image features once per decision and re-runs only the motion branch and
the head for each batch of motions. The reference, measured in the same run, is the same decision
done naively: the whole network (image trunk included) run on 64 copies of the image for every
CEM iteration. The paper (Levine et al. 2016) reports 2 to 5 Hz for its much larger network.

The QT-Opt rows are one QTOptPolicy.decide at the robot's CEM settings (64 x 2 over one step's
motion, plus the close action scored on its own) on the fleet's camera (128 x 128 RGB-D, as
config/arms.yaml) with the gripper view (the default), at 64 x 64 RGB, and with the whole-image
network at 128 x 128 RGB-D; issue 16 asks for >= 10 Hz on one core.

    .venv/bin/python benchmarks/servo_rate.py [--quick]

Last line: `servo_rate: <hz> Hz (target 50)`.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig, encode_motions
from fleet.policy.images import images_to_tensor
from fleet.methods.levine.policy import GraspPolicy, MotionScore, NetworkScorer
from fleet.methods.qtopt.gripper_network import GripperQConfig
from fleet.methods.qtopt.network import QNetConfig, q_network
from fleet.methods.qtopt.policy import make_policy
from fleet.policy.base import Observation, Policy
from fleet.policy.factory import ServoSettings

TARGET_HZ = 50.0
QTOPT_TARGET_HZ = 10.0


class NaiveScorer:
    """The reference: every scored motion pays for a full forward pass, trunk included."""

    def __init__(self, model: GraspSuccessNet) -> None:
        self.model = model.eval()

    def prepare(self, obs: Observation) -> MotionScore:
        image = images_to_tensor(obs.image)

        def score(motions: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                images = image.expand(len(motions), -1, -1, -1)
                logits = self.model(images, encode_motions(motions, self.model.config.motion_scale))
                return torch.sigmoid(logits).numpy().astype(np.float64)

        return score


@dataclass
class Row:
    name: str
    hz: float
    ms: float


def _observation(size: int, rng: np.random.Generator, depth: bool = False) -> Observation:
    return Observation(image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                       ee_pose=np.array([0.6, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]), step=0,
                       max_steps=20, workspace_min=np.array([0.4, -0.2, 0.0]),
                       workspace_max=np.array([0.8, 0.2, 0.4]),
                       depth=rng.uniform(0.5, 1.5, (size, size)).astype(np.float32)
                       if depth else None, gripper=0.08)


def qtopt_rate(size: int, depth: bool, rng: np.random.Generator, decisions: int,
               runs: int, view: str = "gripper") -> float:
    """Decisions/s of the QT-Opt policy (the robot's CEM 64 x 2) on an untrained network, with
    the gripper view (the default) or the whole image."""
    config = GripperQConfig if view == "gripper" else QNetConfig
    model = q_network(config(image_height=size, image_width=size, use_depth=depth))
    policy = make_policy(model, 1, ServoSettings())  # as robot_node builds it: CEM 64 x 2
    return decisions_per_second(policy, _observation(size, rng, depth), decisions, runs)


def decisions_per_second(policy: Policy, obs: Observation, decisions: int,
                         runs: int) -> float:
    """Median over runs of decisions/s; one warm-up run first (allocator, oneDNN kernels)."""
    policy.reset(np.random.default_rng(0))
    rates = []
    for run in range(runs + 1):
        start = time.perf_counter()
        for _ in range(decisions):
            policy.decide(obs)
        if run:
            rates.append(decisions / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    runs, fast_n, naive_n = (5, 20, 3) if args.quick else (9, 60, 8)
    rng = np.random.default_rng(0)

    rows: list[Row] = []
    model = GraspSuccessNet(NetworkConfig())
    obs = _observation(64, rng)
    fast_hz = decisions_per_second(GraspPolicy(NetworkScorer(model)), obs, fast_n, runs)
    naive_hz = decisions_per_second(GraspPolicy(NaiveScorer(model)), obs, naive_n, runs)
    rows.append(Row("CEM 64x3, 64x64, features once (fleet)", fast_hz, 1000 / fast_hz))
    rows.append(Row("CEM 64x3, 64x64, naive full passes (reference)", naive_hz, 1000 / naive_hz))
    big = GraspSuccessNet(NetworkConfig(image_height=128, image_width=128))
    big_hz = decisions_per_second(GraspPolicy(NetworkScorer(big)), _observation(128, rng),
                                  fast_n, runs)
    rows.append(Row("CEM 64x3, 128x128, features once", big_hz, 1000 / big_hz))
    qt_hz = qtopt_rate(128, True, rng, fast_n, runs)
    rows.append(Row("QT-Opt gripper view, 128x128 RGB-D (fleet)", qt_hz, 1000 / qt_hz))
    qt_small_hz = qtopt_rate(64, False, rng, fast_n, runs)
    rows.append(Row("QT-Opt gripper view, 64x64 RGB", qt_small_hz, 1000 / qt_small_hz))
    qt_image_hz = qtopt_rate(128, True, rng, fast_n, runs, view="image")
    rows.append(Row("QT-Opt whole image, 128x128 RGB-D", qt_image_hz, 1000 / qt_image_hz))

    params = sum(p.numel() for p in model.parameters())
    print(f"servo_rate: one CPU thread, default network ({params} parameters), "
          f"median of {runs} runs")
    print(f"{'decision':<50} {'Hz':>8} {'ms':>8}")
    for r in rows:
        print(f"{r.name:<50} {r.hz:>8.1f} {r.ms:>8.2f}")
    print(f"{'paper (Levine et al. 2016, quoted)':<50} {'2-5':>8} {'200-500':>8}")
    print(f"speed-up over the naive reference: {fast_hz / naive_hz:.1f}x")
    print(f"qtopt: {qt_hz:.0f} Hz at 128x128 RGB-D, {qt_hz / naive_hz:.1f}x the naive reference "
          f"(target {QTOPT_TARGET_HZ:.0f})")
    print(f"servo_rate: {fast_hz:.0f} Hz (target {TARGET_HZ:.0f})")


if __name__ == "__main__":
    main()
