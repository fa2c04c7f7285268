"""The Python API behind `lstmkit classify`: each subcommand is one call here."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.data import (
    POSITIVE,
    LabelledTexts,
    Splits,
    encode_split,
    encode_texts,
    make_splits,
    read_labelled,
    split_indices,
    tokenize,
)
from lstmkit.classify.evaluate import SplitScore, probabilities, score
from lstmkit.classify.runs import load_classifier
from lstmkit.classify.train import ClassifierResult, train_classifier
from lstmkit.classify.vectors import vector_dimension
from lstmkit.device import resolve_device
from lstmkit.distributed import rank_console
from lstmkit.errors import UserError
from lstmkit.reporting import Console


def load_splits(config: ClassifierConfig, data: str | Path, valid_data: str | Path | None = None,
                test_data: str | Path | None = None, text_column: str = "text",
                label_column: str = "label") -> tuple[Splits, dict]:
    """The train/valid/test data, and what a checkpoint needs to re-make a seeded split."""
    read = lambda path: read_labelled(path, text_column, label_column)  # noqa: E731
    for name, other in (("--valid-data", valid_data), ("--test-data", test_data)):
        if other is not None and Path(other).resolve() == Path(data).resolve():
            raise UserError(f"{other}: {name} is the training data itself; give held-out "
                            f"texts, or leave it out for a seeded split of --data")
    pool = read(data)
    valid = read(valid_data) if valid_data is not None else None
    test = read(test_data) if test_data is not None else None
    splits = make_splits(pool, valid, test, config.valid_fraction, config.test_fraction,
                         config.seed)
    meta = {"how": splits.how, "source": pool.source, "size": len(pool),
            "fingerprint": pool.fingerprint(), "seed": config.seed,
            "valid_fraction": 0.0 if valid is not None else config.valid_fraction,
            "test_fraction": 0.0 if test is not None else config.test_fraction}
    return splits, meta


def train(config: ClassifierConfig, data: str | Path, save_path: str | Path | None,
          valid_data: str | Path | None = None, test_data: str | Path | None = None,
          vectors: str | Path | None = None, text_column: str = "text",
          label_column: str = "label", console: Console | None = None,
          overwrite: bool = False, tensorboard: str | Path | None = None) -> ClassifierResult:
    """`lstmkit classify train`; `tensorboard`: a directory for TensorBoard event files of the
    metrics."""
    console = rank_console(console)  # silent off rank 0 under torchrun
    if vectors is not None:
        dimension = vector_dimension(vectors)
        if dimension != config.embed_size:
            console.say(f"note: embed_size set to {dimension}, the dimension of {vectors}")
            config = dataclasses.replace(config, embed_size=dimension)
    splits, meta = load_splits(config, data, valid_data, test_data, text_column, label_column)
    if len(set(splits.train.labels)) < 2:
        name = "positive" if splits.train.labels[0] == POSITIVE else "negative"
        raise UserError(f"{splits.train.source}: every training text is {name}; a classifier "
                        f"needs texts of both labels")
    return train_classifier(config, splits, save_path, vectors, meta, console, overwrite,
                            tensorboard)


@dataclass(frozen=True)
class Evaluation:
    score: SplitScore
    what: str  # which texts were scored, in words


def evaluate(model_path: str | Path, data: str | Path, split: str = "auto",
             text_column: str = "text", label_column: str = "label",
             device: str = "auto") -> Evaluation:
    """Accuracy of a saved classifier on `data`.

    `split`: `all` scores every text; `train`/`valid`/`test` re-make the seeded split the model
    was trained with (the data must be the same); `auto` is `test` when `data` is the data the
    model's split was cut from, else `all`.
    """
    loaded = load_classifier(model_path, resolve_device(device))
    texts = read_labelled(data, text_column, label_column)
    recorded = loaded.meta.get("split") or {}
    same_data = recorded.get("fingerprint") == texts.fingerprint()
    if split == "auto":
        split = "test" if same_data and recorded.get("test_fraction") else "all"
    if split != "all":
        texts = _seeded_part(texts, split, recorded, same_data, loaded.path, Path(data))
    config = loaded.config
    encoded = encode_split(loaded.vocab, texts, config.lowercase, config.max_length)
    what = (f"all {len(texts)} texts of {data}" if split == "all" else
            f"the {split} part ({len(texts)} texts) of {recorded['how']}")
    return Evaluation(score(loaded.model, encoded, config.loss), what)


def _seeded_part(texts: LabelledTexts, split: str, recorded: dict, same_data: bool,
                 model_path: Path, data: Path) -> LabelledTexts:
    if not same_data:
        raise UserError(f"{data}: not the data {model_path} was split from "
                        f"({recorded.get('source', 'unknown')}, {recorded.get('size', '?')} "
                        f"texts); use --split all to score all of it")
    fractions = (recorded["valid_fraction"], recorded["test_fraction"])
    if split != "train" and not fractions[split == "test"]:
        raise UserError(f"{model_path}: was trained with explicit {split} data, not a part cut "
                        f"from {data}; pass that data with --split all")
    parts = split_indices(texts.labels, *fractions, seed=recorded["seed"])
    chosen = parts[("train", "valid", "test").index(split)]
    return texts.subset(chosen, f"{texts.source} ({split} part)")


def predict(model_path: str | Path, lines: Sequence[str], device: str = "auto") -> list[float]:
    """P(positive) for each line of text (a line without words is scored as one <unk>)."""
    loaded = load_classifier(model_path, resolve_device(device))
    config = loaded.config
    ids = encode_texts(loaded.vocab, [tokenize(line, config.lowercase) for line in lines],
                       config.max_length)
    return probabilities(loaded.model, ids) if ids else []
