"""How the gradient norm that clipping sees depends on how the embedding's gradient is counted.

    python3 scripts/clip_norms.py --data-dir DIR [--checkpoint RUN] [--preset medium]
                                  [--windows 100] [--train] [--out FILE.jsonl]

PyTorch's `clip_grad_norm_` (and Zaremba's Torch code) count the embedding's gradient as the
dense [V, H] matrix: the gradients of every occurrence of a word summed into its row first.
TensorFlow's `clip_by_global_norm`, as the PTB tutorial calls it, gets the embedding's gradient
as `IndexedSlices` (one row per lookup, B x T of them) and sums the squares of those rows: a
word seen k times contributes the squares of its k gradients, not the square of their sum.
When clipping is active, the step is max_grad_norm / norm times the gradient, so the two
counts give steps of different length.

For each training window (dropout on, fp32) this prints the norm of the gradients other than
the embedding's, the embedding's counted both ways, and both totals; the summary gives their
medians, how often each total is over max_grad_norm, and the median ratio of the step
TensorFlow's count would take to the step the dense count takes. Without --checkpoint the model
is the preset's fresh one; --train then takes each step (dense clipping, the preset's learning
rate), so the windows follow the start of training; with --checkpoint the weights stay as
saved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.lm.config import preset
from lstmkit.lm.data import load_ptb
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, make_optimizer
from lstmkit.lm.runs import load_lm


def squared(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).sum())


def window_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 state: tuple[torch.Tensor, ...]) -> tuple[dict[str, float], tuple]:
    """The window's gradients (left in .grad) and their norms, the embedding's counted both
    ways; the next state."""
    lookups: list[float] = []

    def capture(_module, _inputs, output):  # the gradient of each looked-up row
        output.register_hook(lambda grad: lookups.append(squared(grad)))

    handle = model.embedding.register_forward_hook(capture)
    try:
        model.zero_grad(set_to_none=True)
        nll, _, state = model.window_loss(x, y, state)
        (nll / x.size(0)).backward()
    finally:
        handle.remove()
    embedding = model.embedding.weight
    rest = sum(squared(p.grad) for p in model.parameters()
               if p.grad is not None and p is not embedding)
    dense, by_lookup = squared(embedding.grad), lookups[0]
    norms = {"rest": rest ** 0.5, "embedding_dense": dense ** 0.5,
             "embedding_lookups": by_lookup ** 0.5, "total_dense": (rest + dense) ** 0.5,
             "total_lookups": (rest + by_lookup) ** 0.5}
    return norms, tuple(s.detach() for s in state)


def step_ratio(norms: dict[str, float], max_norm: float) -> float:
    """The step TensorFlow's count takes over the step the dense count takes (same gradient)."""
    return min(1.0, max_norm / norms["total_lookups"]) / min(1.0, max_norm / norms["total_dense"])


def summary(rows: list[dict[str, float]], max_norm: float) -> dict[str, float]:
    out: dict[str, float] = {"windows": len(rows)}
    for key in rows[0]:
        out[f"median_{key}"] = statistics.median(r[key] for r in rows)
    for key in ("total_dense", "total_lookups"):
        out[f"clipped_{key}"] = sum(r[key] > max_norm for r in rows) / len(rows)
    out["median_step_ratio_lookups_over_dense"] = statistics.median(
        step_ratio(r, max_norm) for r in rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--checkpoint", help="a saved run (its weights and config)")
    parser.add_argument("--preset", default="medium", help="without --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--start-window", type=int, default=0)
    parser.add_argument("--train", action="store_true", help="take each step (fresh model)")
    parser.add_argument("--out", type=Path, help="per-window norms and the summary (JSON lines)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = load_ptb(args.data_dir)
    if args.checkpoint:
        loaded = load_lm(args.checkpoint)
        model, config = loaded.model, loaded.config
    else:
        config = preset(args.preset)
        model = build_language_model(config, len(data.vocab))
    model.train()
    optimizer = make_optimizer(config, model) if args.train and not args.checkpoint else None
    rows = batch_rows(data.train, config.batch_size)
    state = model.zero_state(rows.size(0))
    results = []
    for i, (x, y) in enumerate(bptt_windows(rows, config.num_steps, args.start_window)):
        if i == args.windows:
            break
        norms, state = window_norms(model, x, y, state)
        results.append(norms)
        if optimizer is not None:
            clipped_step(optimizer, torch.tensor(norms["total_dense"]), config.max_grad_norm)
    lines = [json.dumps({"window": args.start_window + i, **r}) for i, r in enumerate(results)]
    result = {"event": "summary", "source": args.checkpoint or f"fresh {args.preset}",
              "trained": optimizer is not None, "start_window": args.start_window,
              "max_grad_norm": config.max_grad_norm, **summary(results, config.max_grad_norm)}
    lines.append(json.dumps(result))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
