"""fused_lstm against torch.nn.LSTM: outputs, final state and every gradient, on both paths
(the native kernel and the plain PyTorch fallback), in fp32 and under bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lstmkit.device import cpu_has_native_bf16
from lstmkit.errors import LstmkitWarning
from lstmkit.nn import kernels
from lstmkit.nn import lstm as fused
from lstmkit.nn.kept import _KEPT, weights_kept

# fp32: the same math as nn.LSTM up to summation order and exp/tanh rounding (measured ~3e-7).
FP32 = dict(rtol=1e-5, atol=1e-5)
# bf16: error against nn.LSTM in fp32, as a multiple of nn.LSTM's own bf16-autocast error on
# the same problem (measured: ours is 0.2x-1.0x of it; bf16 products with fp32 accumulation
# and fp32 c, as oneDNN's bf16 LSTM), plus a floor for tensors where both are ~0.
BF16_FACTOR = 3.0
BF16_FLOOR = 2e-3


@pytest.fixture(params=["native", "plain"])
def backend(request, monkeypatch):
    """Runs a test on the native kernel (skipped where it does not build) and the fallback."""
    if request.param == "native":
        if not (kernels.enabled() and kernels.compiler()):
            pytest.skip("no native kernels here (no compiler, not Linux, or LSTMKIT_KERNELS=0)")
        assert kernels.lstm_cell(fused._self_test) is not None, kernels.build_error("lstm_cell")
    else:
        monkeypatch.setitem(kernels._loaded, "lstm_cell", None)
    return request.param


def _problem(input_size, hidden, layers, batch, steps, seed=0):
    torch.manual_seed(seed)
    rnn = nn.LSTM(input_size, hidden, layers, batch_first=True)
    x = torch.randn(batch, steps, input_size)
    h0 = torch.randn(layers, batch, hidden) * 0.5
    c0 = torch.randn(layers, batch, hidden) * 0.5
    weights = [torch.randn(batch, steps, hidden), torch.randn(layers, batch, hidden),
               torch.randn(layers, batch, hidden)]  # loss = <o, w0> + <h_n, w1> + <c_n, w2>
    return rnn, x, h0, c0, weights


def _run(fn, rnn, x, h0, c0, weights):
    """(outputs, h_n, c_n, grads of x, h0, c0 and every parameter) as fp32."""
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    out, (h_n, c_n) = fn(x, (h0, c0))
    loss = sum((a.float() * w).sum() for a, w in zip((out, h_n, c_n), weights, strict=True))
    grads = torch.autograd.grad(loss, [x, h0, c0, *rnn.parameters()])
    return [t.detach().float() for t in (out, h_n, c_n, *grads)]


def _ours(rnn):
    return lambda x, s: fused.fused_lstm(x, s, fused.lstm_weights(rnn), rnn.dropout, rnn.training)


NAMES = ["outputs", "h_n", "c_n", "d_x", "d_h0", "d_c0"]


def _names(rnn):
    return NAMES + [f"d_{name}" for name, _ in rnn.named_parameters()]


@pytest.mark.parametrize("input_size,hidden,layers,batch,steps", [
    (5, 7, 1, 3, 4),       # hidden below one vector
    (11, 37, 2, 4, 5),     # vector tails, odd hidden
    (16, 16, 3, 2, 3),     # exactly one block, 3 layers
    (9, 40, 2, 1, 6),      # batch 1
    (13, 24, 2, 5, 1),     # T = 1
    (10, 130, 2, 3, 4),    # several blocks of units (fused.BLOCK) and a partial one
    (8, 1500, 2, 2, 3),    # the large preset's hidden size: 23 blocks and a partial one
])
def test_fp32_matches_nn_lstm(backend, input_size, hidden, layers, batch, steps):
    rnn, x, h0, c0, weights = _problem(input_size, hidden, layers, batch, steps)
    want = _run(rnn, rnn, x, h0, c0, weights)
    got = _run(_ours(rnn), rnn, x, h0, c0, weights)
    for name, g, w in zip(_names(rnn), got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, **FP32, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("input_size,hidden,layers,batch,steps", [
    (11, 37, 2, 4, 8),
    (20, 64, 3, 3, 6),
    (8, 7, 1, 1, 1),
    (12, 150, 2, 4, 5),
    (8, 1500, 2, 2, 3),    # the large preset's hidden size
])
def test_bf16_autocast_close_to_fp32(backend, input_size, hidden, layers, batch, steps):
    rnn, x, h0, c0, weights = _problem(input_size, hidden, layers, batch, steps, seed=1)
    exact = _run(rnn, rnn, x, h0, c0, weights)
    theirs = _nn_lstm_bf16(rnn, x, h0, c0, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _run(_ours(rnn), rnn, x, h0, c0, weights)
    for name, o, t, e in zip(_names(rnn), ours, theirs, exact, strict=True):
        scale = e.abs().max().item() + 1e-6
        our_err = (o - e).abs().max().item() / scale
        their_err = (t - e).abs().max().item() / scale
        assert our_err <= BF16_FACTOR * their_err + BF16_FLOOR, (name, our_err, their_err)


def _nn_lstm_bf16(rnn, x, h0, c0, weights):
    """nn.LSTM under bf16 autocast; where oneDNN has no bf16 LSTM (CPUs without native bf16),
    the same rounding of its products' operands to bf16, computed in fp32."""
    if cpu_has_native_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _run(rnn, rnn, x, h0, c0, weights)
    rounded = copy.deepcopy(rnn)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if name.startswith("weight"):
                param.copy_(param.bfloat16().float())
    return _run(lambda x, s: rounded(x.bfloat16().float(), (s[0].bfloat16().float(), s[1])),
                rounded, x, h0, c0, weights)


