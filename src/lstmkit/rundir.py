"""Run directories, shared by the language model and the classifier.

    RUN/model.safetensors   a language model's latest state (weights + all to resume exactly)
    RUN/best.safetensors    the weights with the best validation score so far
    RUN/metrics.jsonl       one JSON object per line (setup, progress, epochs, test)
    RUN/curve.png           learning curve, drawn at the end
    RUN/.lstmkit.lock       while a run trains: locked (flock) by its process, holding its PID
    RUN/.lstmkit-replaced/  while `--overwrite` is not yet done: the run being replaced

A directory holds one run of either kind: the names are shared, so a fresh run of one kind
never silently mixes with (or deletes) the other's files. lstmkit writes and removes only these
names (and its own temporary files beside them); anything else in the directory is the user's.

Replacing a run (`--overwrite`) moves the old run's files into `.lstmkit-replaced/` and keeps
them there until the new run has written its first checkpoint; any failure before that puts
them back. A process killed meanwhile leaves the directory behind: the next lstmkit command
that opens the run (train, classify train, evaluate, sample, score, predict) restores the old
run first, or, when the new run had already been accepted, finishes removing the old one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

from lstmkit.errors import UserError
from lstmkit.files import exists, is_dir, path_stat, reason

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.png"
LOCK_FILE = ".lstmkit.lock"
REPLACED_DIR = ".lstmkit-replaced"  # the old run, kept until the new one has a checkpoint
DISCARD_DIR = ".lstmkit-discard"  # the old run, once the new one is accepted: being removed
RUN_FILES = (MODEL_FILE, BEST_FILE, METRICS_FILE)  # a classifier's run: the last two
OWN_FILES = (*RUN_FILES, CURVE_FILE)  # what a run writes, and all that --overwrite replaces
_MANIFEST = "manifest.json"  # inside REPLACED_DIR: which of OWN_FILES the old run had
_TEMPORARY_PREFIXES = (*tuple(f".{name}." for name in OWN_FILES), ".write-test-")


def is_own_entry(name: str) -> bool:
    """Whether a directory entry is one lstmkit writes in a run directory."""
    return (name in OWN_FILES or name in (LOCK_FILE, REPLACED_DIR, DISCARD_DIR)
            or name.startswith(_TEMPORARY_PREFIXES))


def foreign_entries(run_dir: Path) -> list[str]:
    """Entries of `run_dir` that lstmkit did not write (sorted)."""
    try:
        return sorted(name for name in os.listdir(run_dir) if not is_own_entry(name))
    except OSError as err:
        raise UserError(f"{run_dir}: cannot list the save path ({reason(err)})") from None


def held_run_files(run_dir: Path) -> list[str]:
    """The run files `run_dir` holds; a lone curve counts, since a fresh run would replace it."""
    held = [name for name in RUN_FILES if exists(run_dir / name, "save path")]
    if not held and exists(run_dir / CURVE_FILE, "save path"):
        held = [CURVE_FILE]
    return held


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory and prove it is writable before any training time is spent."""
    path = Path(path)
    found = path_stat(path, "save path")
    if found is not None and not is_dir(path):
        raise UserError(f"{path}: save path exists and is not a directory")
    if found is None and path.is_symlink():
        raise UserError(f"{path}: save path is a symlink to {path.readlink()}, which does "
                        f"not exist")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{path}: save path is not writable ({reason(err)})") from None
    return path


def checkpoint_file(model_path: str | Path) -> Path:
    """`--model` may name a run directory (its latest checkpoint) or a checkpoint file."""
    path = Path(model_path)
    if not is_dir(path, "model path"):
        return path
    recover_interrupted(path)
    latest, best = path / MODEL_FILE, path / BEST_FILE
    # A classifier's run holds only best.safetensors: loading that one names its kind.
    return best if exists(best) and not exists(latest) else latest


# --------------------------------------------------------------------------- one writer

