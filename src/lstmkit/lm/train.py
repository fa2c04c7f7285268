"""Training the word- or char-level language model: SGD/Adam, decay schedule, clipping, TBPTT.

One epoch walks the batch rows window by window (see lm/batching.py). The cost of a window
is the summed next-token cross-entropy over its time steps, averaged over the batch (the
tutorial's cost, whose scale the learning rate of 1.0 assumes). After each epoch: valid
perplexity and a checkpoint; at the end: test perplexity on one stream and the fast shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmkit.device import autocast, check_precision, resolve_device, resolve_precision
from lstmkit.distributed import World, joined, launched_world, rank_console
from lstmkit.errors import UserError, check_memory, model_fits
from lstmkit.lm.averaging import WeightAverage, starts_averaging
from lstmkit.lm.batching import (
    batch_rows,
    bptt_windows,
    epoch_size,
    random_window_lengths,
    windows_of_lengths,
)
from lstmkit.lm.config import LMConfig
from lstmkit.lm.data import TokenSplits
from lstmkit.lm.evaluate import perplexity, stream_perplexity, unigram_perplexity
from lstmkit.lm.model import (
    LanguageModel,
    LMShape,
    Regularisers,
    build_language_model,
    parameter_count,
)
from lstmkit.lm.optim import (
    clipped_step,
    gradient_norm,
    grown_loss_scale,
    lower_loss_scale,
    make_optimizer,
    row_sparse_ok,
    starting_loss_scale,
)
from lstmkit.lm.runs import (
    LoadedLM,
    Progress,
    carried_state,
    load_lm,
    restore_optimizer,
    restore_rng,
    save_lm_checkpoint,
    saved_averages,
)
from lstmkit.lm.schedule import TimeBudget, learning_rate, rescaled_plan
from lstmkit.nn import kernels
from lstmkit.nn.bf16_copies import Bf16Copies
from lstmkit.nn.embedding import RowGrads, collect_row_grads
from lstmkit.nn.products import products_library
from lstmkit.nn.recurrent import detach_state
from lstmkit.nn.softmax import training_logits_layout
from lstmkit.reporting import (
    Console,
    MetricsLog,
    ScalarWriter,
    crosses_report_point,
    plot_learning_curve,
    require_tensorboard,
)
from lstmkit.rundir import BEST_FILE, CURVE_FILE, METRICS_FILE, MODEL_FILE
from lstmkit.runstart import RunDir, check_run_start, open_run
from lstmkit.stopping import StopRequests, stop_requests

ROLLBACK_LR_FACTOR = 0.5  # on_nan rollback: each rollback halves the learning rate
MAX_ROLLBACKS_IN_A_ROW = 3  # to the same checkpoint; one more fault there stops the run
# A loss per token whose perplexity float32 cannot hold (e^88.7 = 3.4e38) is no model of any
# vocabulary (uniform guessing costs ln V, about 9 nats for PTB's): the run has diverged.
MAX_LOSS_PER_TOKEN = math.log(3.4028234663852886e38)


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]
    test_perplexity: float  # one stream, batch 1 (the tutorial's number)
    test_perplexity_fast: float  # the fast default evaluation shape
    run_dir: Path | None


class NonFiniteLoss(UserError):
    """Training diverged at a step (NaN/inf loss, gradient or weights); nothing was saved
    after it, so the last checkpoint is good."""

    def __init__(self, what: str, epoch: int, step: int, checkpointed: bool) -> None:
        self.what, self.epoch, self.step = what, epoch, step
        kept = ("the last checkpoint is intact" if checkpointed
                else "this run had written no checkpoint yet")
        super().__init__(f"training diverged: {what} at epoch {epoch}, step {step}; {kept} "
                         f"(try a lower learning_rate or max_grad_norm, or --on-nan rollback)")


# The weights' shapes, and the windows that the saved position in the epoch counts.
FIXED_ON_RESUME = ("cell", "num_layers", "hidden_size", "tie_weights", "embedding_size",
                   "batch_size", "num_steps", "variable_bptt")
# Timing of the final evaluations for a time budget's reserve: stream and batched samples.
PROBE_WARMUP_TOKENS = 200  # first calls build kernels and caches: not timed
PROBE_STREAM_TOKENS = 2000
PROBE_BATCH_TOKENS = 10000


def train_language_model(config: LMConfig, data: TokenSplits, save_path: str | Path | None,
                         resumed: LoadedLM | None = None, console: Console | None = None,
                         overwrite: bool = False, tensorboard: str | Path | None = None
                         ) -> TrainResult:
    """Train, checkpointing into `save_path`; data-parallel when launched by torchrun.

    `resumed` is the run in `save_path` as loaded to continue it (`lm.api.resumable_run`).
    `tensorboard`: a directory for TensorBoard event files holding metrics.jsonl's numbers.

    Under torchrun every rank runs this with the same arguments (see distributed.py): each
    trains on its share of every batch's rows, and rank 0 alone talks and writes.
    """
    if tensorboard is not None:
        require_tensorboard()
    world = launched_world()
    world.check_divides(config.batch_size)
    console = rank_console(console, world)
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    check_run_start(save_path, overwrite, resume=resumed is not None, resumable=True,
                    writer=world.is_main)
    with joined(world, device) as world:
        return _train_run(config, data, save_path, resumed, console, world, overwrite,
                          tensorboard)


def _loss_scale_label(progress: Progress) -> str:
    return f", loss scale {progress.loss_scale:.0f}" if progress.loss_scale else ""


def _precision_label(config: LMConfig, device: torch.device) -> str:
    resolved = resolve_precision(config.precision, device)
    return f"{resolved} (auto)" if config.precision == "auto" else resolved


def implementation(config: LMConfig, model: LanguageModel, device: torch.device,
                   distributed: bool = False) -> dict[str, str]:
    """Which code runs this model here: precision, recurrent layer, softmax kernel and
    products, how the weights reach bf16 products, CPU."""
    precision = resolve_precision(config.precision, device)
    softmax = kernels.implementation("softmax_xent") if device.type == "cpu" else "plain"
    weights = ("bf16 copies kept by the SGD step for lstmkit's layers "
               f"({kernels.implementation('sgd_bf16')})"
               if keeps_bf16_copies(config, model, device, distributed)
               else precision if precision == "fp32" else f"cast to {precision} every window")
    return {"precision": precision,
            "weights": weights,
            "recurrent": model.describe_recurrent(device, precision == "bf16"),
            "softmax": f"{softmax} kernel" if softmax == "native" else "plain PyTorch",
            "products": products_library(device, precision),
            "logits": training_logits_layout(device, precision),
            "cpu": kernels.cpu_isa(), "threads": str(torch.get_num_threads())}


def _train_run(config: LMConfig, data: TokenSplits, save_path: str | Path | None,
               resumed: LoadedLM | None, console: Console, world: World,
               overwrite: bool, tensorboard: str | Path | None) -> TrainResult:
    resume = resumed is not None
    windows = _check_fit(config, data, save_path)  # before any file of the run is touched
    model = None
    if not resume:  # a model too big for memory is refused before the run directory exists
        config.check_new_run()
        check_model_memory(config, len(data.vocab))
        torch.manual_seed(config.seed)
        with model_fits("language model"):
            model = build_language_model(config, len(data.vocab)).to(world.device)
    with open_run(save_path, overwrite=overwrite, resume=resume, resumable=True,
                  writer=world.is_main) as run, \
            stop_requests(run.path is not None and not world.distributed) as stops, \
            _long_lived_objects_frozen():
        return _train_in_run(config, data, run, model, resumed, console, world, windows,
                             tensorboard, stops)


@contextlib.contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """Python's cyclic garbage collector, left alone, rescans every object the process holds
    (~290,000 once torch is imported) at each full collection, which a training step's
    allocations set off every few windows: about 5% of a `small` bf16 step on a 2-core Xeon.
    Frozen, they are left out of its scans until training ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _train_in_run(config: LMConfig, data: TokenSplits, run: RunDir,
                  model: LanguageModel | None, resumed: LoadedLM | None, console: Console,
                  world: World, windows: int, tensorboard: str | Path | None,
                  stops: StopRequests) -> TrainResult:
    """The run itself, in its locked run directory; `model` is the fresh model (None on
    resume, where the checkpoint's is used). A signal (`stops`, see lstmkit.stopping) stops
    training after its window with a checkpoint there."""
    device = world.device
    resume = resumed is not None
    run_dir = run.path
    metrics = MetricsLog(run_dir / METRICS_FILE if run_dir and world.is_main else None,
                         _scalar_writer(tensorboard, windows, resumed, world))

    if resume:
        model, optimizer, progress, carried, average = _resume(config, data, resumed, world,
                                                               metrics)
        console.say(f"Resuming {run_dir / MODEL_FILE} at epoch {progress.epoch}, "
                    f"step {progress.step}")
    else:
        world.seed_replica(config.seed)
        optimizer = make_optimizer(config, model)
        progress, carried = Progress(), None
        average = WeightAverage(model)
        _start_loss_scale(progress, config, device)
    repeat = ("exactly" if config.budget_seconds is None
              else "exactly up to the time budget's first plan")
    console.say(f"seed {config.seed}: runs with the same seed, device and thread count repeat "
                f"{repeat} | device {device.type} | precision {_precision_label(config, device)}"
                f"{_loss_scale_label(progress)} | "
                f"{sum(p.numel() for p in model.parameters()):,} parameters")
    runs_on = implementation(config, model, device, world.distributed)
    console.say(f"recurrent layer {runs_on['recurrent']} | softmax {runs_on['softmax']}, "
                f"logits {runs_on['logits']}, products {runs_on['products']} | "
                f"weights {runs_on['weights']} | {runs_on['threads']} threads | "
                f"CPU {runs_on['cpu']}")
    metrics.defer({"event": "setup", "seed": config.seed, "epoch": progress.epoch,
                   "step": progress.step, "resumed": resume, **runs_on})
    if world.distributed:
        console.say(f"data-parallel: {world.size} processes, each training on "
                    f"{config.batch_size // world.size} of the {config.batch_size} rows of "
                    f"every batch; rank 0 writes")

    # This rank's rows of the batch (all of them in a world of one); it carries their state.
    rows = batch_rows(data.train, config.batch_size)[world.share(config.batch_size)].to(device)
    if config.variable_bptt:  # random lengths average a little under num_steps: count them
        windows = len(random_window_lengths(config.num_steps, rows.size(1), config.seed, 1))
    budget = _start_budget(config, model, data, progress, console)
    plan = _Plan(config, budget, world, console, windows)
    if not resume and plan.finished(progress):
        raise _budget_too_small(budget)
    save = _Saver(run, model, optimizer, config, data, metrics, world, average, budget)
    window_loss = world.wrap(_WindowLoss(model))  # DDP (if W > 1) broadcasts rank 0's weights
    rollback = None
    if config.on_nan == "rollback":
        rollback = _Rollback(run, model, optimizer, config, world, metrics, console, average)
        if not resume:  # something to roll back to; a run it replaces stays until a real one
            save.checkpoint(progress, carried=None, best=False, accept=False)

    unigram = unigram_perplexity(data.train, data.valid, len(data.vocab))
    stops.arm()  # from here a signal stops training at a window's end, with a checkpoint
    while progress.epoch <= config.max_max_epoch and not plan.finished(progress):
        epoch = progress.epoch
        lr = plan.learning_rate(progress)
        set_learning_rate(optimizer, lr)
        console.say(f"Epoch: {epoch} Learning rate: {lr:.3f}")
        try:
            stopped = _train_epoch(model, optimizer, rows, config, progress, carried, console,
                                   metrics, save, world, window_loss, plan, average, stops)
        except NonFiniteLoss as fault:
            if rollback is None:
                raise
            progress, carried = rollback.recover(fault, progress)
            plan.planned_here = False  # the checkpoint's plan may predate this segment's
            continue
        carried = None
        train_ppl = safe_exp(progress.costs / max(progress.iters, 1))
        started = time.monotonic()
        with average.swapped_in():
            valid = perplexity(model, data.valid, config.eval_batch_size, config.eval_num_steps,
                               config.precision)
        valid = dataclasses.replace(valid, nll=world.agree([valid.nll])[0])  # rank 0's decides
        if budget is not None:
            budget.eval_seconds = time.monotonic() - started
        valid_loss = valid.nll / valid.tokens  # nats per token (per character at char level)
        console.say(f"Epoch: {epoch} Train Perplexity: {train_ppl:.3f}")
        averaged = f", weights averaged over {average.count:,} steps" if average.active else ""
        console.say(f"Epoch: {epoch} Valid Perplexity: {valid.value:.3f} "
                    f"(loss {valid_loss:.4f} nats/{data.level}{averaged})")
        lr = optimizer.param_groups[0]["lr"]  # the epoch's last (decaying schedules)
        record = {"event": "epoch", "epoch": epoch, "learning_rate": lr,
                  "train_perplexity": train_ppl, "valid_perplexity": valid.value,
                  "train_loss": math.log(train_ppl), "valid_loss": valid_loss}
        if stopped:
            record["fraction"] = progress.step / max(plan.windows_in_epoch, 1)
        if average.active:
            record["averaged_steps"] = average.count
        _check_averaging(config, progress, valid.value, average, console, metrics)
        _check_against_unigram(epoch, valid.value, unigram, data.level, console, metrics)
        metrics.write(record)
        progress.history.append(record)
        improved = progress.best_valid is None or valid.value < progress.best_valid
        progress.best_valid = valid.value if improved else progress.best_valid
        progress.epoch, progress.step, progress.costs, progress.iters = epoch + 1, 0, 0.0, 0
        if stopped:
            progress.training_done = True  # by the budget: a resume goes on to the test
        else:
            plan.replan(progress)
        save.checkpoint(progress, carried=None, best=improved)
        stops.check(progress.epoch, progress.step)
    stops.disarm()  # the test evaluation is the run's end: a signal stops it as before
    stops.check(progress.epoch, progress.step)  # one that came after the last check

    with average.swapped_in():
        test = stream_perplexity(model, data.test, config.precision)
        fast = perplexity(model, data.test, config.eval_batch_size, config.eval_num_steps,
                          config.precision)
    console.say(f"Test Perplexity: {test.value:.3f} ({test.shape}, {test.tokens} targets)")
    console.say(f"Test Perplexity: {fast.value:.3f} ({fast.shape}, {fast.tokens} targets)")
    metrics.write({"event": "test", "test_perplexity": test.value, "shape": test.shape,
                   "test_loss": test.nll / test.tokens,
                   "test_perplexity_fast": fast.value, "fast_shape": fast.shape})
    if run_dir is not None and progress.history and world.is_main:
        plot_learning_curve(progress.history, run_dir / CURVE_FILE,
                            f"{data.level}-level {config.cell.upper()}, "
                            f"{config.num_layers}x{config.hidden_size}")
    metrics.close()
    if budget is not None:
        console.say(f"time budget: {budget.used():.0f} s of {budget.seconds:.0f} s used")
    return TrainResult(progress.history, test.value, fast.value, run_dir)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _check_averaging(config: LMConfig, progress: Progress, valid: float,
                     average: WeightAverage, console: Console, metrics: MetricsLog) -> None:
    """NT-ASGD: start averaging once valid perplexity stops improving (lm/averaging.py)."""
    if average.active or not config.asgd_nonmono:
        return
    previous = [r["valid_perplexity"] for r in progress.history if r.get("event") == "epoch"]
    if starts_averaging(previous, valid, config.asgd_nonmono):
        average.start()
        progress.asgd_count = average.count
        console.say(f"NT-ASGD: valid perplexity {valid:.3f} is no better than the best before "
                    f"the last {config.asgd_nonmono} checks; averaging the weights from here")
        metrics.write({"event": "averaging", "epoch": progress.epoch,
                       "windows_done": progress.windows_done})


