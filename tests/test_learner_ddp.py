"""Data-parallel learner: 2 CPU processes under torchrun (gloo) end with identical parameters."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fleet.policy.bundle import load_bundle
from fleet.learner.checkpoint import load_checkpoint
from test_learner import REPO, build_store, learner_argv, rank_file


@pytest.mark.slow
def test_two_rank_ddp_run_keeps_ranks_identical(tmp_path):
    store = build_store(tmp_path / "store", 120)
    out = tmp_path / "run"
    argv = learner_argv(store, out, "--steps", "8", "--cycle-every-steps", "4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", *argv[1:]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    r0, r1 = rank_file(out, 0), rank_file(out, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["step"] == r1["step"] == 8
    assert r0["parameters_sha256"] == r1["parameters_sha256"]
    # rank 0 alone validated, checkpointed and published
    assert "rank 1/2: training from step 0" in done.stderr
    assert "published policy v1" in done.stderr  # v2 too, unless it validated worse
    assert load_checkpoint(out)["world_size"] == 2 and load_checkpoint(out)["step"] == 8
    assert load_bundle(out / "policies" / "v1")[1].metrics["step"] == 4
    # and the training moved the parameters away from their (seeded) initial values
    init = subprocess.run(learner_argv(store, tmp_path / "init", "--steps", "0"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr[-2000:]
    assert rank_file(tmp_path / "init")["parameters_sha256"] != r0["parameters_sha256"]
