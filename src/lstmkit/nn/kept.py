"""Weights held in their computing form while a block of calls without gradients lasts.

An evaluation pass, scoring and sampling run many small calls on weights that do not change:
inside a `weights_kept()` block the LSTM layer's W_ih cast and W_hh packed panels (nn/lstm.py)
and the output layer's cast weights (`kept_linear`; the softmax layer's through
`weight_for_products`, nn/bf16_copies.py) are made once and shared,
instead of once per window or per token. The caller promises the weights do not change inside
the block: PyTorch's fused optimizers update weights without a trace in their version counters,
so no check could tell. What changes visibly (a load, an in-place op: the tensor or its version
differs) is made again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")

# Per (id of the first source, what is kept): (the sources, their versions and `tag`, the kept
# value). Holding the sources keeps their ids unique while the block lasts. A context variable:
# each thread and each task sees its own, and nothing outlives the block.
_KEPT: ContextVar[dict[tuple[int, str], tuple] | None] = ContextVar("lstmkit_kept_weights",
                                                                     default=None)


@contextmanager
def weights_kept() -> Iterator[None]:
    """A block whose calls without gradients share the weights' computing forms (see the
    module's doc); a block inside another shares the outer one's, which already holds them."""
    outer = _KEPT.get()
    token = _KEPT.set(outer if outer is not None else {})
    try:
        yield
    finally:
        _KEPT.reset(token)


def kept_weights_context() -> Context:
    """A context whose every `.run(...)` call runs inside one `weights_kept` block that lasts as
    long as the context (the enclosing block's, if there is one): for a sampler whose tokens
    are calls of their own, with the caller's code in between (lm/generate.py)."""
    context = copy_context()
    outer = _KEPT.get()
    context.run(_KEPT.set, outer if outer is not None else {})
    return context


def weights_are_kept() -> bool:
    """Whether this call runs inside a `weights_kept()` block."""
    return _KEPT.get() is not None


def kept(what: str, sources: tuple[torch.Tensor, ...], tag: Any, make: Callable[[], T]
         ) -> T | None:
    """`make()`, made once per block for `sources` (and `tag`, say a dtype) while they stay the
    same tensors at the same versions and storage; None outside a block. (A change through
    `.data` moves neither: it is not seen.)"""
    store = _KEPT.get()
    if store is None:
        return None
    key = (id(sources[0]), what)
    state = (tuple((s._version, s.data_ptr(), s.dtype, s.device) for s in sources), tag)
    entry = store.get(key)
    if entry is None or entry[1] != state or any(
            a is not b for a, b in zip(entry[0], sources, strict=True)):
        entry = store[key] = (sources, state, make())
    return entry[2]


def kept_cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """`weight` cast to `dtype`, made once per block; None outside one."""
    return kept("cast", (weight,), dtype, lambda: weight.detach().to(dtype))


def kept_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`layer(x)`; under autocast without gradients inside a block, on the layer's weight and
    bias cast once per block, where autocast casts them again at every call (for a 10,000-word
    output layer, a sampled token's largest cost after the LSTM layer). The same product on
    the same operands, so the same numbers."""
    device = x.device.type
    if not (isinstance(layer, nn.Linear) and torch.is_autocast_enabled(device)
            and not torch.is_grad_enabled() and weights_are_kept()):
        return layer(x)
    dtype = torch.get_autocast_dtype(device)
    weight = kept_cast(layer.weight, dtype)
    bias = None if layer.bias is None else kept_cast(layer.bias, dtype)
    with torch.autocast(device, enabled=False):
        return F.linear(x.to(dtype), weight, bias)
