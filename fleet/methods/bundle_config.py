"""What every network config dataclass of a method does to travel in a policy bundle: to a JSON
dict (tuples as lists) and back, strictly (an unknown key is a bundle from a newer build, which
must say so, not be half-read)."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="BundleConfig")


class BundleConfig:
    """Mixin for a frozen config dataclass saved verbatim in policy.json."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Strict: an unknown key is an error (a bundle from a newer build), not ignored."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}: this bundle was "
                             f"written by a newer fleet; update fleet on this side")
        return cls(**d)
