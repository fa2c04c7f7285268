"""How a training run starts in its run directory: the same for the language model and the
classifier (see rundir.py for the directory's layout).

    check_run_start(...)   up front, before any data is read or model built; touches nothing:
                           the save path is usable, no other process trains there, and a
                           fresh run replaces nothing without --overwrite and mixes with no
                           file that is not lstmkit's
    open_run(...)          once the run is ready to write: creates the directory, locks it
                           for this process for the whole run, restores what a killed
                           --overwrite left, and sets the old run aside for --overwrite. The
                           run calls `RunDir.accept()` once its first checkpoint is written;
                           until then any failure (Ctrl-C included) restores the old run.

Under torchrun only rank 0 writes: it alone locks and prepares; the other ranks get the path.
The lock is taken without waiting (a busy run is refused at once), so no rank ever blocks on
it while the others wait in a collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lstmkit.checkpoint import remove_stale_temporaries
from lstmkit.errors import UserError
from lstmkit.files import is_dir, path_stat
from lstmkit.rundir import (
    OWN_FILES,
    acquire_lock,
    busy_message,
    discard_replaced,
    finish_interrupted,
    foreign_entries,
    held_run_files,
    lock_holder,
    move_aside,
    prepare_run_dir,
    recover_interrupted,
    release_lock,
    restore_replaced,
)


def check_save_path(save_path: str | Path | None) -> Path | None:
    """None (no run directory) or a usable-looking path; an empty one is refused, since it
    would mean the current directory."""
    if save_path is None:
        return None
    if str(save_path).strip() == "":
        raise UserError("--save-path is empty; name a run directory (it is created if needed)")
    path = Path(save_path)
    if path_stat(path, "save path") is not None and not is_dir(path):
        raise UserError(f"{path}: save path exists and is not a directory")
    return path


def check_run_start(save_path: str | Path | None, overwrite: bool, resume: bool,
                    resumable: bool, writer: bool = True) -> None:
    """Refuse a start that could lose or mix files, before anything is written. Only the
    `writer` (rank 0 under torchrun) looks at the lock and finishes a killed --overwrite."""
    path = check_save_path(save_path)
    if path is None or not is_dir(path):
        return
    if writer:
        recover_interrupted(path)
        holder = lock_holder(path)
        if holder is not None:
            raise UserError(busy_message(path, holder))
    if not resume:
        refuse_to_replace(path, overwrite, resumable)


def refuse_to_replace(run_dir: Path, overwrite: bool, resumable: bool) -> None:
    """A fresh run replaces what a run directory holds, a language model's or a classifier's
    (they share these names): refused unless --overwrite. It never mixes with files that are
    not lstmkit's (unless --overwrite, which then leaves them alone)."""
    if overwrite:
        return
    held = held_run_files(run_dir)
    if held:
        resume = "--resume continues it, " if resumable else ""
        raise UserError(f"{run_dir}: already holds a run ({', '.join(held)}); {resume}"
                        f"--overwrite replaces it, or choose another --save-path")
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"{run_dir}: holds files that are not an lstmkit run's ({shown}); "
                        f"choose an empty or new --save-path (--overwrite would start the run "
                        f"among them, leaving them alone)")


@dataclass
class RunDir:
    """The directory a run writes (None: no --save-path, or a rank that does not write)."""
    path: Path | None
    writer: bool = False
    replacing: bool = False  # the old run is set aside until `accept`
    _accepted: bool = field(default=False, repr=False)

    @property
    def pending_replacement(self) -> bool:
        """Whether an old run is set aside and would come back if this run failed now."""
        return self.writer and self.replacing and not self._accepted

    def accept(self) -> None:
        """The new run has its first checkpoint: the old run (if replaced) goes for good."""
        if self.pending_replacement:
            discard_replaced(self.path)
        self._accepted = True


@contextlib.contextmanager
def open_run(save_path: str | Path | None, *, overwrite: bool, resume: bool,
             resumable: bool, writer: bool = True) -> Iterator[RunDir]:
    """The run directory, locked and prepared for the life of the block (see the module
    docstring); the old run comes back if the block fails before `RunDir.accept()`."""
    path = check_save_path(save_path)
    if path is None or not writer:
        yield RunDir(path)
        return
    created = path_stat(path, "save path") is None
    run_dir = prepare_run_dir(path)
    try:
        fd = acquire_lock(run_dir)
    except UserError:
        _remove_if_empty(run_dir, created)
        raise
    run = RunDir(run_dir, writer=True)
    try:
        finish_interrupted(run_dir)
        remove_stale_temporaries(run_dir, OWN_FILES)
        if not resume:
            refuse_to_replace(run_dir, overwrite, resumable)  # again, now that it is ours
            run.replacing = move_aside(run_dir)
        yield run
        run.accept()
    except BaseException:
        if run.pending_replacement:
            restore_replaced(run_dir)
        raise
    finally:
        release_lock(run_dir, fd)
        _remove_if_empty(run_dir, created)


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    """A run that failed before writing anything leaves no directory it created."""
    if created:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