def test_dtypes_under_autocast(backend):
    rnn, x, h0, c0, _ = _problem(6, 10, 2, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = _ours(rnn)(x, (h0, c0))
        if cpu_has_native_bf16():  # elsewhere oneDNN has no bf16 LSTM to compare with
            assert rnn(x, (h0, c0))[0].dtype == torch.bfloat16
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous() and out.shape == rnn(x, (h0, c0))[0].shape
    assert h_n.dtype == c_n.dtype == torch.float32
    out, (h_n, c_n) = _ours(rnn)(x, (h0, c0))
    assert out.dtype == h_n.dtype == c_n.dtype == torch.float32


@pytest.mark.parametrize("autocast", [False, True])
def test_state_carried_equals_one_long_window(backend, autocast):
    rnn, x, h0, c0, _ = _problem(7, 37, 2, 3, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        whole, (h_w, c_w) = _ours(rnn)(x, (h0, c0))
        first, state = _ours(rnn)(x[:, :4], (h0, c0))
        second, (h_2, c_2) = _ours(rnn)(x[:, 4:], state)
    tol = dict(rtol=0, atol=1e-6) if not autocast else dict(rtol=0, atol=1e-2)
    torch.testing.assert_close(torch.cat([first, second], 1).float(), whole.float(), **tol)
    torch.testing.assert_close(h_2, h_w, **tol)
    torch.testing.assert_close(c_2, c_w, **tol)


def test_no_grad_eval_equals_training_forward(backend):
    rnn, x, h0, c0, _ = _problem(5, 20, 2, 2, 4)
    rnn.eval()
    with torch.no_grad():
        out, (h_n, c_n) = _ours(rnn)(x, (h0, c0))
        ref, (h_r, c_r) = rnn(x, (h0, c0))
    for g, w in ((out, ref), (h_n, h_r), (c_n, c_r)):
        torch.testing.assert_close(g, w, **FP32)


@pytest.mark.parametrize("autocast", [False, True])
def test_inference_in_a_kept_block_equals_packing_afresh(backend, autocast):
    """Inside `weights_kept` calls without gradients share W_ih's cast and W_hh's panels: each
    gives exactly what a call with gradients (packing afresh) gives, also after an in-place
    update of either weight and a load of new weights inside the block."""
    if autocast and not cpu_has_native_bf16():
        pytest.skip("bf16 runs in the plain path on a CPU without native bf16")
    rnn, x, h0, c0, _ = _problem(6, 21, 2, 3, 5)

    def both():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                kept = _ours(rnn)(x, (h0, c0))
            fresh = _ours(rnn)(x, (h0, c0))  # the parameters need grad: packed per call
        return kept, fresh

    def assert_same(pair):
        (out_k, (h_k, c_k)), (out_f, (h_f, c_f)) = pair
        for a, b in ((out_k, out_f), (h_k, h_f), (c_k, c_f)):
            assert torch.equal(a, b.detach())

    with weights_kept():
        first = both()
        assert_same(first)
        assert_same(both())  # the second call runs on what the first kept
        with torch.no_grad():
            rnn.weight_hh_l1.mul_(1.5)
        changed = both()
        assert_same(changed)
        assert not torch.equal(changed[0][0], first[0][0])
        with torch.no_grad():
            rnn.weight_ih_l0.add_(0.01)
        assert_same(both())
        other, *_ = _problem(6, 21, 2, 3, 5, seed=1)
        rnn.load_state_dict(other.state_dict())
        assert_same(both())


def test_outside_a_kept_block_a_fused_optimizer_step_is_seen(backend):
    """PyTorch's fused SGD changes weights without bumping their versions: outside
    `weights_kept` every call packs afresh, so evaluation after a step sees the new weights."""
    rnn, x, h0, c0, _ = _problem(6, 21, 2, 3, 5)
    with torch.no_grad():
        before = _ours(rnn)(x, (h0, c0))[0]
    for p in rnn.parameters():
        p.grad = torch.ones_like(p)
    torch.optim.SGD(rnn.parameters(), lr=0.01, fused=True).step()
    with torch.no_grad():
        after = _ours(rnn)(x, (h0, c0))[0]
        ref = rnn(x, (h0, c0))[0]
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, ref, **FP32)
    with weights_kept():
        assert _KEPT.get() == {}
    assert _KEPT.get() is None


def test_dropout_zero_in_training_equals_nn_lstm(backend):
    rnn, x, h0, c0, weights = _problem(5, 12, 3, 2, 4)
    rnn.train()
    want = _run(rnn, rnn, x, h0, c0, weights)
    got = _run(_ours(rnn), rnn, x, h0, c0, weights)
    for name, g, w in zip(_names(rnn), got, want, strict=True):
        torch.testing.assert_close(g, w, **FP32, msg=lambda m, n=name: f"{n}: {m}")


def test_dropout_between_layers_only(backend):
    torch.manual_seed(0)
    rnn = nn.LSTM(6, 10, 2, batch_first=True, dropout=0.5)
    x = torch.randn(3, 5, 6)
    state = (torch.zeros(2, 3, 10), torch.zeros(2, 3, 10))
    weights = fused.lstm_weights(rnn)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return fused.fused_lstm(x, state, weights, 0.5, True, generator=gen)

    a, b, c = run(1), run(1), run(2)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1][0], b[1][0], rtol=0, atol=0)
    assert not torch.equal(a[0], c[0])
    # The first layer never sees dropout: its final state is the same for any mask.
    torch.testing.assert_close(a[1][0][0], c[1][0][0], rtol=0, atol=0)
    # Eval mode ignores dropout: equals nn.LSTM.
    rnn.eval()
    with torch.no_grad():
        out, _ = fused.fused_lstm(x, state, weights, 0.5, False)
        ref, _ = rnn(x, state)
    torch.testing.assert_close(out, ref, **FP32)


