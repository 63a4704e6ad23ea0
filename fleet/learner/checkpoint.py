"""What the learner keeps on disk to resume: its checkpoint.

    <out>/checkpoint.pt          everything to resume: step, network + optimiser state, the
                                 publish state (torch.save; read back with weights_only=True,
                                 so loading it can never run code)
    <out>/checkpoint.prev.pt     the one before (used if checkpoint.pt cannot be read)
    <out>/checkpoint.json        the same minus tensors, for humans and scripts
    <out>/policies/              the policies it published: fleet/policy/folder.py owns them

Every file is written to a temporary name, fsynced, renamed into place, and its directory
fsynced, so `kill -9` or a power cut leaves either the old file or the new one, never a torn one.
The data position needs no file of its own: batch k of rank r is drawn from an RNG seeded by
(seed, r, k) (fleet/learner/dataset.py), so the step count is the position.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fleet.store.durable import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
INFO_FILE = "checkpoint.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message says what to do."""


# -- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, dicts, lists, numbers, strings) as the new checkpoint.

    `state["info"]` (plain JSON values) is also written to checkpoint.json.
    """
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT_FILE
    payload = dict(state, checkpoint_format=CHECKPOINT_FORMAT)
    if path.exists():  # keep one generation back, in case the newest turns out unreadable
        os.replace(path, out_dir / PREVIOUS_FILE)
    atomic_write(path, lambda f: torch.save(payload, f))
    info = dict(state.get("info", {}),
                saved_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(out_dir / INFO_FILE, info)
    return path


def _load(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("checkpoint_format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a fleet learner checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_checkpoint(out_dir: Path) -> Optional[dict[str, Any]]:
    """The newest readable checkpoint in out_dir, or None when there is none (a fresh start)."""
    out_dir = Path(out_dir)
    errors = []
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            return _load(path)
        except Exception as exc:  # torch raises many types for a damaged file
            errors.append(f"{path}: {exc}")
            log.error("cannot read checkpoint %s (%s); trying the previous one", path, exc)
    if errors:
        raise CheckpointError(
            "no readable checkpoint: " + "; ".join(errors) + ". Move the damaged files away "
            "to start from scratch, or pass another --out directory")
    return None


def parameter_checksum(model: nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order (equal iff bit-identical)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
