"""The softmax layer's fp32 products on the CPU, through oneDNN where torch.mm's BLAS is slower.

torch.mm runs fp32 products through MKL in PyTorch's x86 wheels (bf16 ones already go to
oneDNN). On an AMD Zen 3 MKL ran the softmax layer's logits (h @ W.T) and weight gradient
(G.T @ h) 1.13-1.68x slower than oneDNN's matmul at the small, medium and large shapes, and
its d-hidden product (G @ W) 0.85-1.14x as fast (`bench/gemm.py --variants fp32 fp32_onednn`,
21 interleaved repetitions; results/bench-zen3-avx2/gemm-onednn.jsonl). So on AMD CPUs those
two products go to oneDNN (/proc/cpuinfo's vendor_id tells); d hidden stays with torch.mm, as
does everything on other CPUs (where MKL is Intel's own library) and in other dtypes. The two
agree to fp32 rounding.

These are plain functions for use inside an autograd.Function (they have no backward).
"""

from __future__ import annotations

import functools

import torch

from lstmkit.device import cpuinfo


@functools.cache
def onednn_fp32_products() -> bool:
    """Whether fp32 logits and weight-gradient products run through oneDNN here."""
    return cpuinfo("vendor_id") == "AuthenticAMD" and onednn_matmul_available()


def onednn_matmul_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_mm_t(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right.T by oneDNN's matmul (the op torch.compile lowers a CPU linear to)."""
    return torch.ops.mkldnn._linear_pointwise(left, right, None, "none", [], "")


def mm_t(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left [M, K] @ right [N, K].T, by whichever library runs it faster here."""
    if _onednn_here(left):
        return onednn_mm_t(left, right)
    return torch.mm(left, right.t())


def t_mm(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left [K, M].T @ right [K, N] (a weight gradient), by whichever library runs it faster."""
    if _onednn_here(left):
        return onednn_mm_t(left.t(), right.t())
    return torch.mm(left.t(), right)


def products_library(device: torch.device, precision: str) -> str:
    """For run headers: what runs the softmax layer's products."""
    if device.type == "cpu" and precision == "fp32" and onednn_fp32_products():
        return "oneDNN (logits, weight gradient), torch.mm (d hidden)"
    return "torch.mm"


def _onednn_here(left: torch.Tensor) -> bool:
    return left.dtype == torch.float32 and left.device.type == "cpu" and onednn_fp32_products()
