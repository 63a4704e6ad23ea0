"""`fleet learn` / `python -m fleet.learner`: one --flag per LearnerConfig field.

The flags are generated from the dataclass (fleet/learner/config.py), its field comments are
their help, so a new setting is one line there. torchrun runs the same entry:

    torchrun --standalone --nproc_per_node 2 -m fleet.learner --data STORE --out RUN ...
"""
from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

from fleet.learner.config import LearnerConfig
from fleet.registry import method_names

log = logging.getLogger("fleet.learner")


def _field_comments() -> dict[str, str]:
    """The comment beside each LearnerConfig field: the dataclass is the one place they live."""
    lines = inspect.getsource(LearnerConfig).splitlines()
    found = (re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line) for line in lines)
    return {m.group(1): m.group(2) for m in found if m}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per LearnerConfig field (--batch-size for batch_size, ...)."""
    hints = typing.get_type_hints(LearnerConfig)
    comments = _field_comments()
    for f in fields(LearnerConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        args = typing.get_args(typ)
        text = comments.get(f.name, "")
        if typing.get_origin(typ) is tuple:  # a fixed-length vector: --flag X Y Z
            parser.add_argument(flag, type=args[0], nargs=len(args), default=f.default,
                                metavar=tuple("XYZ"[:len(args)]) if len(args) <= 3 else None,
                                help=f"{text} (default {' '.join(map(str, f.default))})")
            continue
        base = next((a for a in args if a is not type(None)), typ) if args else typ
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=text)
        elif f.name in ("data", "out"):
            parser.add_argument(flag, type=Path, required=True, help=text)
        elif f.name == "method":
            parser.add_argument(flag, default=f.default, choices=method_names(),
                                help=f"{text} (default {f.default})")
        else:
            parser.add_argument(flag, type=base, default=f.default,
                                help=f"{text} (default {f.default})")


def config_from_args(args: argparse.Namespace) -> LearnerConfig:
    return LearnerConfig(**{f.name: getattr(args, f.name) for f in fields(LearnerConfig)})


DESCRIPTION = ("Train the grasp network on the episode store and publish policies (runs until "
               "--steps, or forever beside the fleet).")


def run_from_args(args: argparse.Namespace) -> int:
    """Train as the parsed flags say; the exit code (2: a user error, said on stderr)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.learner.checkpoint import CheckpointError  # torch: only to train
    from fleet.learner.loop import run

    try:
        summary = run(config_from_args(args))
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if summary["rank"] == 0:
        log.info("learner stopped at step %d (policy in service: v%d)", summary["step"],
                 summary["published_version"])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m fleet.learner ...` and torchrun's entry: the same flags as `fleet learn`."""
    parser = argparse.ArgumentParser(prog="fleet learn", description=DESCRIPTION)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_learn(sub: argparse._SubParsersAction) -> None:
    """`fleet learn`: the learner as a subcommand of the fleet CLI."""
    p = sub.add_parser("learn", help="train the grasp network on the store and publish "
                                     "policies", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
