"""Which policy runs the next attempt: the newest good policy bundle (the servo policy of its
architecture, fleet/policy/factory.py and the method registry: CEM over the Levine grasp network, or
the grasp-point policy), mixed with exploration, or exploration alone before any network exists.

Bundles are looked for between attempts only, so a policy is never swapped mid-attempt. A bundle
that fails to load (bad checksum, wrong camera size, a network that takes depth on a node without
a depth topic, unknown architecture, ...) is refused with its reason logged once; the policy that
was running stays in charge.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from fleet.policy.bundle import META_FILE, WEIGHTS_FILE, BundleError, BundleMeta, load_bundle
from fleet.policy.exploration import EXPLORATIONS, MixedPolicy
from fleet.policy.base import Policy, StepLimits
from fleet.policy.factory import ServoSettings, policy_for
from robot_node.params import DEFAULT_DEPTH_TOPIC, ConfigError, NodeConfig

log = logging.getLogger(__name__)

#: In a directory of bundles, a file naming the bundle directory the fleet is pinned to (an
#: operator's rollback: used even though newer versions are present).
PIN_FILE = "PINNED"


def bundle_dir_name(version: int) -> str:
    return f"v{version:06d}"


def make_exploration(name: str, max_step: float = StepLimits.max_translation) -> Policy:
    """An exploration policy by short name, or any Policy class as 'package.module:Class'."""
    if name in EXPLORATIONS:
        return EXPLORATIONS[name].make(StepLimits(max_translation=max_step))
    module_name, _, class_name = name.partition(":")
    if not class_name:
        raise ConfigError(f"exploration_policy {name!r}: use one of "
                          f"{sorted(EXPLORATIONS)} or 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"exploration_policy {name!r} cannot be imported: {exc}") from None
    policy = cls()
    if not isinstance(policy, Policy):
        raise ConfigError(f"exploration_policy {name!r} is not a fleet.policy.Policy")
    return policy


def set_torch_threads(threads: int) -> None:
    """Pin torch's intra-op pool (0 keeps torch's default of one thread per core); a process-
    wide setting, so the node's process calls it (robot_node.node), not the runtime itself.

    Why: a CEM decision is four small batched forward passes. With torch's default pool every
    pass wakes one spinning thread per core, which on a controller also running the simulator,
    other arms or the learner turns a 5 ms decision into 300-700 ms (measured in `fleet sim
    --arms 2` on 2 cores; docs/robot-node.md). One thread keeps it at tens of ms.
    """
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Candidate:
    path: Path
    fingerprint: tuple  # (path, mtimes, sizes): a rewritten bundle is a new candidate


def _fingerprint(directory: Path) -> tuple:
    parts = [str(directory)]
    for name in (META_FILE, WEIGHTS_FILE):
        try:
            st = (directory / name).stat()
            parts += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            parts += [None, None]
    return tuple(parts)


def _meta_version(directory: Path) -> int:
    try:
        return BundleMeta.from_json((directory / META_FILE).read_bytes()).version
    except (OSError, BundleError):
        return -1  # still tried (and refused with its reason) if nothing newer exists


class PolicyRuntime:
    """Owns the exploration policy and the current learned policy (if any)."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.exploration = make_exploration(config.exploration_policy,
                                            config.exploration_max_step)
        self.learned: Optional[Policy] = None
        self.meta: Optional[BundleMeta] = None
        self.refused: dict[tuple, str] = {}  # fingerprint -> reason, so each is logged once
        self._loaded_fingerprint: Optional[tuple] = None
        self._clock = clock
        self._next_poll = 0.0

    @property
    def version(self) -> int:
        return self.meta.version if self.meta else 0

    def current(self) -> Policy:
        """The policy for the next attempt."""
        if self.learned is None:
            return self.exploration
        return MixedPolicy(self.learned, self.exploration, self.config.exploration_share)

    # ------------------------------------------------------------------ bundles

    def candidate(self) -> Optional[_Candidate]:
        """The newest bundle under bundle_path (a bundle directory, or a directory of them)."""
        if not self.config.bundle_path:
            return None
        root = Path(self.config.bundle_path).expanduser()
        if (root / META_FILE).exists():
            return _Candidate(root, _fingerprint(root))
        if not root.is_dir():
            return None
        pin = root / PIN_FILE
        if pin.exists():
            pinned = root / pin.read_text().strip()
            if (pinned / META_FILE).exists():
                return _Candidate(pinned, _fingerprint(pinned) + ("pinned",))
        dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                and (d / META_FILE).exists()]
        if not dirs:
            return None
        best = max(dirs, key=lambda d: (_meta_version(d), d.name))
        return _Candidate(best, _fingerprint(best))

    def depth_mismatch(self, meta: BundleMeta) -> Optional[str]:
        """Why this node cannot run a bundle whose network takes a depth image, or None."""
        if "depth" not in meta.input_spec or self.config.has_depth:
            return None
        return (f"version {meta.version}'s network takes the camera's aligned depth image "
                f"(input_spec 'depth') but this node has none (depth_topic is "
                f"{self.config.depth_topic!r}): set the parameter depth_topic to the camera's "
                f"aligned depth topic (e.g. {DEFAULT_DEPTH_TOPIC}), or train without depth")

    def poll(self, force: bool = False) -> Optional[str]:
        """Load a new bundle if one appeared; returns a log line when something changed."""
        now = self._clock()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.config.bundle_poll_s
        cand = self.candidate()
        if cand is None or cand.fingerprint in (self._loaded_fingerprint,) \
                or cand.fingerprint in self.refused:
            return None
        expected = {"image_height": self.config.image_height,
                    "image_width": self.config.image_width}
        try:
            model, meta = load_bundle(cand.path, expected)
        except BundleError as exc:
            reason = str(exc)
            self.refused[cand.fingerprint] = reason
            return (f"refused policy bundle {cand.path}: {reason}; still running policy "
                    f"version {self.version}")
        depth_reason = self.depth_mismatch(meta)
        if depth_reason:
            self.refused[cand.fingerprint] = depth_reason
            return (f"refused policy bundle {cand.path}: {depth_reason}; still running policy "
                    f"version {self.version}")
        pinned = cand.fingerprint[-1] == "pinned"
        if self.meta is not None and meta.version <= self.meta.version and not pinned:
            self.refused[cand.fingerprint] = "not newer"
            return (f"ignored policy bundle {cand.path}: version {meta.version} is not newer "
                    f"than the running {self.meta.version}")
        c = self.config
        settings = ServoSettings(cem_samples=c.cem_samples, cem_elites=c.cem_elites,
                                 cem_iterations=c.cem_iterations,
                                 explore_top=c.grasp_explore_top)
        try:
            learned = policy_for(model, meta.version, settings)
        except ValueError as exc:
            self.refused[cand.fingerprint] = str(exc)
            return (f"refused policy bundle {cand.path}: {exc}; still running policy "
                    f"version {self.version}")
        self.learned = learned
        self.meta = meta
        self._loaded_fingerprint = cand.fingerprint
        return (f"loaded policy bundle {cand.path}: version {meta.version}"
                f"{' (pinned by the operator)' if pinned else ''}")