def _check_against_unigram(epoch: int, valid: float, unigram: float, level: str,
                           console: Console, metrics: MetricsLog) -> None:
    """Warns where valid perplexity is no better than the training text's token frequencies
    alone: the network has stopped using its input. A `large` run can collapse so in its first
    windows and train on for hours to no use (docs/reproduction.md); training goes on."""
    if valid < unigram:
        return
    tokens = "word" if level == "word" else "character"
    console.say(f"lstmkit: warning: epoch {epoch}'s valid perplexity {valid:.1f} is no better "
                f"than {unigram:.1f}, the training text's {tokens} frequencies alone: the network "
                f"is not using its input (a run that collapsed so at its start was still there "
                f"an epoch later, docs/reproduction.md); another --seed starts a different run")
    metrics.write({"event": "warning", "epoch": epoch, "warning": "no better than unigram",
                   "valid_perplexity": valid, "unigram_perplexity": unigram})


def _start_budget(config: LMConfig, model: LanguageModel, data: TokenSplits,
                  progress: Progress, console: Console) -> TimeBudget | None:
    """The run's time budget with its final reserve measured; None without a budget."""
    seconds = config.budget_seconds
    if seconds is None:
        return None
    budget = TimeBudget(seconds, progress.budget_used)
    budget.final_seconds, budget.eval_seconds = _final_evaluation_seconds(model, data, config)
    console.say(f"time budget {seconds:.0f} s ({progress.budget_used:.0f} s used before): "
                f"training stops with {budget.reserve():.0f} s left for the final validation, "
                f"test and saving; the schedule is planned from the measured speed")
    return budget


