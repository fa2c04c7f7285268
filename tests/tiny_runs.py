"""Untrained language models saved as run directories in a blink: for tests that need a model
on disk (export, serving, quantisation) but not a trained one."""

from __future__ import annotations

from pathlib import Path

import torch

from lstmkit.lm.config import LMConfig
from lstmkit.lm.model import build_language_model
from lstmkit.lm.runs import save_lm_checkpoint
from lstmkit.rundir import checkpoint_file
from lstmkit.vocab import EOS, UNK, Vocab

WORDS = (EOS, "the", "cat", "a", "dog", "sees", "likes", "fish", "bread", UNK)
CHARS = ("\n", " ", "e", "t", "a", "o", "h", "s", "R", "M", "O", "E", ":", ",", "n", "i")


def save_tiny_run(directory: Path, level: str = "word", cell: str = "lstm", hidden: int = 12,
                  layers: int = 2, seed: int = 0, eos_bias: float = 0.0,
                  lstm_impl: str = "auto") -> Path:
    """A randomly initialised model (init scale 0.6: peaked, varied predictions) as a run;
    `eos_bias` raises the logit of the first token (<eos>, or the line break) so sentences end."""
    torch.manual_seed(seed)
    vocab = Vocab(WORDS, UNK) if level == "word" else Vocab(CHARS)
    config = LMConfig(hidden_size=hidden, num_layers=layers, init_scale=0.6, cell=cell,
                      lstm_impl=lstm_impl)
    model = build_language_model(config, len(vocab)).eval()
    with torch.no_grad():
        model.decoder.bias[0] += eos_bias
    directory.mkdir(parents=True, exist_ok=True)
    save_lm_checkpoint(checkpoint_file(directory), model, config, vocab, level)
    return directory
