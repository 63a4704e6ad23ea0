"""Every setting of a learner run, in one dataclass (each field is a `fleet learn` flag).

The learner runs beside the fleet, forever or for --steps: worker processes sample the store
(picking up new attempts as they are rolled into shards) and decode the JPEGs; every
`cycle_every_steps` steps or `cycle_every_seconds` seconds rank 0 validates, checkpoints, and
publishes policy v<N+1> unless the publish rule says no (fleet/learner/publish_rule.py). What is
trained is the method `method` names in the registry (fleet/registry.py, one folder each in
fleet/methods); the machinery here knows none of them. docs/learner.md has the details.

    fleet learn --data STORE --out RUN [--method grasp_point] [--steps N] ...
    python -m fleet.learner ...                        (the same)
    torchrun --standalone --nproc_per_node 2 -m fleet.learner --data STORE --out RUN ...
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fleet.registry import DEFAULT_METHOD, get_method
from fleet.policy.geometry import DEFAULT_EYE, DEFAULT_FOV_DEG, DEFAULT_TARGET


@dataclass(frozen=True)
class TrainingOptions:
    """What the training step does beyond plain BCE (each is a LearnerConfig field too)."""

    #: BCE weight of successful examples: > 1 while successes are rare, so the few positives
    #: are not drowned by the many easy failures.
    positive_weight: float = 1.0
    #: Random translation of each training image by up to this many pixels (replicate-padded
    #: crop): the same scene seen from a slightly moved camera, against overfitting.
    augment_shift: int = 0
    #: Random brightness/contrast change of each training image by up to this fraction.
    augment_colour: float = 0.0
    #: Polyak averaging: > 0 keeps an exponential moving average of the weights (this decay per
    #: step) and validates and publishes it instead of the latest weights. With a constant
    #: learning rate the latest weights wander with the last few hundred batches; the average
    #: is a better and steadier policy (successive versions differ less by chance).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.positive_weight <= 0 or self.augment_shift < 0 or self.augment_colour < 0:
            raise ValueError("positive_weight must be > 0, augment_shift and augment_colour >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class QLearningOptions:
    """Every hyperparameter of a Q-learning method's targets, in one place (each is a
    LearnerConfig field and a `fleet learn` flag too). Defaults: Kalashnikov et al. 2018's
    discount and step cost; the target networks' pace and the CEM scaled to a 2-core CPU."""

    #: gamma of the Bellman target r + gamma * V(s_t+1).
    discount: float = 0.9
    #: Reward of every step before the gripper closes is -step_cost: quicker grasps are worth
    #: more. The closing step's reward is the attempt's label (1: an object lifted).
    step_cost: float = 0.05
    #: Polyak averaging of the first target network, per training step:
    #: target <- polyak * target + (1 - polyak) * online (the paper: 0.9999 over millions of
    #: steps; 0.995 follows the last ~200 steps of a short run).
    target_polyak: float = 0.995
    #: The second target network is the first one as it was this many steps ago (refreshed
    #: every target_lag_steps); V takes the minimum of both (clipped double Q).
    target_lag_steps: int = 200
    #: CEM that maximises the target network over the next state's motions: samples per
    #: iteration, elites, iterations (smaller than the robot's: it runs for a whole batch).
    #: 8 x 1 since the 32 px gripper view (a patch CNN pass per sample is 4.5 x dearer than at
    #: 16 px): the last step's V is Q(s', close), scored exactly whatever the CEM.
    target_cem_samples: int = 8
    target_cem_elites: int = 3
    target_cem_iterations: int = 1
    #: Compute the targets in the data worker processes (the paper's Bellman updaters, reading
    #: target networks in shared memory) when there are workers; otherwise in the trainer.
    bellman_updaters: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.discount <= 1.0 or self.step_cost < 0:
            raise ValueError(f"discount must be in [0, 1] and step_cost >= 0, got "
                             f"{self.discount}, {self.step_cost}")
        if not 0.0 <= self.target_polyak < 1.0 or self.target_lag_steps < 1:
            raise ValueError("target_polyak must be in [0, 1) and target_lag_steps >= 1")
        if self.target_cem_samples < 2 or not 1 <= self.target_cem_elites <= \
                self.target_cem_samples or self.target_cem_iterations < 1:
            raise ValueError("need target_cem_samples >= 2, 1 <= target_cem_elites <= "
                             "target_cem_samples and target_cem_iterations >= 1")


#: What a Q-learning method's network looks at (fleet/methods/qtopt/gripper_network.py,
#: network.py).
Q_VIEWS = ("gripper", "image")


