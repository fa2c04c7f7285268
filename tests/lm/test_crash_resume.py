"""Kill training anywhere, resume, and end bit for bit where an uninterrupted run ends.

Real `python -m lstmkit train` processes on one thread are SIGKILLed at seeded random points
(and, through the LSTMKIT_TEST_KILL_IN_SAVE hook of checkpoint.py, inside a checkpoint write:
after the temporary file is synced, before the rename), then resumed with `--resume` until the
run finishes. Metrics (all but the timing field), weights, optimizer state and RNG state must
equal those of one uninterrupted run with the same seed. Every resumed process must say it
resumed at its checkpoint's position, and the last one must train only the windows left.
SIGTERM, a hang-up (SIGHUP, the terminal gone) and a single Ctrl-C instead stop a run after its
window with a checkpoint there (lstmkit.stopping), which resumes to the same end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import progress_lines, report_points, resumed_at, tree_files, write_ptb_layout
from lstmkit.checkpoint import KILL_IN_SAVE_ENV
from lstmkit.lm.batching import epoch_size
from lstmkit.lm.data import load_ptb
from lstmkit.lm.runs import load_lm

BATCH, STEPS, EVERY = 4, 5, 5  # 87 windows an epoch, a checkpoint every 5
EPOCH_END_CHECKPOINTS = ["--preset", "test", "--hidden-size", "16", "--batch-size", str(BATCH),
                         "--num-steps", str(STEPS), "--keep-prob", "0.7"]  # dropout: RNG
FLAGS = [*EPOCH_END_CHECKPOINTS, "--checkpoint-every", str(EVERY)]
RUN_FILES = {"model.safetensors", "best.safetensors", "metrics.jsonl", "curve.png"}
TIMEOUT = 120


@dataclass(frozen=True)
class Kill:
    """Where a process dies: `after_lines` console lines in, after a random pause (0 lines:
    a pause from the start, so while importing or loading), or in its `in_save`-th write."""
    after_lines: int = 0
    in_save: int = 0


def start(ptb: Path, run: Path, log: Path, kill_in_save: int = 0, epochs: int = 2,
          flags: list[str] = FLAGS, terminal: int | None = None) -> subprocess.Popen:
    """A fresh run or, where a checkpoint is, a resume; its output goes to `log`, or to the
    `terminal` descriptor where given."""
    resume = (["--resume"] if (run / "model.safetensors").exists()
              else [*flags, "--max-max-epoch", str(epochs)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "CI": "1"}
    env.pop(KILL_IN_SAVE_ENV, None)
    if kill_in_save:
        env[KILL_IN_SAVE_ENV] = str(kill_in_save)
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "lstmkit", "train", "--data-dir",
                                 str(ptb), "--save-path", str(run), *resume],
                                stdout=out if terminal is None else terminal,
                                stderr=subprocess.STDOUT, env=env)


def kill_at(proc: subprocess.Popen, log: Path, kill: Kill, rng: random.Random) -> int:
    if kill.after_lines:
        while log.read_bytes().count(b"\n") < kill.after_lines and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))
    else:  # while importing or loading: before the first line (a fast CPU is past it soon)
        deadline = time.monotonic() + rng.uniform(0.2, 2.5)
        while time.monotonic() < deadline and not log.read_bytes() and proc.poll() is None:
            time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(TIMEOUT)


def run_and_kill(ptb: Path, run: Path, kill: Kill, rng: random.Random, epochs: int = 2
                 ) -> None:
    """One process that dies as `kill` says (a fresh start, or a resume once a checkpoint is)."""
    log = next_log(run)
    position = saved_position(run)
    proc = start(ptb, run, log, kill.in_save, epochs)
    code = proc.wait(TIMEOUT) if kill.in_save else kill_at(proc, log, kill, rng)
    assert code == -signal.SIGKILL, f"{kill}: exited {code}, not killed:\n{log.read_text()}"
    output = log.read_text()
    if position is not None and "Resuming" in output:  # it may have died before saying so
        assert resumed_at(output) == position, output


def finish(ptb: Path, run: Path, windows: int) -> None:
    """Resume the run to its end: from its checkpoint's position, training only what is left."""
    log = next_log(run)
    position = saved_position(run)
    assert position is not None, "nothing to resume"
    assert start(ptb, run, log).wait(TIMEOUT) == 0, log.read_text()
    output = log.read_text()
    assert resumed_at(output) == position, output
    epoch, step = position
    epochs_left = load_lm(run).config.max_max_epoch - epoch + 1
    assert progress_lines(output) == report_points(step, windows, epochs_left), output


