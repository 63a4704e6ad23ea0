"""Grasp attempt records, and their one byte encoding.

An attempt is what a robot_node records from one grasp: every servo step's camera image (JPEG),
end-effector pose, commanded motion and gripper reading, then the label from the gripper's own
reading, and, in simulation only, the simulator's ground truth (kept apart from the label: it is
for evaluation, never for training).

The same encoding is used for the robot's local spool file and for the upload on the wire, so an
attempt is serialised exactly once: a msgpack header (everything but the images) followed by one
raw frame per JPEG, then, when the arm's camera gives depth, one frame per step's aligned depth
image (16-bit PNG of mm, fleet/wire/depth_image.py). Nothing here is ever unpickled.

Record versions: 1 has no depth; 2 adds the header key "depth" (true: the depth frames follow
the JPEGs). An attempt without depth is still written as version 1, so a data server of an
older build keeps accepting it; one with depth is refused there with "upgrade the older side".

Units: metres, radians, seconds; poses are (x, y, z, qx, qy, qz, qw) in the arm's base frame;
motions are (dx, dy, dz, dyaw) in the base frame; gripper readings are the finger opening in m.
"""
from __future__ import annotations

import itertools
import math
import operator
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import msgpack

#: The newest record version this build writes and reads (it reads every one of READ_VERSIONS).
RECORD_VERSION = 2
READ_VERSIONS = (1, 2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Outcomes. "aborted" means the attempt failed to run (a timeout, an e-stop): it is not a grasp
#: failure and must never be trained on as one.
OUTCOMES = ("success", "failure", "aborted")


class RecordError(ValueError):
    """An attempt (from a file or the network) is malformed; the message names the field."""


@dataclass
class Step:
    """One servo step: what the camera saw before the motion, and what was commanded."""

    image_jpeg: bytes
    ee_pose: tuple[float, ...]  # (x, y, z, qx, qy, qz, qw), m, base frame
    motion: tuple[float, ...]  # commanded (dx, dy, dz, dyaw), m and rad, base frame
    gripper: float  # finger opening, m
    stamp: float  # seconds (the robot's clock: sim time on a simulated arm)
    #: The image's aligned depth, 16-bit greyscale PNG of mm along the optical axis (0 = no
    #: return); None when the arm's camera gives no depth. All steps of an attempt have it, or
    #: none does.
    depth_png: Optional[bytes] = None


@dataclass
class Attempt:
    """One grasp attempt, labelled by the gripper's own reading."""

    robot_id: str
    policy_version: int  # 0 = no trained policy (exploration only)
    policy_kind: str  # "random", "scripted", "cem", ...
    steps: list[Step]
    outcome: str  # one of OUTCOMES
    final_pose: tuple[float, ...]  # ee pose when the gripper closed
    gripper_after_lift: float  # finger opening after closing and lifting, m
    started_at: float  # unix seconds
    ended_at: float  # unix seconds
    image_height: int = 64
    image_width: int = 64
    attempt_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ground_truth: Optional[dict[str, Any]] = None  # simulation only; evaluation only
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> Optional[bool]:
        """True/False for a grasp that ran; None for an aborted attempt."""
        if self.outcome == "aborted":
            return None
        return self.outcome == "success"

    def jpeg_bytes(self) -> int:
        return sum(len(s.image_jpeg) for s in self.steps)

    @property
    def has_depth(self) -> bool:
        """Whether the steps carry depth images (a record checks it is all of them or none)."""
        return bool(self.steps) and self.steps[0].depth_png is not None


_NUMBER_TYPES = frozenset({int, float})  # exact types: bool (an int subclass) is refused
_SEQ_TYPES = frozenset({list, tuple})
_FLOAT_ONLY = {float}


def _floats(value: Any, n: int, name: str) -> tuple[float, ...]:
    # Written for speed: the data server validates ~50 of these per uploaded attempt.
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise RecordError(f"{name} must be a list of {n} numbers, got {value!r:.80}")
    try:
        if all(type(v) in _NUMBER_TYPES for v in value):
            out = tuple(map(float, value))
            if all(map(math.isfinite, out)):
                return out
    except OverflowError:  # an int too large for a float
        pass
    raise RecordError(f"{name} must hold finite numbers, got {value!r:.80}")


def header_of(attempt: Attempt) -> dict[str, Any]:
    """The attempt without its images, as plain msgpack-able values."""
    depth = attempt.has_depth
    if any((s.depth_png is not None) != depth for s in attempt.steps):
        raise RecordError("either every step of an attempt has a depth image or none does")
    header = {
        # version 1 without depth: a server of the previous release still takes such robots
        "record_version": RECORD_VERSION if depth else 1,
        "attempt_id": attempt.attempt_id,
        "robot_id": attempt.robot_id,
        "policy_version": attempt.policy_version,
        "policy_kind": attempt.policy_kind,
        "outcome": attempt.outcome,
        "final_pose": list(attempt.final_pose),
        "gripper_after_lift": attempt.gripper_after_lift,
        "started_at": attempt.started_at,
        "ended_at": attempt.ended_at,
        "image_height": attempt.image_height,
        "image_width": attempt.image_width,
        "ground_truth": attempt.ground_truth,
        "extra": attempt.extra,
        "steps": [
            {"ee_pose": list(s.ee_pose), "motion": list(s.motion), "gripper": s.gripper,
             "stamp": s.stamp}
            for s in attempt.steps
        ],
    }
    if depth:
        header["depth"] = True
    return header


def encode(attempt: Attempt) -> list[bytes]:
    """Frames: [msgpack header, jpeg of step 0, jpeg of step 1, ..., then with depth: png of
    step 0, png of step 1, ...]."""
    header = msgpack.packb(header_of(attempt), use_bin_type=True)
    frames = [header] + [s.image_jpeg for s in attempt.steps]
    if attempt.has_depth:
        frames += [s.depth_png for s in attempt.steps]
    return frames


def decode(frames: list[bytes], max_steps: int = 1000) -> Attempt:
    """Inverse of encode(); validates every field and raises RecordError naming the bad one."""
    if not frames:
        raise RecordError("an attempt needs at least its header frame")
    try:
        h = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise RecordError(f"attempt header is not valid msgpack: {exc}") from None
    if not isinstance(h, dict):
        raise RecordError("attempt header must be a map")
    version = h.get("record_version")
    if type(version) is not int or version not in READ_VERSIONS:
        raise RecordError(
            f"record_version {version!r} is not supported (this build reads "
            f"{', '.join(map(str, READ_VERSIONS))}); upgrade the older side")
    if version < 2 and "depth" in h:
        raise RecordError("depth is a record_version 2 field: a version 1 header cannot carry "
                          "depth images (write record_version 2)")
    depth = h.get("depth", False)
    if type(depth) is not bool:
        raise RecordError("depth must be true or false")
    steps_h = h.get("steps")
    if not isinstance(steps_h, list):
        raise RecordError("steps must be a list")
    if len(steps_h) > max_steps:
        raise RecordError(f"{len(steps_h)} steps is over the limit of {max_steps}")
    per_step = 2 if depth else 1
    if len(frames) != 1 + per_step * len(steps_h):
        raise RecordError(
            f"header lists {len(steps_h)} steps{' with depth' if depth else ''}, which needs "
            f"{per_step * len(steps_h)} image frames, but {len(frames) - 1} came")
    for key, typ in (("attempt_id", str), ("robot_id", str), ("policy_kind", str),
                     ("outcome", str)):
        if not isinstance(h.get(key), typ) or not h[key] or len(h[key]) > 128:
            raise RecordError(f"{key} must be a non-empty string of at most 128 characters")
    if h["outcome"] not in OUTCOMES:
        raise RecordError(f"outcome must be one of {OUTCOMES}, got {h['outcome']!r}")
    for key in ("policy_version", "image_height", "image_width"):
        if isinstance(h.get(key), bool) or not isinstance(h.get(key), int) or h[key] < 0:
            raise RecordError(f"{key} must be a non-negative integer")
    if h["image_height"] > 4096 or h["image_width"] > 4096:
        raise RecordError("image size over 4096 pixels")
    (gripper_after_lift,) = _floats([h.get("gripper_after_lift")], 1, "gripper_after_lift")
    started_at, ended_at = _floats([h.get("started_at"), h.get("ended_at")], 2, "timestamps")
    gt = h.get("ground_truth")
    if gt is not None and not isinstance(gt, dict):
        raise RecordError("ground_truth must be a map or null")
    extra = h.get("extra", {})
    if not isinstance(extra, dict):
        raise RecordError("extra must be a map")
    n = len(steps_h)
    images, depths = frames[1:1 + n], (frames[1 + n:] if depth else None)
    steps = _steps_fast(steps_h, images, depths)
    if steps is None:  # something is wrong: the careful loop names it
        steps = _steps_checked(steps_h, images, depths)
    return Attempt(
        attempt_id=h["attempt_id"], robot_id=h["robot_id"],
        policy_version=h["policy_version"], policy_kind=h["policy_kind"], steps=steps,
        outcome=h["outcome"], final_pose=_floats(h.get("final_pose"), 7, "final_pose"),
        gripper_after_lift=gripper_after_lift, started_at=started_at, ended_at=ended_at,
        image_height=h["image_height"], image_width=h["image_width"], ground_truth=gt,
        extra=extra)


_STEP_FIELDS = operator.itemgetter("ee_pose", "motion", "gripper", "stamp")


def _steps_fast(steps_h: list, images: list[bytes],
                depths: Optional[list[bytes]]) -> Optional[list[Step]]:
    """The steps of a well-formed record with C-level bulk checks, or None if any check fails.

    Why: the data server decodes every upload, and checking ~110 numbers one _floats() call at
    a time was most of decode's cost. Exactly the same checks as _steps_checked (exact int or
    float types, finite values, 7 and 4 element poses and motions, an SOI per image).
    """
    try:
        if any(type(sh) is not dict for sh in steps_h):
            return None
        fields = list(map(_STEP_FIELDS, steps_h))
    except KeyError:
        return None
    poses = [f[0] for f in fields]
    motions = [f[1] for f in fields]
    if (any(type(p) not in _SEQ_TYPES or len(p) != 7 for p in poses)
            or any(type(m) not in _SEQ_TYPES or len(m) != 4 for m in motions)):
        return None
    numbers = list(itertools.chain(itertools.chain.from_iterable(poses),
                                   itertools.chain.from_iterable(motions),
                                   (f[2] for f in fields), (f[3] for f in fields)))
    types = set(map(type, numbers))
    if types == _FLOAT_ONLY:  # what msgpack gives for floats: no conversion needed
        floats = numbers
    elif types <= _NUMBER_TYPES:
        try:
            floats = list(map(float, numbers))
        except OverflowError:  # an int too large for a float
            return None
    else:
        return None
    if not all(map(math.isfinite, floats)):
        return None
    if any(jpeg[:2] != b"\xff\xd8" for jpeg in images):
        return None
    if depths is not None and any(png[:8] != PNG_SIGNATURE for png in depths):
        return None
    n = len(fields)
    it = iter(floats)
    pose_t = [tuple(itertools.islice(it, 7)) for _ in range(n)]
    motion_t = [tuple(itertools.islice(it, 4)) for _ in range(n)]
    grippers, stamps = floats[11 * n:12 * n], floats[12 * n:]
    pngs = [None] * n if depths is None else [bytes(d) for d in depths]
    return [Step(bytes(jpeg), p, m, g, t, d)
            for jpeg, p, m, g, t, d in zip(images, pose_t, motion_t, grippers, stamps, pngs)]


def _steps_checked(steps_h: list, images: list[bytes],
                   depths: Optional[list[bytes]]) -> list[Step]:
    """The steps, checked one field at a time; raises RecordError naming the first bad one."""
    steps = []
    pngs = [None] * len(images) if depths is None else depths
    for i, (sh, jpeg, png) in enumerate(zip(steps_h, images, pngs)):
        if not isinstance(sh, dict):
            raise RecordError(f"step {i} must be a map")
        if not jpeg[:2] == b"\xff\xd8":
            raise RecordError(f"step {i} image is not a JPEG (no SOI marker)")
        if png is not None and png[:8] != PNG_SIGNATURE:
            raise RecordError(f"step {i} depth image is not a PNG (no signature)")
        (gripper,) = _floats([sh.get("gripper")], 1, f"step {i} gripper")
        (stamp,) = _floats([sh.get("stamp")], 1, f"step {i} stamp")
        steps.append(Step(
            image_jpeg=bytes(jpeg),
            ee_pose=_floats(sh.get("ee_pose"), 7, f"step {i} ee_pose"),
            motion=_floats(sh.get("motion"), 4, f"step {i} motion"),
            gripper=gripper, stamp=stamp, depth_png=None if png is None else bytes(png)))
    return steps
