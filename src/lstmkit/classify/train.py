"""Training the sentence classifier: shuffled mini-batches, best-valid checkpoint, test at the end.

Per epoch: train loss and train accuracy (running, with dropout on, as the tutorial reports
them) and valid accuracy. The weights of the epoch with the best valid accuracy are kept
(`RUN/best.safetensors`) and are the ones tested: the test split is read exactly once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.data import (
    PAD,
    EncodedSplit,
    Splits,
    build_vocab,
    encode_split,
    pad_batch,
    tokenize,
)
from lstmkit.classify.evaluate import SplitScore, batch_loss, score
from lstmkit.classify.model import SentimentClassifier, build_classifier
from lstmkit.classify.runs import save_classifier
from lstmkit.classify.vectors import load_word_vectors
from lstmkit.device import resolve_device
from lstmkit.distributed import World, joined, launched_world, rank_console
from lstmkit.errors import UserError, model_fits
from lstmkit.reporting import (
    Console,
    MetricsLog,
    ScalarWriter,
    crosses_report_point,
    plot_epoch_curves,
    require_tensorboard,
)
from lstmkit.rundir import BEST_FILE, CURVE_FILE, METRICS_FILE
from lstmkit.runstart import RunDir, check_run_start, open_run
from lstmkit.vocab import Vocab


@dataclass(frozen=True)
class ClassifierResult:
    history: list[dict[str, Any]]
    best_epoch: int
    valid_accuracy: float  # of the kept (best-valid) weights
    test_accuracy: float  # of the kept weights
    model: SentimentClassifier
    vocab: Vocab
    run_dir: Path | None


def train_classifier(config: ClassifierConfig, splits: Splits, save_path: str | Path | None,
                     vectors_path: str | Path | None = None, split_meta: dict | None = None,
                     console: Console | None = None, overwrite: bool = False,
                     tensorboard: str | Path | None = None) -> ClassifierResult:
    """Train on `splits.train`, keep the best epoch on `splits.valid`, score it on `splits.test`.

    `split_meta` (saved in the checkpoint) lets `evaluate` re-make a seeded split.
    `tensorboard`: a directory for TensorBoard event files holding metrics.jsonl's numbers.
    Under torchrun every rank runs this (see distributed.py): each trains on its share of every
    batch, rank 0 alone talks and writes.
    """
    if tensorboard is not None:
        require_tensorboard()
    world = launched_world()
    world.check_divides(config.batch_size)
    console = rank_console(console, world)
    check_run_start(save_path, overwrite, resume=False, resumable=False, writer=world.is_main)
    with joined(world, resolve_device(config.device)) as world:
        return _prepare_and_train(config, splits, save_path, vectors_path, split_meta,
                                  console, world, overwrite, tensorboard)


def _prepare_and_train(config: ClassifierConfig, splits: Splits, save_path: str | Path | None,
           vectors_path: str | Path | None, split_meta: dict | None, console: Console,
           world: World, overwrite: bool, tensorboard: str | Path | None
           ) -> ClassifierResult:
    device = world.device
    for note in dict.fromkeys(splits.train.notes + splits.valid.notes + splits.test.notes):
        console.say(f"note: {note}")
    vocab = build_vocab([tokenize(t, config.lowercase) for t in splits.train.texts],
                        config.min_count, config.max_vocab)
    train, valid, test = (encode_split(vocab, part, config.lowercase, config.max_length)
                          for part in (splits.train, splits.valid, splits.test))
    torch.manual_seed(config.seed)
    with model_fits("classifier"):
        model = build_classifier(config, len(vocab))
    if vectors_path is not None:
        _load_vectors(model, vectors_path, vocab, console)
    model.to(device)
    world.seed_replica(config.seed)  # same weights everywhere, a dropout stream per rank
    optimizer = _optimizer(config, model)
    replica = world.wrap(model)
    # Every input is checked by now, so a mistake in one leaves no run directory behind.
    with open_run(save_path, overwrite=overwrite, resume=False, resumable=False,
                  writer=world.is_main) as run:
        return _train_in_run(config, splits, train, valid, test, vocab, model, optimizer,
                             replica, run, split_meta, console, world, tensorboard)


def _train_in_run(config: ClassifierConfig, splits: Splits, train: EncodedSplit,
                  valid: EncodedSplit, test: EncodedSplit, vocab: Vocab,
                  model: SentimentClassifier, optimizer: torch.optim.Optimizer,
                  replica: torch.nn.Module, run: RunDir, split_meta: dict | None,
                  console: Console, world: World, tensorboard: str | Path | None
                  ) -> ClassifierResult:
    """Epochs, the kept best weights and the test, written into the locked run directory."""
    device = world.device
    run_dir = run.path if world.is_main else None
    scalars = None
    if tensorboard is not None and world.is_main:
        scalars = ScalarWriter(tensorboard, _batches_per_epoch(len(train), config, world))
    metrics = MetricsLog(run_dir / METRICS_FILE if run_dir else None, scalars)
    parameters = sum(p.numel() for p in model.parameters())
    console.say(f"seed {config.seed}: the same seed gives the same split and, with the same "
                f"device and thread count, the same result | device {device.type} | "
                f"{torch.get_num_threads()} threads")
    if world.distributed:
        console.say(f"data-parallel: {world.size} processes, each training on "
                    f"{config.batch_size // world.size} of the {config.batch_size} texts of "
                    f"every batch; rank 0 writes")
    console.say(f"data: {splits.how} | train {len(train)}, valid {len(valid)}, test "
                f"{len(test)} texts | vocabulary {len(vocab):,} (min count {config.min_count})"
                f" | {parameters:,} parameters")
    metrics.write({"event": "setup", "seed": config.seed, "split": splits.how,
                   "train": len(train), "valid": len(valid), "test": len(test),
                   "vocab": len(vocab), "parameters": parameters, "config": config.to_dict(),
                   "threads": torch.get_num_threads()})

    order = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loss, train_accuracy = _train_epoch(model, optimizer, train, config, order,
                                                  console, metrics, epoch, world, replica)
        valid_score = _agreed(score(model, valid, config.loss), world)
        seconds = time.perf_counter() - start
        improved = best is None or valid_score.accuracy > best[0]
        console.say(f"Epoch: {epoch}/{config.epochs} Train Loss: {train_loss:.3f} "
                    f"Train Accuracy: {train_accuracy:.3f} Valid Accuracy: "
                    f"{valid_score.accuracy:.3f} ({seconds:.0f} s){' *' if improved else ''}")
        record = {"event": "epoch", "epoch": epoch, "train_loss": train_loss,
                  "train_accuracy": train_accuracy, "valid_loss": valid_score.loss,
                  "valid_accuracy": valid_score.accuracy, "seconds": seconds,
                  "best": improved}
        metrics.write(record)
        history.append(record)
        if improved:
            best = (valid_score.accuracy, epoch, copy.deepcopy(model.state_dict()))
            if run_dir is not None:
                save_classifier(run_dir / BEST_FILE, model, config, vocab,
                                {"epoch": epoch, "valid_accuracy": valid_score.accuracy,
                                 "split": split_meta or {}})
                run.accept()  # a replaced run's files may go now: this one has its model

    valid_accuracy, best_epoch, weights = best
    model.load_state_dict(weights)
    test_score = score(model, test, config.loss)
    console.say(f"Test Accuracy: {test_score.accuracy:.4f} ({test_score.count} texts; weights "
                f"of epoch {best_epoch}, valid accuracy {valid_accuracy:.4f})")
    metrics.write({"event": "test", "test_accuracy": test_score.accuracy,
                   "test_loss": test_score.loss, "test_count": test_score.count,
                   "best_epoch": best_epoch, "valid_accuracy": valid_accuracy})
    if run_dir is not None:
        sizes = "-".join(str(s) for s in config.layer_sizes)
        plot_epoch_curves(history, run_dir / CURVE_FILE,
                          f"{'bi' if config.bidirectional else ''}{config.cell.upper()} {sizes}, "
                          f"{config.loss} + {config.optimizer}",
                          {"train (dropout on)": "train_accuracy", "valid": "valid_accuracy"},
                          "accuracy")
    metrics.close()
    return ClassifierResult(history, best_epoch, valid_accuracy, test_score.accuracy, model,
                            vocab, run_dir)


def _train_epoch(model: SentimentClassifier, optimizer: torch.optim.Optimizer,
                 train: EncodedSplit, config: ClassifierConfig, order: torch.Generator,
                 console: Console, metrics: MetricsLog, epoch: int, world: World,
                 replica: torch.nn.Module) -> tuple[float, float]:
    """One pass in a seeded random order; returns mean loss and accuracy over the texts.

    Every rank draws the same order and takes its contiguous share of each batch (the
    distributed sampler): together the ranks see exactly the single-process batches.
    `replica` is `model`, wrapped in DistributedDataParallel when there are several ranks.
    """
    model.train()
    device = next(model.parameters()).device
    description = f"epoch {epoch}/{config.epochs}"
    permutation = torch.randperm(len(train), generator=order).tolist()
    batches = _epoch_batches(permutation, config, world)
    total_loss, correct, seen = 0.0, 0.0, 0
    start_time = time.perf_counter()
    bar = console.progress(len(batches), 0, description, unit="batch")
    for step, chosen in enumerate(batches, start=1):
        mine = chosen[world.share(len(chosen))]
        ids, lengths = pad_batch([train.ids[i] for i in mine])
        labels = train.labels[mine].to(device)
        logits = replica(ids.to(device), lengths)  # [B / W]
        loss = batch_loss(logits, labels, config.loss)  # mean over this rank's texts
        if world.distributed:
            # DDP averages the ranks' gradients; weighting each rank's mean by W x its share of
            # the batch makes that average the gradient of the whole batch's mean.
            loss = loss * (world.size * len(mine) / len(chosen))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        value = world.summed(loss.detach()).item() / world.size  # the whole batch's, everywhere
        if not math.isfinite(value):
            raise UserError(f"training diverged: loss is {value} ({description}); try a lower "
                            f"learning_rate")
        total_loss += value * len(chosen)
        seen += len(chosen)
        correct += ((logits.detach() >= 0).float() == labels).sum().item()
        bar.update(1)
        if crosses_report_point(step, len(batches)):
            # Every rank reaches the same report points, so the sum over ranks is safe here.
            _report_progress(console, metrics, epoch, step, len(batches), total_loss / seen,
                             _all_ranks(correct, world) / seen,
                             seen / max(time.perf_counter() - start_time, 1e-9))
    bar.close()
    return total_loss / seen, _all_ranks(correct, world) / seen


def _epoch_batches(permutation: list[int], config: ClassifierConfig, world: World
                   ) -> list[list[int]]:
    batches = [permutation[i:i + config.batch_size]
               for i in range(0, len(permutation), config.batch_size)]
    # A last batch smaller than the rank count would leave a rank without texts: dropped.
    return [chosen for chosen in batches if len(chosen) >= world.size]


def _batches_per_epoch(texts: int, config: ClassifierConfig, world: World) -> int:
    return len(_epoch_batches(list(range(texts)), config, world))


def _all_ranks(count: float, world: World) -> float:
    return world.summed(torch.tensor(count, dtype=torch.float64)).item()


def _report_progress(console: Console, metrics: MetricsLog, epoch: int, step: int, steps: int,
                     loss: float, accuracy: float, texts_per_sec: float) -> None:
    """A tenth of the epoch done: running train loss and accuracy (dropout on), and speed."""
    console.say(f"{step / steps:.3f} loss: {loss:.3f} accuracy: {accuracy:.3f} speed: "
                f"{texts_per_sec:.0f} texts/s")
    metrics.write({"event": "progress", "epoch": epoch, "step": step, "fraction": step / steps,
                   "train_loss": loss, "train_accuracy": accuracy,
                   "texts_per_sec": texts_per_sec})


def _agreed(result: SplitScore, world: World) -> SplitScore:
    """Rank 0's score on every rank, so all keep the same best epoch."""
    loss, accuracy = world.agree([result.loss, result.accuracy])
    return dataclasses.replace(result, loss=loss, accuracy=accuracy)


def _optimizer(config: ClassifierConfig, model: SentimentClassifier) -> torch.optim.Optimizer:
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(model.parameters(), lr=config.learning_rate,
                                    weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)


def _load_vectors(model: SentimentClassifier, path: str | Path, vocab: Vocab,
                  console: Console) -> None:
    with torch.no_grad():
        loaded = load_word_vectors(path, vocab, init=model.embedding.weight, skip=(PAD,))
        model.embedding.weight.copy_(loaded.weights)
    console.say(f"pretrained vectors: {loaded.found:,} of {len(vocab):,} vocabulary words found "
                f"in {path} ({loaded.dimension} dimensions); the rest start random")

