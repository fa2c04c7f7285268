"""What a run tells people and programs: console lines, a progress bar, a JSON-lines metrics
log and a learning-curve plot."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from lstmkit.errors import UserError

REPORTS_PER_EPOCH = 10  # progress lines (and records) per epoch when not on a terminal


def crosses_report_point(step: int, total: int) -> bool:
    """True at the steps that finish a tenth of the epoch's `total` (ten reports per epoch)."""
    return step * REPORTS_PER_EPOCH // total > (step - 1) * REPORTS_PER_EPOCH // total


class MetricsLog:
    """Append-only JSON-lines log; `truncate_to` rewinds it to where a checkpoint was taken.

    The rewind waits for the next write, so a resumed run that fails before logging anything
    (a bad option, a full disk) leaves the log as it found it. With `scalars`, every record's
    numbers also go to TensorBoard: one path, so both logs hold the same values.
    """

    def __init__(self, path: Path | None, scalars: ScalarWriter | None = None) -> None:
        self.path = path
        self.scalars = scalars
        self.rewind: int | None = None  # length to cut the file to before the next write
        self.deferred: list[dict[str, Any]] = []
        self.flushed: list[tuple[int, dict[str, Any]]] = []  # deferred records and their offsets

    def defer(self, record: dict[str, Any]) -> None:
        """Log `record` just before the next one: a run that fails before logging anything
        else (a full disk at its first checkpoint, say) leaves the log as it found it."""
        self.deferred.append(record)

    def write(self, record: dict[str, Any]) -> None:
        deferred, self.deferred = self.deferred, []
        for each in deferred:
            self.flushed.append((self.size(), each))
            self._append(each)
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        if self.scalars is not None:
            self.scalars.write(record)
        if self.path is None:
            return
        try:
            if self.rewind is not None and self.path.exists():
                with open(self.path, "r+b") as handle:
                    handle.truncate(self.rewind)
            self.rewind = None
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk: the last checkpoint still marks a clean end
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from None

    def flush(self) -> None:
        """Hand buffered TensorBoard scalars to their file (the JSON log is never buffered)."""
        if self.scalars is not None:
            self.scalars.flush()

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()

    def size(self) -> int:
        if self.rewind is not None:
            return self.rewind
        return self.path.stat().st_size if self.path and self.path.exists() else 0

    def truncate_to(self, size: int) -> None:
        """Rewind to `size` bytes (where a checkpoint was taken) at the next write; a log that
        is shorter, or has no line ending there, is not the one the checkpoint saw: refused
        now (before training), rather than padded with zeros or cut inside a record."""
        if self.path is not None and self.path.exists() and size > 0:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(size - 1)
                    at_line_end = handle.read(1) == b"\n"
            except OSError as err:
                raise UserError(f"{self.path}: cannot read ({err.strerror})") from None
            if not at_line_end:
                raise UserError(f"{self.path}: does not match the checkpoint, which was taken "
                                f"at byte {size} of it; move the file away to resume with a "
                                f"new log")
        self.rewind = size
        # A deferred record written after `size` goes again with the next record (a rollback
        # rewinds past it, yet the run it describes goes on).
        again = [record for offset, record in self.flushed if offset >= size]
        self.flushed = [(offset, record) for offset, record in self.flushed if offset < size]
        self.deferred = again + self.deferred


# Records whose numbers are settings or sizes, not measurements over training.
_NOT_SCALARS = ("setup",)
# A record's position, which becomes the scalar's step rather than a scalar of its own.
_POSITION = ("epoch", "step", "fraction")


TENSORBOARD_HELP = ("also write the metrics log's numbers as TensorBoard scalars into DIR (needs "
                    "the tensorboard package: pip install 'lstmkit[tensorboard]')")


def require_tensorboard() -> None:
    """Refuse --tensorboard up front (before any file is written) when the package is absent."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package (pip install "
                        "'lstmkit[tensorboard]')") from None


class ScalarWriter:
    """The numbers of metrics records as TensorBoard scalars, tagged `EVENT/FIELD`.

    A scalar's step is training steps (windows or batches) since the run began: a record's
    epoch start plus its step, or for an epoch record that epoch's end; the test is logged at
    the last step.
    """

    def __init__(self, log_dir: str | Path, steps_per_epoch: int,
                 purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops what the interrupted one logged after its checkpoint.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.steps_per_epoch = steps_per_epoch
        self.last_step = 0

    def write(self, record: dict[str, Any]) -> None:
        event = record.get("event", "metrics")
        if event in _NOT_SCALARS:
            return
        step = self.global_step(record)
        for name, value in record.items():
            if name in _POSITION or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self.writer.add_scalar(f"{event}/{name}", value, step)
        if event != "progress":  # epoch ends and the test: few, and worth keeping at once
            self.writer.flush()

    def global_step(self, record: dict[str, Any]) -> int:
        epoch, step = record.get("epoch"), record.get("step")
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            within = step if isinstance(step, int) else self.steps_per_epoch
            self.last_step = (epoch - 1) * self.steps_per_epoch + within
        return self.last_step

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Console:
    """Lines for people on stdout; a progress bar on stderr only when it is a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        try:
            tqdm.write(line, file=self.stream)
            self.stream.flush()
        except BrokenPipeError:  # the reader (`| head`, a closed `tee`) left: train on, quietly
            self.enabled = False
            discard_output(self.stream)

    def progress(self, total: int, initial: int, description: str, unit: str = "win") -> tqdm:
        show = self.enabled and sys.stderr.isatty() and not os.environ.get("CI")
        return tqdm(total=total, initial=initial, desc=description, file=sys.stderr,
                    disable=not show, leave=False, unit=unit, dynamic_ncols=True)


def discard_output(stream: TextIO) -> None:
    """Point `stream` at /dev/null, so that what is still buffered for a reader that has gone
    (a closed pipe) cannot raise again, here or when Python exits."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO): nothing to do
        pass


def plot_learning_curve(history: Iterable[dict[str, Any]], path: Path, title: str) -> None:
    """Train and valid perplexity per epoch (log scale) to a PNG, written atomically."""
    plot_epoch_curves(history, path, title, {"train": "train_perplexity",
                                             "valid": "valid_perplexity"},
                      "perplexity", log_scale=True)


def plot_epoch_curves(history: Iterable[dict[str, Any]], path: Path, title: str,
                      series: dict[str, str], ylabel: str, log_scale: bool = False) -> None:
    """One line per `series` entry (label -> key of the epoch records) to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = list(history)
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, key in series.items():
        ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from lstmkit.checkpoint import write_atomic  # torch: only where a curve is drawn

    image = io.BytesIO()
    try:
        fig.savefig(image, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue())  # its temporaries are those a resume cleans up
