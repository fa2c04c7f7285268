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

from lstmkit.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.model import ClassifierShape, SentimentClassifier
from lstmkit.errors import UserError
from lstmkit.files import is_dir
from lstmkit.rundir import BEST_FILE
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
    return path / BEST_FILE if is_dir(path, "model path") else path


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
        raise UserError(f"{path}: holds a {meta.get('kind')!r}, not a classifier")
    try:
        config = ClassifierConfig.from_dict(meta["config"])
        vocab = Vocab.from_dict(meta["vocab"])
        shape = ClassifierShape.from_dict(meta["shape"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: checkpoint metadata is incomplete ({err})") from None
    model = SentimentClassifier(shape, config.embed_dropout, config.dropout, config.packed)
    load_weights(model, tensors, path)
    model.to(device).eval()
    return LoadedClassifier(model, config, vocab, meta, path)