def stop_by(signum: int, ptb: Path, run: Path, after_lines: int) -> tuple[int, int]:
    """Start or resume a run that checkpoints at epoch ends only, and send `signum` once it
    has printed `after_lines` lines: it must end its window, checkpoint that position, say
    where in one line and exit as that signal's status. Returns the position."""
    log = next_log(run)
    before = saved_position(run)
    proc = start(ptb, run, log, flags=EPOCH_END_CHECKPOINTS)
    while log.read_bytes().count(b"\n") < after_lines and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signum)
    code = proc.wait(TIMEOUT)
    output = log.read_text()
    name = signal.Signals(signum).name
    assert code == 128 + signum, f"exited {code}:\n{output}"
    assert f"lstmkit: {name}: stopping with a checkpoint once the window" in output, output
    said = re.findall(rf"lstmkit: stopped by {name} at epoch (\d+), step (\d+), with a "
                      r"checkpoint there", output)
    assert len(said) == 1 and "Traceback" not in output, output
    position = int(said[0][0]), int(said[0][1])
    assert checkpointed_past(run, before) == position, output
    return position


def hang_up(ptb: Path, run: Path, after_lines: int) -> tuple[int, int]:
    """Resume the run on a terminal (a pseudo-terminal) and hang it up once `after_lines`
    lines have come: SIGHUP, and the terminal's other end closed, so that writing to it fails
    from then on (EIO). The run must still end its window, checkpoint that position and exit
    as SIGHUP's status. Returns the position."""
    before = saved_position(run)
    assert before is not None, "nothing to resume"
    controller, terminal = pty.openpty()
    proc = start(ptb, run, next_log(run), flags=EPOCH_END_CHECKPOINTS, terminal=terminal)
    os.close(terminal)
    seen = b""
    with contextlib.suppress(OSError):  # EIO: the run closed its end
        while seen.count(b"\n") < after_lines and (chunk := os.read(controller, 4096)):
            seen += chunk
    proc.send_signal(signal.SIGHUP)
    os.close(controller)
    code = proc.wait(TIMEOUT)
    assert code == 128 + signal.SIGHUP, f"exited {code}:\n{seen.decode()}"
    return checkpointed_past(run, before)


def checkpointed_past(run: Path, before: tuple[int, int] | None) -> tuple[int, int]:
    """The position of the run's checkpoint, which must lie past `before` (if any), with no
    write left half done."""
    position = saved_position(run)
    assert position is not None and (before is None or position > before), \
        f"{before} -> {position}"
    assert not any(name.endswith(".tmp") for name in tree_files(run))
    return position


def saved_position(run: Path) -> tuple[int, int] | None:
    """(epoch, step) where the run's checkpoint resumes, if it has one."""
    if not (run / "model.safetensors").exists():
        return None
    progress = load_lm(run).progress
    return progress.epoch, progress.step


def next_log(run: Path) -> Path:
    return run.parent / f"{run.name}.{len(list(run.parent.glob(f'{run.name}.*.log')))}.log"


