"""Policy bundles: a trained network as it travels from the learner to every robot.

A bundle is a directory holding two files (format in docs/policy-bundle.md):

    model.safetensors   the weights (safetensors: tensors only, nothing executable)
    policy.json         what they are: format, version, architecture + config, input spec,
                        provenance, metrics, and the sha256 of model.safetensors

Loading verifies everything a robot must not get wrong and refuses with a `BundleError` naming
the problem: a corrupt or altered weights file, an unknown architecture, weights that do not fit
the architecture exactly, an input spec that does not match the robot's camera. Nothing is ever
unpickled (no torch.load). For the wire, `pack_bundle` turns a bundle into one msgpack blob of
the two files' bytes, and `unpack_bundle` verifies it the same way.

An architecture name is looked up in the method registry (fleet/registry.py): each
learning method registers the architecture its network is saved as, so a new method's bundles
load here with no change to this file (bundles assume no one learner).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

import msgpack
import safetensors.torch
import torch
from torch import nn

from fleet.registry import MethodError, by_architecture
from fleet.store.durable import atomic_write

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "policy.json"
#: Refuse anything bigger (a policy here is well under 1 MB; this bounds a hostile upload).
MAX_BUNDLE_BYTES = 256 * 1024 * 1024

PathLike = Union[str, os.PathLike]


class BundleError(ValueError):
    """A policy bundle was refused; the message says what is wrong with it."""


class BundleModel(Protocol):
    """What a network must offer to be bundled (GraspSuccessNet does)."""

    architecture: str

    def config_dict(self) -> dict[str, Any]: ...

    def input_spec(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


def _builder(architecture: str) -> Callable[[dict[str, Any]], nn.Module]:
    """The network builder of a registered architecture; BundleError if none is."""
    try:
        return by_architecture(architecture).build_network
    except MethodError as exc:
        raise BundleError(f"{exc}; this build of fleet cannot run it") from None


@dataclass
class BundleMeta:
    """The contents of policy.json."""

    version: int
    architecture: str
    config: dict[str, Any]
    input_spec: dict[str, Any]
    created_at: str  # ISO 8601, UTC
    trained_on_attempts: int
    sha256: str  # hex digest of model.safetensors
    metrics: dict[str, Any] = field(default_factory=dict)
    bundle_format: int = BUNDLE_FORMAT

    def to_json(self) -> bytes:
        d = asdict(self)
        d["architecture"] = {"name": d["architecture"], "config": d.pop("config")}
        return json.dumps(d, indent=2, sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "BundleMeta":
        """Parse and type-check policy.json; the format version is checked first."""
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BundleError(f"{META_FILE} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise BundleError(f"{META_FILE} must hold a JSON object")
        fmt = d.get("bundle_format")
        if fmt != BUNDLE_FORMAT:
            raise BundleError(f"bundle_format {fmt!r} is not supported (this build reads "
                              f"{BUNDLE_FORMAT}); update fleet on the side that is older")
        _require(d, "version", int, "a non-negative integer")
        _require(d, "trained_on_attempts", int, "a non-negative integer")
        _require(d, "created_at", str, "an ISO 8601 timestamp string")
        _require(d, "sha256", str, "a hex SHA-256 digest")
        _require(d, "input_spec", dict, "an object")
        _require(d, "metrics", dict, "an object")
        _require(d, "architecture", dict, 'an object {"name": ..., "config": {...}}')
        arch = d["architecture"]
        _require(arch, "name", str, "a string", where="architecture.")
        _require(arch, "config", dict, "an object", where="architecture.")
        if d["version"] < 0 or d["trained_on_attempts"] < 0:
            raise BundleError(f"{META_FILE}: version and trained_on_attempts must be >= 0")
        if len(d["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in d["sha256"]):
            raise BundleError(f"{META_FILE}: sha256 must be 64 lowercase hex digits")
        return cls(version=d["version"], architecture=arch["name"], config=arch["config"],
                   input_spec=d["input_spec"], created_at=d["created_at"],
                   trained_on_attempts=d["trained_on_attempts"], sha256=d["sha256"],
                   metrics=d["metrics"], bundle_format=fmt)


def _require(d: dict, key: str, typ: type, what: str, where: str = "") -> None:
    if key not in d:
        raise BundleError(f"{META_FILE} is missing the field {where}{key} ({what})")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise BundleError(f"{META_FILE}: {where}{key} must be {what}, got {v!r:.60}")


# -- saving --------------------------------------------------------------------------------------

def _write_files(directory: Path, meta_json: bytes, weights: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # Weights first: policy.json, which carries their checksum, lands last.
    atomic_write(directory / WEIGHTS_FILE, weights, sync_dir=False)
    atomic_write(directory / META_FILE, meta_json)  # syncs the directory: both renames


def save_bundle(path: PathLike, model: BundleModel, *, version: int,
                trained_on_attempts: int = 0,
                metrics: Optional[dict[str, Any]] = None) -> BundleMeta:
    """Write `model` as a bundle into directory `path` (created if missing); returns its meta."""
    _builder(model.architecture)  # only bundles a robot can load are written
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state)
    meta = BundleMeta(
        version=int(version), architecture=model.architecture, config=model.config_dict(),
        input_spec=model.input_spec(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        trained_on_attempts=int(trained_on_attempts), sha256=hashlib.sha256(weights).hexdigest(),
        metrics=dict(metrics or {}))
    try:
        meta_json = meta.to_json()
    except ValueError as exc:  # NaN in metrics, or a value JSON cannot hold
        raise BundleError(f"metrics must be plain finite JSON values: {exc}") from None
    _write_files(Path(path), meta_json, weights)
    return meta


# -- loading -------------------------------------------------------------------------------------

def _bundle_files(path: PathLike) -> tuple[Path, Path]:
    """A bundle directory, or the path of its policy.json -> (policy.json, model.safetensors)."""
    p = Path(path)
    directory = p.parent if p.name == META_FILE else p
    if not directory.is_dir():
        raise BundleError(f"no policy bundle at {p}: expected a directory holding "
                          f"{META_FILE} and {WEIGHTS_FILE}")
    return directory / META_FILE, directory / WEIGHTS_FILE


def _read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path} is {size} bytes, over the {MAX_BUNDLE_BYTES} byte limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"policy bundle is incomplete: {path} is missing") from None


def verify_bytes(meta_json: bytes, weights: bytes) -> BundleMeta:
    """Parse policy.json and check the weights against its checksum (no torch work)."""
    meta = BundleMeta.from_json(meta_json)
    digest = hashlib.sha256(weights).hexdigest()
    if digest != meta.sha256:
        raise BundleError(f"checksum mismatch: {WEIGHTS_FILE} has sha256 {digest[:16]}... but "
                          f"{META_FILE} says {meta.sha256[:16]}...; the weights are corrupt or "
                          f"were altered; fetch the bundle again")
    return meta


def _check_input_spec(meta: BundleMeta, expected: Optional[dict[str, Any]]) -> None:
    if not expected:
        return
    wrong = {k: (meta.input_spec.get(k), v) for k, v in expected.items()
             if meta.input_spec.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: bundle has {b!r}, expected {e!r}" for k, (b, e) in wrong.items())
        raise BundleError(f"wrong input spec for this robot ({detail}); load a bundle trained "
                          f"for this camera, or change the camera settings")


def _check_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise BundleError(f"weights do not fit the architecture: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    for k, t in state.items():
        if t.shape != want[k].shape or t.dtype != want[k].dtype:
            raise BundleError(f"weights do not fit the architecture: {k} is "
                              f"{t.dtype}{tuple(t.shape)}, the architecture needs "
                              f"{want[k].dtype}{tuple(want[k].shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"weights hold NaN or inf values in {k}; the bundle is unusable")


def load_bytes(meta_json: bytes, weights: bytes,
               expected_input_spec: Optional[dict[str, Any]] = None
               ) -> tuple[nn.Module, BundleMeta]:
    """Verify a bundle given as the bytes of its two files and build its model (eval mode)."""
    meta = verify_bytes(meta_json, weights)
    builder = _builder(meta.architecture)
    try:
        model = builder(meta.config)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"architecture {meta.architecture!r} config does not build: "
                          f"{exc}") from None
    if getattr(model, "input_spec", None) and model.input_spec() != meta.input_spec:
        raise BundleError(f"input_spec in {META_FILE} disagrees with its architecture config: "
                          f"{meta.input_spec} vs {model.input_spec()}")
    _check_input_spec(meta, expected_input_spec)
    try:
        state = safetensors.torch.load(weights)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise BundleError(f"{WEIGHTS_FILE} is not a valid safetensors file (truncated or "
                          f"corrupt): {exc}") from None
    _check_state(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def load_bundle(path: PathLike, expected_input_spec: Optional[dict[str, Any]] = None
                ) -> tuple[nn.Module, BundleMeta]:
    """Load and verify the bundle at `path` (its directory, or its policy.json).

    `expected_input_spec` holds the input_spec entries the caller relies on (e.g. the robot's
    camera size: {"image_height": 64, "image_width": 64}); any disagreement is refused.
    """
    meta_path, weights_path = _bundle_files(path)
    return load_bytes(_read_limited(meta_path), _read_limited(weights_path), expected_input_spec)


# -- the wire form -------------------------------------------------------------------------------

def pack_bundle(path: PathLike) -> bytes:
    """One msgpack blob {bundle_format, policy.json: bytes, model.safetensors: bytes}.

    The checksum is verified before packing, so a corrupt bundle is never distributed.
    """
    meta_path, weights_path = _bundle_files(path)
    meta_json, weights = _read_limited(meta_path), _read_limited(weights_path)
    verify_bytes(meta_json, weights)
    return msgpack.packb({"bundle_format": BUNDLE_FORMAT, META_FILE: meta_json,
                          WEIGHTS_FILE: weights}, use_bin_type=True)


def _unpack_files(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) > MAX_BUNDLE_BYTES + 1024 * 1024:
        raise BundleError(f"packed bundle of {len(blob)} bytes is over the size limit")
    try:
        d = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=MAX_BUNDLE_BYTES)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BundleError(f"packed bundle is not valid msgpack: {exc}") from None
    if not isinstance(d, dict) or not isinstance(d.get(META_FILE), bytes) \
            or not isinstance(d.get(WEIGHTS_FILE), bytes):
        raise BundleError(f"packed bundle must be a map holding {META_FILE} and {WEIGHTS_FILE} "
                          f"as bytes")
    return d[META_FILE], d[WEIGHTS_FILE]


def unpack_bundle(blob: bytes, expected_input_spec: Optional[dict[str, Any]] = None
                  ) -> tuple[nn.Module, BundleMeta]:
    """Verify a packed bundle and build its model, exactly as load_bundle does from disk."""
    return load_bytes(*_unpack_files(blob), expected_input_spec=expected_input_spec)


def save_packed(blob: bytes, path: PathLike,
                expected_input_spec: Optional[dict[str, Any]] = None) -> BundleMeta:
    """Verify a packed bundle fully, then write it as a bundle directory at `path`.

    This is how a robot keeps a received policy across restarts: nothing unverified lands.
    """
    meta_json, weights = _unpack_files(blob)
    _, meta = load_bytes(meta_json, weights, expected_input_spec)
    _write_files(Path(path), meta_json, weights)
    return meta

