"""Data-parallel training under torchrun (2 CPU processes, gloo) against one process.

A launch costs a few seconds (torchrun, then two interpreters importing torch), so the default
suite launches once: the language model against one process training on the same global batch.
The classifier's launch, failures (a killed rank, a hung rank, a real launch with a batch the
ranks cannot share) and resuming with dropout are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classify_corpus import write_per_class
from conftest import progress_lines, report_points, resumed_at, write_ptb_layout
from lstmkit.classify.runs import load_classifier
from lstmkit.cli import main
from lstmkit.distributed import TIMEOUT_ENV
from lstmkit.lm.runs import load_lm

# fp32: the test compares two processes with one to 1e-5, below bf16's rounding.
LM = ["--preset", "test", "--hidden-size", "16", "--batch-size", "4", "--num-steps", "5",
      "--precision", "fp32"]
CLASSIFIER = ["--layer-sizes", "16,8", "--embed-size", "16", "--batch-size", "16",
              "--epochs", "2", "--learning-rate", "0.01", "--embed-dropout", "0",
              "--dropout", "0"]
FAULT_WORKER = Path(__file__).with_name("rank_fault_worker.py")
OVERFLOW_WORKER = Path(__file__).with_name("rank_overflow_worker.py")
WINDOWS = 11  # per epoch: (233 tokens // 4 rows - 1) // 5 steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchrun(*args, script: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`torchrun --standalone --nproc_per_node 2 -m lstmkit ARGS` (or a script); its seconds."""
    target = ["-m", "lstmkit"] if script is None else [str(script)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *target, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", TIMEOUT_ENV: "30", **(env or {})}
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    return done, time.monotonic() - start


def tiny_ptb(tmp_path: Path) -> Path:
    return write_ptb_layout(tmp_path / "ptb", sentences=(40, 10, 10))  # 233 training tokens


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def epochs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"event": "epoch"' in line]


def test_two_processes_train_the_parameters_of_one_with_the_same_global_batch(tmp_path, capsys):
    ptb = tiny_ptb(tmp_path)
    common = [*LM, "--max-max-epoch", "2", "--checkpoint-every", "4", "--data-dir", ptb]
    done, _ = torchrun("train", *common, "--save-path", tmp_path / "ddp")
    assert done.returncode == 0, done.stderr
    assert main(["train", *map(str, common), "--save-path", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    ddp, one = load_lm(tmp_path / "ddp"), load_lm(tmp_path / "one")  # loads single-process
    assert max_abs_diff(ddp.model, one.model) <= 1e-5
    assert set(ddp.tensors) - set(one.tensors) == {"rng.rank.0.torch", "rng.rank.1.torch"}
    assert done.stdout.count("Epoch: 1 Learning rate") == 1, "rank 0 alone talks"
    assert "data-parallel: 2 processes, each training on 2 of the 4 rows" in done.stdout
    # Reported numbers are the whole batch's, logged once: the single process's, to rounding.
    for a, b in zip(epochs_of(tmp_path / "ddp"), epochs_of(tmp_path / "one"), strict=True):
        for key in ("train_perplexity", "valid_perplexity"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


@pytest.mark.slow
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """fp16's loss scaling: gradients that overflowed on rank 1 alone reach rank 0 through the
    all-reduce, so both skip the step and halve the scale; rank 0's weights are then one
    process's with the same window skipped."""
    ptb = tiny_ptb(tmp_path)
    common = [*LM, "--max-max-epoch", "2", "--data-dir", ptb]
    done, _ = torchrun("train", *common, "--save-path", tmp_path / "ddp",
                       script=OVERFLOW_WORKER, env={"OVERFLOW_RANK": "1", "OVERFLOW_AT": "3"})
    assert done.returncode == 0, done.stderr
    one = subprocess.run([sys.executable, str(OVERFLOW_WORKER), "train", *map(str, common),
                          "--save-path", str(tmp_path / "one")], capture_output=True, text=True,
                         env={**os.environ, "OVERFLOW_AT": "3"}, timeout=120)
    assert one.returncode == 0, one.stderr
    ddp, alone = load_lm(tmp_path / "ddp"), load_lm(tmp_path / "one")
    assert ddp.progress.loss_scale == alone.progress.loss_scale == 2.0 ** 15
    assert max_abs_diff(ddp.model, alone.model) <= 1e-5
    overflows = [line for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
                 if '"event": "overflow"' in line]
    assert len(overflows) == 1 and '"step": 3' in overflows[0]


@pytest.mark.slow
def test_two_processes_train_the_classifier_of_one(tmp_path, capsys):
    data = write_per_class(tmp_path / "mr", count=100)
    args = ["classify", "train", "--data", data, *CLASSIFIER]
    done, _ = torchrun(*args, "--save-path", tmp_path / "ddp")
    assert done.returncode == 0, done.stderr
    assert main([*map(str, args), "--save-path", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    ddp, one = load_classifier(tmp_path / "ddp"), load_classifier(tmp_path / "one")
    # Adam divides by the root of the squared gradients, which magnifies rounding in the tiny
    # ones a little: 3e-5 after 20 steps (plain SGD gives the language model 1e-7).
    assert max_abs_diff(ddp.model, one.model) <= 1e-4
    assert ddp.meta["epoch"] == one.meta["epoch"]
    assert done.stdout.count("Test Accuracy:") == 1
    for a, b in zip(epochs_of(tmp_path / "ddp"), epochs_of(tmp_path / "one"), strict=True):
        assert a["valid_accuracy"] == b["valid_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@pytest.mark.parametrize("command", ["train", "classify"])
def test_a_batch_the_ranks_cannot_share_is_a_one_line_error_before_any_rank_waits(
        tmp_path, capsys, monkeypatch, command):
    """As rank 1 of 2 sees it: it stops before joining the others, so no rank can hang."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    if command == "train":
        args = ["train", *LM, "--batch-size", "5", "--data-dir", str(tiny_ptb(tmp_path))]
    else:
        args = ["classify", "train", "--data", str(write_per_class(tmp_path / "mr")),
                *CLASSIFIER, "--batch-size", "15"]
    assert main(args) == 2
    err = capsys.readouterr().err
    size = args[args.index("--batch-size", args.index("--batch-size") + 1) + 1]
    assert err == (f"lstmkit: error: (rank 1/2) batch_size {size} cannot be split evenly over "
                   f"2 processes; use a multiple of 2 (each process takes batch_size / 2 rows "
                   f"of every batch)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_real_launch_with_a_batch_the_ranks_cannot_share_exits_at_once(tmp_path):
    done, seconds = torchrun("train", *LM, "--batch-size", "5", "--data-dir", tiny_ptb(tmp_path))
    assert done.returncode != 0 and seconds < 60
    assert "lstmkit: error: (rank 0/2) batch_size 5 cannot be split evenly" in done.stderr


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_fast_and_resume_finishes_it(tmp_path, capsys):
    ptb = tiny_ptb(tmp_path)
    common = [*LM, "--max-max-epoch", "2", "--checkpoint-every", "3", "--data-dir", ptb]
    run = tmp_path / "ddp"
    kill = {"FAULT": "kill", "FAULT_RANK": "1", "FAULT_AT_STEP": str(WINDOWS + 8)}
    done, seconds = torchrun("train", *common, "--save-path", run, script=FAULT_WORKER, env=kill)
    assert done.returncode != 0 and seconds < 60, done.stderr
    assert "SIGKILL" in done.stderr, "torchrun names the rank that died, and how"
    progress = load_lm(run).progress
    assert (progress.epoch, progress.step) == (2, 6), "the last checkpoint, mid-epoch"
    shutil.copytree(run, tmp_path / "alone")

    done, _ = torchrun("train", "--resume", "--save-path", run, "--data-dir", ptb)
    assert done.returncode == 0, done.stderr
    assert resumed_at(done.stdout) == (2, 6)
    assert progress_lines(done.stdout) == report_points(6, WINDOWS, 1), "only windows 7 to 11"
    # The checkpoint holds every row's carried state: one process can resume it as well.
    resume_alone = ["train", "--resume", "--save-path", str(tmp_path / "alone"),
                    "--data-dir", str(ptb)]
    capsys.readouterr()
    assert main(resume_alone) == 0
    assert resumed_at(capsys.readouterr().out) == (2, 6)
    assert main(["train", *map(str, common), "--save-path", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    uninterrupted = load_lm(tmp_path / "one").model
    assert max_abs_diff(load_lm(run).model, uninterrupted) <= 1e-5
    assert max_abs_diff(load_lm(tmp_path / "alone").model, uninterrupted) <= 1e-5
    assert len(epochs_of(run)) == 2


@pytest.mark.slow
def test_resume_with_dropout_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Each rank's RNG state is in the checkpoint, so the dropout masks after resuming are the
    ones the uninterrupted run drew."""
    ptb = tiny_ptb(tmp_path)
    common = [*LM, "--max-max-epoch", "2", "--checkpoint-every", "3", "--keep-prob", "0.7",
              "--data-dir", ptb]
    done, _ = torchrun("train", *common, "--save-path", tmp_path / "straight")
    assert done.returncode == 0, done.stderr
    kill = {"FAULT": "kill", "FAULT_RANK": "1", "FAULT_AT_STEP": str(WINDOWS + 8)}
    done, _ = torchrun("train", *common, "--save-path", tmp_path / "resumed",
                       script=FAULT_WORKER, env=kill)
    assert done.returncode != 0
    done, _ = torchrun("train", "--resume", "--save-path", tmp_path / "resumed", "--data-dir",
                       ptb)
    assert done.returncode == 0, done.stderr
    assert resumed_at(done.stdout) == (2, 6)
    a = load_lm(tmp_path / "straight").model.state_dict()
    b = load_lm(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_hung_rank_fails_the_job_after_the_timeout_not_never(tmp_path):
    hang = {"FAULT": "hang", "FAULT_RANK": "1", "FAULT_AT_STEP": "3", TIMEOUT_ENV: "5"}
    done, seconds = torchrun("train", *LM, "--max-max-epoch", "2", "--data-dir",
                             tiny_ptb(tmp_path), script=FAULT_WORKER, env=hang)
    assert done.returncode != 0 and seconds < 60, done.stderr
    assert "lstmkit: error: (rank 0/2) lost contact with the other processes" in done.stderr
