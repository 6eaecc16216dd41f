"""Data-parallel training (ganfast/train/distributed.py): N gloo processes train what one process
trains with the same seed and global batch.

The stated tolerance. Every rank draws the global batch's randomness from the same seed and keeps its
slice, so the only difference from one process is the order of floating-point reductions: DDP
averages the ranks' gradients, synchronised BatchNorm sums the ranks' statistics.

- Gradients: Adam's moments (exp_avg, exp_avg_sq: running means of the gradients and their squares)
  agree to MOMENT_RTOL of their largest entry (measured ~1e-6 after 20 D updates here).
- Logged losses (means over the global batch): LOSS_RTOL (measured up to 5e-5 over 4 steps).
- Parameters: Adam divides each gradient by its running RMS, so a coordinate whose gradient is ~0
  moves by up to ~lr per update whichever way the rounding goes: PARAM_ATOL is lr x updates.

A slicing or seeding error (each rank drawing its own z or eps, a rank seeing the wrong rows, a
gradient not averaged) moves the moments and losses by percents, far outside these.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ganfast.train.distributed import World, strip_nproc

LOSS_RTOL, LOSS_ATOL = 5e-4, 1e-6
MOMENT_RTOL = 1e-4
LOSS_KEYS = ("loss_d", "loss_g", "d_real", "d_fake", "penalty")


def _train(args, nproc: int = 1, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ganfast", "train", *args, "--no-progress", "--threads", "1"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _ok(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"


def _rows(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_rows_close(a: list, b: list) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in LOSS_KEYS:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=LOSS_RTOL, abs=LOSS_ATOL), (ra["step"], k, ra[k], rb[k])


def _assert_state_close(a: Path, b: Path, param_atol: float, parts=("G", "D", "G_ema")) -> None:
    ca = torch.load(a / "checkpoint.pt", weights_only=False)
    cb = torch.load(b / "checkpoint.pt", weights_only=False)
    assert ca["step"] == cb["step"]
    for opt in ("opt_d", "opt_g"):
        for k in ("exp_avg", "exp_avg_sq"):
            # the optimizer's largest moment sets the scale: a gradient that is a small difference of large
            # terms (the last layer's bias: D's real and fake terms nearly cancel) has rounding error of
            # the terms' size, not its own
            scale = max(state[k].abs().max().item() for state in ca[opt]["state"].values())
            for i, state in ca[opt]["state"].items():
                torch.testing.assert_close(cb[opt]["state"][i][k], state[k], rtol=0, atol=MOMENT_RTOL * scale,
                                           msg=f"{opt} parameter {i} {k}")
    for part in parts:
        assert ca[part].keys() == cb[part].keys()
        for name, t in ca[part].items():
            torch.testing.assert_close(cb[part][name], t, atol=param_atol, rtol=0, msg=f"{part}.{name}")


# ---- the pieces, in one process -----------------------------------------------------------------


def test_world_slices_the_global_batch():
    one = World()
    t = torch.arange(12.0)
    assert one.local(t) is t and not one.distributed and one.is_main
    parts = [World(rank=r, size=3).local(t) for r in range(3)]
    assert torch.equal(torch.cat(parts), t)
    assert World(rank=1, size=3).shard(12) == slice(4, 8)
    assert World(rank=1, size=3).local(None) is None
    with pytest.raises(ValueError, match="--batch-size 10 is the global batch and must split evenly over the 3"):
        World(rank=0, size=3).check_batch(10)


def test_strip_nproc():
    assert strip_nproc(["--data", "ring8", "--nproc", "2", "--steps", "3"]) == ["--data", "ring8", "--steps", "3"]
    assert strip_nproc(["--nproc=4", "--seed", "1"]) == ["--seed", "1"]


# ---- N processes = 1 process --------------------------------------------------------------------

# WGAN-GP with its image settings (lambda 10, betas (0, 0.9)), not the 2-D defaults (lambda 0.1, betas
# (0.5, 0.9)): with the weak penalty D's first gradients are ~50x smaller, and Adam turns the rounding of
# its near-zero coordinates into +-lr steps (PARAM_ATOL's cause) that 4 steps amplify to 2e-3 of the
# moments' scale; with lambda 10 the moments agree to 1e-6, so the check keeps its margin.
RING8 = ["--data", "ring8", "--objective", "wgan-gp", "--batch-size", "64", "--log-every", "1", "--eval-every", "4",
         "--eval-samples", "200", "--no-lr-decay", "--instance-noise", "0.1", "--noise-anneal", "100",
         "--gp-weight", "10", "--betas", "0", "0.9"]


def test_two_processes_equal_one_and_resume_on_one(tmp_path):
    """ring8, wgan-gp (5 D steps per G step; the gradient penalty's double backward through DDP;
    instance noise and eps drawn for the global batch): 2 processes for 2 steps, resumed on 1 process
    to 4, against 1 process for 4 steps; rank 0 alone writes."""
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(_train([*RING8, "--steps", "4", "--out", str(one)]))
    run = _train([*RING8, "--steps", "2", "--out", str(two)], nproc=2)
    _ok(run)
    assert run.stdout.count("ganfast train: wgan-gp on ring8: step 2") == 1  # rank 0's summary only
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples_per_second"] > 0
    assert torch.load(two / "checkpoint.pt", weights_only=False)["world_size"] == 2
    _assert_rows_close(_rows(one)[:2], _rows(two))
    # a different world size resumes the run: the global batch, and so every draw, is the same
    _ok(_train([*RING8, "--steps", "4", "--out", str(two), "--resume"]))
    _assert_rows_close(_rows(one), _rows(two))
    _assert_state_close(one, two, param_atol=1e-4 * 4 * 5)


def test_dcgan_with_synchronised_batchnorm(tmp_path):
    """digits, DCGAN: BatchNorm in G and D, so the batch statistics must be the global batch's
    (ganfast's fused BatchNorm synchronised). Without it (--no-sync-bn) the same run is measurably
    different: the check can fail."""
    args = ["--data", "digits", "--steps", "2", "--batch-size", "8", "--ngf", "8", "--ndf", "8", "--log-every", "1",
            "--eval-every", "2", "--eval-samples", "100"]
    one, two, unsynced = tmp_path / "one", tmp_path / "two", tmp_path / "unsynced"
    _ok(_train([*args, "--out", str(one)]))
    _ok(_train([*args, "--out", str(two)], nproc=2))
    _assert_rows_close(_rows(one), _rows(two))
    _assert_state_close(one, two, param_atol=2 * 2e-4)
    _ok(_train([*args, "--out", str(unsynced), "--no-sync-bn"], nproc=2))
    with pytest.raises(AssertionError):
        _assert_rows_close(_rows(one), _rows(unsynced))


def test_sagan_two_processes_equal_one(tmp_path):
    """SAGAN: the class-conditional step (real and fake through D in one pass, classes drawn for the
    global batch), spectral norm's power-iteration buffers (not broadcast: equal because every rank
    computes them from the same weights) and G's conditional BatchNorm synchronised. One step: after
    Adam's first, sign-like update the 2-process run's weights differ by up to lr in the coordinates
    whose gradient is ~0, and the second step's gradients inherit that (measured: moments within ~5e-3)."""
    args = ["--data", "digits", "--model", "sagan", "--ngf", "8", "--ndf", "8", "--steps", "1", "--batch-size", "8",
            "--log-every", "1", "--eval-every", "1", "--eval-samples", "100"]
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(_train([*args, "--out", str(one)]))
    _ok(_train([*args, "--out", str(two)], nproc=2))
    _assert_rows_close(_rows(one), _rows(two))
    _assert_state_close(one, two, param_atol=1e-3)
    # the power-iteration vectors were among the state compared
    assert any(name.endswith("._u") for name in torch.load(two / "checkpoint.pt", weights_only=False)["D"])


