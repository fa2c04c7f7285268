"""The optimizer and its step: the tutorial's SGD (or Adam) with gradient clipping by total norm.

`clip_grad_norm_` multiplies every gradient by the clipping factor in a pass of its own before
the optimizer's pass. Here the factor reaches PyTorch's fused optimizer as its gradient scale
(the gradients are divided by it, as `torch.amp.GradScaler` does for fused optimizers), so
clipping, weight decay and the update are one pass over the weights. What the step computes is
clip_grad_norm_'s rule: the gradients scaled by min(1, max_norm / (norm + 1e-6)).

An embedding's gradient may come as the rows a window looked up (nn/embedding.py's
`RowGrads`) instead of a dense `weight.grad`: the norm counts those rows and the step applies
them with the same rule, which for plain SGD without weight decay (`row_sparse_ok`) is what the
dense gradient's step does, untouched rows being left as they are. In bf16 training the weight
matrices' gradients may likewise come as bf16 tensors kept beside the weights' bf16 copies
(nn/bf16_copies.py): the norm counts them and their step is that SGD rule too.

fp16 training scales the loss (dynamic loss scaling, `torch.amp.GradScaler`'s rule): small
gradients would underflow fp16's range in the backward pass, so the loss is multiplied by a
scale before it; the step divides the gradients by the same scale in its fused pass. A step
whose gradients overflowed is skipped and the scale halved; after `LOSS_SCALE_GROWTH_INTERVAL`
good steps in a row it doubles. The scale lives in the run's Progress, so checkpoints, resume
and rollbacks carry it.
"""

from __future__ import annotations

import torch

from lstmkit.lm.config import LMConfig
from lstmkit.nn.bf16_copies import Bf16Copies
from lstmkit.nn.embedding import RowGrads

_FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused SGD and Adam run


def make_optimizer(config: LMConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The tutorial's plain SGD, or Adam; the epoch schedule sets the rate of either."""
    params = list(model.parameters())
    fused = fusable(params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate,
                                weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                           fused=fused)


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused optimizers take these parameters (float, on a supported device)."""
    return bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point()
                                for p in params)


def row_sparse_ok(config: LMConfig) -> bool:
    """Whether the optimizer can take the embedding's gradient as rows (see above)."""
    return config.optimizer == "sgd" and config.weight_decay == 0


def gradient_norm(params: list[torch.Tensor], row_grads: RowGrads | None = None,
                  copies: Bf16Copies | None = None) -> torch.Tensor:
    """The total L2 norm of the gradients (as clip_grad_norm_ computes it), `row_grads`' rows
    and the bf16 gradients `copies` keeps included; 0 without any."""
    grads = [p.grad for p in params if p.grad is not None]
    rows = row_grads.summed() if row_grads is not None else None
    if rows is not None:
        grads.append(rows[1])
    squares = [_sum_of_squares(g) for g in grads]
    if copies is not None:
        squares += copies.sums_of_squares()
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum().sqrt()


# On the CPU the sum of squares is taken in chunks of this many values: BLAS's fp32 dot product
# drifts from the float64 sum as its vector grows, by an amount that depends on the CPU (2e-5
# relative for 8.2M random floats on a Zen 3, 7e-5 for 60M); over a chunk it stays near 1e-7,
# and the chunks add in float64 (bench/optimizer_step.py's norm_relative_error).
SQUARES_CHUNK = 1 << 18


def _sum_of_squares(grad: torch.Tensor) -> torch.Tensor:
    """By BLAS's dot product, one pass: faster than vector_norm here and nearer the float64
    sum (vector_norm's fp32 sum is 1e-4 away on 8M random floats, tests/lm/test_optim.py)."""
    flat = grad.reshape(-1).float()
    if flat.device.type != "cpu" or flat.numel() <= SQUARES_CHUNK:
        return torch.dot(flat, flat)
    chunks = torch.stack([torch.dot(chunk, chunk) for chunk in flat.split(SQUARES_CHUNK)])
    return chunks.double().sum().float()


def clipped_step(optimizer: torch.optim.Optimizer, norm: torch.Tensor, max_norm: float,
                 loss_scale: float = 1.0, row_grads: RowGrads | None = None,
                 copies: Bf16Copies | None = None) -> None:
    """optimizer.step() with the gradients clipped to a total norm of at most `max_norm`, their
    norm being `norm` (gradient_norm's); gradients of a loss multiplied by `loss_scale` are
    divided by it first (`norm` is of the divided ones). `row_grads`, an embedding's gradient
    as rows, and the bf16 gradients `copies` keeps are applied by the same rule (plain SGD
    only: `row_sparse_ok`)."""
    divisor = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0) * loss_scale
    rows = row_grads.summed() if row_grads is not None else None
    if rows is not None:
        _row_sgd_step(optimizer, row_grads.weight, rows, divisor)
    if copies is not None:
        copies.step(lambda weight: _learning_rate(optimizer, weight), float(divisor))
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.grad_scale = divisor  # type: ignore[attr-defined]  # on the grads' device
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale  # type: ignore[attr-defined]
        return
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    torch._foreach_div_(grads, divisor)
    optimizer.step()


def _row_sgd_step(optimizer: torch.optim.Optimizer, weight: torch.Tensor,
                  rows: tuple[torch.Tensor, torch.Tensor], divisor: torch.Tensor) -> None:
    """SGD on the rows of `weight` a window looked up: w[ids] -= lr * (rows / divisor)."""
    lr = _learning_rate(optimizer, weight)
    ids, grad = rows
    with torch.no_grad():
        weight.index_add_(0, ids, grad.div(divisor).mul_(-lr).to(weight.dtype))


def _learning_rate(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> float:
    return next(group["lr"] for group in optimizer.param_groups
                if any(p is weight for p in group["params"]))


LOSS_SCALE_START = 2.0 ** 16  # GradScaler's defaults
LOSS_SCALE_GROWTH_INTERVAL = 2000


def starting_loss_scale(precision: str, saved: float) -> float:
    """The loss scale a run goes on with: fp16's saved one (or the start), 0 (none) otherwise."""
    if precision != "fp16":
        return 0.0
    return saved or LOSS_SCALE_START


def lower_loss_scale(scale: float) -> float:
    """The scale after a step whose gradients overflowed (the step is skipped)."""
    return scale / 2


def grown_loss_scale(scale: float, good_steps: int) -> tuple[float, int]:
    """(scale, good steps in a row) after a step whose gradients were finite."""
    good_steps += 1
    if good_steps >= LOSS_SCALE_GROWTH_INTERVAL:
        return scale * 2, 0
    return scale, good_steps
