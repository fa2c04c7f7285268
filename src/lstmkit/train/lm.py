"""Training the word- or char-level language model: SGD/Adam, decay schedule, clipping, TBPTT.

One epoch walks the batch rows window by window (see data/batching.py). The cost of a window
is the summed next-token cross-entropy over its time steps, averaged over the batch (the
tutorial's cost, whose scale the learning rate of 1.0 assumes). After each epoch: valid
perplexity and a checkpoint; at the end: test perplexity on one stream and the fast shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmkit.config import LMConfig
from lstmkit.data.batching import batch_rows, bptt_windows, epoch_size
from lstmkit.device import autocast, check_precision, resolve_device
from lstmkit.errors import UserError
from lstmkit.evaluate import perplexity, stream_perplexity
from lstmkit.models.lm import LanguageModel, build_language_model
from lstmkit.models.recurrent import detach_state
from lstmkit.reporting import Console, MetricsLog, plot_learning_curve
from lstmkit.runs import (
    BEST_FILE,
    CURVE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Progress,
    carried_state,
    load_lm,
    prepare_run_dir,
    restore_optimizer,
    restore_rng,
    save_lm_checkpoint,
)
from lstmkit.vocab import Vocab

REPORTS_PER_EPOCH = 10


@dataclass(frozen=True)
class TokenSplits:
    """Encoded train/valid/test streams and the vocabulary they were encoded with."""
    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    level: str = "word"


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]
    test_perplexity: float  # one stream, batch 1 (the tutorial's number)
    test_perplexity_fast: float  # the fast default evaluation shape
    run_dir: Path | None


def train_language_model(config: LMConfig, data: TokenSplits, save_path: str | Path | None,
                         resume: bool = False, console: Console | None = None) -> TrainResult:
    console = console or Console()
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    run_dir = prepare_run_dir(save_path) if save_path is not None else None
    metrics = MetricsLog(run_dir / METRICS_FILE if run_dir else None)

    if resume:
        model, optimizer, progress, carried = _resume(config, data, run_dir, device, metrics)
        console.say(f"Resuming {run_dir / MODEL_FILE} at epoch {progress.epoch}, "
                    f"step {progress.step}")
    else:
        torch.manual_seed(config.seed)
        model = build_language_model(config, len(data.vocab)).to(device)
        optimizer = make_optimizer(config, model)
        progress, carried = Progress(), None
        if run_dir is not None:
            for stale in (MODEL_FILE, BEST_FILE, METRICS_FILE, CURVE_FILE):
                (run_dir / stale).unlink(missing_ok=True)
    console.say(f"seed {config.seed}: runs with the same seed, device and thread count repeat "
                f"exactly | device {device.type} | precision {config.precision} | "
                f"{sum(p.numel() for p in model.parameters()):,} parameters")

    rows = batch_rows(data.train, config.batch_size).to(device)
    windows = epoch_size(data.train.numel(), config.batch_size, config.num_steps)
    if windows < 1:
        raise UserError(f"training data ({data.train.numel()} tokens) is too short for "
                        f"batch_size {config.batch_size} x num_steps {config.num_steps}")
    save = _Saver(run_dir, model, optimizer, config, data, metrics)

    while progress.epoch <= config.max_max_epoch:
        epoch = progress.epoch
        lr = config.learning_rate_for_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        console.say(f"Epoch: {epoch} Learning rate: {lr:.3f}")
        _train_epoch(model, optimizer, rows, windows, config, progress, carried, console,
                     metrics, save)
        carried = None
        train_ppl = math.exp(progress.costs / progress.iters)
        valid = perplexity(model, data.valid, config.eval_batch_size, config.eval_num_steps,
                           config.precision)
        valid_loss = valid.nll / valid.tokens  # nats per token (per character at char level)
        console.say(f"Epoch: {epoch} Train Perplexity: {train_ppl:.3f}")
        console.say(f"Epoch: {epoch} Valid Perplexity: {valid.value:.3f} "
                    f"(loss {valid_loss:.4f} nats/{data.level})")
        record = {"event": "epoch", "epoch": epoch, "learning_rate": lr,
                  "train_perplexity": train_ppl, "valid_perplexity": valid.value,
                  "train_loss": math.log(train_ppl), "valid_loss": valid_loss}
        metrics.write(record)
        progress.history.append(record)
        improved = progress.best_valid is None or valid.value < progress.best_valid
        progress.best_valid = valid.value if improved else progress.best_valid
        progress.epoch, progress.step, progress.costs, progress.iters = epoch + 1, 0, 0.0, 0
        save.checkpoint(progress, carried=None, best=improved)

    test = stream_perplexity(model, data.test, config.precision)
    fast = perplexity(model, data.test, config.eval_batch_size, config.eval_num_steps,
                      config.precision)
    console.say(f"Test Perplexity: {test.value:.3f} ({test.shape}, {test.tokens} targets)")
    console.say(f"Test Perplexity: {fast.value:.3f} ({fast.shape}, {fast.tokens} targets)")
    metrics.write({"event": "test", "test_perplexity": test.value, "shape": test.shape,
                   "test_loss": test.nll / test.tokens,
                   "test_perplexity_fast": fast.value, "fast_shape": fast.shape})
    if run_dir is not None and progress.history:
        plot_learning_curve(progress.history, run_dir / CURVE_FILE,
                            f"{data.level}-level {config.cell.upper()}, "
                            f"{config.num_layers}x{config.hidden_size}")
    return TrainResult(progress.history, test.value, fast.value, run_dir)


def _train_epoch(model: LanguageModel, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
                 windows: int, config: LMConfig, progress: Progress,
                 carried: tuple[torch.Tensor, ...] | None, console: Console,
                 metrics: MetricsLog, save: _Saver) -> None:
    model.train()
    device = rows.device
    state = carried if carried is not None else model.zero_state(config.batch_size)
    start_time, start_step = time.perf_counter(), progress.step
    bar = console.progress(windows, progress.step, f"epoch {progress.epoch}")
    for x, y in bptt_windows(rows, config.num_steps, start=progress.step):
        state = detach_state(state)
        with autocast(config.precision, device):
            nll, state = model.window_nll(x, y, state)
        cost = nll / config.batch_size  # summed over time steps, averaged over the batch
        optimizer.zero_grad(set_to_none=True)
        cost.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        cost_value = cost.item()
        if not math.isfinite(cost_value):
            raise UserError(f"training diverged: loss is {cost_value} at epoch "
                            f"{progress.epoch}, step {progress.step + 1} (try a lower "
                            f"learning_rate or max_grad_norm); the last checkpoint is intact")
        progress.costs += cost_value
        progress.iters += config.num_steps
        progress.step += 1
        bar.update(1)
        if _crosses_report_point(progress.step, windows):
            elapsed = time.perf_counter() - start_time
            words = (progress.step - start_step) * config.batch_size * config.num_steps
            running = math.exp(progress.costs / progress.iters)
            wps = words / max(elapsed, 1e-9)
            console.say(f"{progress.step / windows:.3f} perplexity: {running:.3f} "
                        f"speed: {wps:.0f} wps")
            metrics.write({"event": "progress", "epoch": progress.epoch, "step": progress.step,
                           "fraction": progress.step / windows, "perplexity": running,
                           "words_per_sec": wps})
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0 \
                and progress.step < windows:
            save.checkpoint(progress, carried=detach_state(state), best=False)
    bar.close()


def make_optimizer(config: LMConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The tutorial's plain SGD, or Adam; the epoch schedule sets the rate of either."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate)


def _crosses_report_point(step: int, windows: int) -> bool:
    """True at the steps that finish a tenth of the epoch (ten reports per epoch)."""
    return step * REPORTS_PER_EPOCH // windows > (step - 1) * REPORTS_PER_EPOCH // windows


class _Saver:
    """Writes the run's checkpoints (latest always, best when valid improved)."""

    def __init__(self, run_dir: Path | None, model: LanguageModel,
                 optimizer: torch.optim.Optimizer, config: LMConfig, data: TokenSplits,
                 metrics: MetricsLog) -> None:
        self.run_dir, self.model, self.optimizer = run_dir, model, optimizer
        self.config, self.data, self.metrics = config, data, metrics

    def checkpoint(self, progress: Progress, carried: tuple[torch.Tensor, ...] | None,
                   best: bool) -> None:
        if self.run_dir is None:
            return
        progress.metrics_bytes = self.metrics.size()
        save_lm_checkpoint(self.run_dir / MODEL_FILE, self.model, self.config, self.data.vocab,
                           self.data.level, self.optimizer, progress, carried)
        if best:
            save_lm_checkpoint(self.run_dir / BEST_FILE, self.model, self.config,
                               self.data.vocab, self.data.level)


def _resume(config: LMConfig, data: TokenSplits, run_dir: Path | None, device: torch.device,
            metrics: MetricsLog):
    if run_dir is None:
        raise UserError("--resume needs --save-path (the run directory to continue)")
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from (train without --resume first)")
    loaded = load_lm(path, device)
    if loaded.vocab.tokens != data.vocab.tokens:
        raise UserError(f"{path}: the checkpoint's vocabulary ({len(loaded.vocab)} tokens) "
                        f"does not match the data's ({len(data.vocab)} tokens)")
    if loaded.config.optimizer != config.optimizer:
        raise UserError(f"{path}: the run trains with {loaded.config.optimizer}; it cannot "
                        f"resume with optimizer {config.optimizer}")
    model = loaded.model
    optimizer = make_optimizer(config, model)
    restore_optimizer(optimizer, loaded)
    progress = loaded.progress
    restore_rng(loaded)
    metrics.truncate_to(progress.metrics_bytes)
    return model, optimizer, progress, carried_state(loaded, device)
