"""Where a training step's time goes: torch.profiler over N steps of a preset.

    python bench/profile_step.py --preset small --precision bf16 [--steps 30] [--eval]
    python bench/profile_step.py --preset medium --precision fp32 --runner plain_fp32
    python bench/profile_step.py --preset medium --eval --lstm-impl native

`--runner` profiles lstmkit's step (default) or one of bench/throughput.py's hand-written
baselines, so the two can be compared operator by operator.
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from lstmkit.fields import apply_overrides
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.lm.config import preset
from throughput import baseline_runner, corpus, lstmkit_runner, machine, parse_args


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--shapes", action="store_true", help="one row per op and input shapes")
    p.add_argument("--runner", default="lstmkit", choices=["lstmkit", "plain_fp32", "plain_bf16"])
    p.add_argument("--lstm-impl", default="auto", choices=["auto", "native", "onednn"],
                   help="lstmkit's LSTM layer (default: what training picks)")
    args = parse_args(p)
    print(machine(), f"runner: {args.runner}")
    config = apply_overrides(preset(args.preset), {"precision": args.precision,
                                                   "lstm_impl": args.lstm_impl}, "profile")
    ids, vocab = corpus(args.data_dir)
    if args.runner == "lstmkit":
        train_step, eval_step = lstmkit_runner(config, vocab)
    else:
        train_step, eval_step = baseline_runner(config, vocab, args.runner.removeprefix("plain_"))
    bs = config.eval_batch_size if args.eval else config.batch_size
    steps = config.eval_num_steps if args.eval else config.num_steps
    windows = list(bptt_windows(batch_rows(ids, bs), steps))[: args.steps + 5]
    run = (lambda x, y: eval_step(x, y, None)) if args.eval else train_step
    for x, y in windows[:5]:
        run(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for x, y in windows[5:]:
            run(x, y)
    table = prof.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
