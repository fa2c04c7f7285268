"""Keeping freed memory: glibc's malloc is tuned once, and the command line does it."""

import ctypes.util
import platform
import subprocess
import sys

import pytest

from lstmkit import allocator, cli

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_glibcs_malloc_is_tuned_in_a_fresh_process():
    code = ("from lstmkit import allocator; print(allocator.keep_freed_memory(), "
            "allocator.keep_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True"]
    assert ctypes.util.find_library("c")


def test_the_command_line_keeps_freed_memory(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["train", "--preset", "no-such-preset"]) != 0
    assert calls == [1]


def test_elsewhere_nothing_is_tuned(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator._tune() is False
