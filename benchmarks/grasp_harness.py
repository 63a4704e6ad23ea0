"""The in-process grasp harness behind benchmarks/grasp_study.py: robot_node's GraspLoop on a
SimArm (no ROS), the fleet's policies as picklable specs, collection on worker processes with an
on-disk cache, and training with the learner's own step. See grasp_study.py for the why.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.policy.cem import CEMConfig  # noqa: E402
from fleet.learner.dataset import samples_of_attempt  # noqa: E402
from fleet.evaluation.counting import wilson_interval  # noqa: E402
from fleet.policy.exploration import MixedPolicy  # noqa: E402
from fleet.methods.levine.learner import LevineCollate, LevineLearner  # noqa: E402
from fleet.learner.config import TrainingOptions
from fleet.methods.levine.network import GraspSuccessNet, NetworkConfig  # noqa: E402
from fleet.methods.levine.policy import (  # noqa: E402
    LEVINE_CEM_ITERATIONS, GraspPolicy, GraspPolicyConfig)
from fleet.policy.base import Policy, StepLimits
from robot_node.grasp_loop import ArmState, GraspLoop  # noqa: E402
from robot_node.params import NodeConfig  # noqa: E402
from robot_node.policy_runtime import make_exploration  # noqa: E402
from robot_node.safety import yaw_of  # noqa: E402
from sim_bridge.core import SimArm, SimConfig  # noqa: E402

#: Short names for exploration policies robot_node can load by class path.
ALIASES = {"aimed": "fleet.policy.exploration:AimedDescentPolicy"}


# -- the arm: what sim_bridge.node does over ROS, in-process -----------------------------------

class InProcessArm:
    """robot_node.grasp_loop.Arm over a SimArm (no DDS): commands run at once, each returns the
    state the sim node would publish after it (fresh frame and its aligned depth, tool pose,
    finger opening)."""

    def __init__(self, sim: SimArm) -> None:
        self.sim = sim

    def _state(self) -> ArmState:
        position, orientation = self.sim.ee_pose()
        t = self.sim.sim_time
        rgb, depth = self.sim.render_rgbd()
        return ArmState(rgb, t, (*position, *orientation), self.sim.gripper_opening(), t,
                        depth=depth)

    def wait_ready(self, timeout: float) -> ArmState:
        return self._state()

    def twist(self, velocity: Sequence[float], timeout: float) -> ArmState:
        self.sim.servo(velocity[:3], velocity[3])
        return self._state()

    def move_to(self, pose: Sequence[float], duration: float, timeout: float) -> ArmState:
        self.sim.move_to(pose[:3], yaw_of(pose))
        return self._state()

    def gripper(self, per_finger: float, timeout: float) -> ArmState:
        self.sim.set_fingers([per_finger, per_finger])
        return self._state()

    def stop(self) -> None:
        pass

    def ground_truth_after(self, stamp: float, timeout: float) -> Optional[dict[str, Any]]:
        return self.sim.ground_truth()

    def next_scene(self, timeout: float) -> Optional[dict[str, Any]]:
        return {"objects": self.sim.reset()}


# -- policies, as picklable specs --------------------------------------------------------------

@dataclass(frozen=True)
class PolicySpec:
    """What runs the attempts: an exploration policy by robot_node name, or a network (CEM),
    mixed with exploration for `share` of the attempts as robot_node does."""

    exploration: str = "random_descent"
    weights: Optional[bytes] = None  # torch.save'd state_dict; None = exploration only
    network: Optional[dict] = None  # NetworkConfig.to_dict()
    share: float = 0.0  # exploration share when a network runs
    policy: tuple = ()  # GraspPolicyConfig overrides, as (name, value) pairs

    def key(self) -> str:
        h = hashlib.sha256(repr((self.exploration, self.network, self.share,
                                 self.policy)).encode())
        h.update(self.weights or b"")
        return h.hexdigest()[:16]


def spec_of(model: GraspSuccessNet, share: float = 0.0, exploration: str = "random_descent",
            policy: Sequence[tuple[str, Any]] = ()) -> PolicySpec:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return PolicySpec(exploration, buf.getvalue(), model.config.to_dict(), share, tuple(policy))


def build_policy(spec: PolicySpec, node: NodeConfig) -> Policy:
    """The policy robot_node's PolicyRuntime would run for this spec."""
    explore = make_exploration(ALIASES.get(spec.exploration, spec.exploration),
                               node.exploration_max_step)
    if spec.weights is None:
        return explore
    model = GraspSuccessNet(NetworkConfig.from_dict(spec.network))
    model.load_state_dict(torch.load(io.BytesIO(spec.weights), weights_only=True))
    cem = CEMConfig(samples=node.cem_samples, elites=node.cem_elites,
                    iterations=node.cem_iterations or LEVINE_CEM_ITERATIONS)
    config = replace(GraspPolicyConfig(cem=cem), **dict(spec.policy))
    learned = GraspPolicy.from_model(model, config, version=1)
    return MixedPolicy(learned, explore, spec.share) if spec.share > 0 else learned


