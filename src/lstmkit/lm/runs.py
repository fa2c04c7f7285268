"""The language model's checkpoints: what they hold, saving, and loading for use or resume.

A run directory (see lstmkit.rundir) holds `model.safetensors` (the latest state: weights and
everything to resume exactly) and `best.safetensors` (the weights with the best validation
perplexity so far). Sampling, scoring and evaluation need only a checkpoint file: config and
vocabulary are in it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lstmkit.checkpoint import (
    check_weights_fit,
    load_checkpoint,
    load_weights,
    meta_table,
    save_checkpoint,
)
from lstmkit.errors import UserError, one_line
from lstmkit.fields import check_type
from lstmkit.lm.config import LMConfig
from lstmkit.lm.data import LEVELS
from lstmkit.lm.model import LanguageModel, LMShape, Regularisers
from lstmkit.rundir import checkpoint_file
from lstmkit.vocab import Vocab

KIND_LM = "language_model"
AVERAGE_PREFIX = "asgd."


@dataclass
class Progress:
    """Where a training run is: with the RNG and carried state, enough to continue exactly."""
    epoch: int = 1  # epoch in progress (1-based)
    step: int = 0  # windows already done in this epoch
    costs: float = 0.0  # summed window costs of this epoch so far
    iters: int = 0  # time steps of this epoch so far
    best_valid: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics_bytes: int = 0  # length of metrics.jsonl when this state was saved
    lr_scale: float = 1.0  # times the scheduled learning rate: halved by each NaN rollback
    windows_done: int = 0  # training windows of the whole run so far
    planned_windows: int = 0  # a time budget's plan of the run's windows (0: none yet)
    budget_used: float = 0.0  # seconds of the time budget spent up to this state
    asgd_count: int = 0  # iterates in NT-ASGD's average (0: not averaging yet)
    training_done: bool = False  # the time budget ended training (the test may be left)
    loss_scale: float = 0.0  # fp16's dynamic loss scale (lm/optim.py); 0: not scaling
    loss_scale_good_steps: int = 0  # finite steps in a row at this scale


@dataclass
class LoadedLM:
    model: LanguageModel
    config: LMConfig
    vocab: Vocab
    level: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path

    @property
    def progress(self) -> Progress:
        try:
            return checked_progress(self.meta.get("progress"))
        except (UserError, TypeError) as err:
            raise UserError(f"{self.path}: has no usable training position, cannot resume "
                            f"from it ({err})") from None


_PROGRESS_TYPES = {"epoch": "int", "step": "int", "costs": "float", "iters": "int",
                   "metrics_bytes": "int", "lr_scale": "float", "windows_done": "int",
                   "planned_windows": "int", "budget_used": "float", "asgd_count": "int",
                   "loss_scale": "float", "loss_scale_good_steps": "int"}


def checked_progress(saved: Any) -> Progress:
    """A saved Progress, every field of its type and in range before training uses it."""
    if not isinstance(saved, dict):
        raise UserError("progress is missing or not a table")
    progress = Progress(**saved)
    for name, annotation in _PROGRESS_TYPES.items():
        check_type(name, getattr(progress, name), annotation)
    check_type("training_done", progress.training_done, "bool")
    if progress.best_valid is not None:
        check_type("best_valid", progress.best_valid, "float")
    for name in ("costs", "lr_scale", "budget_used", "loss_scale"):
        if not math.isfinite(getattr(progress, name)):
            raise UserError(f"{name} is not a finite number")
    if not (isinstance(progress.history, list)
            and all(isinstance(record, dict) for record in progress.history)):
        raise UserError("history is not a list of records")
    for record in progress.history:  # the learning curve and NT-ASGD's trigger read these
        check_type("history epoch", record.get("epoch"), "int")
        for name in ("train_perplexity", "valid_perplexity"):
            check_type(f"history {name}", record.get(name), "float")
    if progress.epoch < 1 or min(progress.step, progress.iters, progress.metrics_bytes,
                                 progress.windows_done, progress.planned_windows,
                                 progress.budget_used, progress.asgd_count,
                                 progress.loss_scale, progress.loss_scale_good_steps) < 0:
        raise UserError("a position field is out of range")
    return progress


def save_lm_checkpoint(path: Path, model: LanguageModel, config: LMConfig, vocab: Vocab,
                       level: str = "word", optimizer: torch.optim.Optimizer | None = None,
                       progress: Progress | None = None,
                       carried: tuple[torch.Tensor, ...] | None = None,
                       rank_rng: dict[str, torch.Tensor] | None = None,
                       averages: dict[str, torch.Tensor] | None = None) -> None:
    """`rank_rng`: each data-parallel rank's RNG state (see distributed.World.rng_states);
    `averages`: NT-ASGD's averaged weights by parameter name (see lm/averaging.py)."""
    tensors = {f"model.{k}": v for k, v in _unwrap(model).state_dict().items()}
    tensors.update(rank_rng or {})
    tensors.update({f"{AVERAGE_PREFIX}{k}": v for k, v in (averages or {}).items()})
    meta: dict[str, Any] = {
        "kind": KIND_LM,
        "level": level,
        "shape": dataclasses.asdict(_unwrap(model).shape),
        "config": config.to_dict(),
        "vocab": vocab.to_dict(),
        "torch_version": torch.__version__,
    }
    if progress is not None:
        meta["progress"] = dataclasses.asdict(progress)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
    if optimizer is not None:
        optim_state = optimizer.state_dict()
        meta["optimizer"] = {"param_groups": optim_state["param_groups"], "state": {}}
        for pid, entry in optim_state["state"].items():
            plain = {}
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{key}"] = value
                else:
                    plain[key] = value
            meta["optimizer"]["state"][str(pid)] = plain
    if carried is not None:
        for i, s in enumerate(carried):
            tensors[f"carried.{i}"] = s
    save_checkpoint(path, tensors, meta)


