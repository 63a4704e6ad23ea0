"""The policy in service, scored on the same validation set as the candidate (rank 0).

The publish rule compares the two losses, so the learner loads the bundle latest.json points
at (once per version, cached) and evaluates it with the learner's own `evaluate`. A damaged
bundle, or one of another method or network shape, must not stop training: it scores an
infinite loss, so the next candidate that validates replaces it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from fleet.learner.api import Learner
from fleet.policy.bundle import load_bundle
from fleet.policy.folder import bundle_path

log = logging.getLogger("fleet.learner")


class InService:
    """Validation metrics of the version in service, its model loaded once per version."""

    def __init__(self, policies: Path) -> None:
        self.policies = Path(policies)
        self._cache: tuple[int, Any] = (-1, None)

    def metrics(self, pointer: Optional[dict], learner: Learner,
                batches: list) -> Optional[dict]:
        """{"loss", ..., "version"} of the pointer's version, or None when nothing is in
        service yet."""
        if pointer is None:
            return None
        version = int(pointer["version"])
        if self._cache[0] != version:
            try:
                model, _ = load_bundle(bundle_path(self.policies, version))
            except Exception as exc:  # a damaged or foreign bundle must not stop training
                log.error("cannot load policy v%d in service (%s): the candidate will replace "
                          "it if it validates", version, exc)
                model = None
            self._cache = (version, model)
        model = self._cache[1]
        if model is None:
            return {"loss": math.inf, "version": version}
        try:
            return {**learner.evaluate(batches, model), "version": version}
        except Exception as exc:
            log.error("policy v%d in service does not fit this learner (%s)", version, exc)
            return {"loss": math.inf, "version": version}
