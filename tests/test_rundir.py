"""Run directories: one writer at a time, and a replaced run that survives a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lstmkit.errors import UserError
from lstmkit.rundir import (
    LOCK_FILE,
    REPLACED_DIR,
    acquire_lock,
    checkpoint_file,
    lock_holder,
    move_aside,
    release_lock,
)
from lstmkit.runstart import check_run_start, open_run

HOLD_LOCK = """
import sys, time
from pathlib import Path
from lstmkit.rundir import acquire_lock
acquire_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def _holder(run: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_one_blocks_nothing(
        tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run)
    try:
        assert lock_holder(run) == holder.pid
        with pytest.raises(UserError, match=rf"another lstmkit process \(PID {holder.pid}\)"):
            check_run_start(run, overwrite=True, resume=False, resumable=True)
        with pytest.raises(UserError, match=rf"PID {holder.pid}"):
            acquire_lock(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_FILE).exists()  # a killed holder leaves its file, but not its lock
    assert lock_holder(run) is None
    release_lock(run, acquire_lock(run))
    assert not (run / LOCK_FILE).exists()


def _old_run(run: Path) -> dict[str, bytes]:
    run.mkdir()
    files = {"model.safetensors": b"old model", "metrics.jsonl": b'{"old": 1}\n',
             "curve.png": b"old curve"}
    for name, data in files.items():
        (run / name).write_bytes(data)
    (run / "notes.txt").write_bytes(b"the user's")
    return {**files, "notes.txt": b"the user's"}


def _contents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_any_failure_before_the_first_checkpoint_restores_the_old_run(tmp_path):
    run = tmp_path / "run"
    old = _old_run(run)
    for failure in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(failure), open_run(run, overwrite=True, resume=False,
                                              resumable=True) as started:
            (started.path / "metrics.jsonl").write_bytes(b"new")
            (started.path / "best.safetensors").write_bytes(b"new best")
            raise failure()
        assert _contents(run) == old


def test_after_the_first_checkpoint_only_our_files_are_replaced(tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    with open_run(run, overwrite=True, resume=False, resumable=True) as started:
        (started.path / "model.safetensors").write_bytes(b"new model")
        started.accept()
    assert _contents(run) == {"model.safetensors": b"new model", "notes.txt": b"the user's"}


def test_the_next_command_restores_a_run_whose_replacement_was_killed(tmp_path):
    run = tmp_path / "run"
    old = _old_run(run)
    code = ("import os, signal, sys\nfrom pathlib import Path\n"
            "from lstmkit.runstart import open_run\n"
            "with open_run(Path(sys.argv[1]), overwrite=True, resume=False, resumable=True):\n"
            "    (Path(sys.argv[1]) / 'metrics.jsonl').write_text('new')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(run)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert (run / REPLACED_DIR).is_dir()
    checkpoint_file(run)  # what evaluate, sample, score and --resume call first
    assert _contents(run) == old


def test_a_move_aside_killed_midway_is_undone_exactly(tmp_path, monkeypatch):
    run = tmp_path / "run"
    old = _old_run(run)
    moved = []
    real_replace = os.replace

    def dies_on_second(src, dst):
        moved.append(src)
        if len(moved) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr("lstmkit.rundir.os.replace", dies_on_second)
    with pytest.raises(UserError, match="cannot set the old run aside"):
        move_aside(run)
    monkeypatch.undo()
    assert _contents(run) == old


@pytest.mark.parametrize("save_path", ["", " "])
def test_an_empty_save_path_is_refused(save_path):
    with pytest.raises(UserError, match="--save-path is empty"):
        check_run_start(save_path, overwrite=True, resume=False, resumable=True)


def test_a_fresh_run_keeps_out_of_a_directory_of_other_files(tmp_path):
    (tmp_path / "curve.png").write_bytes(b"mine")
    with pytest.raises(UserError, match=r"already holds a run \(curve.png\)"):
        check_run_start(tmp_path, overwrite=False, resume=False, resumable=True)
    (tmp_path / "curve.png").unlink()
    (tmp_path / "data.csv").write_bytes(b"mine")
    with pytest.raises(UserError, match=r"not an lstmkit run's \(data.csv\)"):
        check_run_start(tmp_path, overwrite=False, resume=False, resumable=True)