def load_lm(path: str | Path, device: torch.device | str = "cpu") -> LoadedLM:
    path = checkpoint_file(path)
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != KIND_LM:
        raise UserError(f"{path}: holds a {_kind(meta)}, not a language model")
    config, vocab, shape, level = _described_model(meta, path)
    layers_in_file = sum(1 for name in tensors
                         if name.startswith(("model.rnn.weight_ih_l", "model.rnn_top.weight_ih_l")))
    if shape.num_layers != layers_in_file:  # checked first: building the layers takes time
        raise UserError(f"{path}: checkpoint metadata describes {shape.num_layers} layers, the "
                        f"file holds {layers_in_file}")
    check_weights_fit(lambda: LanguageModel(shape, keep_prob=config.keep_prob), tensors, path)
    model = LanguageModel(shape, keep_prob=config.keep_prob, lstm_impl=config.lstm_impl,
                          regularisers=Regularisers.of(config))
    load_weights(model, tensors, path)
    model.to(device)
    return LoadedLM(model, config, vocab, level, meta, tensors, path)


def _described_model(meta: dict[str, Any], path: Path
                     ) -> tuple[LMConfig, Vocab, LMShape, str]:
    """Config, vocabulary, shape and level from the metadata, each checked, and agreeing with
    each other, before any of them sizes a model."""
    try:
        config = LMConfig(**meta_table(meta, "config", path))
        vocab = Vocab.from_dict(meta_table(meta, "vocab", path))
        shape = LMShape(**meta_table(meta, "shape", path))
        for name in ("vocab_size", "hidden_size", "num_layers", "embedding_size"):
            check_type(name, getattr(shape, name), "int")
        check_type("tied", shape.tied, "bool")
    except (TypeError, UserError) as err:
        raise UserError(f"{path}: checkpoint metadata is incomplete or invalid "
                        f"({one_line(str(err).removeprefix(f'{path}: '))})") from None
    if shape != LMShape.of(config, len(vocab)):
        raise UserError(f"{path}: checkpoint metadata disagrees with itself (the shape "
                        f"{shape} is not that of its config and {len(vocab)}-token vocabulary)")
    level = meta.get("level", "word")
    if level not in LEVELS:
        raise UserError(f"{path}: checkpoint metadata names an unknown level "
                        f"{str(level)[:40]!r}")
    return config, vocab, shape, level


