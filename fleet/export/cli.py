"""`fleet export --store DIR --format mcap|lerobot --out DIR [filters]` (docs/store.md,
"Exporting"). The store is only read; the output directory must be new or empty (or hold an
earlier export and --overwrite is given)."""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from fleet.export.select import SPLITS, Filters, parse_time
from fleet.policy.geometry import DEFAULT_FOV_DEG

MANIFEST = "fleet_export.json"
FORMATS = ("mcap", "lerobot")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export stored attempts as ROS 2 MCAP (one file per "
                                      "robot) or a LeRobot dataset")
    p.add_argument("--store", "--data", dest="store", type=Path, required=True,
                   help="store directory (the data server's --data); only read")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out (a directory holding "
                        f"{MANIFEST}); anything else is never deleted")
    p.add_argument("--robot", action="append", default=[], help="robot id (repeatable)")
    p.add_argument("--policy-version", action="append", type=int, default=[],
                   help="policy version (repeatable)")
    p.add_argument("--since", type=parse_time, default=None,
                   help="stored at or after (unix s or ISO 8601, UTC if no zone)")
    p.add_argument("--until", type=parse_time, default=None, help="stored before (as --since)")
    p.add_argument("--outcome", choices=("success", "failure", "aborted"), default=None)
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="test: ground-truth objects from random_urdfs folders ending in 0; "
                        "train: the others and attempts without ground truth")
    p.add_argument("--camera-fov-deg", type=float, default=DEFAULT_FOV_DEG,
                   help="vertical field of view for the MCAP camera_info (the store does not "
                        "record intrinsics; default: fleet's camera model, as config/arms.yaml's "
                        "camera_fov_deg)")
    p.add_argument("--repo-id", default=None,
                   help="LeRobot repo id written into the dataset (default fleet/<out name>)")
    p.add_argument("--lerobot-python", type=Path, default=None,
                   help="python of LeRobot's own venv (default $FLEET_LEROBOT_PYTHON, else "
                        ".venv-lerobot/bin/python: scripts/lerobot-venv.sh makes it)")
    p.set_defaults(func=run_export)


def _prepare_out(out: Path, store: Path, overwrite: bool) -> None:
    out, store = out.resolve(), store.resolve()
    if out == store or store in out.parents or out in store.parents:
        raise ValueError(f"--out {out} must lie outside the store {store} (and not contain it)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty (an earlier export?): choose a "
                                  f"new directory, or pass --overwrite to replace an export")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"--out {out} is not empty and holds no {MANIFEST}: it is "
                                  f"not an export, so --overwrite leaves it alone")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fleet.export.select import read_store_index, select

    t0 = time.perf_counter()
    filters = Filters(robots=args.robot, policy_versions=args.policy_version,
                      since=args.since, until=args.until, outcome=args.outcome,
                      split=args.split)
    index = read_store_index(args.store)
    selected = select(index, filters)
    if selected.num_rows == 0:
        raise ValueError(f"no attempts match the filters (the store holds {index.num_rows})")
    if args.format == "lerobot":
        from fleet.export.lerobot import check

        check(selected, args.lerobot_python)
    _prepare_out(args.out, args.store, args.overwrite)
    bar = tqdm(total=selected.num_rows, unit="attempt", desc=f"export {args.format}",
               disable=None if args.format == "mcap" else True)  # lerobot: the writer's bar
    try:
        if args.format == "mcap":
            from fleet.export.mcap_writer import export_mcap

            result = export_mcap(args.store, selected, args.out, bar.update,
                                 args.camera_fov_deg)
        else:
            from fleet.export.lerobot import export_lerobot

            result = export_lerobot(args.store, selected, args.out, args.lerobot_python,
                                    args.repo_id)
    except BaseException:
        shutil.rmtree(args.out, ignore_errors=True)  # new or emptied above: only ours is lost
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    ids = result.get("attempt_ids", selected["attempt_id"].to_pylist())
    left_out = result.get("left_out", [])
    manifest = {"format": args.format, "store": str(args.store.resolve()),
                "attempts": len(ids), "frames": result["frames"], "filters": vars(filters),
                "attempt_ids": ids, "left_out": left_out, "files": result["files"]}
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    note = (f", {len(left_out)} one-step attempt(s) left out (LeRobot cannot hold a one-frame "
            f"episode with depth; ids in {MANIFEST})") if left_out else ""
    print(f"fleet export: {len(ids)} attempts, {result['frames']} frames, "
          f"{nbytes} bytes in {seconds:.2f} s -> {args.out} ({args.format}: "
          f"{len(result['files'])} file(s)){note}")
    return 0