def lock_holder(run_dir: Path) -> int | None:
    """The PID of the live process writing `run_dir`, if any (looks without creating)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or none we may read): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _recorded_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing also drops the shared probe lock
    return None


def acquire_lock(run_dir: Path) -> int:
    """Lock `run_dir` for this process (returns the lock's descriptor); refused, naming the
    holder's PID, while another process holds it. The kernel drops the lock when its holder
    dies, however it dies, so a killed run never blocks the next one."""
    path = run_dir / LOCK_FILE
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"{path}: cannot create the run's lock ({reason(err)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _recorded_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{path}: cannot lock the run ({reason(err)})") from None
            raise UserError(busy_message(run_dir, holder)) from None
        if _still_named(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed that file as it let go: lock the new one
    raise UserError(f"{path}: cannot lock the run (its lock file keeps changing)")


def release_lock(run_dir: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then let go (see `acquire_lock`'s check
    that the file it locked is still the one named)."""
    with contextlib.suppress(OSError):
        (run_dir / LOCK_FILE).unlink()
    os.close(fd)


def busy_message(run_dir: Path, holder: int | None) -> str:
    who = f"PID {holder}" if holder else "a process"
    return (f"{run_dir}: another lstmkit process ({who}) is training in this run directory; "
            f"wait for it to finish, or choose another --save-path")


def _recorded_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


# --------------------------------------------------------------------------- replace on success

def move_aside(run_dir: Path) -> bool:
    """Move the old run's files into REPLACED_DIR (a manifest first, so that an interrupted
    move is undone exactly); False when there was nothing to move."""
    held = [name for name in OWN_FILES if exists(run_dir / name)]
    if not held:
        return False
    aside = run_dir / REPLACED_DIR
    try:
        aside.mkdir()
        _write_synced(aside / _MANIFEST, json.dumps(held).encode())
        for name in held:
            os.replace(run_dir / name, aside / name)
        _fsync_dir(run_dir)
    except OSError as err:
        restore_replaced(run_dir)
        raise UserError(f"{run_dir}: cannot set the old run aside ({reason(err)})") from None
    return True


def restore_replaced(run_dir: Path) -> None:
    """Put the old run back as it was: its files return, the new run's files of the same
    names go (idempotent, so a restore that is itself interrupted can run again)."""
    aside = run_dir / REPLACED_DIR
    held = _manifest(aside)
    if held is not None:
        for name in OWN_FILES:
            if name not in held:
                (run_dir / name).unlink(missing_ok=True)
            elif (aside / name).exists():
                os.replace(aside / name, run_dir / name)
        _fsync_dir(run_dir)
    shutil.rmtree(aside, ignore_errors=True)


def discard_replaced(run_dir: Path) -> None:
    """The new run is accepted: the old one goes (renamed first, so that a kill midway leaves
    no doubt which run to keep)."""
    aside, discard = run_dir / REPLACED_DIR, run_dir / DISCARD_DIR
    if aside.exists():
        shutil.rmtree(discard, ignore_errors=True)
        os.replace(aside, discard)
        _fsync_dir(run_dir)
    shutil.rmtree(discard, ignore_errors=True)


def recover_interrupted(run_dir: Path) -> None:
    """Finish what a killed `--overwrite` left: restore the old run, or finish discarding it.
    Skipped while a live process holds the run (it is that process's to finish) or where the
    directory is not ours to write."""
    if not (exists(run_dir / REPLACED_DIR) or exists(run_dir / DISCARD_DIR)):
        return
    try:
        fd = acquire_lock(run_dir)
    except UserError:
        return
    try:
        finish_interrupted(run_dir)
    finally:
        release_lock(run_dir, fd)


def finish_interrupted(run_dir: Path) -> None:
    """`recover_interrupted`'s work, for a caller that holds the lock."""
    shutil.rmtree(run_dir / DISCARD_DIR, ignore_errors=True)
    if (run_dir / REPLACED_DIR).exists():
        restore_replaced(run_dir)


def _manifest(aside: Path) -> list[str] | None:
    """The names the old run had; None when the move had not yet begun (nothing moved)."""
    try:
        held = json.loads((aside / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [name for name in held if name in OWN_FILES] if isinstance(held, list) else None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
