"""The optimizer step: clipping folded into the fused pass computes what clip_grad_norm_ and
a plain optimizer step compute, also for an optimizer restored from an unfused state."""

import copy

import pytest
import torch
from torch import nn

from lstmkit.lm.config import LMConfig
from lstmkit.lm.optim import (
    LOSS_SCALE_GROWTH_INTERVAL,
    LOSS_SCALE_START,
    clipped_step,
    gradient_norm,
    grown_loss_scale,
    lower_loss_scale,
    make_optimizer,
    starting_loss_scale,
)

SCALES = (10.0, 0.01, 3.0)  # gradient sizes of successive steps: clipped, not, clipped


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 5))


def _set_gradients(model: nn.Module, step: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * scale


def _reference(config: LMConfig, model: nn.Module) -> torch.optim.Optimizer:
    """torch's for-loop optimizer: with clip_grad_norm_, what the fused step replaces."""
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    return cls(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
               foreach=False)


def _reference_step(optimizer: torch.optim.Optimizer, model: nn.Module, max_norm: float
                    ) -> float:
    norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    return norm


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-6)
               for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_fused_clipped_step_computes_clip_grad_norm_and_a_plain_step(optimizer,
                                                                         weight_decay):
    config = LMConfig(optimizer=optimizer, learning_rate=0.5, weight_decay=weight_decay,
                      max_grad_norm=1.0)
    ours, reference = _model(), _model()
    opt, ref = make_optimizer(config, ours), _reference(config, reference)
    assert all(group["fused"] for group in opt.param_groups)
    for step, scale in enumerate(SCALES):
        _set_gradients(ours, step, scale)
        _set_gradients(reference, step, scale)
        expected_norm = _reference_step(ref, reference, config.max_grad_norm)
        norm = gradient_norm(list(ours.parameters()))
        assert float(norm) == pytest.approx(expected_norm, rel=1e-6)
        clipped_step(opt, norm, config.max_grad_norm)
        assert not hasattr(opt, "grad_scale")
        assert _same(ours, reference), (step, scale)


def test_the_clipped_step_divides_the_gradients_by_the_clipping_factor():
    config = LMConfig(learning_rate=1.0, max_grad_norm=1.0)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    _set_gradients(model, 0, 10.0)
    grads = [p.grad.clone() for p in model.parameters()]
    norm = gradient_norm(list(model.parameters()))
    clipped_step(make_optimizer(config, model), norm, config.max_grad_norm)
    factor = float(norm) + 1e-6
    for p, w, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.allclose(w - p.detach(), g / factor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_optimizer_restored_from_an_unfused_state_steps_fused_and_the_same(optimizer):
    """A checkpoint saved before the fused step (its groups say fused None) resumes fused,
    Adam's moments and step count with it."""
    from lstmkit.lm.runs import restore_optimizer

    config = LMConfig(optimizer=optimizer, learning_rate=0.5, max_grad_norm=1.0)
    ours, reference = _model(), _model()
    old, ref = _reference(config, ours), _reference(config, reference)
    for step, scale in enumerate(SCALES[:2]):  # two steps of the old optimizer on both
        for model, opt in ((ours, old), (reference, ref)):
            _set_gradients(model, step, scale)
            _reference_step(opt, model, config.max_grad_norm)
    saved = copy.deepcopy(old.state_dict())
    tensors = {f"optim.{pid}.{key}": value for pid, state in saved["state"].items()
               for key, value in state.items() if isinstance(value, torch.Tensor)}
    meta = {"state": {pid: {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
                      for pid, state in saved["state"].items()},
            "param_groups": saved["param_groups"]}
    loaded = type("Loaded", (), {"meta": {"optimizer": meta}, "tensors": tensors,
                                 "path": "run"})()
    opt = make_optimizer(config, ours)
    restore_optimizer(opt, loaded)
    assert all(group["fused"] for group in opt.param_groups)
    _set_gradients(ours, 2, SCALES[2])
    _set_gradients(reference, 2, SCALES[2])
    clipped_step(opt, gradient_norm(list(ours.parameters())), config.max_grad_norm)
    _reference_step(ref, reference, config.max_grad_norm)
    assert _same(ours, reference)


def test_an_unfused_optimizer_clips_its_gradients_before_the_step():
    config = LMConfig(learning_rate=0.5, max_grad_norm=1.0)
    ours, reference = _model(), _model()
    opt, ref = torch.optim.SGD(ours.parameters(), lr=0.5), _reference(config, reference)
    _set_gradients(ours, 0, 10.0)
    _set_gradients(reference, 0, 10.0)
    clipped_step(opt, gradient_norm(list(ours.parameters())), config.max_grad_norm)
    _reference_step(ref, reference, config.max_grad_norm)
    assert _same(ours, reference)


def test_the_gradient_norm_is_close_to_the_float64_one_on_millions_of_gradients():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.zeros(n)) for n in (6_500_000, 1_700_000, 2600)]
    for p in params:
        p.grad = torch.randn_like(p)
    exact = sum(float((p.grad.double() ** 2).sum()) for p in params) ** 0.5
    # torch.linalg.vector_norm's fp32 sum lands ~1e-4 away here, one BLAS dot 2e-6 to 2e-5 away
    # by the CPU (2e-5 on a Zen 3): the norm adds chunks' dot products in float64
    assert float(gradient_norm(params)) == pytest.approx(exact, rel=1e-6)
    for p, value in zip(params, (float("inf"), 1.0, float("nan")), strict=True):
        p.grad[0] = value
    assert not torch.isfinite(gradient_norm(params))


def test_the_norm_of_no_gradients_is_zero():
    assert float(gradient_norm([nn.Parameter(torch.ones(3))])) == 0.0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_a_scaled_loss_s_gradients_step_as_the_unscaled_ones(optimizer, weight_decay, fused):
    """Gradients of the loss x 2^16, divided in the (fused or plain) pass: the same step,
    clipped or not, weight decay on the weights alone."""
    config = LMConfig(optimizer=optimizer, learning_rate=0.5, weight_decay=weight_decay,
                      max_grad_norm=1.0)
    ours, reference = _model(), _model()
    opt, ref = make_optimizer(config, ours), make_optimizer(config, reference)
    if not fused:
        opt = _reference(config, ours)
    for step, scale in enumerate(SCALES):
        _set_gradients(reference, step, scale)
        _set_gradients(ours, step, scale * LOSS_SCALE_START)
        norm = gradient_norm(list(ours.parameters())) / LOSS_SCALE_START
        clipped_step(opt, norm, config.max_grad_norm, LOSS_SCALE_START)
        clipped_step(ref, gradient_norm(list(reference.parameters())), config.max_grad_norm)
        assert _same(ours, reference)


def test_the_loss_scale_halves_on_overflow_and_doubles_after_the_growth_interval():
    assert starting_loss_scale("fp16", 0.0) == LOSS_SCALE_START
    assert starting_loss_scale("fp16", 512.0) == 512.0, "a resumed run keeps its scale"
    assert starting_loss_scale("bf16", 512.0) == starting_loss_scale("fp32", 0.0) == 0.0
    assert lower_loss_scale(LOSS_SCALE_START) == LOSS_SCALE_START / 2
    scale, good = LOSS_SCALE_START, 0
    for _ in range(LOSS_SCALE_GROWTH_INTERVAL - 1):
        scale, good = grown_loss_scale(scale, good)
    assert (scale, good) == (LOSS_SCALE_START, LOSS_SCALE_GROWTH_INTERVAL - 1)
    assert grown_loss_scale(scale, good) == (2 * LOSS_SCALE_START, 0)
