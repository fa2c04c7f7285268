"""The fused softmax layer + cross-entropy computes the plain one's value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lstmkit.models.softmax import linear_cross_entropy

# bf16 products carry 8 mantissa bits: ~0.4% per element, averaged down in the sums.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-3, 1e-2)}  # (loss, grads) rel.


def plain_and_fused(dtype, rows, scale=2.0, grad_out=0.25):
    g = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, 24, generator=g).requires_grad_()
    w = (torch.randn(101, 24, generator=g) * 0.3).requires_grad_()
    b = torch.randn(101, generator=g).requires_grad_()
    t = torch.randint(0, 101, (rows,), generator=g)
    plain = F.cross_entropy(h @ w.t() + b, t, reduction="sum")
    (plain * grad_out).backward()
    expected = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    fused = linear_cross_entropy(h, w, b, t, dtype)
    (fused * grad_out).backward()
    return plain.detach(), fused.detach(), expected, [x.grad for x in (h, w, b)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 63, 133])
def test_fused_loss_and_gradients_match_plain_autograd(dtype, rows):
    loss_tol, grad_tol = TOLERANCE[dtype]
    plain, fused, expected, got = plain_and_fused(dtype, rows)
    assert fused.item() == pytest.approx(plain.item(), rel=loss_tol)
    for name, e, g in zip(("hidden", "weight", "bias"), expected, got, strict=True):
        error = ((g - e).norm() / e.norm()).item()
        assert error < grad_tol, f"{name} gradient off by {error:.2e}"


def test_no_gradients_are_made_when_none_are_needed():
    h, w, b = torch.randn(10, 4), torch.randn(7, 4), torch.randn(7)
    t = torch.randint(0, 7, (10,))
    with torch.no_grad():
        fused = linear_cross_entropy(h, w, b, t)
    assert fused.item() == pytest.approx(F.cross_entropy(h @ w.t() + b, t, reduction="sum").item(),
                                         rel=1e-5)


def test_under_cpu_autocast_products_run_in_bf16():
    h, w, b = torch.randn(10, 4), torch.randn(7, 4), torch.randn(7)
    t = torch.randint(0, 7, (10,))
    exact = linear_cross_entropy(h, w, b, t, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = linear_cross_entropy(h, w, b, t)
    assert mixed.dtype == torch.float32
    assert mixed.item() != exact.item()  # bf16 rounding shows ...
    assert mixed.item() == pytest.approx(exact.item(), rel=1e-2)  # ... but stays close
