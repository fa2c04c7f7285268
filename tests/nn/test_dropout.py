"""Hashed dropout: the kernel and its torch twin draw the same masks; the backward pass uses the
forward's mask; the keep rate and expectation are right; a seed repeats."""

import pytest
import torch

from lstmkit.nn import dropout as hashed
from lstmkit.nn import kernels


def _kernel_or_skip():
    if not (kernels.enabled() and kernels.compiler()):
        pytest.skip("no native kernels here (no compiler, not Linux, or LSTMKIT_KERNELS=0)")
    kernel = hashed.native_kernel()
    assert kernel is not None, kernels.build_error("dropout")
    return kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n", [1, 7, 2048, 4099, 6151])  # blocks of 2048
def test_the_kernel_draws_the_masks_its_torch_twin_draws(dtype, n):
    kernel = _kernel_or_skip()
    x = torch.randn(n).to(dtype)
    for p, seed in ((0.5, 1), (0.65, -(1 << 62)), (0.1, (1 << 63) - 1)):
        expected = (x.float() * hashed.keep_scale(n, p, seed)).to(dtype)
        assert torch.equal(kernel.hash_dropout(x, p, seed), expected)


def test_keep_rate_and_scale_keep_the_expectation():
    ones = torch.ones(200_000)
    for p in (0.2, 0.5, 0.65):
        out = hashed.hash_dropout(ones, p)
        assert (out == 0).float().mean().item() == pytest.approx(p, abs=0.005)
        assert out.mean().item() == pytest.approx(1.0, abs=0.01)
        zero, kept = out.unique().tolist()
        assert zero == 0 and kept == pytest.approx(65536 / (65536 - round(p * 65536)))


def test_the_backward_pass_drops_what_the_forward_dropped():
    x = torch.randn(8, 5, 33, requires_grad=True)
    out = hashed.hash_dropout(x, 0.4)
    out.sum().backward()
    kept = out != 0
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept], (out / x)[kept].detach())


def test_the_global_seed_repeats_the_masks_and_eval_is_the_identity():
    x = torch.randn(3, 1000)
    torch.manual_seed(5)
    a = hashed.hash_dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(hashed.hash_dropout(x, 0.5), a)
    assert not torch.equal(hashed.hash_dropout(x, 0.5), a), "the next draw is another mask"
    layer = hashed.Dropout(0.5).eval()
    assert layer(x) is x


def test_without_the_kernel_the_same_masks_are_drawn(monkeypatch):
    _kernel_or_skip()
    x = torch.randn(4, 999)
    torch.manual_seed(3)
    native = hashed.hash_dropout(x, 0.3)
    monkeypatch.setitem(kernels._loaded, "dropout", None)
    torch.manual_seed(3)
    assert torch.equal(hashed.hash_dropout(x, 0.3), native)


def test_a_rate_that_rounds_to_dropping_everything_drops_everything():
    assert torch.equal(hashed.keep_scale(9, 0.999999, 1), torch.zeros(9))
