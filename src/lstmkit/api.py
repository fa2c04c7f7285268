"""The Python API behind the command line: each CLI command is one call here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from lstmkit import generate
from lstmkit.config import LMConfig
from lstmkit.data.plaintext import TextCorpus, check_level, encode_text, load_text_corpus
from lstmkit.data.ptb import SPLITS, read_split, resolve_ptb_dir, split_file
from lstmkit.data.text import read_text
from lstmkit.device import check_precision, resolve_device, saved_precision
from lstmkit.distributed import rank_console
from lstmkit.errors import UserError
from lstmkit.evaluate import Perplexity, perplexity, stream_perplexity
from lstmkit.reporting import Console
from lstmkit.runs import LoadedLM, checkpoint_file, load_lm
from lstmkit.train.lm import TokenSplits, TrainResult, train_language_model
from lstmkit.vocab import EOS


def train_ptb(config: LMConfig, data_dir: str | Path | None, save_path: str | Path | None,
              resume: bool = False, console: Console | None = None,
              overwrite: bool = False) -> TrainResult:
    """PTB's three files as word-level text: the same path `lstmkit train --data-dir` takes."""
    ptb = resolve_ptb_dir(data_dir)
    files = {f"{split}_file": split_file(ptb, split) for split in SPLITS}
    return train_text(config, "word", **files, save_path=save_path, resume=resume,
                      console=console, overwrite=overwrite)


def evaluate_ptb(model_path: str | Path, data_dir: str | Path | None, split: str = "test",
                 batch_size: int | None = None, num_steps: int | None = None,
                 stream: bool = False, device: str = "auto",
                 precision: str | None = None) -> Perplexity:
    """Perplexity of a saved model on one PTB split (no training data needed but that file)."""
    loaded = load_lm(model_path, resolve_device(device))
    path = split_file(resolve_ptb_dir(data_dir), split)
    if loaded.level == "word":
        ids = torch.from_numpy(read_split(path, loaded.vocab))
    else:
        ids = torch.from_numpy(encode_text(loaded.vocab, read_text(path), loaded.level,
                                           str(path))[0])
    precision = precision or saved_precision(loaded.config.precision)
    check_precision(precision, next(loaded.model.parameters()).device)
    if stream:
        return stream_perplexity(loaded.model, ids, precision)
    return perplexity(loaded.model, ids, batch_size or loaded.config.eval_batch_size,
                      num_steps or loaded.config.eval_num_steps, precision)


def load_text_splits(level: str, data_file: str | Path | None = None,
                     train_file: str | Path | None = None, valid_file: str | Path | None = None,
                     test_file: str | Path | None = None, vocab_size: int | None = None
                     ) -> TokenSplits:
    """Word- or char-level splits of plain UTF-8 text: one file split 90/5/5, or three files."""
    return _as_splits(load_text_corpus(level, data_file, train_file, valid_file, test_file,
                                       vocab_size))


def _as_splits(corpus: TextCorpus) -> TokenSplits:
    as_tensor = torch.from_numpy
    return TokenSplits(corpus.vocab, as_tensor(corpus.train), as_tensor(corpus.valid),
                       as_tensor(corpus.test), corpus.level)


def train_text(config: LMConfig, level: str | None = None, *,
               data_file: str | Path | None = None, train_file: str | Path | None = None,
               valid_file: str | Path | None = None, test_file: str | Path | None = None,
               vocab_size: int | None = None, save_path: str | Path | None = None,
               resume: bool = False, console: Console | None = None,
               overwrite: bool = False) -> TrainResult:
    """Train a word- or char-level model on plain text (see `load_text_splits`).

    A fresh run (no `resume`) refuses a `save_path` that holds a trained model unless
    `overwrite`.

    `level` defaults to the resumed run's, else "word". On resume, `vocab_size` defaults to the
    size of the run's vocabulary, which rebuilds that vocabulary from the same training text.
    """
    console = rank_console(console)  # silent off rank 0 under torchrun
    saved = _resumable_run(save_path) if resume else None
    if saved is not None:
        if level is not None and check_level(level) != saved.level:
            raise UserError(f"{saved.path}: the run is {saved.level}-level; cannot resume it "
                            f"at the {level} level")
        level = saved.level
        vocab_size = vocab_size if vocab_size is not None else len(saved.vocab)
    level = check_level(level or "word")
    corpus = load_text_corpus(level, data_file, train_file, valid_file, test_file, vocab_size)
    unit = "char" if level == "char" else "token"
    console.say(f"{level}-level data: {corpus.description}: train {corpus.train.size:,}, valid "
                f"{corpus.valid.size:,}, test {corpus.test.size:,} {unit}s; vocabulary "
                f"{len(corpus.vocab):,}" + (f" (with {corpus.vocab.unk})" if corpus.vocab.unk
                                            else ""))
    return train_language_model(config, _as_splits(corpus), save_path, resume, console,
                                overwrite)


