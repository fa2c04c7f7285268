"""Choosing the device and the numeric precision; every other module just receives them."""

from __future__ import annotations

import contextlib
import functools
import warnings
from contextlib import AbstractContextManager

import torch

from lstmkit.errors import LstmkitWarning, UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for absent CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: only there do bf16 products beat fp32 (measured: ~2x on Zen 4).

    Elsewhere (AVX2 CPUs such as Zen 3) bf16 products are emulated: 10-145x slower than fp32
    (`bench/gemm.py`), and oneDNN has no bf16 LSTM primitive at all.
    """
    return _torch_cpu_supports("avx512_bf16") or cpu_has_amx()


@functools.cache
def cpu_has_avx512() -> bool:
    """AVX-512: lstmkit's fp32 LSTM layer was measured faster than oneDNN's for one token at a
    time on a Zen 4 with it (nn/recurrent.py); not yet on an AVX2-only CPU."""
    return _torch_cpu_supports("avx512")


def cpu_has_amx() -> bool:
    """AMX tiles: there oneDNN's brgemm runs lstmkit's small per-step products fast enough to
    beat its own LSTM primitive in evaluation too (nn/recurrent.py)."""
    return _torch_cpu_supports("amx_tile")


def _torch_cpu_supports(feature: str) -> bool:
    """torch.cpu's probe for `feature` (False on a torch without that probe)."""
    return getattr(torch.cpu, f"_is_{feature}_supported", lambda: False)()


@functools.cache
def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("vendor_id", "flags", "model name", ...),
    or "" where there is none (no such file or field)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, colon, value = line.partition(":")
                if colon and name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means: bf16 on a CPU with native bf16 products, fp32 everywhere else.

    CUDA stays fp32 under 'auto': fp16/bf16 there is a choice the user makes explicitly.
    """
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuses what cannot run here; warns about bf16 where it can only crawl."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("lstmkit: precision bf16 on a CPU without native bf16 products "
                      "(AVX512-BF16 or AMX) is emulated, about 20x slower than fp32 for training "
                      "(measured on a Zen 3); --precision auto or fp32 uses fp32 here",
                      LstmkitWarning, stacklevel=2)


def saved_precision(precision: str, device: torch.device) -> str:
    """The precision to reuse a checkpoint with when the user names none: the one it was
    trained with, but bf16 only where bf16 is native (it was chosen for speed, which a CPU
    that emulates bf16 cannot give) and fp16 only on CUDA (elsewhere it cannot run): else
    'auto'."""
    if precision == "bf16" or (precision == "fp16" and device.type != "cuda"):
        return "auto"
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Mixed precision for the forward pass: matrix products in bf16/fp16, losses in fp32."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
