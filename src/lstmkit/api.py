"""The Python API behind the command line: each CLI command is one call here."""

from __future__ import annotations

from pathlib import Path

import torch

from lstmkit.config import LMConfig
from lstmkit.data.ptb import load_ptb, read_split, resolve_ptb_dir, split_file
from lstmkit.device import resolve_device
from lstmkit.evaluate import Perplexity, perplexity, stream_perplexity
from lstmkit.reporting import Console
from lstmkit.runs import load_lm
from lstmkit.train.lm import TokenSplits, TrainResult, train_language_model


def load_ptb_splits(data_dir: str | Path | None) -> TokenSplits:
    corpus = load_ptb(resolve_ptb_dir(data_dir))
    as_tensor = torch.from_numpy
    return TokenSplits(corpus.vocab, as_tensor(corpus.train), as_tensor(corpus.valid),
                       as_tensor(corpus.test))


def train_ptb(config: LMConfig, data_dir: str | Path | None, save_path: str | Path | None,
              resume: bool = False, console: Console | None = None) -> TrainResult:
    return train_language_model(config, load_ptb_splits(data_dir), save_path, resume, console)


def evaluate_ptb(model_path: str | Path, data_dir: str | Path | None, split: str = "test",
                 batch_size: int | None = None, num_steps: int | None = None,
                 stream: bool = False, device: str = "auto",
                 precision: str | None = None) -> Perplexity:
    """Perplexity of a saved model on one PTB split (no training data needed but that file)."""
    loaded = load_lm(model_path, resolve_device(device))
    path = split_file(resolve_ptb_dir(data_dir), split)
    ids = torch.from_numpy(read_split(path, loaded.vocab))
    precision = precision or loaded.config.precision
    if stream:
        return stream_perplexity(loaded.model, ids, precision)
    return perplexity(loaded.model, ids, batch_size or loaded.config.eval_batch_size,
                      num_steps or loaded.config.eval_num_steps, precision)
