"""`lstmkit` under torchrun with fp16's loss scaling switched on (fp32 on the CPU, as in
tests/lm/test_loss_scaling.py) and the gradients of rank OVERFLOW_RANK's OVERFLOW_AT-th training
window made inf, as an fp16 backward that overflowed on one rank leaves them
(tests/test_distributed.py). Without OVERFLOW_RANK: a single process, inf at that window."""

import os
import sys

import lstmkit.lm.train
from lstmkit.cli import main
from lstmkit.lm.model import LanguageModel
from lstmkit.lm.optim import LOSS_SCALE_START


def overflow_at(window: int) -> None:
    window_loss, calls = LanguageModel.window_loss, []

    def overflowing(self, ids, targets, state):
        nll, penalty, state = window_loss(self, ids, targets, state)
        if self.training:
            calls.append(1)
            if len(calls) == window:
                nll.register_hook(lambda grad: grad * float("inf"))
        return nll, penalty, state

    LanguageModel.window_loss = overflowing


if __name__ == "__main__":
    lstmkit.lm.train.starting_loss_scale = lambda precision, saved: saved or LOSS_SCALE_START
    if os.environ.get("RANK", "0") == os.environ.get("OVERFLOW_RANK", "0"):
        overflow_at(int(os.environ["OVERFLOW_AT"]))
    sys.exit(main(sys.argv[1:]))
