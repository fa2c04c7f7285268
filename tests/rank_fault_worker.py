"""`lstmkit` under torchrun, with one rank failing on purpose (tests/test_distributed.py).

    torchrun ... tests/rank_fault_worker.py train ...   (the arguments of `lstmkit`)

Rank FAULT_RANK, at its FAULT_AT_STEP-th optimizer step, SIGKILLs itself (FAULT=kill: a
crashed process or a lost machine) or stops answering (FAULT=hang: a stuck process). The hook is
PyTorch's global optimizer-step hook, so lstmkit itself carries no test code.
"""

import os
import signal
import sys
import time

from torch.optim.optimizer import register_optimizer_step_post_hook

from lstmkit.cli import main


def fail_at(step: int, fault: str) -> None:
    steps = 0

    def after_step(optimizer, args, kwargs) -> None:
        nonlocal steps
        steps += 1
        if steps == step:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)

    register_optimizer_step_post_hook(after_step)


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["FAULT_RANK"]:
        fail_at(int(os.environ["FAULT_AT_STEP"]), os.environ["FAULT"])
    sys.exit(main(sys.argv[1:]))
