"""The QT-Opt learner: off-policy Q-learning on every transition any policy recorded.

Each training sample is a transition (s_t, a_t, s_t+1) of a stored, labelled attempt, whatever
policy ran it (exploration, grasp-point, Levine, qtopt): s_t is the step's image (and depth),
finger opening and tool-point height; a_t the motion the robot executed and whether it closed
(the attempt's last recorded step is the one that closed); s_t+1 the next recorded step. The
record format is unchanged: the machinery draws each sample with its next step
(fleet.learner.api.uses_transitions). Targets come from fleet/methods/qtopt/bellman.py; the
trainer minimises the cross-entropy of sigmoid(Q(s_t, a_t)) against them, steps Adam, moves the
first target network towards the online one (Polyak) and refreshes the lagged second one.

Validation ("loss", what the publish rule compares): the cross-entropy of Q(s_T, close) against
the label on the closing steps of held-out attempts. It is the one part of the Bellman equation
whose target is exact for any policy and any network, so the candidate and the policy in service
are compared on the same numbers; `mc_loss` (all steps, against the recorded attempt's
discounted return) and `auc` (Q(s_t, a_t) against the attempt's label) are logged beside it.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleet.learner.api import Batch, binary_metrics, window_metrics
from fleet.learner.config import QLearningOptions, TrainingOptions
from fleet.learner.dataset import decode_rgb, depth_batch
from fleet.learner.supervised import augment
from fleet.methods.qtopt.bellman import BellmanUpdater
from fleet.methods.qtopt.encoding import encode_actions, encode_states
from fleet.methods.qtopt.gripper_network import GripperQConfig
from fleet.methods.qtopt.network import QNetConfig, q_network
from fleet.store.reader import StepSample

log = logging.getLogger("fleet.learner")


def monte_carlo_returns(steps: np.ndarray, num_steps: np.ndarray, labels: np.ndarray,
                        options: QLearningOptions) -> np.ndarray:
    """The recorded attempt's discounted return from step t: gamma^k * label minus the
    discounted step costs of the k = T - 1 - t steps before closing, clipped to [0, 1]."""
    k = (num_steps - 1 - steps).astype(np.float64)
    g = options.discount
    costs = k if g == 1.0 else (1.0 - g ** k) / (1.0 - g)
    return np.clip(g ** k * labels - options.step_cost * costs, 0.0, 1.0).astype(np.float32)


#: m: a zero-motion step after which the finger opening changed by more than this drove the
#: gripper (a re-grasp's close or reopen); the record keeps the openings, not the command.
TOGGLE_OPENING_CHANGE = 0.01


def toggled(sample: StepSample, following: StepSample, terminal: bool) -> bool:
    """Whether the step drove the gripper within the attempt instead of moving: read from the
    record as it is (zero motion, and the next step's finger opening differs)."""
    if terminal or any(abs(float(m)) > 1e-9 for m in sample.motion[:4]):
        return False
    return abs(float(following.gripper) - float(sample.gripper)) > TOGGLE_OPENING_CHANGE


@dataclass(frozen=True)
class QTOptCollate:
    """Transitions -> tensors (uint8 images, encoded states and actions, label, terminal, the
    next state's image and state; with `updater` in a data worker also "target"). Picklable;
    runs in DataLoader workers. A closing step's next_* repeat its own state (never used)."""

    network: Union[QNetConfig, GripperQConfig]
    options: QLearningOptions
    updater: Optional[BellmanUpdater] = None

    def _images(self, samples: Sequence[StepSample]) -> torch.Tensor:
        cfg = self.network
        images = np.stack([decode_rgb(s.image_jpeg, cfg.image_height, cfg.image_width)
                           for s in samples])
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def _states(self, samples: Sequence[StepSample]) -> torch.Tensor:
        return encode_states([s.gripper for s in samples], [s.ee_pose for s in samples],
                             self.network)

    def __call__(self, samples: Sequence[StepSample]) -> Batch:
        cfg = self.network
        terminal = np.array([s.step == s.num_steps - 1 for s in samples])
        missing = [s for s, t in zip(samples, terminal) if not t and s.next_step is None]
        if missing:
            raise ValueError("a Q-learner trains on transitions: draw samples with their next "
                             "step (StoreReader.sample_steps(with_next=True))")
        following = [s if t else s.next_step for s, t in zip(samples, terminal)]
        actions = np.array([list(s.motion[:4]) + [float(t), float(toggled(s, n, t))]
                            for s, n, t in zip(samples, following, terminal)])
        steps = np.array([s.step for s in samples])
        labels = np.array([float(s.label) for s in samples])
        batch = {"image": self._images(samples), "state": self._states(samples),
                 "action": encode_actions(actions, cfg.motion_scale),
                 "label": torch.tensor(labels, dtype=torch.float32),
                 "terminal": torch.tensor(terminal, dtype=torch.float32),
                 "mc_return": torch.from_numpy(monte_carlo_returns(
                     steps, np.array([s.num_steps for s in samples]), labels, self.options)),
                 "next_image": self._images(following), "next_state": self._states(following)}
        if cfg.use_depth:
            batch["depth"] = depth_batch(samples, cfg.image_height, cfg.image_width)
            batch["next_depth"] = depth_batch(following, cfg.image_height, cfg.image_width)
        if self.updater is not None:
            seed = f"{samples[0].attempt_id}:{samples[0].step}:{len(samples)}" if samples else ""
            batch = self.updater.label_in_worker(batch, seed)
        return batch


def polyak_update(target: nn.Module, online: nn.Module, polyak: float) -> None:
    """target <- polyak * target + (1 - polyak) * online, in place (shared memory stays)."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.lerp_(o.detach(), 1.0 - polyak)


class QTOptLearner:
    """Q(s, a), two target networks, Adam, cross-entropy on Bellman targets. A
    fleet.learner.api.Learner."""

    name = "qtopt_q_learning"
    uses_transitions = True  # the machinery draws each step with its next one
    #: Half of each batch from the online buffer (the newest attempts, mostly this policy's
    #: own), half from the whole store, as QT-Opt mixes its online and offline data.
    online_fraction = 0.5

    def __init__(self, network: Union[QNetConfig, GripperQConfig], options: QLearningOptions,
                 lr: float,
                 weight_decay: float, device: torch.device,
                 training: Optional[TrainingOptions] = None, workers: int = 0) -> None:
        self.device = device
        self.options = options
        self.training = training or TrainingOptions()
        self.net = q_network(network).to(device)
        self.model: nn.Module = self.net
        self.target1 = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.target2 = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.bellman = BellmanUpdater(self.target1, self.target2, options)
        #: Bellman updaters in the data workers: they read the target networks from shared
        #: memory, which the trainer updates in place (the paper's asynchronous updaters).
        self.updaters_in_workers = options.bellman_updaters and workers > 0 \
            and device.type == "cpu"
        if self.updaters_in_workers:
            self.target1.share_memory()
            self.target2.share_memory()
        self.collate = QTOptCollate(network, options,
                                    self.bellman if self.updaters_in_workers else None)
        self.requires_depth = network.use_depth
        #: Flip the gripper view's patches at random in training, as the grasp-point learner
        #: does: offline on run 3's 7,380 closing steps, held-out AUC of Q(s_T, close) 0.81
        #: and still rising at 4,000 steps with it, 0.79 at 1,000 falling to 0.76 without.
        self.mirror = isinstance(network, GripperQConfig)
        self.steps_taken = 0
        self.targets_from_updaters = 0  # training steps whose targets a data worker computed
        self._window: list[tuple[torch.Tensor, torch.Tensor, float, float]] = []

    def _inputs(self, batch: Batch, generator: Optional[torch.Generator]):
        image = batch["image"].to(self.device).float().div_(255.0)
        o = self.training
        if isinstance(self.net.config, GripperQConfig):  # patches go through the camera
            o = TrainingOptions(augment_colour=o.augment_colour)  # model: no image shift
        if generator is not None and (o.augment_shift or o.augment_colour):
            image = augment(image, o, generator)
        depth = batch["depth"].to(self.device).float().div_(1000.0) if "depth" in batch \
            else None
        return image, batch["state"].to(self.device), batch["action"].to(self.device), depth

    def train_step(self, batch: Batch) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.steps_taken)
        if "target" in batch:  # labelled by a Bellman updater in a data worker
            target = batch["target"]
            self.targets_from_updaters += 1
        else:
            target = self.bellman.targets(batch, g)
        self.model.train()
        image, state, action, depth = self._inputs(batch, g)
        if self.mirror:  # the gripper view's patches, flipped at random (exact symmetry)
            mirror = torch.rand(image.shape[0], 2, generator=g) < 0.5
            logits = self.model(image, state, action, depth, mirror)
        else:
            logits = self.model(image, state, action, depth)
        loss = F.binary_cross_entropy_with_logits(logits, target.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps_taken += 1
        polyak_update(self.target1, self.net, self.options.target_polyak)
        if self.steps_taken % self.options.target_lag_steps == 0:
            self.target2.load_state_dict(self.target1.state_dict())  # copies in place
        value = float(loss.detach())
        self._window.append((logits.detach().cpu(), batch["label"], value,
                             float(target.mean())))
        return {"loss": value}

    def train_metrics(self) -> dict[str, float]:
        mean_target = float(np.mean([w[3] for w in self._window])) if self._window else 0.0
        m = window_metrics(self._window)
        if m:
            m["mean_target"] = mean_target
        return m

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch],
                 model: Optional[nn.Module] = None) -> dict[str, float]:
        model = (model or self.net).to(self.device)
        was_training = model.training
        model.eval()
        logits, labels, terminal, mc = [], [], [], []
        for batch in batches:
            image, state, action, depth = self._inputs(batch, None)
            logits.append(model(image, state, action, depth).cpu())
            labels.append(batch["label"])
            terminal.append(batch["terminal"].bool())
            mc.append(batch["mc_return"])
        model.train(was_training)
        if not labels:
            return {"loss": float("nan"), "examples": 0.0}
        lg, lb, term, ret = (torch.cat(x) for x in (logits, labels, terminal, mc))
        closing = F.binary_cross_entropy_with_logits(lg[term], lb[term]) if term.any() \
            else torch.tensor(float("nan"))
        m = binary_metrics(lg.numpy(), lb.numpy(), float(closing))
        m["mc_loss"] = float(F.binary_cross_entropy_with_logits(lg, ret))
        m["closing_examples"] = float(term.sum())
        return m

    def network(self) -> nn.Module:
        """The online Q-network (what robots run), as the paper publishes it."""
        return self.net

    def wrap_distributed(self) -> None:
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    def state_dict(self) -> dict[str, Any]:
        return {"network": self.net.state_dict(), "target1": self.target1.state_dict(),
                "target2": self.target2.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["network"])
        self.target1.load_state_dict(state["target1"])  # in place: shared memory stays shared
        self.target2.load_state_dict(state["target2"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state.get("steps_taken", 0))


#: The side the Q-network's trunk sees at most: a larger camera is average-pooled down to it.
#: At 128x128 RGB-D a training batch of 64 (sample, decode, Bellman targets, step) cost
#: 980 ms on one thread against 263 ms seen at 64x64 (3.7 x, measured on run qtopt_5obj's
#: store, 2026-12-07): on 2 cores beside the arms the learner is the bottleneck.
MAX_TRUNK_SIDE = 64


def input_pool_for(image_size: int) -> int:
    """The largest pooling factor that divides the camera size and brings it to at most
    MAX_TRUNK_SIDE (1 for a camera that small already)."""
    pool = 1
    while image_size // pool > MAX_TRUNK_SIDE and image_size % (pool * 2) == 0 \
            and image_size // (pool * 2) >= 16:
        pool *= 2
    return pool


def make_learner(config, device: torch.device) -> QTOptLearner:
    """The registry's factory: a QTOptLearner for the robots' camera (a LearnerConfig)."""
    size = config.image_size
    if config.q_view == "gripper":
        network: Union[QNetConfig, GripperQConfig] = GripperQConfig(
            image_height=size, image_width=size, camera_eye=tuple(config.camera_eye),
            camera_target=tuple(config.camera_target), camera_fov_deg=config.camera_fov_deg,
            use_depth=config.depth, relative_height=config.depth, regrasp=config.regrasp)
    else:
        network = QNetConfig(image_height=size, image_width=size, use_depth=config.depth,
                             regrasp=config.regrasp, input_pool=input_pool_for(size))
    if config.positive_weight != 1.0 or config.ema_decay:
        log.info("the qtopt method ignores --positive-weight and --ema-decay (its targets are "
                 "Bellman targets; its target networks are the Polyak averages)")
    return QTOptLearner(network, config.q_learning_options(), config.lr, config.weight_decay,
                        device, config.training_options(), config.workers)
