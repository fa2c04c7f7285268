"""NT-ASGD (Merity et al. 2017): SGD until valid perplexity stops improving, then the average
of the iterates from there on is the model that is evaluated, saved as best and tested.

Training itself goes on with the plain SGD iterates; the average is a second copy of the
weights (fp32), updated after every optimizer step as a running mean, saved in the run's
checkpoints beside the weights so that a resumed run averages on exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def starts_averaging(previous: Sequence[float], current: float, nonmono: int) -> bool:
    """AWD-LSTM's non-monotone trigger: `current` (valid perplexity at this check) is worse than
    the best of the checks before the last `nonmono` ones (`previous`, oldest first)."""
    return nonmono > 0 and len(previous) > nonmono and current > min(previous[:-nonmono])


class WeightAverage:
    """The running mean of a model's parameters over the optimizer steps since `start`."""

    def __init__(self, model: torch.nn.Module, averages: dict[str, torch.Tensor] | None = None,
                 count: int = 0) -> None:
        named = dict(model.named_parameters())  # a tied matrix once
        self.names = list(named)
        self.params = [named[name] for name in self.names]
        self.restore(averages, count)

    def restore(self, averages: dict[str, torch.Tensor] | None, count: int) -> None:
        """The state saved by `by_name` and `count` (no averages with a count of 0)."""
        self.count = count  # iterates averaged so far; 0: not averaging
        self.averages: list[torch.Tensor] = []
        if count:
            assert averages is not None
            self.averages = [averages[name].to(p.device, torch.float32).clone()
                             for name, p in zip(self.names, self.params, strict=True)]

    @property
    def active(self) -> bool:
        return self.count > 0

    @torch.no_grad()
    def start(self) -> None:
        """Average from here: the current weights are the first iterate."""
        self.averages = [p.detach().float().clone() for p in self.params]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        """Take the weights after an optimizer step into the mean (no-op before `start`)."""
        if not self.active:
            return
        self.count += 1
        torch._foreach_lerp_(self.averages, [p.detach().float() for p in self.params],
                             1.0 / self.count)

    def by_name(self) -> dict[str, torch.Tensor] | None:
        """The averages to save, by parameter name; None before `start`."""
        return dict(zip(self.names, self.averages, strict=True)) if self.active else None

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block (the iterates after it)."""
        if not self.active:
            yield
            return
        with torch.no_grad():
            iterates = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, iterates)
