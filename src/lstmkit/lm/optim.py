"""The optimizer and its step: the tutorial's SGD (or Adam) with gradient clipping by total norm.

`clip_grad_norm_` multiplies every gradient by the clipping factor in a pass of its own before
the optimizer's pass. Here the factor reaches PyTorch's fused optimizer as its gradient scale
(the gradients are divided by it, as `torch.amp.GradScaler` does for fused optimizers), so
clipping, weight decay and the update are one pass over the weights. What the step computes is
clip_grad_norm_'s rule: the gradients scaled by min(1, max_norm / (norm + 1e-6)).

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


def gradient_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the gradients (as clip_grad_norm_ computes it); 0 without any."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clipped_step(optimizer: torch.optim.Optimizer, norm: torch.Tensor, max_norm: float,
                 loss_scale: float = 1.0) -> None:
    """optimizer.step() with the gradients clipped to a total norm of at most `max_norm`, their
    norm being `norm` (gradient_norm's); gradients of a loss multiplied by `loss_scale` are
    divided by it first (`norm` is of the divided ones)."""
    divisor = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0) * loss_scale
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
