"""Optional native CPU kernels, compiled on first use for the machine they run on.

The C++ source ships with the package; the first call builds it with the system's g++ against
the installed torch (about 30 s, once) into a cache keyed by source, torch version and CPU, so
`-march=native` code never runs on another CPU. Without a compiler, or with LSTMKIT_KERNELS=0,
callers get None and use their plain PyTorch path, which computes the same function.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import torch

from lstmkit.errors import LstmkitWarning

_SOURCE_DIR = Path(__file__).parent
_loaded: dict[str, ModuleType | None] = {}


def softmax_xent() -> ModuleType | None:
    """The softmax cross-entropy row kernel (see softmax_xent.cpp), or None if unavailable."""
    return _load("softmax_xent")


def enabled() -> bool:
    return os.environ.get("LSTMKIT_KERNELS", "1") != "0" and platform.system() == "Linux"


def _load(name: str) -> ModuleType | None:
    if name not in _loaded:
        _loaded[name] = _build_and_import(name) if enabled() else None
    return _loaded[name]


def _build_and_import(name: str) -> ModuleType | None:
    source = _SOURCE_DIR / f"{name}.cpp"
    module_name = f"lstmkit_{name}_{_build_key(source)}"
    library = _cache_dir() / f"{module_name}.so"
    try:
        if not library.exists():
            _compile(source, module_name, library)
        return _import(module_name, library)
    except (OSError, subprocess.CalledProcessError, ImportError) as exc:
        warnings.warn(f"lstmkit: native kernel {name} unavailable ({_first_line(exc)}); "
                      "using the plain PyTorch path", LstmkitWarning, stacklevel=3)
        return None


def _build_key(source: Path) -> str:
    """Changes with the source, torch, Python and the CPU's instruction sets."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(f"{torch.__version__} {sys.version} {_cpu_flags()}".encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                return line
    return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("LSTMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lstmkit")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _compile(source: Path, module_name: str, library: Path) -> None:
    """g++ into a temporary file, then an atomic rename; a lock stops two processes racing."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler found (install g++)")
    with open(library.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():  # another process built it while we waited
            return
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(fd)
        try:
            # The source comes before the -l flags: Debian links with --as-needed.
            subprocess.run([compiler, str(source), *_compile_flags(module_name), "-o", tmp],
                           check=True, capture_output=True, text=True)
            os.replace(tmp, library)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _compile_flags(module_name: str) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # -fopenmp: at::parallel_for is inline OpenMP; at load time the process's libgomp.so.1
    # (torch's own) is reused by soname, so there is one thread pool, not two.
    return ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-DTORCH_EXTENSION_NAME={module_name}",
            "-DTORCH_API_INCLUDE_EXTENSION_H",
            *(f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]),
            f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}",
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _import(module_name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_line(exc: BaseException) -> str:
    lines = [line for line in (getattr(exc, "stderr", None) or str(exc)).splitlines() if line]
    errors = [line for line in lines if "error" in line]
    return (errors or lines or [type(exc).__name__])[0]
