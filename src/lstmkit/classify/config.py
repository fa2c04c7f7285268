"""Sentence-classifier configuration: one frozen dataclass, two recipes, validated overrides.

`default` is what gave the best validation accuracy on Movie Review (see results/mr-classifier);
`tutorial` is the TensorFlow tutorial's recipe: LSTM 128 -> LSTM 64 with dropout on
each layer's output, last step -> sigmoid, mean-squared error, Adadelta.
Precedence: recipe < command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lstmkit.device import DEVICES
from lstmkit.errors import UserError
from lstmkit.fields import check_seed, check_types, described
from lstmkit.nn.recurrent import CELLS

LOSSES = ("bce", "mse")
OPTIMIZERS = ("adam", "adadelta")


@dataclass(frozen=True)
class ClassifierConfig:
    FIELD_KIND: ClassVar[str] = "classifier config field"  # named in override errors

    # --- model ---
    layer_sizes: tuple[int, ...] = described(
        (128, 64), "recurrent layer sizes, bottom first, one layer per size")
    cell: str = described("lstm", "recurrent cell", CELLS)
    bidirectional: bool = described(False, "read each text both ways")
    embed_size: int = described(300, "word embedding size; with --vectors, it must be theirs")
    # The tutorial has no embedding dropout.
    embed_dropout: float = described(0.5, "dropout probability on the embeddings")
    # The tutorial's DropoutWrapper.
    dropout: float = described(0.5, "dropout probability on each recurrent layer's output")
    # --- text -> ids ---
    lowercase: bool = described(True, "lowercase texts before splitting them into words")
    max_length: int = described(0, "keep the first N tokens of each text; 0: keep all")
    packed: bool = described(
        True, "true: pack batches so padding never enters the RNN; false: pad with <pad>")
    min_count: int = described(2, "training-split count a word needs to enter the vocabulary")
    max_vocab: int = described(
        0, "cap on the vocabulary size, <pad> and <unk> included; 0: no cap")
    # --- training ---
    loss: str = described("bce", "bce: cross-entropy on the logit; mse: the tutorial's, on the "
                          "sigmoid", LOSSES)
    optimizer: str = described("adam", "adadelta is the tutorial's", OPTIMIZERS)
    learning_rate: float = described(1e-3, "the optimizer's learning rate")
    weight_decay: float = described(0.0, "L2 penalty of the optimizer")
    max_grad_norm: float = described(5.0, "clip the gradient's global norm to V; 0: no clipping")
    batch_size: int = described(32, "texts per training batch")
    epochs: int = described(
        10, "epochs to train; the checkpoint kept is the epoch with the best valid accuracy")
    # --- split (only when the data has no explicit valid/test part) ---
    valid_fraction: float = described(
        0.1, "share of --data held out for validation, without --valid-data")
    test_fraction: float = described(
        0.1, "share of --data held out for testing, without --test-data")
    # --- run control ---
    seed: int = described(0, "seeds the split, the initial weights, the batch order and dropout")
    device: str = described("auto", "where to train; auto: cuda if present, else cpu", DEVICES)

    def __post_init__(self) -> None:
        check_types(self)
        check_seed(self.seed)
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


# The TensorFlow tutorial trains with MSE on the sigmoid output and Adadelta; its learning rate
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
