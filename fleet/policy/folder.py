"""The policies folder, `<learner out>/policies`, and the one module that reads and writes it.

It has three users, each with its own part below: the learner writes bundles and the pointer
(`write_policy`), the data server watches it and serves what it says (`PolicyWatch`), and an
operator pins and unpins a version (`fleet policy pin|unpin|list`: `pin`, `unpin`,
`list_versions`). Which policy the fleet runs: the learner's newest bundle, unless an operator
pinned another.

    policies/v<N>/          bundles (fleet/policy/bundle.py: model.safetensors + policy.json)
    policies/latest.json    the learner's pointer to its newest bundle {"version", "path", ...}
    policies/pin.json       the operator's pin: {"version": N, "reason", "pinned_at"}

A directory watch keeps the learner free of sockets and keys, survives a restart of either side
(both files are durable and written atomically), and lets an operator roll back with a file.
The rule: while pin.json exists, the fleet runs the pinned version and newer learner versions
wait; without it, the fleet runs latest.json's version. A bundle whose checksum does not match
(or whose policy.json disagrees with the pointer) is refused with a logged reason and never
served; the server keeps serving what it served before.

`PolicyWatch.poll()` is cheap (two stat calls) so the server calls it every ~0.2 s.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fleet.policy.bundle import (META_FILE, WEIGHTS_FILE, BundleError, BundleMeta, pack_bundle,
                                 save_bundle, verify_bytes)
from fleet.store.durable import atomic_write_json, fsync_dir

log = logging.getLogger("fleet.policy")

POLICIES_DIR = "policies"  # inside the learner's --out directory
POINTER_FILE = "latest.json"
PIN_FILE = "pin.json"


class PolicyDirError(ValueError):
    """The policies directory cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class ServedPolicy:
    """The policy the server hands out: version, packed bundle bytes and their digest."""

    version: int
    blob: bytes
    sha256: str  # of blob (the wire form), so a robot can check what it received
    weights_sha256: str  # of model.safetensors, as in policy.json
    pinned: bool

    def announcement(self) -> dict[str, Any]:
        """Header fields of POLICY_AVAILABLE / POLICY / WELCOME's `policy`."""
        return {"version": self.version, "sha256": self.sha256, "size": len(self.blob),
                "pinned": self.pinned}


# -- the layout ------------------------------------------------------------------------------------

def policies_dir(out_dir: Path) -> Path:
    """The policies folder of a learner run directory."""
    return Path(out_dir) / POLICIES_DIR


def bundle_path(policies: Path, version: int) -> Path:
    """Bundle v<version> in a policies folder."""
    return Path(policies) / f"v{version}"


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A small JSON object file, or None if absent; PolicyDirError if unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PolicyDirError(f"{path} is not valid JSON ({exc}); restore or delete it") from None
    if not isinstance(value, dict) or isinstance(value.get("version"), bool) \
            or not isinstance(value.get("version"), int):
        raise PolicyDirError(f"{path} must be a JSON object with an integer 'version'")
    return value


def read_pointer(out_dir: Path) -> Optional[dict[str, Any]]:
    """latest.json of a learner run (the learner's newest policy), or None before the first."""
    return read_json(policies_dir(out_dir) / POINTER_FILE)


# -- the learner's side: publish -------------------------------------------------------------------

def write_policy(out_dir: Path, model: Any, *, version: int, trained_on_attempts: int,
                 metrics: dict[str, Any]) -> tuple[Path, BundleMeta]:
    """Write bundle policies/v<version>/ of a learner run, then point latest.json at it.

    The pointer is replaced last, so whoever follows it (the server's PolicyWatch) always finds
    a complete bundle. `model` is any network fleet.policy.bundle can save.
    """
    directory = bundle_path(policies_dir(out_dir), version)
    meta = save_bundle(directory, model, version=version,
                       trained_on_attempts=trained_on_attempts, metrics=metrics)
    fsync_dir(directory.parent)
    atomic_write_json(directory.parent / POINTER_FILE, {
        "version": version, "path": directory.name, "sha256": meta.sha256,
        "created_at": meta.created_at, "trained_on_attempts": trained_on_attempts,
        "metrics": metrics})
    return directory, meta


# -- the operator's side: list, pin, unpin -------------------------------------------------------

def verify_bundle(policies: Path, version: int) -> BundleMeta:
    """Check bundle v<version>: files present, checksum right, policy.json's version matches."""
    directory = bundle_path(policies, version)
    try:
        meta_json = (directory / META_FILE).read_bytes()
        weights = (directory / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"bundle v{version} is incomplete: {exc.filename} is missing") from None
    meta = verify_bytes(meta_json, weights)
    if meta.version != version:
        raise BundleError(f"{directory}/{META_FILE} says version {meta.version}, the directory "
                          f"name says {version}")
    return meta


