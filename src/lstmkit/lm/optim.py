"""The optimizer and its step: the tutorial's SGD (or Adam) with gradient clipping by total norm.

`clip_grad_norm_` multiplies every gradient by the clipping factor in a pass of its own before
the optimizer's pass. Here the factor reaches PyTorch's fused optimizer as its gradient scale
(the gradients are divided by it, as `torch.amp.GradScaler` does for fused optimizers), so
clipping, weight decay and the update are one pass over the weights. What the step computes is
clip_grad_norm_'s rule: the gradients scaled by min(1, max_norm / (norm + 1e-6)).
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


def clipped_step(optimizer: torch.optim.Optimizer, norm: torch.Tensor, max_norm: float) -> None:
    """optimizer.step() with the gradients clipped to a total norm of at most `max_norm`, their
    norm being `norm` (gradient_norm's)."""
    divisor = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
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

