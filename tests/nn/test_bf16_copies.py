"""bf16 weight copies kept by the SGD step (nn/bf16_copies.py, kernels/sgd_bf16.cpp): the step
is torch's fused SGD from the fp32 gradient, the copy is the weight's bf16 cast, and training
with them computes what training that casts computes."""

from __future__ import annotations

import copy

import pytest
import torch

from lstmkit.device import autocast, cpu_has_native_bf16
from lstmkit.fields import apply_overrides
from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, gradient_norm, make_optimizer
from lstmkit.nn import bf16_copies, kernels
from lstmkit.nn.bf16_copies import Bf16Copies
from lstmkit.nn.embedding import collect_row_grads

needs_compiler = pytest.mark.skipif(not (kernels.enabled() and kernels.compiler()),
                                    reason="no C++ compiler, not Linux, or LSTMKIT_KERNELS=0")
VOCAB = 60


@pytest.fixture(params=["native", "plain"])
def path(request, monkeypatch):
    """The kernel, or the plain PyTorch path it falls back to."""
    if request.param == "native":
        if not (kernels.enabled() and kernels.compiler()):
            pytest.skip("no C++ compiler, not Linux, or LSTMKIT_KERNELS=0")
        assert kernels.sgd_bf16() is not None, kernels.build_error("sgd_bf16")
    else:
        monkeypatch.setattr(kernels, "sgd_bf16", lambda: None)
    return request.param


@needs_compiler
def test_the_shipped_sgd_kernel_builds_where_a_compiler_exists():
    assert kernels.sgd_bf16() is not None, kernels.build_error("sgd_bf16")


@pytest.mark.parametrize("size", [(4000, 37), (5,), (16 * 4096 + 3,)])
def test_the_step_is_torch_fused_sgd_and_the_copy_its_cast(path, size):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(size, generator=gen)
    grad = (torch.randn(size, generator=gen) * 3).bfloat16()
    weight.view(-1)[:2] = torch.tensor([1e-39, -3e-40])  # denormals stay, as in torch's cast
    grad.view(-1)[:2] = 0
    lr, divisor = 0.37, torch.tensor(2.718, dtype=torch.float32)
    want = torch.nn.Parameter(weight.clone())
    want.grad = grad.float()
    sgd = torch.optim.SGD([want], lr=lr, fused=True)
    sgd.grad_scale = divisor
    sgd.step()
    copies = Bf16Copies([weight])
    copies.take_grad(weight, grad)
    copies.step(lambda w: lr, float(divisor))
    assert torch.equal(weight, want.detach())
    assert torch.equal(copies.copy_of(weight), want.detach().bfloat16())


def test_the_sum_of_squares_is_near_the_float64_one(path):
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(3_000_001, generator=gen).bfloat16(), torch.randn(7).bfloat16()]
    weights = [torch.zeros(g.shape) for g in grads]
    copies = Bf16Copies(weights)
    for weight, grad in zip(weights, grads, strict=True):
        copies.take_grad(weight, grad)
    got = [float(s) for s in copies.sums_of_squares()]
    want = [float(g.double().square().sum()) for g in grads]
    assert got == pytest.approx(want, rel=2e-6)


def test_a_copy_follows_a_weight_changed_in_place_and_only_known_weights_have_one():
    weight, other = torch.randn(8, 4), torch.randn(8, 4)
    copies = Bf16Copies([weight])
    first = copies.copy_of(weight)
    assert torch.equal(first, weight.bfloat16()) and copies.copy_of(weight) is first
    weight.copy_(other)  # as load_state_dict or a rollback does
    assert torch.equal(copies.copy_of(weight), other.bfloat16())
    assert copies.copy_of(other) is None
    assert not copies.take_grad(other, other.bfloat16())
    assert not copies.take_grad(weight, other), "an fp32 gradient goes back to autograd"


def test_a_weight_torch_steps_loses_its_copy():
    """torch's fused SGD changes a weight without moving its version: the copy is dropped."""
    weight = torch.nn.Parameter(torch.ones(16))
    copies = Bf16Copies([weight])
    copies.copy_of(weight)
    weight.grad = torch.ones(16)
    sgd = torch.optim.SGD([weight], lr=0.5, fused=True)
    copies.step(lambda w: 0.5, 1.0)
    sgd.step()
    assert torch.equal(copies.copy_of(weight), torch.full((16,), 0.5).bfloat16())


