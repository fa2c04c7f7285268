"""Dropout whose mask is a hash of (seed, position): one pass forward, one pass backward.

`torch.nn.Dropout` on the CPU draws a float per element with `bernoulli_` and stores the mask
for the backward pass; at PTB medium that was 11% of a bf16 training step. Here each element's
keep decision is 16 bits of splitmix64(seed, position) (kernels/dropout.cpp): the backward pass
regenerates the mask from the same seed, so nothing is stored, and the seed is drawn from
torch's global generator, which checkpoints save: a resumed run draws the same masks.

The keep rate is 1 - round(p * 65536) / 65536 (within 1/65536 of 1 - p) and kept values are
scaled by its inverse, so the expectation is exact. Without the native kernel the same hash
runs as torch integer ops (same masks, slower); on CUDA this is torch's own dropout.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn
from torch.nn import functional as F

from lstmkit.nn import kernels

_LANES = 4  # 16-bit keep decisions per 64-bit hash
_INT64 = 1 << 64


def _signed(value: int) -> int:
    return value - _INT64 if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                              0x94D049BB133111EB))
_SPREAD = _signed(0xD1B54A32D192ED03)


def hash_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with a hashed mask on the CPU (see the module docstring)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training=True)
    seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64))
    return _HashDropout.apply(x, p, seed)


class Dropout(nn.Module):
    """Drop-in for `torch.nn.Dropout` (no parameters, so checkpoints are unchanged)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hash_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _apply_mask(x, p, seed)

    @staticmethod
    def backward(ctx, grad):
        return _apply_mask(grad, ctx.p, ctx.seed), None, None


def _apply_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    kernel = native_kernel()
    if kernel is not None:
        return kernel.hash_dropout(x, p, seed)
    # In fp32, rounded once, as the kernel does.
    return (x.float() * keep_scale(x.numel(), p, seed).view(x.shape)).to(x.dtype)


def native_kernel() -> ModuleType | None:
    return kernels.load("dropout")


def keep_scale(n: int, p: float, seed: int) -> torch.Tensor:
    """The mask times the scale, [n] fp32, as the kernel computes it (torch integer ops)."""
    threshold = int(p * 65536 + 0.5)
    groups = torch.arange((n + _LANES - 1) // _LANES, dtype=torch.int64)
    bits = _splitmix64(torch.full_like(groups, seed) ^ (groups * _SPREAD))
    lanes = torch.stack([_shift_right(bits, 16 * k) & 0xFFFF for k in range(_LANES)], dim=1)
    scale = 0.0 if threshold >= 65536 else 65536.0 / (65536 - threshold)
    return (lanes.reshape(-1)[:n] >= threshold).float() * scale


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> k) & ((1 << (64 - k)) - 1) if k else z


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    # int64 products wrap modulo 2**64 as the C++ uint64_t ones do.
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


# --- AWD-LSTM's dropouts (Merity et al. 2017): masks drawn from torch's global generator,
# which checkpoints save, so a resumed run draws the same ones. ---

def locked_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Variational dropout of batch-first `x` [B, T, H]: one mask per row, the same at every
    time step (Gal & Ghahramani 2016); kept units scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return x
    mask = torch.empty(x.size(0), 1, x.size(2), device=x.device).bernoulli_(1 - p)
    return x * mask.div_(1 - p).to(x.dtype)


def embedding_dropout(embedded: torch.Tensor, ids: torch.Tensor, vocab_size: int, p: float,
                      training: bool = True) -> torch.Tensor:
    """Drop whole word types: every occurrence of a dropped type in the window is zero, the
    kept ones scaled by 1 / (1 - p). `embedded` [B, T, H] is the lookup of `ids` [B, T].

    The same as looking `ids` up in the embedding matrix with rows dropped, without touching
    the matrix (which a tied output layer reads undropped)."""
    if not training or p == 0:
        return embedded
    keep = torch.empty(vocab_size, device=ids.device).bernoulli_(1 - p).div_(1 - p)
    return embedded * keep[ids].unsqueeze(-1).to(embedded.dtype)


def weight_drop(weight: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """DropConnect (Wan et al. 2013) on a weight matrix: one mask for the whole window."""
    return hash_dropout(weight, p, training)
