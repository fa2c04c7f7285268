"""Where a training step's time goes: torch.profiler over N steps of a preset.

    python bench/profile_step.py --preset small --precision bf16 [--steps 30] [--eval]
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from lstmkit.fields import apply_overrides
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.lm.config import preset
from throughput import corpus, lstmkit_runner, machine, parse_args


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rows", type=int, default=25)
    args = parse_args(p)
    print(machine())
    config = apply_overrides(preset(args.preset), {"precision": args.precision}, "profile")
    ids, vocab = corpus(args.data_dir)
    train_step, eval_step = lstmkit_runner(config, vocab)
    bs = config.eval_batch_size if args.eval else config.batch_size
    steps = config.eval_num_steps if args.eval else config.num_steps
    windows = list(bptt_windows(batch_rows(ids, bs), steps))[: args.steps + 5]
    run = (lambda x, y: eval_step(x, y, None)) if args.eval else train_step
    for x, y in windows[:5]:
        run(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in windows[5:]:
            run(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