# -- running attempts (worker processes) -------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    spec: PolicySpec
    split: str
    seed: int
    attempts: int
    node: tuple = ()  # NodeConfig overrides
    image_size: int = 64


def run_chunk(chunk: Chunk) -> dict[str, Any]:
    """Run attempts on a fresh SimArm seeded with chunk.seed; the steps as training arrays."""
    torch.set_num_threads(1)
    node = replace(NodeConfig(arm_id=f"study{chunk.seed}", image_width=chunk.image_size,
                              image_height=chunk.image_size, seed=chunk.seed), **dict(chunk.node))
    policy = build_policy(chunk.spec, node)
    attempts: list = []
    sim_cfg = SimConfig(split=chunk.split, seed=chunk.seed, image_width=chunk.image_size,
                        image_height=chunk.image_size,
                        workspace_min=tuple(node.workspace_min),
                        workspace_max=tuple(node.workspace_max))
    with SimArm(sim_cfg) as sim:
        loop = GraspLoop(node, InProcessArm(sim), attempts.append)
        rng = np.random.default_rng(chunk.seed)
        for _ in range(chunk.attempts):
            loop.run_attempt(policy, rng)
    collate = LevineCollate(chunk.image_size, chunk.image_size,
                            NetworkConfig().motion_scale)
    out: dict[str, list] = {k: [] for k in ("image", "motion", "label", "attempt")}
    meta = []
    for i, a in enumerate(attempts):
        if a.label is None or not a.steps:
            continue
        batch = collate(samples_of_attempt(a))
        for k in ("image", "motion", "label"):
            out[k].append(batch[k].numpy())
        out["attempt"].append(np.full(len(a.steps), i))
        meta.append({"label": bool(a.label), "kind": a.policy_kind, "steps": len(a.steps),
                     "close_z": round(float(a.final_pose[2]), 4),
                     "truth": bool((a.ground_truth or {}).get("any_lifted", False))})
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
    return {"arrays": arrays, "meta": meta}


def run_attempts(spec: PolicySpec, split: str, seed: int, n: int, workers: int,
                 chunk_size: int = 25, node: tuple = (), image_size: int = 64) -> dict[str, Any]:
    """n attempts in chunks of chunk_size (chunk k: SimArm seed seed*1000 + k) on `workers`."""
    chunks = [Chunk(spec, split, seed * 1000 + k, min(chunk_size, n - k * chunk_size), node,
                    image_size) for k in range(math.ceil(n / chunk_size))]
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(run_chunk, chunks, chunksize=1)
    arrays: dict[str, list] = {k: [] for k in ("image", "motion", "label", "attempt")}
    meta: list = []
    for part in parts:
        if not part["meta"]:
            continue
        for k in ("image", "motion", "label"):
            arrays[k].append(part["arrays"][k])
        arrays["attempt"].append(part["arrays"]["attempt"] * 0 + len(meta)
                                 + _dense(part["arrays"]["attempt"]))
        meta.extend(part["meta"])
    return {"arrays": {k: np.concatenate(v) for k, v in arrays.items()}, "meta": meta}


def _dense(ids: np.ndarray) -> np.ndarray:
    """Attempt indices within a chunk renumbered 0..k-1 (aborted attempts left gaps)."""
    return np.unique(ids, return_inverse=True)[1]