def _kind(meta: dict[str, Any]) -> str:
    return repr(meta.get("kind"))[:60]


def restore_optimizer(optimizer: torch.optim.Optimizer, loaded: LoadedLM) -> None:
    saved = loaded.meta.get("optimizer")
    if saved is None:
        raise UserError(f"{loaded.path}: has no optimizer state, cannot resume from it")
    try:
        state: dict[int, dict[str, Any]] = {int(pid): dict(v)
                                            for pid, v in saved["state"].items()}
        for name, tensor in loaded.tensors.items():
            if name.startswith("optim."):
                _, pid, key = name.split(".", 2)
                state.setdefault(int(pid), {})[key] = tensor
        # The saved groups carry the saving run's settings; whether the step is fused is
        # this run's (torch places a fused Adam's step counter on the weights' device).
        groups = [{**group, "fused": current.get("fused")}
                  for group, current in zip(saved["param_groups"], optimizer.param_groups,
                                            strict=False)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as err:
        # The optimizer's own format, as torch checks it: any mismatch is a bad checkpoint.
        raise UserError(f"{loaded.path}: unusable optimizer state, cannot resume from it "
                        f"({type(err).__name__})") from None


def restore_rng(loaded: LoadedLM) -> None:
    try:
        torch.set_rng_state(loaded.tensors["rng.torch"])
        if torch.cuda.is_available():
            states = [loaded.tensors[k] for k in sorted(loaded.tensors)
                      if k.startswith("rng.cuda.")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{loaded.path}: unusable random-number state, cannot resume from it "
                        f"({type(err).__name__})") from None


def saved_averages(loaded: LoadedLM, model: LanguageModel) -> dict[str, torch.Tensor]:
    """NT-ASGD's averaged weights as saved, one per parameter of `model`, checked."""
    names = dict(model.named_parameters())
    averages = {k[len(AVERAGE_PREFIX):]: v for k, v in loaded.tensors.items()
                if k.startswith(AVERAGE_PREFIX)}
    if set(averages) != set(names) or any(averages[k].shape != names[k].shape
                                          for k in names):
        raise UserError(f"{loaded.path}: unusable averaged weights (NT-ASGD), cannot resume "
                        f"from it")
    return averages


def carried_state(loaded: LoadedLM, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """The state carried into the next window, shaped as the model and batch need it."""
    parts = sorted(k for k in loaded.tensors if k.startswith("carried."))
    if not parts:
        return None
    shape = loaded.model.shape
    wanted = (shape.num_layers, loaded.config.batch_size, shape.state_size)
    count = 2 if shape.cell == "lstm" else 1
    names = [f"carried.{i}" for i in range(count)]
    if parts != sorted(names) or any(tuple(loaded.tensors[k].shape) != wanted
                                     or not loaded.tensors[k].is_floating_point()
                                     for k in names):
        raise UserError(f"{loaded.path}: unusable carried state, cannot resume from it "
                        f"(expected {count} float tensor(s) shaped {list(wanted)})")
    # In the weights' dtype, as a fresh state is: oneDNN's LSTM under bf16 autocast carries
    # bf16 state, which an fp32 layer refuses (a resume may change the precision); the cast
    # is exact, and autocast casts it back to bf16 where bf16 goes on.
    dtype = loaded.model.embedding.weight.dtype
    return tuple(loaded.tensors[k].to(device=device, dtype=dtype) for k in names)


def _unwrap(model: torch.nn.Module) -> LanguageModel:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model
