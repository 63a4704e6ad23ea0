"""What `fleet eval` counts with: the robots' spool files read back, the benchmark's object
split, and Wilson intervals.

Attempts are counted from what each robot_node spooled (fleet's attempt file format), so the
number is exactly what the robots recorded; the interval is Wilson's because evals are small
(50-150 attempts) and rates sit near 0 or 1.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

from fleet.wire.attempt_file import AttemptFileError, unpack_frames
from fleet.wire.records import Attempt, RecordError, decode

log = logging.getLogger("fleet.eval")

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


# ------------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: unlike the normal approximation it stays
    inside [0, 1] and is honest at 0 or n successes and at the small n an eval often has."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding noise
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def is_test_object(name: str) -> bool:
    """The benchmark split (Quillen et al. 2018): test objects' folder number ends in 0."""
    return name.rsplit("/", 1)[-1].endswith("0")


# ------------------------------------------------------------------------------- spool files

def read_spool_file(path: Path) -> list[bytes]:
    """The frames of one robot_node spool file (fleet/wire/attempt_file.py's format)."""
    try:
        return unpack_frames(path.read_bytes(), str(path))
    except AttemptFileError as exc:
        raise RecordError(str(exc)) from None


class SpoolScanner:
    """Decodes each new spool file under a directory once; keeps attempts in time order.

    Spool names start with the write time in ns, so sorting by name across arms is the order
    attempts finished in."""

    def __init__(self, root: Path):
        self.root = root
        self._seen: dict[str, Optional[Attempt]] = {}

    def scan(self) -> list[Attempt]:
        for path in self.root.glob("*/*.attempt"):
            key = f"{path.name}/{path.parent.name}"
            if key in self._seen:
                continue
            try:
                self._seen[key] = decode(read_spool_file(path))
            except (OSError, RecordError) as exc:
                log.warning("skipping unreadable spool file %s: %s", path, exc)
                self._seen[key] = None
        return [a for _, a in sorted(self._seen.items()) if a is not None]