def list_versions(policies: Path) -> list[dict[str, Any]]:
    """Every bundle in the directory, oldest first, with whether it verifies."""
    rows = []
    for d in Path(policies).glob("v*"):
        if not d.is_dir() or not d.name[1:].isdigit():
            continue
        version = int(d.name[1:])
        try:
            meta = verify_bundle(policies, version)
            rows.append({"version": version, "ok": True, "created_at": meta.created_at,
                         "trained_on_attempts": meta.trained_on_attempts, "problem": ""})
        except BundleError as exc:
            rows.append({"version": version, "ok": False, "created_at": "",
                         "trained_on_attempts": 0, "problem": str(exc)})
    return sorted(rows, key=lambda r: r["version"])


def pin(policies: Path, version: int, reason: str = "") -> Path:
    """Pin the fleet to bundle v<version> (verified first, so a pin never points at junk)."""
    policies = Path(policies)
    if not policies.is_dir():
        raise PolicyDirError(f"{policies} is not a directory: pass the learner's <out>/policies")
    try:
        verify_bundle(policies, version)
    except BundleError as exc:
        raise PolicyDirError(f"cannot pin v{version}: {exc}. `fleet policy list` shows the "
                             f"bundles that verify") from None
    path = policies / PIN_FILE
    atomic_write_json(path, {"version": version, "reason": reason,
                             "pinned_at": _dt.datetime.now(_dt.timezone.utc)
                             .isoformat(timespec="seconds")})
    return path


def unpin(policies: Path) -> bool:
    """Remove the pin (True if there was one): the server goes back to the newest version."""
    path = Path(policies) / PIN_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


# -- the server's side: watch and serve ----------------------------------------------------------

def _signature(path: Path) -> Optional[tuple[int, int, int]]:
    """(inode, mtime ns, size): files are replaced by rename, so any rewrite changes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PolicyWatch:
    """Follows latest.json and pin.json; `served` is the verified policy to hand out (or None)."""

    def __init__(self, policies: Path, max_bytes: int):
        self.policies = Path(policies)
        self.max_bytes = max_bytes
        self.served: Optional[ServedPolicy] = None
        self.latest_version: Optional[int] = None
        self.pinned_version: Optional[int] = None
        self.problem = ""  # why the wanted version is not served, for the status reply
        self._seen: tuple = ("unread",)

    def status(self) -> dict[str, Any]:
        s = self.served
        return {"served_version": s.version if s else None, "pinned": bool(s and s.pinned),
                "pinned_version": self.pinned_version, "latest_version": self.latest_version,
                "sha256": s.sha256 if s else None, "problem": self.problem}

    def poll(self) -> bool:
        """Re-read the directory if latest.json or pin.json changed; True if `served` changed."""
        seen = (_signature(self.policies / POINTER_FILE), _signature(self.policies / PIN_FILE))
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            wanted, pinned = self._wanted()
        except PolicyDirError as exc:
            return self._refuse(str(exc))
        if wanted is None:
            return False
        if self.served is not None and (self.served.version, self.served.pinned) == (wanted,
                                                                                     pinned):
            self.problem = ""
            return False
        try:
            served = self._load(wanted, pinned)
        except BundleError as exc:
            return self._refuse(f"policy v{wanted} refused, not announced: {exc}")
        changed = self.served is None or self.served.version != served.version
        self.served, self.problem = served, ""
        log.info("serving policy v%d (%s, %d bytes packed)%s", served.version,
                 "pinned" if pinned else "newest", len(served.blob),
                 "" if changed else " (pin state changed only)")
        return True

    def _wanted(self) -> tuple[Optional[int], bool]:
        latest = read_json(self.policies / POINTER_FILE)
        pin_ = read_json(self.policies / PIN_FILE)
        self.latest_version = latest["version"] if latest else None
        self.pinned_version = pin_["version"] if pin_ else None
        if pin_ is not None:
            return pin_["version"], True
        if latest is None:
            return None, False
        return latest["version"], False

    def _load(self, version: int, pinned: bool) -> ServedPolicy:
        meta = verify_bundle(self.policies, version)
        if not pinned:
            pointer = read_json(self.policies / POINTER_FILE) or {}
            if pointer.get("sha256") not in (None, meta.sha256):
                raise BundleError(f"{POINTER_FILE} gives sha256 {str(pointer['sha256'])[:16]}... "
                                  f"but the bundle's weights have {meta.sha256[:16]}...")
        blob = pack_bundle(bundle_path(self.policies, version))  # verifies the checksum again
        if len(blob) > self.max_bytes:
            raise BundleError(f"packed bundle is {len(blob)} bytes, over the server's "
                              f"max_policy_bytes {self.max_bytes}")
        return ServedPolicy(version, blob, hashlib.sha256(blob).hexdigest(), meta.sha256, pinned)

    def _refuse(self, problem: str) -> bool:
        if problem != self.problem:
            log.error("%s; still serving %s", problem,
                      f"v{self.served.version}" if self.served else "no policy")
        self.problem = problem
        return False
