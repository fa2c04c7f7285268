"""The softmax layer and its cross-entropy, fused: logits are made, used and dropped at once.

For a language model this layer dominates the work ([N, H] x [H, V] with V = 10,000 is ~75% of
the small preset's FLOPs). Written plainly, autograd keeps the [N, V] logits, then makes
softmax, its gradient and two more products in separate passes over memory. Here the forward
pass makes the logits with one product and turns them, in place, into the loss and
d loss / d logits = softmax - onehot (on the CPU with one native pass per row, see
kernels/softmax_xent.cpp); backward is just the two products that remain. The products run in
`compute_dtype` (bf16 under CPU autocast: ~2x fp32 on CPUs with native bf16); log-sum-exp, the loss
and the bias gradient stay in fp32. On AMD CPUs the fp32 logits and weight-gradient products run
through oneDNN rather than torch.mm's BLAS (nn/products.py).
"""

from __future__ import annotations

from types import ModuleType

import torch

from lstmkit.nn import kernels
from lstmkit.nn.bf16_copies import active_copies, gradient_for_autograd, weight_for_products
from lstmkit.nn.products import mm_t, t_mm

CHUNK_ELEMENTS = 1 << 23  # logits per product when no gradient is kept (bounds eval memory)
TRANSPOSED_LOGITS = True  # bf16 training's [V, N] layout (see _columns_kernel); a switch for
#                           measuring against the [N, V] one (bench/throughput.py --logits-rows)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, compute_dtype):
        h = hidden.to(compute_dtype)
        ctx.copies = active_copies()
        w = weight_for_products(weight, compute_dtype, ctx.copies)
        b = bias.float().contiguous()
        targets = targets.contiguous()
        if not any(ctx.needs_input_grad[:3]):
            return _loss_only(h, w, b, targets)
        ctx.transposed = _columns_kernel(h)
        if ctx.transposed:  # dlogits^T [V, N]
            dlogits = torch.mm(w, h.t())
            nll, grad_bias = ctx.transposed.softmax_xent_columns_(dlogits, b, targets)
        else:
            dlogits = mm_t(h, w)
            nll, grad_bias = softmax_xent_(dlogits, b, targets, want_grad=True)
        ctx.save_for_backward(dlogits, h, w, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        ctx.weight = weight if ctx.copies is not None else None  # for its copy's gradient
        return nll.sum()

    @staticmethod
    def backward(ctx, grad_total):
        dlogits, h, w, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        # Scaling the small [N, H] factor, not the [V, H] product, saves a pass over memory.
        h_scaled = h * grad_total.to(h.dtype)
        if ctx.transposed:
            grad_hidden = torch.mm(dlogits.t(), w)
            grad_weight = torch.mm(dlogits, h_scaled)
        else:
            grad_hidden = torch.mm(dlogits, w)
            grad_weight = t_mm(dlogits, h_scaled)
        grad_weight = gradient_for_autograd(grad_weight, weight_dtype, ctx.weight, ctx.copies) \
            if ctx.needs_input_grad[1] else None
        return (grad_hidden.to(hidden_dtype) * grad_total, grad_weight,
                (grad_bias * grad_total).to(bias_dtype), None, None)


def training_logits_layout(device: torch.device, precision: str) -> str:
    """For run headers and benchmarks: how training lays out the logits here."""
    probe = torch.empty(0, dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                        device=device)
    return "[V, N] (column kernel)" if _columns_kernel(probe) else "[N, V]"


def _columns_kernel(h: torch.Tensor) -> ModuleType | None:
    """The kernel, where training takes the transposed layout: bf16 on a CPU whose build has
    the column kernel (AVX-512). On an AMX Xeon the three bf16 products took 0.64-0.8x the time
    there at the small, medium and large shapes (logits 1.6x, weight gradient 2-2.3x faster,
    d hidden 0.6-1.3x; bench/gemm.py --layouts); in fp32 the row layout stays."""
    if not TRANSPOSED_LOGITS or h.dtype != torch.bfloat16 or h.device.type != "cpu":
        return None
    kernel = kernels.softmax_xent()
    return kernel if kernel is not None and kernel.has_columns else None


def _loss_only(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, targets: torch.Tensor
               ) -> torch.Tensor:
    rows = max(1, CHUNK_ELEMENTS // w.size(0))
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for lo in range(0, h.size(0), rows):
        logits = mm_t(h[lo:lo + rows], w)
        total += softmax_xent_(logits, b, targets[lo:lo + rows], want_grad=False)[0].sum()
    return total


def softmax_xent_(logits: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                  want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row NLL of logits + bias [N, V] at targets [N], in fp32.

    With want_grad the logits are overwritten by softmax - onehot (their gradient) and the
    bias gradient (column sums, fp32) is returned too. Native kernel on the CPU when it builds.
    """
    kernel = kernels.softmax_xent() if logits.device.type == "cpu" else None
    if kernel is not None and logits.dtype in (torch.float32, torch.bfloat16):
        nll, grad_bias = kernel.softmax_xent_(logits.contiguous(), bias, targets, want_grad)
        return nll, grad_bias
    return plain_softmax_xent_(logits, bias, targets, want_grad)


def plain_softmax_xent_(logits: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                        want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same contract in plain PyTorch (CUDA, or no C++ compiler)."""
    x = logits.float() + bias
    if not want_grad:  # fused log_softmax + pick: ~10% faster than logsumexp (measured)
        return torch.nn.functional.cross_entropy(x, targets, reduction="none"), None
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    t = targets.unsqueeze(1)
    nll = (lse - x.gather(1, t)).squeeze(1)
    probs = x.sub_(lse).exp_()
    grad_bias = probs.sum(0) - torch.bincount(targets, minlength=logits.size(1)).float()
    probs.scatter_add_(1, t, torch.full_like(t, -1, dtype=probs.dtype))
    logits.copy_(probs)
    return nll, grad_bias


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         targets: torch.Tensor, compute_dtype: torch.dtype | None = None
                         ) -> torch.Tensor:
    """sum_i -log softmax(hidden_i @ weight.T + bias)[targets_i], as one fused operation.

    hidden [N, H], weight [V, H], bias [V], targets [N] -> scalar fp32.
    """
    if compute_dtype is None:
        compute_dtype = _autocast_dtype(hidden.device) or hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
