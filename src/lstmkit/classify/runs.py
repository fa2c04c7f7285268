"""A classifier run directory and its checkpoint.

    RUN/best.safetensors    weights of the epoch with the best valid accuracy, with the config,
                            vocabulary and split recipe (evaluate/predict need nothing else)
    RUN/metrics.jsonl       one JSON object per line (setup, epochs, test)
    RUN/curve.png           accuracy per epoch, drawn at the end
"""

from __future__ import annotations

from dataclasses import dataclass
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
from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.model import ClassifierShape, SentimentClassifier
from lstmkit.errors import UserError, one_line
from lstmkit.fields import check_type, check_types
from lstmkit.files import is_dir
from lstmkit.rundir import BEST_FILE, recover_interrupted
from lstmkit.vocab import Vocab

KIND_CLASSIFIER = "classifier"


@dataclass
class LoadedClassifier:
    model: SentimentClassifier
    config: ClassifierConfig
    vocab: Vocab
    meta: dict[str, Any]
    path: Path


def classifier_file(model_path: str | Path) -> Path:
    """`--model` may name a run directory (its best checkpoint) or a checkpoint file."""
    path = Path(model_path)
    if not is_dir(path, "model path"):
        return path
    recover_interrupted(path)
    return path / BEST_FILE


def save_classifier(path: Path, model: SentimentClassifier, config: ClassifierConfig,
                    vocab: Vocab, extra: dict[str, Any]) -> None:
    """`extra`: where it came from (epoch, valid accuracy, the data's split and fingerprint)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"kind": KIND_CLASSIFIER, "shape": model.shape.to_dict(), "config": config.to_dict(),
            "vocab": vocab.to_dict(), "torch_version": torch.__version__, **extra}
    save_checkpoint(path, tensors, meta)


def load_classifier(model_path: str | Path, device: torch.device | str = "cpu"
                    ) -> LoadedClassifier:
    path = classifier_file(model_path)
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != KIND_CLASSIFIER:
        raise UserError(f"{path}: holds a {repr(meta.get('kind'))[:60]}, not a classifier")
    try:
        config = ClassifierConfig.from_dict(meta_table(meta, "config", path))
        vocab = Vocab.from_dict(meta_table(meta, "vocab", path))
        shape = ClassifierShape.from_dict(meta_table(meta, "shape", path))
        check_types(shape)
        if not isinstance(meta.get("split", {}), dict):
            raise UserError("split is not a table")
        for name, annotation in (("seed", "int"), ("valid_fraction", "float"),
                                 ("test_fraction", "float")):
            if name in meta.get("split", {}):
                check_type(name, meta["split"][name], annotation)
    except (KeyError, TypeError, UserError) as err:
        raise UserError(f"{path}: checkpoint metadata is incomplete or invalid "
                        f"({one_line(str(err).removeprefix(f'{path}: '))})") from None
    if shape.vocab_size != len(vocab) or shape != ClassifierShape.of(config, len(vocab)):
        raise UserError(f"{path}: checkpoint metadata disagrees with itself (the shape is not "
                        f"that of its config and {len(vocab)}-token vocabulary)")
    if len(shape.layer_sizes) > len(tensors):  # checked first: building layers takes time
        raise UserError(f"{path}: checkpoint metadata describes {len(shape.layer_sizes)} "
                        f"layers, more than the file's {len(tensors)} tensors")
    check_weights_fit(lambda: SentimentClassifier(shape, config.embed_dropout, config.dropout,
                                                  config.packed), tensors, path)
    model = SentimentClassifier(shape, config.embed_dropout, config.dropout, config.packed)
    load_weights(model, tensors, path)
    model.to(device).eval()
    return LoadedClassifier(model, config, vocab, meta, path)