def writes_left(run: Path, windows: int) -> int:
    """Checkpoint writes from the run's last checkpoint to its end (valid improves every
    epoch here, so each epoch ends with two: best.safetensors, then model.safetensors)."""
    saved = load_lm(run)
    progress, epochs = saved.progress, saved.config.max_max_epoch
    per_epoch = len(range(EVERY, windows, EVERY)) + 2
    this_epoch = len(range((progress.step // EVERY + 1) * EVERY, windows, EVERY)) + 2
    return this_epoch + (epochs - progress.epoch) * per_epoch


def metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # A resumed process adds a setup record where it starts; the training records must agree.
    records = [record for record in records if record["event"] != "setup"]
    for record in records:
        record.pop("words_per_sec", None)  # the one field that depends on the clock
    return records


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    for name in ("model.safetensors", "best.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        assert all(x[k].dtype == y[k].dtype and x[k].equal(y[k]) for k in x), name
    for run in (a, b):
        assert tree_files(run) == RUN_FILES, "no temporary or stray files left"


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, int]:
    ptb = write_ptb_layout(tmp_path / "ptb")
    return ptb, epoch_size(load_ptb(ptb).train.numel(), BATCH, STEPS)


def uninterrupted(ptb: Path, run: Path, epochs: int, flags: list[str] = FLAGS
                  ) -> subprocess.Popen:
    """The reference run, started first so it trains beside the interrupted one. (A separate
    process like them: in this one, other threads or settings could change the last bits.)"""
    return start(ptb, run, run.parent / "straight.log", epochs=epochs, flags=flags)


def check_reference(proc: subprocess.Popen, run: Path) -> None:
    assert proc.wait(TIMEOUT) == 0, (run.parent / "straight.log").read_text()
    valid = [r["valid_perplexity"] for r in metrics(run) if r["event"] == "epoch"]
    assert valid == sorted(valid, reverse=True), "writes_left assumes valid improves each epoch"


def test_killed_at_random_and_inside_the_last_write_resumes_bit_for_bit(corpus, tmp_path):
    ptb, windows = corpus
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = uninterrupted(ptb, straight, epochs=2)
    rng = random.Random(7)
    run_and_kill(ptb, killed, Kill(after_lines=rng.randint(5, 18)), rng)
    # Then inside the run's very last write: a crash between writing best.safetensors and
    # model.safetensors at the end must not leave a stale best behind.
    run_and_kill(ptb, killed, Kill(in_save=writes_left(killed, windows)), rng)
    assert any(name.endswith(".tmp") for name in tree_files(killed)), "died mid-write"
    finish(ptb, killed, windows)
    check_reference(reference, straight)
    assert_same_run(straight, killed)


def test_sigterm_hangup_and_ctrl_c_stop_after_a_window_with_a_checkpoint_and_resume_bit_for_bit(
        corpus, tmp_path):
    ptb, windows = corpus
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    reference = uninterrupted(ptb, straight, epochs=2, flags=EPOCH_END_CHECKPOINTS)
    # At the first progress line (a tenth into epoch 1): without --checkpoint-every, only the
    # stop itself can have written a checkpoint inside the epoch.
    epoch, step = stop_by(signal.SIGTERM, ptb, stopped, after_lines=5)
    assert epoch == 1 and 0 < step < windows
    # A hang-up at the resumed run's first progress line, with the output on a terminal.
    assert hang_up(ptb, stopped, after_lines=6)[0] == 1
    # Ctrl-C, once, at the resumed run's first progress line.
    stop_by(signal.SIGINT, ptb, stopped, after_lines=6)
    finish(ptb, stopped, windows)
    check_reference(reference, straight)
    assert_same_run(straight, stopped)


@pytest.mark.slow
def test_many_random_kills_and_both_end_of_run_writes_resume_bit_for_bit(corpus, tmp_path):
    ptb, windows = corpus
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = uninterrupted(ptb, straight, epochs=3)
    rng = random.Random(11)
    run_and_kill(ptb, killed, Kill(after_lines=rng.randint(5, 9)), rng, epochs=3)
    run_and_kill(ptb, killed, Kill(after_lines=0), rng)  # while importing or loading
    for _ in range(6):
        if saved_position(killed)[0] == 3:  # the last epoch: its writes are the next kills'
            break                           # (a fast CPU gets there before six kills)
        run_and_kill(ptb, killed, Kill(after_lines=rng.randint(4, 9)), rng)
    left = writes_left(killed, windows)
    run_and_kill(ptb, killed, Kill(in_save=left - 1), rng)  # writing best.safetensors
    run_and_kill(ptb, killed, Kill(in_save=2), rng)  # then writing model.safetensors
    finish(ptb, killed, windows)
    check_reference(reference, straight)
    assert_same_run(straight, killed)
