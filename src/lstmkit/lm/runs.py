"""The language model's checkpoints: what they hold, saving, and loading for use or resume.

A run directory (see lstmkit.rundir) holds `model.safetensors` (the latest state: weights and
everything to resume exactly) and `best.safetensors` (the weights with the best validation
perplexity so far). Sampling, scoring and evaluation need only a checkpoint file: config and
vocabulary are in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lstmkit.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lstmkit.errors import UserError
from lstmkit.lm.config import LMConfig
from lstmkit.lm.model import LanguageModel, LMShape
from lstmkit.rundir import checkpoint_file
from lstmkit.vocab import Vocab

KIND_LM = "language_model"


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
            return Progress(**self.meta["progress"])
        except (KeyError, TypeError) as err:
            raise UserError(f"{self.path}: has no usable training position, cannot resume "
                            f"from it ({err})") from None


def save_lm_checkpoint(path: Path, model: LanguageModel, config: LMConfig, vocab: Vocab,
                       level: str = "word", optimizer: torch.optim.Optimizer | None = None,
                       progress: Progress | None = None,
                       carried: tuple[torch.Tensor, ...] | None = None,
                       rank_rng: dict[str, torch.Tensor] | None = None) -> None:
    """`rank_rng`: each data-parallel rank's RNG state (see distributed.World.rng_states)."""
    tensors = {f"model.{k}": v for k, v in _unwrap(model).state_dict().items()}
    tensors.update(rank_rng or {})
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
        raise UserError(f"{path}: holds a {meta.get('kind')!r}, not a language model")
    try:
        config = LMConfig(**meta["config"])
        vocab = Vocab.from_dict(meta["vocab"])
        shape = LMShape(**meta["shape"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: checkpoint metadata is incomplete ({err})") from None
    model = LanguageModel(shape, keep_prob=config.keep_prob, lstm_impl=config.lstm_impl)
    load_weights(model, tensors, path)
    model.to(device)
    return LoadedLM(model, config, vocab, meta.get("level", "word"), meta, tensors, path)


def restore_optimizer(optimizer: torch.optim.Optimizer, loaded: LoadedLM) -> None:
    saved = loaded.meta.get("optimizer")
    if saved is None:
        raise UserError(f"{loaded.path}: has no optimizer state, cannot resume from it")
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in saved["state"].items()}
    for name, tensor in loaded.tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def restore_rng(loaded: LoadedLM) -> None:
    torch.set_rng_state(loaded.tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [loaded.tensors[k] for k in sorted(loaded.tensors) if k.startswith("rng.cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def carried_state(loaded: LoadedLM, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    parts = sorted((k for k in loaded.tensors if k.startswith("carried.")),
                   key=lambda k: int(k.split(".")[1]))
    if not parts:
        return None
    return tuple(loaded.tensors[k].to(device) for k in parts)


def _unwrap(model: torch.nn.Module) -> LanguageModel:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model