def _budget_too_small(budget: TimeBudget | None) -> UserError:
    """A new run whose budget is spent before its first window: it would train nothing."""
    assert budget is not None
    return UserError(f"time budget {budget.seconds:g} s leaves no time to train: the final "
                     f"validation, test and saving are kept {budget.reserve():.3g} s (measured "
                     f"on this machine) and {budget.used():.3g} s are gone; give a larger "
                     f"--time-budget")


def _final_evaluation_seconds(model: LanguageModel, data: TokenSplits, config: LMConfig
                              ) -> tuple[float, float]:
    """Estimates, from timed samples, of the final evaluations (valid, test on one stream and
    batched) and of one validation check, in seconds."""
    stream_perplexity(model, data.valid[:PROBE_WARMUP_TOKENS], config.precision)  # first calls
    started = time.monotonic()
    sample = data.valid[:PROBE_STREAM_TOKENS]
    stream_perplexity(model, sample, config.precision)
    stream_rate = sample.numel() / max(time.monotonic() - started, 1e-9)
    started = time.monotonic()
    sample = data.valid[:max(PROBE_BATCH_TOKENS, 2 * config.eval_batch_size)]
    perplexity(model, sample, config.eval_batch_size, config.eval_num_steps, config.precision)
    batch_rate = sample.numel() / max(time.monotonic() - started, 1e-9)
    valid = data.valid.numel() / batch_rate
    test = data.test.numel() / stream_rate + data.test.numel() / batch_rate
    return valid + test, valid


