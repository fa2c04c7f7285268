"""Stop requests: a signal is noted (not acted on) while armed, a second one acts as before,
the handlers come back on the way out, nothing is armed where it must not be, and a hang-up
sends the terminal's output to /dev/null. The whole behaviour, a real run stopped and resumed,
is in tests/lm/test_crash_resume.py."""

import os
import pty
import signal
import threading
import time

import pytest

from lstmkit import stopping
from lstmkit.stopping import SIGNALS, StopRequested, stop_requests


def _handlers() -> dict[int, object]:
    return {signum: signal.getsignal(signum) for signum in SIGNALS}


def _wait_for(requests) -> None:
    deadline = time.monotonic() + 5
    while not requests.requested and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_is_noted_and_check_raises(signum, monkeypatch):
    monkeypatch.setattr(stopping, "CONSOLE_FDS", ())  # a hang-up must not take pytest's
    before = _handlers()
    with stop_requests(True) as requests:
        requests.check(1, 5)  # nothing asked yet
        requests.arm()
        assert _handlers() != before
        os.kill(os.getpid(), signum)
        _wait_for(requests)
        assert requests.requested
        with pytest.raises(StopRequested) as stop:
            requests.check(2, 7)
    assert stop.value.exit_status == 128 + signum
    assert str(stop.value).startswith(f"stopped by {signal.Signals(signum).name} at epoch 2, "
                                      f"step 7, with a checkpoint there")
    assert _handlers() == before


def test_the_handlers_come_back_on_the_way_out_and_at_disarm():
    before = _handlers()
    with stop_requests(True) as requests:
        requests.arm()
        requests.disarm()
        assert _handlers() == before
        requests.arm()
    assert _handlers() == before


def test_nothing_is_armed_where_disabled_or_off_the_main_thread():
    before = _handlers()
    with stop_requests(False) as requests:
        requests.arm()
        assert _handlers() == before
    seen = []

    def other_thread() -> None:
        with stop_requests(True) as off_main:
            off_main.arm()  # signal.signal would raise outside the main thread
            seen.append(off_main.enabled)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen == [False] and _handlers() == before


def test_a_second_ctrl_c_interrupts_at_once_as_before():
    before = _handlers()
    with stop_requests(True) as requests:
        requests.arm()
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(requests)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the interrupt arrives here
    assert _handlers() == before


def test_an_ignored_signal_stays_ignored():
    """A background job's SIGINT is ignored: arming must not make Ctrl-C reach it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_requests(True) as requests:
            requests.arm()
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # armed
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_hang_up_sends_what_went_to_the_terminal_to_dev_null(monkeypatch, tmp_path):
    """After SIGHUP writing to the terminal fails (EIO): the run's console descriptors that
    were a terminal must then write to /dev/null, the others stay where they were."""
    controller, terminal = pty.openpty()
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(stopping, "CONSOLE_FDS", (terminal, log))
    null = os.stat(os.devnull).st_rdev
    try:
        with stop_requests(True) as requests:
            requests.arm()
            assert os.fstat(terminal).st_rdev != null
            os.kill(os.getpid(), signal.SIGHUP)
            _wait_for(requests)
            assert requests.requested
        assert os.fstat(terminal).st_rdev == null
        assert os.fstat(log).st_ino == (tmp_path / "log").stat().st_ino
        os.write(terminal, b"still printing\n")  # no EIO
    finally:
        for fd in (controller, terminal, log):
            os.close(fd)