def config(**overrides):
    return apply_overrides(preset("test"), {"hidden_size": 32, "num_layers": 2, "keep_prob": 1.0,
                                            "precision": "bf16", **overrides}, "test")


def train(model, cfg, windows, keep_copies: bool, max_norm: float):
    """The trainer's bf16 step over `windows`: casting the weights every window, or with the
    copies kept by the step."""
    optimizer = make_optimizer(cfg, model)
    params = list(model.parameters())
    row_grads = collect_row_grads(model.embedding)
    copies = Bf16Copies(params) if keep_copies else None
    norms = []
    state = model.zero_state(windows[0][0].size(0))
    for ids, targets in windows:
        optimizer.zero_grad(set_to_none=True)
        row_grads.clear()
        with autocast("bf16", torch.device("cpu")):
            if copies is None:
                nll, state = model.window_nll(ids, targets, state)
            else:
                copies.clear_grads()
                with copies.in_use():
                    nll, state = model.window_nll(ids, targets, state)
        state = tuple(s.detach() for s in state)
        nll.backward()
        norm = gradient_norm(params, row_grads, copies)
        norms.append(float(norm))
        clipped_step(optimizer, norm, max_norm, row_grads=row_grads, copies=copies)
    return norms


def windows(count: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (4, 7), generator=gen),
             torch.randint(0, VOCAB, (4, 7), generator=gen)) for _ in range(count)]


@pytest.mark.parametrize("lstm_impl", ["native", "onednn"])
@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clipped", "unclipped"])
def test_training_with_copies_is_training_that_casts(path, lstm_impl, max_norm):
    cfg = config(lstm_impl=lstm_impl)
    torch.manual_seed(0)
    cast = build_language_model(cfg, VOCAB)
    kept = copy.deepcopy(cast)
    start = {name: p.detach().clone() for name, p in cast.named_parameters()}
    data = windows(4)
    cast_norms = train(cast, cfg, data, False, max_norm)
    kept_norms = train(kept, cfg, data, True, max_norm)
    assert kept_norms == pytest.approx(cast_norms, rel=1e-5)
    assert kept.decoder.weight.grad is None, "its gradient stayed bf16, beside the copy"
    if lstm_impl == "native" and cpu_has_native_bf16():
        assert kept.rnn.weight_hh_l0.grad is None and kept.rnn.weight_ih_l1.grad is None
    else:  # oneDNN's layer, and any LSTM layer where bf16 is not native (it runs in fp32 there),
        # gives autograd fp32 gradients: torch's SGD steps those weights
        assert kept.rnn.weight_hh_l0.grad is not None
    for (name, a), b in zip(cast.named_parameters(), kept.parameters(), strict=True):
        assert not torch.equal(a, start[name]), f"{name} was trained"
        if max_norm > 1e5:  # never clipped: only the norms' summation order differs, unused
            assert torch.equal(b, a), name
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=2e-6, msg=name)


@pytest.mark.parametrize("change, keeps", [
    ({}, True), ({"precision": "fp32"}, False), ({"optimizer": "adam"}, False),
    ({"weight_decay": 1e-6}, False), ({"tie_weights": True, "embedding_size": 32}, False),
])
def test_the_trainer_keeps_copies_only_where_its_step_is_the_whole_update(change, keeps):
    from lstmkit.lm.train import keeps_bf16_copies

    cfg = config(**change)
    model = build_language_model(cfg, VOCAB)
    cpu = torch.device("cpu")
    assert keeps_bf16_copies(cfg, model, cpu, distributed=False) == keeps
    assert not keeps_bf16_copies(cfg, model, cpu, distributed=True)


def test_the_plain_step_is_the_kernel_step():
    if not (kernels.enabled() and kernels.compiler()):
        pytest.skip("no C++ compiler, not Linux, or LSTMKIT_KERNELS=0")
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(1000, 33, generator=gen)
    grad = torch.randn(1000, 33, generator=gen).bfloat16()
    plain, plain_copy = weight.clone(), torch.empty(1000, 33, dtype=torch.bfloat16)
    bf16_copies._plain_step(plain, grad, plain_copy, 1.3, 4.5)
    native_copy = torch.empty_like(plain_copy)
    kernels.sgd_bf16().step(weight, grad, native_copy, 1.3, 4.5)
    assert torch.equal(weight, plain) and torch.equal(native_copy, plain_copy)
