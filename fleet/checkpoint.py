"""What the learner keeps on disk: its resumable checkpoint and the policies it published.

    <out>/checkpoint.pt          everything to resume: step, network + optimiser state, the
                                 publish state (torch.save; read back with weights_only=True,
                                 so loading it can never run code)
    <out>/checkpoint.prev.pt     the one before (used if checkpoint.pt cannot be read)
    <out>/checkpoint.json        the same minus tensors, for humans and scripts
    <out>/policies/v<N>/         published policy bundles (fleet/bundle.py format)
    <out>/policies/latest.json   the pointer to the policy in service: {"version", "path", ...}

Every file is written to a temporary name, fsynced, renamed into place, and its directory
fsynced, so `kill -9` or a power cut leaves either the old file or the new one, never a torn one.
The data position needs no file of its own: batch k of rank r is drawn from an RNG seeded by
(seed, r, k) (fleet/dataset.py), so the step count is the position.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fleet.bundle import BundleMeta, save_bundle
from fleet.durable import atomic_write, fsync_dir

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
INFO_FILE = "checkpoint.json"
POLICIES_DIR = "policies"
POINTER_FILE = "latest.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message says what to do."""


def atomic_write_json(path: Path, value: dict[str, Any]) -> None:
    data = json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode()
    atomic_write(path, data)


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


# -- published policies --------------------------------------------------------------------------

def read_pointer(out_dir: Path) -> Optional[dict[str, Any]]:
    """policies/latest.json (the policy in service), or None before the first publication."""
    path = Path(out_dir) / POLICIES_DIR / POINTER_FILE
    try:
        pointer = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); it is written atomically, so "
                              f"something else wrote it: restore or delete it") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), int):
        raise CheckpointError(f"{path} must be a JSON object with an integer 'version'")
    return pointer


def bundle_dir(out_dir: Path, version: int) -> Path:
    return Path(out_dir) / POLICIES_DIR / f"v{version}"


def write_policy(out_dir: Path, model: nn.Module, *, version: int, trained_on_attempts: int,
                 metrics: dict[str, Any]) -> tuple[Path, BundleMeta]:
    """Write bundle policies/v<version>/, then point policies/latest.json at it.

    The pointer is replaced last, so whoever follows it always finds a complete bundle.
    """
    directory = bundle_dir(out_dir, version)
    meta = save_bundle(directory, model, version=version,
                       trained_on_attempts=trained_on_attempts, metrics=metrics)
    fsync_dir(directory.parent)
    atomic_write_json(Path(out_dir) / POLICIES_DIR / POINTER_FILE, {
        "version": version, "path": directory.name, "sha256": meta.sha256,
        "created_at": meta.created_at, "trained_on_attempts": trained_on_attempts,
        "metrics": metrics})
    return directory, meta