class _Plan:
    """The learning-rate schedule over the run and, with a time budget, when training ends."""

    def __init__(self, config: LMConfig, budget: TimeBudget | None, world: World,
                 console: Console, windows: int) -> None:
        self.config, self.budget, self.world, self.console = config, budget, world, console
        self.windows = windows  # per epoch, nominal (variable_bptt: epoch 1's count)
        self.windows_in_epoch = windows  # of the epoch in progress
        self.planned_here = False
        self.announced = False

    def total_windows(self, progress: Progress) -> int:
        if self.budget is not None:
            return progress.planned_windows
        return self.config.max_max_epoch * self.windows

    def learning_rate(self, progress: Progress) -> float:
        return learning_rate(self.config, progress.epoch, progress.windows_done,
                             self.total_windows(progress)) * progress.lr_scale

    def finished(self, progress: Progress) -> bool:
        """Whether the budget ends training now (every rank agrees: rank 0's clock decides)."""
        if self.budget is None:
            return False
        done = progress.training_done or self.budget.out_of_time() or (
            progress.planned_windows > 0 and progress.windows_done >= progress.planned_windows)
        return self.world.agree([float(done)])[0] > 0

    def after_window(self, progress: Progress, seconds: float) -> bool:
        """Account a trained window; whether the budget ends training here."""
        if self.budget is None:
            return False
        self.budget.time_window(seconds)
        if not self.planned_here and self.budget.can_plan():
            self.planned_here = True
            self.replan(progress)
        return self.finished(progress)

    def replan(self, progress: Progress) -> None:
        if self.budget is None or not self.budget.can_plan():
            return
        planned = self.budget.plan(progress.windows_done, self.windows)
        progress.planned_windows = int(self.world.agree([float(planned)])[0])
        if not self.announced:  # the segment's first plan
            self.console.say(f"time budget: planned {progress.planned_windows:,} windows "
                             f"({progress.planned_windows / self.windows:.1f} epochs) at "
                             f"{self.budget.train_seconds / self.budget.train_windows * 1000:.0f} "
                             f"ms a window")
            self.announced = True