def test_dropout_gradient_matches_masked_reference(backend):
    """Gradients through the dropout mask: same as running layer by layer with nn.LSTMs and
    applying the very same mask between them."""
    torch.manual_seed(3)
    rnn = nn.LSTM(4, 9, 2, batch_first=True, dropout=0.3)
    x = torch.randn(2, 5, 4)
    state = (torch.randn(2, 2, 9), torch.randn(2, 2, 9))
    gen = torch.Generator().manual_seed(7)
    out, _ = fused.fused_lstm(x, state, fused.lstm_weights(rnn), 0.3, True, generator=gen)
    grads = torch.autograd.grad(out.sum(), list(rnn.parameters()))
    # Reference: the mask fused_lstm drew is reproduced from the same generator seed.
    gen = torch.Generator().manual_seed(7)
    keep = torch.empty(5, 2, 9).bernoulli_(0.7, generator=gen).div_(0.7).transpose(0, 1)
    l0, l1 = nn.LSTM(4, 9, batch_first=True), nn.LSTM(9, 9, batch_first=True)
    with torch.no_grad():
        for dst, layer in ((l0, 0), (l1, 1)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(dst, f"{name}_l0").copy_(getattr(rnn, f"{name}_l{layer}"))
    mid, _ = l0(x, (state[0][:1], state[1][:1]))
    ref, _ = l1(mid * keep, (state[0][1:], state[1][1:]))
    torch.testing.assert_close(out, ref, **FP32)
    want = torch.autograd.grad(ref.sum(), [*l0.parameters(), *l1.parameters()])
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, **FP32)


