"""The fused softmax layer + cross-entropy computes the plain one's value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lstmkit.nn import products
from lstmkit.nn.softmax import linear_cross_entropy

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


@pytest.mark.skipif(not products.onednn_matmul_available(), reason="no oneDNN matmul")
@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN", "torch.mm"])
@pytest.mark.parametrize("rows", [1, 133])
def test_fp32_products_through_either_library_match_plain_autograd(onednn, rows, monkeypatch):
    monkeypatch.setattr(products, "onednn_fp32_products", lambda: onednn)
    plain, fused, expected, got = plain_and_fused(torch.float32, rows)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for e, g in zip(expected, got, strict=True):
        assert ((g - e).norm() / e.norm()).item() < 1e-5


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


def _kernel_or_skip():
    """The kernel; a skip only where none can be built (no compiler, not Linux, or
    LSTMKIT_KERNELS=0). Where a compiler exists, a kernel that fails to build fails the test."""
    from lstmkit.nn import kernels
    if not (kernels.enabled() and kernels.compiler()):
        pytest.skip("no native kernels here (no compiler, not Linux, or LSTMKIT_KERNELS=0): "
                    "the plain path is the one in use")
    kernel = kernels.softmax_xent()
    assert kernel is not None, f"the kernel did not build: {kernels.build_error('softmax_xent')}"
    return kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("vocab", [7, 101, 10_000])  # tails of the 8- and 16-lane loops
def test_native_kernel_equals_the_plain_torch_contract(dtype, vocab):
    """The C++ row kernel (AVX-512, AVX2 or scalar, whichever this CPU built) against
    plain_softmax_xent_: NLL within 2e-6 relative; the softmax - onehot it writes in place
    within 1e-5 relative in fp32 (another exp, another summation order over 10k terms) and
    within two bf16 roundings (a value at a rounding boundary may land on either side);
    the bias gradient within 1e-5."""
    from lstmkit.nn.softmax import plain_softmax_xent_
    kernel = _kernel_or_skip()
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(37, vocab, generator=g) * 4).to(dtype)
    bias = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (37,), generator=g)
    for want_grad in (False, True):
        ours, plain = logits.clone(), logits.clone()
        nll, grad_bias = kernel.softmax_xent_(ours, bias, targets, want_grad)
        nll_ref, grad_bias_ref = plain_softmax_xent_(plain, bias, targets, want_grad)
        torch.testing.assert_close(nll, nll_ref, rtol=2e-6, atol=2e-6)
        if not want_grad:
            assert ours.equal(logits), "without want_grad the logits stay untouched"
            continue
        rtol, atol = (2.0 ** -7, 1e-5) if dtype == torch.bfloat16 else (1e-5, 1e-6)
        torch.testing.assert_close(ours.float(), plain.float(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad_bias, grad_bias_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_plain_path_gives_what_the_kernel_path_gives(dtype, monkeypatch):
    """linear_cross_entropy with the kernel and with plain PyTorch (as on CUDA or without a
    compiler): the same loss and gradients."""
    from lstmkit.nn import kernels
    _kernel_or_skip()
    with_kernel = plain_and_fused(dtype, 63)
    monkeypatch.setitem(kernels._loaded, "softmax_xent", None)
    without = plain_and_fused(dtype, 63)
    assert with_kernel[1].item() == pytest.approx(without[1].item(), rel=1e-5)
    for a, b in zip(with_kernel[3], without[3], strict=True):
        assert ((a - b).norm() / b.norm()).item() < (1e-5 if dtype == torch.float32 else 1e-2)


def _column_kernel_or_skip():
    kernel = _kernel_or_skip()
    if not kernel.has_columns:
        pytest.skip("the column kernel is built for AVX-512 CPUs only (where bf16 is native)")
    return kernel


@pytest.mark.parametrize("rows,vocab", [(37, 101), (16, 7), (5, 3), (133, 10_000)])
def test_the_column_kernel_equals_the_plain_torch_contract(rows, vocab):
    """softmax_xent_columns_ on logits^T [V, N] (bf16) against plain_softmax_xent_ on the
    logits [N, V], within the row kernel's bf16 tolerances; rows that are not a multiple of
    the 16 columns a group takes."""
    from lstmkit.nn.softmax import plain_softmax_xent_
    kernel = _column_kernel_or_skip()
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(rows, vocab, generator=g) * 4).bfloat16()
    bias = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    plain = logits.clone()
    nll_ref, grad_bias_ref = plain_softmax_xent_(plain, bias, targets, True)
    transposed = logits.t().contiguous()
    nll, grad_bias = kernel.softmax_xent_columns_(transposed, bias, targets)
    # each column sums its V terms in four running sums, not a tree: ~1e-5 at V = 10k
    torch.testing.assert_close(nll, nll_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(transposed.t().float(), plain.float(), rtol=2.0 ** -7, atol=1e-5)
    torch.testing.assert_close(grad_bias, grad_bias_ref, rtol=1e-5, atol=1e-5)


def test_training_in_either_layout_gives_the_same_loss_and_gradients(monkeypatch):
    """bf16 training with the logits as [V, N] (the column kernel) and as [N, V]."""
    from lstmkit.nn import softmax
    _column_kernel_or_skip()
    columns = plain_and_fused(torch.bfloat16, 133)
    monkeypatch.setattr(softmax, "_columns_kernel", lambda h: None)
    rows = plain_and_fused(torch.bfloat16, 133)
    assert columns[1].item() == pytest.approx(rows[1].item(), rel=1e-5)
    for a, b in zip(columns[3], rows[3], strict=True):
        assert ((a - b).norm() / b.norm()).item() < 1e-2


def test_the_logits_layout_named_is_the_one_training_takes(monkeypatch):
    from lstmkit.nn import kernels, softmax
    cpu = torch.device("cpu")
    assert softmax.training_logits_layout(cpu, "fp32") == "[N, V]"
    kernel = kernels.softmax_xent()
    columns = kernel is not None and kernel.has_columns
    assert (softmax.training_logits_layout(cpu, "bf16") == "[V, N] (column kernel)") == columns
    monkeypatch.setattr(softmax, "TRANSPOSED_LOGITS", False)
    assert softmax.training_logits_layout(cpu, "bf16") == "[N, V]"
