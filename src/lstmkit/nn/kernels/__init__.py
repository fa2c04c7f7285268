"""Optional native CPU kernels, compiled on first use for the machine they run on.

The C++ sources ship with the package; the first call builds one with
`torch.utils.cpp_extension.load` (g++ and ninja, about 30 s, once) into a cache directory keyed
by source, torch, Python and the CPU's instruction sets, so `-march=native` code never runs on
another CPU, and reuses it later. A second process waits for a build in progress on an OS lock
(released when the builder dies): cpp_extension's own lock file outlives a build killed midway
and would make every later process wait forever, so one found while holding the OS lock is
stale and removed.

Without a compiler, or with LSTMKIT_KERNELS=0, callers get None and use their plain PyTorch
path, which computes the same function. Every other failure to build (a broken source, an
unwritable cache) warns once in one line and falls back too; `build_error` keeps the reason so
the tests can fail where a compiler exists but the kernel does not build.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from lstmkit.device import cpuinfo
from lstmkit.errors import LstmkitWarning

_SOURCE_DIR = Path(__file__).parent
_loaded: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile",
              "amx_bf16")


def softmax_xent() -> ModuleType | None:
    """The softmax cross-entropy row kernel (see softmax_xent.cpp), or None if unavailable."""
    return load("softmax_xent")


def enabled() -> bool:
    return os.environ.get("LSTMKIT_KERNELS", "1") != "0" and platform.system() == "Linux"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def lstm_cell(check: Callable[[ModuleType], None] | None = None) -> ModuleType | None:
    """The LSTM layer's time-loop kernel (see lstm_cell.cpp), or None if unavailable."""
    return load("lstm_cell", check)


def sgd_bf16() -> ModuleType | None:
    """SGD from bf16 gradients refreshing bf16 weight copies (see sgd_bf16.cpp), or None."""
    return load("sgd_bf16")


def load(name: str, check: Callable[[ModuleType], None] | None = None) -> ModuleType | None:
    """The kernel `name` (its source is `name`.cpp here), built on first use; None if not.

    `check(module)` runs once after the build and raises RuntimeError if the module cannot be
    used here (say, a torch whose oneDNN lacks a micro-kernel the source calls).
    """
    if name not in _loaded:
        _loaded[name] = _build_and_import(name, check) if enabled() and compiler() else None
    return _loaded[name]


def build_error(name: str) -> str | None:
    """Why `name` failed to build in this process (None: it built, or was never tried)."""
    return _errors.get(name)


def implementation(name: str) -> str:
    """'native' or 'fallback': which path a kernel's caller runs (for run headers and logs)."""
    return "native" if load(name) is not None else "fallback"


def _build_and_import(name: str, check: Callable[[ModuleType], None] | None
                      ) -> ModuleType | None:
    source = _SOURCE_DIR / f"{name}.cpp"
    module_name = f"lstmkit_{name}_{_build_key(source)}"
    try:
        from torch.utils.cpp_extension import load as cpp_load

        build_dir = _cache_dir() / module_name
        build_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(build_dir), _quiet_build():
            module = cpp_load(name=module_name, sources=[str(source)],
                              build_directory=str(build_dir),
                              extra_cflags=["-O3", "-march=native", "-fopenmp"],
                              extra_ldflags=["-fopenmp"], verbose=False)
        if check is not None:
            check(module)
        return module
    except (OSError, RuntimeError, ImportError, ValueError) as exc:
        _errors[name] = _first_line(exc)
        warnings.warn(f"lstmkit: native kernel {name} unavailable ({_errors[name]}); using the "
                      "plain PyTorch path", LstmkitWarning, stacklevel=3)
        return None


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold an OS lock on `build_dir`'s build; clear cpp_extension's file lock, stale by then.
    Where there is no such lock (no fcntl, or a file system that refuses it), cpp_extension's
    own lock is all there is."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(build_dir / "build.flock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        (build_dir / "lock").unlink(missing_ok=True)  # cpp_extension's FileBaton
        yield


@contextlib.contextmanager
def _quiet_build():
    """cpp_extension prints the compiler's output on failure; we report one line instead."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        yield


def _build_key(source: Path) -> str:
    """Changes with the source (and the headers beside it), torch, Python and the CPU's
    instruction sets, and with where the source is: cpp_extension rebuilds a directory whose
    build file names other paths, so two checkouts sharing one would rebuild on every switch."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(str(source.resolve().parent).encode())
    for header in sorted(source.parent.glob("*.h")):  # what the sources include
        digest.update(header.read_bytes())
    digest.update(f"{torch.__version__} {sys.version} {_cpu_flags()}".encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    return cpuinfo("flags") or platform.processor()


def cpu_isa() -> str:
    """The instruction sets that matter for speed here, e.g. 'avx2 fma avx512f avx512_bf16'."""
    flags = set(_cpu_flags().split())
    return " ".join(flag for flag in _CPU_FLAGS if flag in flags) or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("LSTMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lstmkit")
    return Path(root) / "kernels"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in (getattr(exc, "stderr", None) or str(exc)).splitlines() if line]
    compiler_errors = [line for line in lines if "error:" in line]
    errors = [line for line in lines if "error" in line.lower()]
    return (compiler_errors or errors or lines or [type(exc).__name__])[0].strip()