def cache_key(spec: PolicySpec, split: str, seed: int, n: int, node: tuple, image_size: int,
              defaults: Optional[tuple] = None) -> str:
    c = replace(NodeConfig(), **dict(node))
    defaults = defaults or (c.max_steps, c.exploration_max_step, StepLimits().max_translation)
    key = repr((spec.key(), split, seed, n, node, image_size, defaults))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def collect(spec: PolicySpec, split: str, seed: int, n: int, workers: int, cache: Path,
            node: tuple = (), image_size: int = 64) -> dict[str, Any]:
    """run_attempts, cached on disk by everything that determines its result (including the
    defaults in force: T and the step limits)."""
    path = cache / f"{split}-{n}-{seed}-{cache_key(spec, split, seed, n, node, image_size)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {"arrays": {k: z[k] for k in ("image", "motion", "label", "attempt")},
                    "meta": json.loads(str(z["meta"])), "path": path, "cached": True}
    started = time.monotonic()
    data = run_attempts(spec, split, seed, n, workers, node=node, image_size=image_size)
    data["wall_s"] = time.monotonic() - started
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, meta=json.dumps(data["meta"]), **data["arrays"])
    data.update(path=path, cached=False)
    return data


def merge(*datasets: dict[str, Any]) -> dict[str, Any]:
    arrays: dict[str, list] = {k: [] for k in ("image", "motion", "label", "attempt")}
    meta: list = []
    for d in datasets:
        for k in ("image", "motion", "label"):
            arrays[k].append(d["arrays"][k])
        arrays["attempt"].append(d["arrays"]["attempt"] + len(meta))
        meta.extend(d["meta"])
    return {"arrays": {k: np.concatenate(v) for k, v in arrays.items()}, "meta": meta}


def success(data: dict[str, Any]) -> dict[str, Any]:
    """Gripper-label success of a set of attempts with its Wilson 95% interval."""
    n = len(data["meta"])
    k = sum(m["label"] for m in data["meta"])
    lo, hi = wilson_interval(k, n)
    agree = sum(m["label"] == m["truth"] for m in data["meta"])
    return {"success": k / max(n, 1), "k": k, "n": n, "ci95": (lo, hi),
            "agreement": agree / max(n, 1)}


# -- training: the learner's own step on in-memory batches --------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1  # of attempts, for the overfitting figures only
    options: TrainingOptions = field(default_factory=TrainingOptions)
    network: tuple = ()  # NetworkConfig overrides


def train(data: dict[str, Any], s: TrainSettings, threads: int = 2
          ) -> tuple[GraspSuccessNet, dict[str, float]]:
    """Train a fresh network with LevineLearner.train_step on uniformly sampled steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(s.seed)
    a = data["arrays"]
    size = a["image"].shape[-1]
    net_cfg = replace(NetworkConfig(image_height=size, image_width=size), **dict(s.network))
    learner = LevineLearner(net_cfg, s.lr, s.weight_decay, torch.device("cpu"), s.options)
    rng = np.random.default_rng(s.seed)
    n_att = len(data["meta"])
    is_val = rng.random(n_att) < s.val_fraction
    val = is_val[a["attempt"]]
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    tensors = {k: torch.from_numpy(a[k]) for k in ("image", "motion", "label")}
    # steps of an attempt are contiguous, step 0 (the pre-grasp image I_0) first
    first = torch.from_numpy(np.unique(a["attempt"], return_index=True)[1][a["attempt"]])

    def batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.from_numpy(idx)
        b = {k: v[t] for k, v in tensors.items()}
        if net_cfg.use_initial_image:
            b["initial_image"] = tensors["image"][first[t]]
        return b

    started = time.monotonic()
    train_m: dict[str, float] = {}
    for step in range(1, s.steps + 1):
        learner.train_step(batch(rng.choice(train_idx, s.batch_size)))
        if step % 200 == 0 or step == s.steps:
            train_m = learner.train_metrics()  # the last 200 steps' figures
    val_m = learner.evaluate(batch(val_idx[i:i + 512]) for i in range(0, len(val_idx), 512))
    return learner.net.eval(), {"train_loss": train_m.get("loss", math.nan),
                                "train_auc": train_m.get("auc", math.nan),
                                "val_loss": val_m.get("loss", math.nan),
                                "val_auc": val_m.get("auc", math.nan),
                                "train_s": time.monotonic() - started,
                                "train_examples": float(len(train_idx))}


def load(paths: Sequence[Path]) -> dict[str, Any]:
    """Cached datasets, merged."""
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            parts.append({"arrays": {k: z[k] for k in ("image", "motion", "label", "attempt")},
                          "meta": json.loads(str(z["meta"]))})
    return merge(*parts)


def train_job(job: tuple[tuple[Path, ...], TrainSettings]) -> tuple[PolicySpec, dict]:
    """Worker: train on cached datasets with one thread; the model travels as a spec."""
    paths, settings = job
    model, metrics = train(load(paths), settings, threads=1)
    return spec_of(model), metrics