def _embedding_row_grads(model: LanguageModel, config: LMConfig, world: World
                         ) -> RowGrads | None:
    """The embedding's gradient as the rows each window looked up (nn/embedding.py), where
    the step can take it so: plain SGD without weight decay, one process (DDP all-reduces dense
    gradients) and an embedding that is not also the decoder (whose gradient is dense)."""
    if not _step_takes_outside_gradients(config, model, world.distributed):
        return None
    return collect_row_grads(model.embedding)


def _step_takes_outside_gradients(config: LMConfig, model: LanguageModel,
                                  distributed: bool) -> bool:
    """Whether the SGD step can take gradients kept outside `.grad` (the embedding's rows, bf16
    weight gradients): plain SGD without weight decay, one process (DDP all-reduces `.grad`)
    and an untied model (a tied weight would get a second, dense gradient)."""
    return row_sparse_ok(config) and not distributed and not model.tied()


def _bf16_copies(model: LanguageModel, config: LMConfig, world: World) -> Bf16Copies | None:
    """The weights' bf16 copies kept by the step (nn/bf16_copies.py), where keeps_bf16_copies."""
    if not keeps_bf16_copies(config, model, world.device, world.distributed):
        return None
    return Bf16Copies(model.parameters())


def keeps_bf16_copies(config: LMConfig, model: LanguageModel, device: torch.device,
                      distributed: bool) -> bool:
    """Whether training keeps the weights' bf16 copies in its SGD step: bf16 on the CPU, where
    the step takes gradients outside `.grad`, as it does the embedding's rows."""
    return (device.type == "cpu" and resolve_precision(config.precision, device) == "bf16"
            and _step_takes_outside_gradients(config, model, distributed))