def test_only_some_inputs_need_grad(backend):
    rnn, x, h0, c0, _ = _problem(5, 20, 2, 2, 4)
    for p in rnn.parameters():
        p.requires_grad_(False)
    x.requires_grad_()
    out, (h_n, _) = _ours(rnn)(x, (h0, c0))
    (d_x,) = torch.autograd.grad(out.sum() + h_n.sum(), [x])
    x2 = x.detach().clone().requires_grad_()
    ref, (h_r, _) = rnn(x2, (h0, c0))
    (want,) = torch.autograd.grad(ref.sum() + h_r.sum(), [x2])
    torch.testing.assert_close(d_x, want, **FP32)


def test_weights_helper_and_refusals():
    rnn = nn.LSTM(3, 4, 2, batch_first=True)
    w = fused.lstm_weights(rnn)
    assert len(w) == 2 and w[1][0] is rnn.weight_ih_l1 and w[0][3] is rnn.bias_hh_l0
    with pytest.raises(ValueError):
        fused.lstm_weights(nn.LSTM(3, 4, bidirectional=True, batch_first=True))
    with pytest.raises(ValueError):
        fused.fused_lstm(torch.randn(2, 3, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)), w,
                         0.0, False)


def test_disabled_kernels_use_plain_path_without_warning(monkeypatch, recwarn):
    monkeypatch.setenv("LSTMKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    assert kernels.lstm_cell(fused._self_test) is None
    assert not [w for w in recwarn if issubclass(w.category, LstmkitWarning)]


def test_a_kernel_failing_its_self_test_warns_once_and_falls_back(monkeypatch):
    def broken(module):
        raise RuntimeError("error: kernel self-test failed")

    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_errors", {})
    if not (kernels.enabled() and kernels.compiler()):
        pytest.skip("no native kernels here")
    with pytest.warns(LstmkitWarning, match="self-test failed"):
        assert kernels.lstm_cell(broken) is None
    assert kernels.lstm_cell(broken) is None  # no second attempt, no second warning
    rnn, x, h0, c0, _ = _problem(4, 6, 1, 2, 3)
    with torch.no_grad():
        out, _ = _ours(rnn)(x, (h0, c0))
        ref, _ = rnn(x, (h0, c0))
    torch.testing.assert_close(out, ref, **FP32)