def _resumable_run(save_path: str | Path | None) -> LoadedLM | None:
    if save_path is None or not checkpoint_file(save_path).exists():
        return None  # the trainer explains what is missing
    return load_lm(save_path)


DEFAULT_SAMPLE_LENGTH = {"char": 500, "word": 100}


class LanguageModelRun:
    """A saved word- or char-level language model: sample from it, score text with it.

    >>> run = lstmkit.load("runs/shakespeare")
    >>> print(run.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1))
    >>> run.score("To be, or not to be, that is the question.").perplexity
    """

    def __init__(self, loaded: LoadedLM) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.vocab = loaded.vocab
        self.config = loaded.config
        self.level = loaded.level

    def encode(self, text: str, where: str = "text") -> torch.Tensor:
        """Ids of `text`, tokenised as the training data was (word: with <eos> per line)."""
        ids, _ = encode_text(self.vocab, text, self.level, where)
        return torch.from_numpy(ids)

    def generate(self, prime: str = "", length: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> Iterator[str]:
        """Yield the text piece by piece: first the prime, then each token as it is drawn.

        `length` tokens are drawn (default: 500 characters or 100 words); temperature 0 is
        greedy; `top_k` keeps only the k most likely tokens; the same `seed` gives the same text.

        Words are joined by spaces and <eos> becomes a line break; characters are as they are.
        Sampling starts after a line break (<eos>, or a newline for char models) so a prime, or
        the first token, begins a line as in the training text.
        """
        length = DEFAULT_SAMPLE_LENGTH[self.level] if length is None else length
        generate.check_sampling(length, temperature, top_k)
        generator = generate.make_generator(seed)
        prime_ids = self.encode(prime, where="prime").tolist() if prime else []
        if self.level == "word" and prime and not prime.endswith("\n"):
            prime_ids = prime_ids[:-1]  # the <eos> that tokenising gives the last line
        start = EOS if self.level == "word" else "\n"
        context = ([self.vocab.index[start]] if start in self.vocab else []) + prime_ids
        context = context or [0]  # no line break in the vocabulary: its most frequent token
        pieces = generate.Detokenizer(self.level)
        for token in self.vocab.decode(prime_ids):
            yield pieces.text_of(token)
        for next_id in generate.sample_ids(self.model, context, length, temperature, top_k,
                                           generator):
            yield pieces.text_of(self.vocab.tokens[next_id])

    def sample(self, prime: str = "", length: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               on_text: Callable[[str], object] | None = None) -> str:
        """The prime and `length` sampled tokens as one string; `on_text` sees each piece."""
        out = []
        for piece in self.generate(prime, length, temperature, top_k, seed):
            out.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(out)

    def score(self, text: str, per_line: bool = False, precision: str | None = None,
              where: str = "text") -> generate.TextScore:
        """Log-probability of `text` as one stream (its first token is context only).

        Equals `evaluate --stream` on the same text; with `per_line`, each line's share too.
        """
        ids, line_lengths = encode_text(self.vocab, text, self.level, where)
        precision = precision or saved_precision(self.config.precision)
        check_precision(precision, next(self.model.parameters()).device)
        if ids.size < 2:
            raise UserError(f"{where}: {ids.size} token(s) are too few to score (the first is "
                            f"context only)")
        return generate.score_ids(self.model, torch.from_numpy(ids),
                                  line_lengths if per_line else None, precision)

    def score_file(self, path: str | Path, per_line: bool = False,
                   precision: str | None = None) -> generate.TextScore:
        return self.score(read_text(path), per_line, precision, where=str(path))


def load(path: str | Path, device: str = "cpu") -> LanguageModelRun:
    """A saved language model (run directory or checkpoint file), ready to sample and score."""
    return LanguageModelRun(load_lm(path, resolve_device(device)))
