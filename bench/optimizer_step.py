"""The optimizer's part of a training step: clip_grad_norm_ + SGD against lstmkit's fused step.

Both clip the gradients to the preset's total norm and take an SGD step on the preset's
parameters (random gradients): `plain` is what users write (`clip_grad_norm_`, then
`torch.optim.SGD.step()`), `lstmkit` is `lm/optim.py` (the norm, then one fused pass that
divides by the clipping factor and updates). Interleaved, medians in ms, one JSON line a preset,
with each side's gradient norm relative to the float64 one (`norm_relative_error`), and the time
of lstmkit's norm alone against one BLAS dot per gradient, the fastest simple way (`norm_ms`).

    python bench/optimizer_step.py --presets small medium large
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, gradient_norm, make_optimizer
from throughput import machine, parse_args


def model_with_gradients(name: str) -> torch.nn.Module:
    """The preset's model with random gradients, the same for every call."""
    torch.manual_seed(0)
    model = build_language_model(preset(name), 10_000)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 0.1
    return model


def norm_errors(params: list[torch.Tensor]) -> dict[str, float]:
    """Each side's total gradient norm relative to the float64 one, on the same gradients."""
    grads = [p.grad for p in params]
    exact = sum(float(g.double().square().sum()) for g in grads) ** 0.5
    norms = {"plain": torch.nn.utils.get_total_norm(grads),  # what clip_grad_norm_ computes
             "lstmkit": gradient_norm(params)}
    return {side: float(f"{abs(float(norm) - exact) / exact:.2e}") for side, norm in norms.items()}


def norm_times(params: list[torch.Tensor], repeats: int, rounds: int) -> dict[str, float]:
    """Medians in ms, interleaved: lstmkit's gradient norm, and one dot per whole gradient."""
    flats = [p.grad.reshape(-1) for p in params]
    norms = {"one_dot": lambda: float(torch.stack([torch.dot(g, g) for g in flats]).sum().sqrt()),
             "lstmkit": lambda: float(gradient_norm(params))}
    return interleaved_medians(norms, repeats, rounds)


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int, rounds: int
                        ) -> dict[str, float]:
    """Each callable's median ms over `rounds` rounds of `repeats` calls, the order alternating."""
    times: dict[str, list[float]] = {side: [] for side in steps}
    for step in steps.values():
        median_ms(step, 3)  # warm-up
    for round_ in range(rounds):
        order = list(steps) if round_ % 2 == 0 else list(reversed(steps))
        for side in order:
            times[side].append(median_ms(steps[side], repeats))
    return {side: round(statistics.median(t), 3) for side, t in times.items()}


def make_step(name: str, side: str) -> Callable[[], None]:
    config = preset(name)
    model = model_with_gradients(name)
    params = list(model.parameters())
    if side == "plain":
        optimizer = torch.optim.SGD(params, lr=config.learning_rate)

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        return step
    optimizer = make_optimizer(config, model)

    def step() -> None:
        norm = gradient_norm(params)
        float(norm)  # the trainer reads it (non-finite check) before the step
        clipped_step(optimizer, norm, config.max_grad_norm)
    return step


def median_ms(step: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    args = parse_args(p, argv)
    where = machine()
    for name in args.presets:
        steps = {side: make_step(name, side) for side in ("plain", "lstmkit")}
        ms = interleaved_medians(steps, args.repeats, args.rounds)
        params = list(model_with_gradients(name).parameters())  # read only, unlike the steps'
        print(json.dumps({"preset": name, "ms": ms,
                          "plain_over_lstmkit": round(ms["plain"] / ms["lstmkit"], 2),
                          "norm_relative_error": norm_errors(params),
                          "norm_ms": norm_times(params, args.repeats, args.rounds),
                          "machine": where}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
