"""kill -9 of a process appending to the store, at random moments, round after round: every
attempt it acknowledged is stored exactly once, and readers never see a half-written shard."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fleet.store.writer import Store, StoreConfig
from fleet.store.reader import StoreReader

# The writer: small shards and a fast roller so kills land in appends, rolls and recovery alike.
# It prints "ack <id>" for every attempt of a batch only after append() returned (when the
# server would ack), re-sending some attempts to exercise deduplication.
WRITER = r"""
import sys
sys.path.insert(0, sys.argv[3])
import numpy as np
from pathlib import Path
from test_store import make_attempt, batch_of
from fleet.store.writer import Store, StoreConfig
root, seed = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(seed)
print("opening", flush=True)
store = Store(StoreConfig(root, shard_max_attempts=12, shard_max_seconds=0.15,
                          min_free_bytes=2**20, roll_interval=0.02, steps_row_group=4))
recent = []
while True:
    batch = [make_attempt(rng, f"arm-{seed % 3}", n_steps=int(rng.integers(0, 4)))
             for _ in range(int(rng.integers(1, 6)))]
    if recent and rng.random() < 0.3:
        batch.append(recent[int(rng.integers(len(recent)))])
    result = store.append(batch_of(batch))
    sys.stdout.write("".join(f"ack {i}\n" for i in result.new + result.duplicates))
    sys.stdout.flush()
    recent = (recent + batch)[-20:]
"""


def acked_ids(log: Path) -> list[str]:
    text = log.read_text()
    lines = text.split("\n")[:-1]  # a line cut by the kill is not an ack
    return [line.split()[1] for line in lines if line.startswith("ack ")]


def wait_for(log: Path, marker: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.read_text():
        assert proc.poll() is None, f"writer died: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"writer printed no {marker!r} in {timeout} s"
        time.sleep(0.01)


def check_visible_shards(root: Path) -> int:
    """Every file a reader can see parses completely and no attempt is visible twice."""
    for sub in ("attempts", "steps"):
        for path in (root / sub).glob("part-*.parquet"):
            pq.read_table(path)  # raises on a torn file
    if not (root / "attempts").exists():
        return 0
    reader = StoreReader(root)
    ids = reader.attempts().column("attempt_id").to_pylist()
    assert len(ids) == len(set(ids)), "an attempt is visible twice"
    return len(ids)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_acked_attempt(tmp_path):
    root = tmp_path / "store"
    tests_dir = str(Path(__file__).parent)
    rng = np.random.default_rng(int(time.time()))
    acked: set[str] = set()
    for round_no in range(6):
        log = tmp_path / f"writer-{round_no}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(round_no),
                                     tests_dir], stdout=out, stderr=subprocess.PIPE)
            # every third round dies while the store opens (recovery, its roll), the others
            # at a random moment of the append/roll loop
            marker = "opening" if round_no % 3 == 2 else "ack "
            wait_for(log, marker, proc)
            time.sleep(float(rng.uniform(0, 0.05 if marker == "opening" else 1.5)))
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        acked.update(acked_ids(log))
        visible = check_visible_shards(root) if root.exists() else 0
        print(f"round {round_no}: {len(acked)} acked so far, {visible} visible in shards")
    assert len(acked) > 20, "the writer acked too little to test anything"
    with Store(StoreConfig(root, min_free_bytes=2**20)) as store:
        missing = [i for i in acked if not store.contains(i)]
        assert not missing, f"{len(missing)} acked attempts lost, e.g. {missing[:3]}"
    reader = StoreReader(root)  # close() rolled everything: all of it is in shards now
    index = reader.attempts()
    counts = collections.Counter(index.column("attempt_id").to_pylist())
    assert acked <= set(counts) and max(counts.values()) == 1
    steps = pq.read_table(root / "steps", columns=["attempt_id"])
    per_attempt = collections.Counter(steps.column("attempt_id").to_pylist())
    for aid, n in zip(index.column("attempt_id").to_pylist(),
                      index.column("num_steps").to_pylist()):
        assert per_attempt.get(aid, 0) == n
    for aid in list(acked)[:20]:
        assert reader.read_attempt(aid).attempt_id == aid
