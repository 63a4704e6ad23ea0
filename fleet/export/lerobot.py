"""`fleet export --format lerobot`: runs fleet/export/lerobot_writer.py in LeRobot's own venv.

lerobot 0.4.4 pins torch<2.11 and torchvision<0.26; fleet pins torch==2.13.0, so LeRobot cannot
be installed beside fleet and is not a pip extra. scripts/lerobot-venv.sh builds .venv-lerobot
from scripts/lerobot-requirements.txt; this module finds that interpreter (--lerobot-python,
else $FLEET_LEROBOT_PYTHON, else <checkout>/.venv-lerobot/bin/python), hands the writer the
selection as a JSON job file and this checkout on PYTHONPATH, and reads back its result.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pyarrow as pa

CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = CHECKOUT / ".venv-lerobot" / "bin" / "python"


def lerobot_python(given: Optional[Path]) -> Path:
    """The interpreter that has lerobot, or an error that says how to make one."""
    path = given or Path(os.environ.get("FLEET_LEROBOT_PYTHON") or DEFAULT_PYTHON)
    if not path.is_file():
        raise FileNotFoundError(
            f"--format lerobot needs LeRobot's own venv, and {path} does not exist: run "
            f"scripts/lerobot-venv.sh once (lerobot 0.4.4 pins torch<2.11, so it cannot share "
            f"fleet's venv; about 4 GB to download), or pass --lerobot-python")
    return path


def image_shape(selected: pa.Table) -> tuple[int, int]:
    """The one image size of the selection (a LeRobot feature has one shape)."""
    sizes = sorted(set(zip(selected["image_height"].to_pylist(),
                           selected["image_width"].to_pylist())))
    if len(sizes) != 1:
        raise ValueError(f"the selected attempts have images of {len(sizes)} sizes "
                         f"({', '.join(f'{h}x{w}' for h, w in sizes)}); a LeRobot dataset has "
                         f"one: narrow the selection with --robot or --since/--until")
    return sizes[0]


def frames_per_second(selected: pa.Table) -> int:
    """The median step rate of the selection, rounded; LeRobot stores timestamps as
    frame_index / fps (the true stamps go into fleet.stamp)."""
    rates = [n / (e - s) for n, s, e in zip(selected["num_steps"].to_pylist(),
                                            selected["started_at"].to_pylist(),
                                            selected["ended_at"].to_pylist())
             if n and e > s]
    return max(1, round(statistics.median(rates))) if rates else 10


def check(selected: pa.Table, python: Optional[Path]) -> None:
    """Refuse before anything is written: no LeRobot venv, or images of several sizes."""
    lerobot_python(python)
    image_shape(selected)


def export_lerobot(root: Path, selected: pa.Table, out: Path, python: Optional[Path],
                   repo_id: Optional[str]) -> dict:
    """Write the selection as a LeRobotDataset in `out`; returns {"frames", "files"}."""
    exe = lerobot_python(python)
    height, width = image_shape(selected)
    job = {"store": str(Path(root).resolve()), "out": str(Path(out).resolve()),
           "repo_id": repo_id or f"fleet/{Path(out).resolve().name}",
           "fps": frames_per_second(selected), "height": height, "width": width,
           "depth": any(selected["depth"].to_pylist()),
           "attempt_ids": selected["attempt_id"].to_pylist(),
           "shard_files": selected["shard_file"].to_pylist()}
    Path(out).rmdir()  # empty (cli._prepare_out): LeRobotDataset.create makes its root itself
    with tempfile.TemporaryDirectory(prefix="fleet-export-") as tmp:
        job["result"] = str(Path(tmp) / "result.json")
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(CHECKOUT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                               if p]))
        run = subprocess.run([str(exe), "-m", "fleet.export.lerobot_writer", str(job_file)],
                             env=env, stdout=sys.stderr)  # its progress bar and errors show
        if run.returncode != 0:
            raise OSError(f"the LeRobot writer ({exe} -m fleet.export.lerobot_writer) "
                               f"failed with exit {run.returncode}: its error is printed above")
        return json.loads(Path(job["result"]).read_text())
