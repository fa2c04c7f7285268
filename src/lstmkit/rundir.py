"""Run directories, shared by the language model and the classifier.

    RUN/model.safetensors   a language model's latest state (weights + all to resume exactly)
    RUN/best.safetensors    the weights with the best validation score so far
    RUN/metrics.jsonl       one JSON object per line (setup, progress, epochs, test)
    RUN/curve.png           learning curve, drawn at the end

A directory holds one run of either kind: the names are shared, so a fresh run of one kind
never silently mixes with (or deletes) the other's files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lstmkit.errors import UserError

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.png"
RUN_FILES = (MODEL_FILE, BEST_FILE, METRICS_FILE)  # a classifier's run: the last two


def refuse_to_replace(save_path: str | Path | None, overwrite: bool, resumable: bool) -> None:
    """A fresh run deletes what a run directory holds, a language model's or a classifier's
    (they share these names): refused unless the user says --overwrite, before any file is
    touched."""
    if overwrite or save_path is None:
        return
    held = [name for name in RUN_FILES if (Path(save_path) / name).exists()]
    if held:
        resume = "--resume continues it, " if resumable else ""
        raise UserError(f"{save_path}: already holds a run ({', '.join(held)}); {resume}"
                        f"--overwrite replaces it, or choose another --save-path")


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's files before a fresh one (`refuse_to_replace` asked first)."""
    for name in (*RUN_FILES, CURVE_FILE):
        (run_dir / name).unlink(missing_ok=True)


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory and prove it is writable before any training time is spent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: save path exists and is not a directory")
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: save path is a symlink to {path.readlink()}, which does "
                        f"not exist")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{path}: save path is not writable ({err.strerror})") from None
    return path


def checkpoint_file(model_path: str | Path) -> Path:
    """`--model` may name a run directory (its latest checkpoint) or a checkpoint file."""
    path = Path(model_path)
    if not path.is_dir():
        return path
    latest, best = path / MODEL_FILE, path / BEST_FILE
    # A classifier's run holds only best.safetensors: loading that one names its kind.
    return best if best.exists() and not latest.exists() else latest