def _epoch_windows(rows: torch.Tensor, config: LMConfig, epoch: int, start: int,
                   windows: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """The epoch's (x, y) windows from window `start`, and how many the epoch has."""
    if config.variable_bptt:  # a function of (seed, epoch): every rank draws the same
        lengths = random_window_lengths(config.num_steps, rows.size(1), config.seed, epoch)
        return windows_of_lengths(rows, lengths, start), len(lengths)
    return bptt_windows(rows, config.num_steps, start=start), windows


def _train_epoch(model: LanguageModel, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
                 config: LMConfig, progress: Progress,
                 carried: tuple[torch.Tensor, ...] | None, console: Console,
                 metrics: MetricsLog, save: _Saver, world: World,
                 window_loss: torch.nn.Module, plan: _Plan, average: WeightAverage,
                 stops: StopRequests) -> bool:
    """One epoch from `progress.step` on this rank's `rows`; `window_loss` is the model's
    window loss, wrapped in DistributedDataParallel when there are several ranks. Returns
    whether the time budget ended it early. A stop request (`stops`) checkpoints the
    position and raises StopRequested, except in the epoch's last window: the epoch ends
    first."""
    model.train()
    device = rows.device
    params = list(model.parameters())
    row_grads = _embedding_row_grads(model, config, world)
    copies = _bf16_copies(model, config, world)
    state = carried if carried is not None else model.zero_state(rows.size(0))
    start_time, words = time.perf_counter(), 0
    batches, windows = _epoch_windows(rows, config, progress.epoch, progress.step, plan.windows)
    plan.windows_in_epoch = windows
    decays = config.lr_schedule != "epochs"
    bar = console.progress(windows, progress.step, f"epoch {progress.epoch}")
    for x, y in batches:
        window_start = time.perf_counter()
        if decays:
            set_learning_rate(optimizer, plan.learning_rate(progress))
        state = detach_state(state)
        with autocast(config.precision, device), \
                copies.in_use() if copies is not None else contextlib.nullcontext():
            nll, penalty, state = window_loss(x, y, state)
        # Summed over time steps, averaged over the batch. With W ranks each averages over its
        # B/W rows and DDP averages their gradients: the gradient of sum(nll) / B, as alone.
        cost = nll / rows.size(0)
        if penalty is not None:
            cost = cost + penalty
        optimizer.zero_grad(set_to_none=True)
        if row_grads is not None:
            row_grads.clear()
        if copies is not None:
            copies.clear_grads()
        loss_scale = progress.loss_scale or 1.0
        (cost * loss_scale if progress.loss_scale else cost).backward()
        norm = gradient_norm(params, row_grads, copies) / loss_scale
        grad_norm = float(norm)
        # The whole batch's cost, the same on every rank: so is the decision to stop on inf.
        # (The gradient norm is of the all-reduced gradients: the same on every rank too.)
        cost_value = (world.summed(nll.detach()) / config.batch_size).item()
        steps = x.size(1)
        per_token = cost_value / steps
        # Only gradients that overflowed a sound forward pass are fp16's range, not the run.
        overflowed = progress.loss_scale > 1 and not math.isfinite(grad_norm) \
            and math.isfinite(cost_value) and per_token <= MAX_LOSS_PER_TOKEN \
            and _finite(penalty)
        if not (overflowed or (math.isfinite(cost_value) and math.isfinite(grad_norm)
                and per_token <= MAX_LOSS_PER_TOKEN)):
            bar.close()  # checked before the step, so a NaN never reaches the weights
            what = (f"loss is {cost_value}" if not math.isfinite(cost_value)
                    else f"gradient norm is {grad_norm}" if not math.isfinite(grad_norm)
                    else f"loss is {per_token:.4g} nats per token, past a perplexity float32 "
                         f"can hold")
            raise NonFiniteLoss(what, progress.epoch, progress.step + 1, save.checkpointed())
        if overflowed:  # skip the step; a smaller loss scale from the next
            _skip_overflowed_step(progress, metrics)
        else:
            clipped_step(optimizer, norm, config.max_grad_norm, loss_scale, row_grads, copies)
            average.update()
            if progress.loss_scale:
                progress.loss_scale, progress.loss_scale_good_steps = grown_loss_scale(
                    progress.loss_scale, progress.loss_scale_good_steps)
        progress.costs += cost_value
        progress.iters += steps
        progress.step += 1
        progress.windows_done += 1
        words += config.batch_size * steps
        bar.update(1)
        if crosses_report_point(progress.step, windows):
            elapsed = time.perf_counter() - start_time
            running = safe_exp(progress.costs / progress.iters)
            wps = words / max(elapsed, 1e-9)
            console.say(f"{progress.step / windows:.3f} perplexity: {running:.3f} "
                        f"speed: {wps:.0f} wps")
            metrics.write({"event": "progress", "epoch": progress.epoch, "step": progress.step,
                           "fraction": progress.step / windows, "perplexity": running,
                           "words_per_sec": wps})
        stop = plan.after_window(progress, time.perf_counter() - window_start)
        if stop:
            break
        periodic = config.checkpoint_every and progress.step % config.checkpoint_every == 0
        if progress.step < windows and (periodic or stops.requested):
            save.checkpoint(progress, carried=detach_state(state), best=False)
            if stops.requested:
                bar.close()
                stops.check(progress.epoch, progress.step)
    else:
        stop = False
    bar.close()
    if not weights_finite(model):  # a finite but huge step can still overflow the weights
        raise NonFiniteLoss("the weights are not finite", progress.epoch, progress.step,
                            save.checkpointed())
    return stop


def _start_loss_scale(progress: Progress, config: LMConfig, device: torch.device) -> None:
    """fp16's loss scale as saved (or its start); none for other precisions."""
    scale = starting_loss_scale(resolve_precision(config.precision, device), progress.loss_scale)
    if scale != progress.loss_scale:
        progress.loss_scale, progress.loss_scale_good_steps = scale, 0


def _finite(penalty: torch.Tensor | None) -> bool:
    return penalty is None or math.isfinite(float(penalty))


def _skip_overflowed_step(progress: Progress, metrics: MetricsLog) -> None:
    """fp16's gradients overflowed at the loss scale: no step, half the scale (lm/optim.py)."""
    progress.loss_scale = lower_loss_scale(progress.loss_scale)
    progress.loss_scale_good_steps = 0
    metrics.write({"event": "overflow", "epoch": progress.epoch, "step": progress.step + 1,
                   "loss_scale": progress.loss_scale})


# float32 weights, their gradients and the optimizer's state (SGD: none; Adam: two moments).
_COPIES = {"sgd": 2, "adam": 4}  # NT-ASGD's average: one more


def check_model_memory(config: LMConfig, vocab_size: int) -> None:
    """The memory the model needs to train, checked before it is built."""
    shape = LMShape.of(config, vocab_size)
    copies = _COPIES.get(config.optimizer, 4) + (1 if config.asgd_nonmono else 0)
    needed = parameter_count(shape) * 4 * copies
    check_memory("language model", needed,
                 max(config.hidden_size, config.embedding_size, config.num_layers, vocab_size))


def safe_exp(x: float) -> float:
    """exp(x), inf past what a float holds (a diverging run's perplexity, reported as such)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _scalar_writer(tensorboard: str | Path | None, windows: int, resumed: LoadedLM | None,
                   world: World) -> ScalarWriter | None:
    """Rank 0's TensorBoard writer, if asked for; a resumed run's starts at its checkpoint."""
    if tensorboard is None or not world.is_main:
        return None
    purge = None
    if resumed is not None:
        purge = (resumed.progress.epoch - 1) * windows + resumed.progress.step
    return ScalarWriter(tensorboard, windows, purge_step=purge)


def _check_fit(config: LMConfig, data: TokenSplits, save_path: str | Path | None) -> int:
    """Windows per epoch; data too short for the configured shapes is refused up front."""
    windows = epoch_size(data.train.numel(), config.batch_size, config.num_steps)
    if windows < 1:
        raise UserError(f"training data ({data.train.numel()} tokens) is too short for "
                        f"batch_size {config.batch_size} x num_steps {config.num_steps}")
    for name, ids in (("valid", data.valid), ("test", data.test)):
        if ids.numel() // config.eval_batch_size < 2:
            raise UserError(f"{name} data ({ids.numel()} tokens) is too short for "
                            f"eval_batch_size {config.eval_batch_size} (2 tokens a row)")
    if config.on_nan == "rollback" and save_path is None:
        raise UserError("on_nan rollback needs a save path (--save-path): it rolls back to "
                        "the run's last checkpoint")
    return windows


class _WindowLoss(torch.nn.Module):
    """The model's window NLL as a module's forward: DistributedDataParallel hooks forward to
    set up the gradient all-reduce of the backward that follows."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: tuple[torch.Tensor, ...]):
        return self.model.window_loss(x, y, state)


class _Saver:
    """Writes the run's checkpoints (latest always, best when valid improved).

    With several ranks, every rank calls `checkpoint` (each hands over its rows' carried state
    and its RNG state) and rank 0 writes one file, the same as a single process would: the
    carried state holds all B rows, so any number of processes can resume from it.
    """

    def __init__(self, run: RunDir, model: LanguageModel,
                 optimizer: torch.optim.Optimizer, config: LMConfig, data: TokenSplits,
                 metrics: MetricsLog, world: World, average: WeightAverage,
                 budget: TimeBudget | None) -> None:
        self.run, self.run_dir, self.model, self.optimizer = run, run.path, model, optimizer
        self.config, self.data, self.metrics, self.world = config, data, metrics, world
        self.average, self.budget = average, budget

    def checkpointed(self) -> bool:
        """Whether this run has a checkpoint on disk to fall back to."""
        return self.run_dir is not None and (self.run_dir / MODEL_FILE).exists()

    def checkpoint(self, progress: Progress, carried: tuple[torch.Tensor, ...] | None,
                   best: bool, accept: bool = True) -> None:
        """`accept`: this checkpoint lets a run that --overwrite replaces go for good (not so
        the untrained one that on_nan rollback starts from)."""
        if self.run_dir is None:
            return
        if not weights_finite(self.model):  # never write a diverged model over a good one
            raise NonFiniteLoss("the weights are not finite", progress.epoch, progress.step,
                                self.checkpointed())
        if carried is not None:
            carried = self.world.gather_rows(carried)
        rank_rng = self.world.rng_states()
        if not self.world.is_main:
            return
        progress.metrics_bytes = self.metrics.size()
        progress.asgd_count = self.average.count
        if self.budget is not None:
            progress.budget_used = self.budget.used()
        if best:  # before the latest: a run killed between the two writes redoes both
            with self.average.swapped_in():  # NT-ASGD: the average is the model
                save_lm_checkpoint(self.run_dir / BEST_FILE, self.model, self.config,
                                   self.data.vocab, self.data.level)
        save_lm_checkpoint(self.run_dir / MODEL_FILE, self.model, self.config, self.data.vocab,
                           self.data.level, self.optimizer, progress, carried, rank_rng,
                           self.average.by_name())
        self.metrics.flush()  # the TensorBoard scalars up to here, as the log has them
        if accept:
            self.run.accept()  # a replaced run's files may go now: this one can be resumed


def _resume(config: LMConfig, data: TokenSplits, loaded: LoadedLM, world: World,
            metrics: MetricsLog):
    """Every rank has read the checkpoint (only rank 0 writes, later); each takes its rows'
    state."""
    path = loaded.path
    if loaded.vocab.tokens != data.vocab.tokens:
        raise UserError(f"{path}: the checkpoint's vocabulary ({len(loaded.vocab)} tokens) "
                        f"does not match the data's ({len(data.vocab)} tokens)")
    if loaded.config.optimizer != config.optimizer:
        raise UserError(f"{path}: the run trains with {loaded.config.optimizer}; it cannot "
                        f"resume with optimizer {config.optimizer}")
    for name in FIXED_ON_RESUME:
        saved, asked = getattr(loaded.config, name), getattr(config, name)
        if saved != asked:
            raise UserError(f"{path}: the run trains with {name} {saved}; it cannot resume "
                            f"with {name} {asked} (start a new run for that)")
    if loaded.progress.asgd_count and not config.asgd_nonmono:
        raise UserError(f"{path}: the run averages its weights (NT-ASGD switched on); it cannot "
                        f"resume with asgd_nonmono 0 (start a new run for that)")
    if config.variable_bptt and loaded.config.seed != config.seed:  # it draws the lengths
        raise UserError(f"{path}: the run's window lengths come from seed {loaded.config.seed}; "
                        f"it cannot resume with seed {config.seed} (start a new run for that)")
    model = loaded.model.to(world.device)
    # What the resumed config may change without touching the weights' shapes, applied.
    model.lstm_impl = config.lstm_impl
    model.set_keep_prob(config.keep_prob)
    model.regularisers = Regularisers.of(config)
    optimizer = make_optimizer(config, model)
    average = WeightAverage(model)
    progress, carried = _restore(loaded, optimizer, average, config, world, metrics)
    old_budget, new_budget = loaded.config.budget_seconds, config.budget_seconds
    if new_budget != old_budget:  # a new budget: plan anew (meanwhile the old plan, rescaled)
        progress.training_done = False
        progress.planned_windows = rescaled_plan(progress.planned_windows,
                                                 progress.windows_done, old_budget, new_budget)
    return model, optimizer, progress, carried, average


def _restore(loaded: LoadedLM, optimizer: torch.optim.Optimizer, average: WeightAverage,
             config: LMConfig, world: World, metrics: MetricsLog
             ) -> tuple[Progress, tuple[torch.Tensor, ...] | None]:
    """Optimizer, NT-ASGD average, RNG, position and metrics log as `loaded` saved them (the
    caller: weights)."""
    device = world.device
    restore_optimizer(optimizer, loaded)
    for group in optimizer.param_groups:  # the saved groups carry the old run's setting
        group["weight_decay"] = config.weight_decay
    progress = loaded.progress
    averages = saved_averages(loaded, loaded.model) if progress.asgd_count else None
    average.restore(averages, progress.asgd_count)
    if not world.restore_rng(loaded.tensors):  # saved by a world of another size, or alone
        if world.is_main:
            restore_rng(loaded)
        else:
            world.seed_replica(config.seed)
    _start_loss_scale(progress, config, device)  # the precision may differ from the saved run's
    metrics.truncate_to(progress.metrics_bytes)
    carried = carried_state(loaded, device)
    if carried is not None and world.distributed:
        carried = tuple(s[:, world.share(s.size(1))].contiguous() for s in carried)
    return progress, carried


class _Rollback:
    """on_nan rollback: back to the last checkpoint, with the learning rate lowered.

    Each rollback multiplies the run's `lr_scale` by ROLLBACK_LR_FACTOR. The schedule goes on
    as before, scaled: lr = (the schedule's rate) * lr_scale. `lr_scale` is saved in every
    checkpoint, so a resumed run (or a later rollback) keeps the lowered rate.
    """

    def __init__(self, run: RunDir, model: LanguageModel, optimizer: torch.optim.Optimizer,
                 config: LMConfig, world: World, metrics: MetricsLog, console: Console,
                 average: WeightAverage) -> None:
        assert run.path is not None
        self.run, self.run_dir = run, run.path
        self.model, self.optimizer, self.average = model, optimizer, average
        self.config, self.world, self.metrics, self.console = config, world, metrics, console
        self.target: tuple[int, int] | None = None  # (epoch, step) last rolled back to
        self.streak: list[dict] = []  # metrics records of the rollbacks to `target`

    def recover(self, fault: NonFiniteLoss, progress: Progress
                ) -> tuple[Progress, tuple[torch.Tensor, ...] | None]:
        path = self.run_dir / MODEL_FILE
        loaded = load_lm(path, self.world.device)
        saved = loaded.progress
        where = f"epoch {saved.epoch}, step {saved.step}"
        if (saved.epoch, saved.step) != self.target:
            self.target, self.streak = (saved.epoch, saved.step), []
        if len(self.streak) == MAX_ROLLBACKS_IN_A_ROW:
            kept = (f"the run it was to replace is back in {self.run_dir}"
                    if self.run.pending_replacement else f"{path} is intact")
            raise UserError(f"training diverged: {fault.what} at epoch {fault.epoch}, step "
                            f"{fault.step}, again after {MAX_ROLLBACKS_IN_A_ROW} rollbacks to "
                            f"{where} (learning rate now {progress.lr_scale:g} x the schedule); "
                            f"{kept} (try a lower learning_rate or max_grad_norm)")
        self.model.load_state_dict(loaded.model.state_dict())
        restored, carried = _restore(loaded, self.optimizer, self.average, self.config,
                                     self.world, self.metrics)
        restored.lr_scale = progress.lr_scale * ROLLBACK_LR_FACTOR
        self.streak.append({"event": "rollback", "epoch": fault.epoch, "step": fault.step,
                            "fault": fault.what, "to_epoch": saved.epoch,
                            "to_step": saved.step, "lr_scale": restored.lr_scale})
        self.console.say(f"{fault.what} at epoch {fault.epoch}, step {fault.step}: rolled back "
                         f"to {where} ({path.name}); learning rate x{restored.lr_scale:g} from "
                         f"now on (rollback {len(self.streak)} of {MAX_ROLLBACKS_IN_A_ROW} in a "
                         f"row)")
        for record in self.streak:  # the log was rewound to the checkpoint: re-tell them all
            self.metrics.write(record)
        return restored, carried
