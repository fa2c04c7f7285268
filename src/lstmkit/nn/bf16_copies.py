"""bf16 copies of fp32 weights that the SGD step keeps current, and the bf16 gradients it reads.

In bf16 training the products read each weight matrix in bf16 and make its gradient in bf16.
Done plainly, every window casts each fp32 weight to bf16, the backward pass casts each bf16
weight gradient to fp32, the gradient norm reads that, and SGD reads it and the weight and
writes the weight: five passes over each matrix besides the products. While a `Bf16Copies` is
in use (`in_use`), lstmkit's products (the softmax layer, the LSTM layer) take a weight's bf16
copy instead of casting it and hand it their bf16 gradient instead of autograd (`weight.grad`
stays unset, as the embedding's row gradients leave it); the gradient norm reads the bf16
gradients and `step` updates each fp32 weight from its bf16 gradient and writes the new bf16
copy in the same pass (kernels/sgd_bf16.cpp; the plain path computes the same, see _plain_step).

A copy is always what `weight.to(torch.bfloat16)` gives (NaN's bits aside): that cast makes it
when it is first asked for, the step that changes the weight rewrites it, and a weight changed
in place in any other way (load_state_dict, a rollback: its version moves) is cast again. A
weight that torch's optimizer steps instead (its gradient came to `.grad`) loses its copy:
PyTorch's fused optimizers leave no trace in a tensor's version, and neither does a write
through `.data`, so only the trainer's own step may change these weights while they are in use.
The update is torch's fused SGD's (bit for bit with the CPU wheel's, tested), so training
computes what it computes with fp32 gradients, save the gradient norm's order of summation. The
trainer uses it where its step is the whole update: plain SGD without weight decay, one process
(DDP all-reduces `.grad`) and an untied model (the embedding's use of a tied weight would give
it a second gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from lstmkit.nn import kernels
from lstmkit.nn.kept import kept_cast

_ACTIVE: ContextVar[Bf16Copies | None] = ContextVar("lstmkit_bf16_copies", default=None)


class Bf16Copies:
    """bf16 copies and bf16 gradients of `weights` (fp32), for the windows run `in_use`."""

    def __init__(self, weights: Iterable[torch.Tensor]) -> None:
        self._weights = {id(w): w for w in weights if w.dtype == torch.float32}
        self._copies: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (copy, weight version)
        self._grads: dict[int, torch.Tensor] = {}

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The products run inside the block read these copies and give these gradients."""
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    def copy_of(self, weight: torch.Tensor) -> torch.Tensor | None:
        """`weight` in bf16 (kept, or cast now if the weight changed); None if not one of
        these weights."""
        key = id(weight)
        if self._weights.get(key) is not weight:
            return None
        entry = self._copies.get(key)
        if entry is None or entry[1] != weight._version:
            entry = self._copies[key] = (weight.detach().to(torch.bfloat16), weight._version)
        return entry[0]

    def take_grad(self, weight: torch.Tensor, grad: torch.Tensor) -> bool:
        """Keeps `grad` (bf16) as `weight`'s gradient; False where `weight` is not one of these
        weights or `grad` is not bf16 (the caller then returns it to autograd)."""
        key = id(weight)
        if self._weights.get(key) is not weight or grad.dtype != torch.bfloat16:
            return False
        if grad.shape != weight.shape:
            raise ValueError(f"a gradient of shape {tuple(grad.shape)} for a weight of shape "
                             f"{tuple(weight.shape)}")
        if key in self._grads:  # autograd would add the parts in fp32; no lstmkit model has two
            raise RuntimeError("a weight with a bf16 copy was used twice in one window")
        self._grads[key] = grad.contiguous()
        return True

    def clear_grads(self) -> None:
        self._grads.clear()

    def sums_of_squares(self) -> list[torch.Tensor]:
        """Each kept gradient's sum of squares (fp32 scalars), for the gradient norm."""
        kernel = kernels.sgd_bf16()
        if kernel is None:
            return [_plain_sum_of_squares(g) for g in self._grads.values()]
        return [torch.tensor(kernel.sum_of_squares(g), dtype=torch.float32)
                for g in self._grads.values()]

    def step(self, learning_rate: Callable[[torch.Tensor], float], divisor: float) -> None:
        """SGD on every weight with a kept gradient: w -= lr * grad / divisor, its copy
        rewritten; the copies of weights with a `.grad` (torch's optimizer steps those) are
        dropped."""
        kernel = kernels.sgd_bf16()
        for key, weight in self._weights.items():
            grad = self._grads.get(key)
            if weight.grad is not None:
                if grad is not None:
                    raise RuntimeError("a weight got a bf16 gradient and a .grad in one window")
                self._copies.pop(key, None)
            if grad is None:
                continue
            entry = self._copies.get(key)
            copy = entry[0] if entry is not None else torch.empty_like(weight,
                                                                       dtype=torch.bfloat16)
            with torch.no_grad():
                if kernel is not None:
                    kernel.step(weight, grad, copy, learning_rate(weight), divisor)
                else:
                    _plain_step(weight, grad, copy, learning_rate(weight), divisor)
            self._copies[key] = (copy, weight._version)


def active_copies() -> Bf16Copies | None:
    """The Bf16Copies in use here, if any."""
    return _ACTIVE.get()


def weight_for_products(weight: torch.Tensor, dtype: torch.dtype,
                        copies: Bf16Copies | None) -> torch.Tensor:
    """`weight` in `dtype`: the kept bf16 copy where `copies` has one, the cast a
    `weights_kept` block holds inside one (nn/kept.py), else cast."""
    if weight.dtype == dtype:
        return weight
    if copies is not None and dtype == torch.bfloat16:
        copy = copies.copy_of(weight)
        if copy is not None:
            return copy
    held = kept_cast(weight, dtype)
    return held if held is not None else weight.to(dtype)


def gradient_for_autograd(grad: torch.Tensor, dtype: torch.dtype, weight: torch.Tensor | None,
                          copies: Bf16Copies | None) -> torch.Tensor | None:
    """What a product's backward returns for `weight`: None where `copies` keeps the (bf16)
    gradient, else the gradient in `dtype` (the weight's)."""
    if weight is not None and copies is not None and copies.take_grad(weight, grad):
        return None
    return grad.to(dtype)


def _plain_step(weight: torch.Tensor, grad: torch.Tensor, copy: torch.Tensor, lr: float,
                divisor: float) -> None:
    """The kernel's step in PyTorch ops, more passes: w + g * -lr in float64 (the product of two
    floats is exact there) rounded to fp32 is the kernel's fused multiply-add, except where the
    float64 sum lands exactly halfway between two floats (rare; then 1 ulp apart)."""
    step = grad.float().div_(divisor).double().mul_(float(torch.tensor(-lr)))
    weight.copy_(step.add_(weight))
    copy.copy_(weight)


def _plain_sum_of_squares(grad: torch.Tensor) -> torch.Tensor:
    """In float64 (bf16 values are exact there), rounded to fp32 as the kernel's sum is."""
    flat = grad.reshape(-1).double()
    return torch.dot(flat, flat).float()