def test_cyclegan_two_processes_equal_one(tmp_path):
    """CycleGAN: four DDP models, each generator run three times before its backward, and the history
    pool of fakes (size 2 < the batch, so it swaps from the first step) fed the global batch on every
    rank."""
    args = ["--model", "cyclegan", "--data", "cycle:digits,digits-bold", "--steps", "3", "--batch-size", "4",
            "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--pool-size", "2", "--log-every", "1",
            "--eval-every", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(_train([*args, "--out", str(one)]))
    _ok(_train([*args, "--out", str(two)], nproc=2))
    _assert_rows_close(_rows(one), _rows(two))
    _assert_state_close(one, two, param_atol=3 * 2e-4, parts=("G_AB", "G_BA", "D_A", "D_B"))
    pools = [torch.load(d / "checkpoint.pt", weights_only=False)["pool_a"]["images"] for d in (one, two)]
    torch.testing.assert_close(torch.stack(pools[1]), torch.stack(pools[0]), atol=1e-3, rtol=0)


def test_batch_must_split_over_the_processes(tmp_path):
    run = _train([*RING8, "--steps", "2", "--batch-size", "63", "--out", str(tmp_path / "r")], nproc=2)
    assert run.returncode == 1
    assert "--batch-size 63 is the global batch and must split evenly over the 2 processes" in run.stderr
    assert "a process failed; the run stopped on every rank" in run.stderr


def test_a_failing_rank_ends_the_run(tmp_path):
    """Two processes started as torchrun starts them, rank 1 given data that does not exist: rank 1
    fails with its error and rank 0, waiting for it in a collective, fails too (its timeout is set),
    instead of hanging."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "ganfast", "train", "--steps", "2", "--no-progress", "--dist-timeout", "0.5",
            "--out", str(tmp_path / "r")]
    procs = [subprocess.Popen(base + ["--data", "ring8" if rank == 0 else f"npy:{tmp_path}/missing.npy"],
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    t0 = time.monotonic()
    results = [p.communicate(timeout=180) for p in procs]
    assert time.monotonic() - t0 < 120
    assert procs[1].returncode == 1 and "missing.npy" in results[1][1]
    assert procs[0].returncode != 0, results[0]
