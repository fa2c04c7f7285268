"""Sentence-classifier configuration: one frozen dataclass, two recipes, validated overrides.

`default` is what gave the best validation accuracy on Movie Review (see results/mr-classifier);
`tutorial` is the TensorFlow tutorial's recipe (seeds/002): LSTM 128 -> LSTM 64 with dropout on
each layer's output, last step -> sigmoid, mean-squared error, Adadelta.
Precedence: recipe < command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from lstmkit.config import CELLS, DEVICES
from lstmkit.errors import UserError

LOSSES = ("bce", "mse")
OPTIMIZERS = ("adam", "adadelta")


@dataclass(frozen=True)
class ClassifierConfig:
    # --- model ---
    layer_sizes: tuple[int, ...] = (128, 64)  # one recurrent layer per entry, bottom first
    cell: str = "lstm"
    bidirectional: bool = False
    embed_size: int = 300
    embed_dropout: float = 0.5  # on the embeddings (the tutorial has none)
    dropout: float = 0.5  # on each recurrent layer's output (the tutorial's DropoutWrapper)
    # --- text -> ids ---
    lowercase: bool = True
    max_length: int = 0  # keep the first N tokens of a text (0: keep all)
    packed: bool = True  # pack variable-length batches; False: pad with <pad> (see model.py)
    min_count: int = 2  # training-split count a word needs to enter the vocabulary
    max_vocab: int = 0  # cap on the vocabulary size, <pad> and <unk> included (0: no cap)
    # --- training ---
    loss: str = "bce"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 5.0  # 0: no clipping
    batch_size: int = 32
    epochs: int = 10  # the checkpoint kept is the epoch with the best valid accuracy
    # --- split (only when the data has no explicit valid/test part) ---
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # --- run control ---
    seed: int = 0  # the split, the initial weights, the batch order and dropout
    device: str = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if not self.layer_sizes or any(size <= 0 for size in self.layer_sizes):
            raise UserError(f"config field layer_sizes must be positive sizes, got "
                            f"{','.join(map(str, self.layer_sizes)) or 'nothing'}")
        for name in ("embed_size", "batch_size", "epochs", "min_count"):
            if getattr(self, name) <= 0:
                raise UserError(f"config field {name} must be positive, got {getattr(self, name)}")
        for name in ("max_length", "max_vocab"):
            if getattr(self, name) < 0:
                raise UserError(f"config field {name} must be >= 0, got {getattr(self, name)}")
        if 0 < self.max_vocab < 3:
            raise UserError(f"config field max_vocab must be at least 3 (<pad>, <unk> and a "
                            f"word), got {self.max_vocab}")
        for name in ("embed_dropout", "dropout"):
            if not (0.0 <= getattr(self, name) < 1.0):
                raise UserError(f"config field {name} must be in [0, 1), got "
                                f"{getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"config field learning_rate must be a positive number, got "
                            f"{self.learning_rate}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"config field {name} must be >= 0, got {value}")
        for name in ("valid_fraction", "test_fraction"):
            if not (0.0 < getattr(self, name) < 1.0):
                raise UserError(f"config field {name} must be in (0, 1), got "
                                f"{getattr(self, name)}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise UserError(f"valid_fraction + test_fraction must leave data to train on, got "
                            f"{self.valid_fraction} + {self.test_fraction}")
        _check_choice("cell", self.cell, CELLS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("device", self.device, DEVICES)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_sizes"] = list(self.layer_sizes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        data = dict(data)
        if "layer_sizes" in data:
            data["layer_sizes"] = tuple(data["layer_sizes"])
        return cls(**data)


# The tutorial (seeds/002) trains with MSE on the sigmoid output and Adadelta; its learning rate
# is not shown, so ours is Adadelta's own 1.0 (Zeiler 2012; TF's 0.001 barely moves). Texts are
# cut to a fixed length as the tutorial's are (200 there; MR sentences are shorter than 64).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "tutorial": dict(layer_sizes=(128, 64), cell="lstm", bidirectional=False, embed_size=300,
                     embed_dropout=0.0, dropout=0.5, loss="mse", optimizer="adadelta",
                     learning_rate=1.0, max_grad_norm=0.0, batch_size=64, epochs=30,
                     max_length=64),
}


def recipe(name: str) -> ClassifierConfig:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return ClassifierConfig(**RECIPES[name])


def field_names() -> list[str]:
    return [f.name for f in fields(ClassifierConfig)]


def apply_overrides(config: ClassifierConfig, overrides: Mapping[str, Any], source: str
                    ) -> ClassifierConfig:
    """`config` with `overrides` (strings from the command line, or typed values) applied."""
    known = {f.name: f.type for f in fields(ClassifierConfig)}
    coerced = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(f"{source}: unknown classifier config field {key!r}")
        coerced[name] = _coerce(name, value, known[name], source)
    try:
        return dataclasses.replace(config, **coerced)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    typ = _TYPES.get(annotation, annotation)
    if not isinstance(value, str):
        return tuple(value) if typ is tuple and isinstance(value, list) else value
    try:
        if typ is tuple:
            return tuple(int(part) for part in value.split(","))
        if typ is bool:
            if value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        return typ(value)
    except ValueError:
        pass
    kind = {tuple: "comma-separated sizes like 128,64", bool: "true or false"}.get(
        typ, typ.__name__)
    raise UserError(f"{source}: config field {name} must be {kind}, got {value!r}")


# `from __future__ import annotations` makes field types strings.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple[int, ...]": tuple}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    typ = _TYPES.get(annotation, annotation)
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is tuple:
        ok = isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise UserError(f"config field {name} must be {getattr(typ, '__name__', typ)}, "
                        f"got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config field {name} must be one of {', '.join(choices)}, got {value!r}")