@dataclass
class LearnerConfig:
    """Every hyperparameter and setting of a learner run (each is a --flag of the CLI)."""

    data: Path  # the episode store directory (the data server's --data)
    out: Path  # run directory: checkpoint, policies/, tensorboard/
    method: str = DEFAULT_METHOD  # the learning method, by its registered name (fleet/methods)
    steps: Optional[int] = None  # stop at this total step count; None = run beside the fleet
    batch_size: int = 64  # per rank
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    seed: int = 0  # network init, and data order (which also depends on the rank)
    workers: int = 1  # DataLoader worker processes per rank (0: load in the training process)
    prefetch: int = 4  # batches each worker prepares ahead
    threads: int = 1  # torch intra-op threads of the training process
    device: str = "auto"  # "cpu", "cuda", "cuda:1", or "auto"
    image_size: int = 64  # network input side, px (must match the robots' camera setting)
    # The camera model the grasp-point network samples I_0 through (arms.yaml camera_*): a
    # look-at pinhole in base_link, m, and its vertical field of view, deg.
    camera_eye: tuple[float, float, float] = DEFAULT_EYE  # camera position
    camera_target: tuple[float, float, float] = DEFAULT_TARGET  # looked-at point
    camera_fov_deg: float = DEFAULT_FOV_DEG  # vertical field of view, deg
    # The grasp-point network also takes I_0's aligned depth image (arms.yaml depth: the arms
    # have RGB-D cameras; fleet sim sets it). Every attempt trained on must then carry depth.
    depth: bool = False
    val_fraction: float = 0.1  # share of attempts (by a hash of their id) held out
    val_max_attempts: int = 200  # validation set: this many held-out attempts ...
    val_newest: bool = True  # ... the newest (a window moving with the fleet), else the first
    recent_weight: float = 0.0  # >0 favours newer attempts (see StoreReader.sample_steps)
    # Share of each batch drawn from the online buffer, the newest online_attempts attempts
    # (the rest from the whole store); None: the method's own (qtopt 0.5 as QT-Opt, others 0)
    online_fraction: Optional[float] = None
    online_attempts: int = 2000  # attempts in the online buffer (newest in store order)
    positive_weight: float = 1.0  # BCE weight of successes (>1 skews p up: CEM then closes early)
    augment_shift: int = 4  # random image shift, px (against memorising scenes)
    augment_colour: float = 0.2  # random brightness/contrast change, fraction
    ema_decay: float = 0.0  # >0: validate and publish a moving average of the weights (0.995)
    # Q-learning methods' targets (QLearningOptions; the supervised methods ignore them)
    discount: float = 0.9  # Q-learning: gamma of the Bellman target r + gamma V(s')
    step_cost: float = 0.05  # Q-learning: reward -step_cost per step before closing
    target_polyak: float = 0.995  # Q-learning: target net <- p target + (1 - p) online, per step
    target_lag_steps: int = 200  # Q-learning: 2nd target net = the 1st this many steps ago
    target_cem_samples: int = 8  # Q-learning: CEM samples per iteration for V(s')
    target_cem_elites: int = 3  # Q-learning: CEM elites for V(s')
    target_cem_iterations: int = 1  # Q-learning: CEM iterations for V(s')
    bellman_updaters: bool = True  # Q-learning: targets computed in the data workers (if any)
    regrasp: bool = False  # Q-learning: the action may also close/reopen mid-attempt (re-grasp)
    q_view: str = "gripper"  # Q-learning: Q sees the patch where a step leads, or the "image"
    min_attempts: int = 50  # labelled attempts stored before the first training step
    # Replay ratio: the learner waits for more data once it has trained on this many samples
    # per labelled attempt stored (beyond it a small store is memorised); 0: no cap.
    samples_per_attempt: float = 0.0  # max training samples per labelled attempt stored
    cycle_every_steps: int = 500  # validate + checkpoint + maybe publish this often...
    cycle_every_seconds: float = 300.0  # ...or at least this often
    publish_tolerance: float = 0.0  # publish if val loss <= in-service val loss * (1 + this)
    #: ...or whatever the loss says, once the version in service has this many labelled fleet
    #: attempts and grasps less often than exploration does (fleet/learner/publish_rule.py); 0: off
    replace_losing_after: int = 50
    log_every_steps: int = 50
    refresh_seconds: float = 5.0  # how often workers look for new shards
    frame_cache_mb: int = 512  # decoded-frame cache per worker, MiB (64x64: ~15 KB/frame); 0 off
    poll_seconds: float = 2.0  # how often to re-check the store while waiting for min_attempts
    tensorboard: bool = True
    logdir: Optional[Path] = None  # default <out>/tensorboard
    progress: bool = True  # a progress bar for finite runs on a terminal

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.batch_size < 1 or self.workers < 0 or self.threads < 1:
            raise ValueError("batch_size and threads must be >= 1, workers >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.cycle_every_steps < 1 or self.cycle_every_seconds <= 0:
            raise ValueError("cycle_every_steps must be >= 1 and cycle_every_seconds > 0")
        if self.steps is not None and self.steps < 0:
            raise ValueError("steps must be >= 0")
        get_method(self.method)  # an unknown name says which methods there are
        if self.samples_per_attempt < 0:
            raise ValueError(f"samples_per_attempt must be >= 0 (0: no cap), got "
                             f"{self.samples_per_attempt}")
        if self.q_view not in Q_VIEWS:
            raise ValueError(f"q_view must be one of {', '.join(Q_VIEWS)}, got {self.q_view!r}")
        if self.frame_cache_mb < 0:
            raise ValueError(f"frame_cache_mb must be >= 0 (0: off), got {self.frame_cache_mb}")

    def training_options(self) -> TrainingOptions:
        return TrainingOptions(self.positive_weight, self.augment_shift, self.augment_colour,
                               self.ema_decay)

    def q_learning_options(self) -> QLearningOptions:
        return QLearningOptions(self.discount, self.step_cost, self.target_polyak,
                                self.target_lag_steps, self.target_cem_samples,
                                self.target_cem_elites, self.target_cem_iterations,
                                self.bellman_updaters)

    def torch_device(self) -> "torch.device":
        import torch  # this module stays importable without torch (CLI help, fleet sim)

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
