"""Stopping a training run where it is, with a checkpoint of that position.

SIGINT (Ctrl-C), SIGTERM (what `kill`, `timeout`, job schedulers and container stops send) or
SIGHUP (the terminal closed, an ssh connection dropped) asks the run to stop after the window
it is in: it checkpoints that position (or, in the epoch's last window, ends the epoch first)
and exits, and `--resume` continues from there as if nothing had happened. Without this a
signal kept only the last checkpoint: an epoch's work by default, which is hours for `large` on
two cores. A second signal of any of them stops at once, as before (the last checkpoint stays
intact). Signals before training starts and during the final test evaluation act as before
too. After a hang-up the terminal is gone and writing to it fails, so the console output that
was going there goes to /dev/null from then on.

Only in the main thread of a single process that saves checkpoints: under torchrun the ranks
would see a signal at different windows (and each must take part in a checkpoint), and a run
without --save-path has nowhere to write. Those keep Python's usual handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

HANGUP = getattr(signal, "SIGHUP", None)  # none on Windows
SIGNALS = (signal.SIGINT, signal.SIGTERM, *([HANGUP] if HANGUP is not None else []))
CONSOLE_FDS = (1, 2)


class StopRequested(Exception):
    """The run stopped on a signal after checkpointing (epoch, step); `--resume` continues."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        self.signum, self.epoch, self.step = signum, epoch, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch}, step "
                         f"{step}, with a checkpoint there; `lstmkit train --resume` continues")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's status for a process ended by that signal


class StopRequests:
    """Whether a signal asked the run to stop; `check` raises StopRequested if so."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.previous: dict[int, object] = {}  # the handlers to put back
        self.terminal_fds: list[int] = []  # stdout/stderr when they are a terminal

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, epoch: int, step: int) -> None:
        """Call right after a checkpoint of (epoch, step) was written."""
        if self.signum is not None:
            raise StopRequested(self.signum, epoch, step)

    def arm(self) -> None:
        """From here on (where enabled) SIGINT, SIGTERM and SIGHUP request a stop. A signal
        that is ignored (a background job's SIGINT, SIGHUP under nohup) or handled outside
        Python is left as it is."""
        if not self.enabled or self.previous:
            return
        # Asked now: after a hang-up a terminal no longer says it is one.
        self.terminal_fds = [fd for fd in CONSOLE_FDS if os.isatty(fd)]
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not None and handler != signal.SIG_IGN:
                self.previous[signum] = handler
                signal.signal(signum, self._request)

    def disarm(self) -> None:
        """Signals act as before again (past the last point that checks for a request)."""
        previous, self.previous = self.previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _request(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second: as before, at once
            self.disarm()
            signal.raise_signal(signum)
            return
        self.signum = signum
        if signum == HANGUP:
            _write_to_null(self.terminal_fds)  # the terminal is gone: writes would fail
        name = signal.Signals(signum).name
        _tell(f"lstmkit: {name}: stopping with a checkpoint once the window (or validation) in "
              f"progress ends; another signal stops at once, keeping the last checkpoint")


@contextlib.contextmanager
def stop_requests(enabled: bool) -> Iterator[StopRequests]:
    """Stop requests to `arm` where training starts (if `enabled`, and in the main thread);
    the handlers that were there before come back on the way out, if not at `disarm`."""
    requests = StopRequests(enabled)
    try:
        yield requests
    finally:
        requests.disarm()


def _tell(line: str) -> None:
    """Straight to stderr's descriptor: a handler that printed through sys.stderr while the
    interrupted code was writing to it would raise a reentrant-call error."""
    with contextlib.suppress(OSError, ValueError):
        start = "\n" if sys.stderr.isatty() else ""  # past a progress bar's line
        os.write(sys.stderr.fileno(), f"{start}{line}\n".encode())


def _write_to_null(fds: list[int]) -> None:
    """Point `fds` at /dev/null: what the run still prints (buffered text, progress, the
    stop line) is dropped instead of failing with EIO in the middle of a window."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(null, fd)
    finally:
        os.close(null)
