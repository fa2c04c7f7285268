"""The language model's Python API: each `lstmkit` command is one call here.

>>> result = lstmkit.train(TextSource(data_dir="data/ptb"), preset="small", save_path="runs/s")
>>> run = lstmkit.load("runs/s")
>>> run.sample(prime="the", length=20, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lstmkit.device import DEVICES, PRECISIONS, check_precision, resolve_device, saved_precision
from lstmkit.distributed import rank_console
from lstmkit.download import download_ptb
from lstmkit.errors import UserError
from lstmkit.fields import apply_overrides, field_names, flag_helps
from lstmkit.lm import generate
from lstmkit.lm.config import PRESETS, LMConfig, load_config_file, preset
from lstmkit.lm.data import (
    LEVELS,
    SPLITS,
    check_level,
    encode_file,
    encode_text,
    load_text_corpus,
    ptb_files,
)
from lstmkit.lm.evaluate import Perplexity, perplexity, stream_perplexity
from lstmkit.lm.quantize import QUANTIZE, check_quantize, quantize_model
from lstmkit.lm.runs import LoadedLM, load_lm
from lstmkit.lm.train import TrainResult, train_language_model
from lstmkit.nn.kept import weights_kept
from lstmkit.reporting import Console
from lstmkit.rundir import MODEL_FILE, checkpoint_file
from lstmkit.text import read_text
from lstmkit.vocab import EOS

# What the command line offers, from the modules that own each list.
__all__ = [
    "DEVICES",
    "LEVELS",
    "MODEL_FILE",
    "PRECISIONS",
    "PRESETS",
    "SPLITS",
    "LMConfig",
    "LanguageModelRun",
    "TextSource",
    "download_ptb",
    "evaluate_ptb",
    "field_names",
    "flag_helps",
    "load",
    "train",
    "train_ptb",
    "train_text",
]


@dataclass(frozen=True)
class TextSource:
    """Where the text comes from: PTB (a directory, `$LSTMKIT_DATA`, or downloaded), one UTF-8
    file split 90/5/5, or three files; `vocab_size` caps the vocabulary (<unk> for the rest)."""
    data_dir: str | Path | None = None
    download: bool = False
    data_file: str | Path | None = None
    train_file: str | Path | None = None
    valid_file: str | Path | None = None
    test_file: str | Path | None = None
    vocab_size: int | None = None

    def files(self) -> dict[str, str | Path | None]:
        """`data_file` or `train_file`/`valid_file`/`test_file`, PTB's when no file is named."""
        files = {"data_file": self.data_file, "train_file": self.train_file,
                 "valid_file": self.valid_file, "test_file": self.test_file}
        if any(f is not None for f in files.values()):
            if self.data_dir is not None or self.download:
                raise UserError("give PTB (--data-dir/--download) or text files (--data-file, "
                                "or --train-file/--valid-file/--test-file), not both")
            return files
        data_dir = self.data_dir
        if data_dir is None and self.download:
            data_dir = download_ptb()
        return dict(ptb_files(data_dir))


def train(source: TextSource, *, preset_name: str = "small",
          config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
          level: str | None = None, save_path: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, console: Console | None = None,
          tensorboard: str | Path | None = None) -> TrainResult:
    """`lstmkit train`: the config is the preset (or, with `resume`, the run's own), then the
    config file, then `overrides`; a fresh run refuses a `save_path` holding a run unless
    `overwrite`. `tensorboard`: a directory for TensorBoard event files of the metrics.
    While it trains into a `save_path` in the main thread, SIGINT, SIGTERM and SIGHUP (a
    notebook's interrupt too) stop it after the window in progress with a checkpoint there,
    raising lstmkit.stopping.StopRequested (see that module)."""
    resumed = resumable_run(save_path, overwrite) if resume else None
    config = resumed.config if resumed is not None else preset(preset_name)
    if config_file:
        config = apply_overrides(config, load_config_file(config_file), str(config_file))
    config = apply_overrides(config, overrides or {}, "command line")
    return train_text(config, level, source, save_path=save_path, resumed=resumed,
                      console=console, overwrite=overwrite, tensorboard=tensorboard)


def resumable_run(save_path: str | Path | None, overwrite: bool = False) -> LoadedLM:
    """The run in `save_path` to continue (read once: its config, weights and position)."""
    if overwrite:
        raise UserError("--resume continues the run in --save-path and --overwrite replaces "
                        "it: give one of them")
    if not save_path:
        raise UserError("--resume needs --save-path (the run directory to continue)")
    path = checkpoint_file(save_path)
    if not Path(save_path).is_dir() or not path.exists():
        raise UserError(f"{Path(save_path) / path.name}: no checkpoint to resume from (train "
                        f"without --resume first)")
    return load_lm(save_path)


def train_text(config: LMConfig, level: str | None = None, source: TextSource | None = None, *,
               save_path: str | Path | None = None, resumed: LoadedLM | None = None,
               console: Console | None = None, overwrite: bool = False,
               tensorboard: str | Path | None = None) -> TrainResult:
    """Train a word- or char-level model on `source` with a complete `config`.

    `resumed` (see `resumable_run`) continues that run. `level` defaults to the resumed run's,
    else "word". On resume, `source.vocab_size` defaults to the size of the run's vocabulary,
    which rebuilds that vocabulary from the same training text.
    """
    console = rank_console(console)  # silent off rank 0 under torchrun
    source = source or TextSource()
    vocab_size = source.vocab_size
    if resumed is not None:
        if level is not None and check_level(level) != resumed.level:
            raise UserError(f"{resumed.path}: the run is {resumed.level}-level; cannot resume "
                            f"it at the {level} level")
        level = resumed.level
        vocab_size = vocab_size if vocab_size is not None else len(resumed.vocab)
    level = check_level(level or "word")
    corpus = load_text_corpus(level, **source.files(), vocab_size=vocab_size)
    unit = "char" if level == "char" else "token"
    console.say(f"{level}-level data: {corpus.description}: train {corpus.train.numel():,}, "
                f"valid {corpus.valid.numel():,}, test {corpus.test.numel():,} {unit}s; "
                f"vocabulary {len(corpus.vocab):,}"
                + (f" (with {corpus.vocab.unk})" if corpus.vocab.unk else ""))
    return train_language_model(config, corpus, save_path, resumed, console, overwrite,
                                tensorboard)


def train_ptb(config: LMConfig, data_dir: str | Path | None, save_path: str | Path | None,
              resume: bool = False, console: Console | None = None,
              overwrite: bool = False) -> TrainResult:
    """PTB's three files as word-level text, with a complete `config`."""
    resumed = resumable_run(save_path, overwrite) if resume else None
    return train_text(config, "word", TextSource(data_dir=data_dir), save_path=save_path,
                      resumed=resumed, console=console, overwrite=overwrite)


def evaluate_ptb(model_path: str | Path, data_dir: str | Path | None, split: str = "test",
                 batch_size: int | None = None, num_steps: int | None = None,
                 stream: bool = False, device: str = "auto",
                 precision: str | None = None, quantize: str | None = None) -> Perplexity:
    """Perplexity of a saved model on one PTB split (no training data needed but that file).

    The fast shape is the model's evaluation shape unless `batch_size`/`num_steps` are given;
    `stream` is the tutorial's one unbroken stream (batch 1); `quantize` "int8" evaluates the
    model with int8 recurrent and output layers (CPU).
    """
    for name, value in (("batch_size", batch_size), ("num_steps", num_steps)):
        flag = f"--{name.replace('_', '-')}"
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
        if value is not None and stream:
            raise UserError(f"{flag} sets the fast shape; --stream is always one row (give "
                            f"one of them)")
    device_used = resolve_device("cpu" if quantize and device == "auto" else device)
    check_quantize(quantize, device_used, precision)
    loaded = load_lm(model_path, device_used)
    model = quantize_model(loaded.model, quantize)
    ids = encode_file(loaded.vocab, ptb_files(data_dir)[f"{split}_file"], loaded.level)
    precision = _reuse_precision(precision, loaded.config.precision, quantize, device_used)
    if stream:
        return stream_perplexity(model, ids, precision)
    return perplexity(model, ids, batch_size or loaded.config.eval_batch_size,
                      num_steps or loaded.config.eval_num_steps, precision)


DEFAULT_SAMPLE_LENGTH = {"char": 500, "word": 100}


__all__ += ["QUANTIZE", "BeamText"]


@dataclass(frozen=True)
class BeamText:
    """One beam-search result: the prime, the continuation, and the continuation's
    log-probability (nats) over its `tokens` tokens."""
    prime: str
    continuation: str
    logprob: float
    tokens: int

    @property
    def text(self) -> str:
        return self.prime + self.continuation

    @property
    def score(self) -> float:
        """Log-probability per token: what the beams are ranked by."""
        return self.logprob / self.tokens if self.tokens else 0.0


class LanguageModelRun:
    """A saved word- or char-level language model: sample from it, score text with it.

    >>> run = lstmkit.load("runs/shakespeare")
    >>> print(run.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1))
    >>> run.score("To be, or not to be, that is the question.").perplexity
    """

    def __init__(self, loaded: LoadedLM, quantize: str | None = None,
                 precision: str | None = None) -> None:
        self.loaded = loaded
        self.quantize = quantize
        self.model = quantize_model(loaded.model.eval(), quantize)
        self.vocab = loaded.vocab
        self.config = loaded.config
        self.level = loaded.level
        self.precision = precision  # what calls that name none run in (None: the saved one)
        self._precision(None)  # checked now, not at the first call

    def encode(self, text: str, where: str = "text") -> torch.Tensor:
        """Ids of `text`, tokenised as the training data was (word: with <eos> per line)."""
        return encode_text(self.vocab, text, self.level, where)[0]

    def generate(self, prime: str = "", length: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, top_p: float | None = None,
                 stop_at: str | None = None, precision: str | None = None) -> Iterator[str]:
        """Yield the text piece by piece: first the prime, then each token as it is drawn.

        `length` tokens are drawn (default: 500 characters or 100 words); temperature 0 is
        greedy; `top_k` keeps only the k most likely tokens and `top_p` the fewest most likely
        whose probability reaches p; the same `seed` gives the same text. `stop_at` ends the
        sample early: "eos" (end of a sentence; for char models an empty line), "newline", or
        any string (the token that completes it is the last).

        Words are joined by spaces and <eos> becomes a line break; characters are as they are.
        Sampling starts after a line break (<eos>, or a newline for char models) so a prime, or
        the first token, begins a line as in the training text.

        The model runs in `precision` (default: as `score` runs it, in the precision it was
        trained in where this device runs that natively). Its weights are cast and packed
        once for the sample (nn/kept.py), so they must stay as they are until the generator
        is done: a load or an in-place change is seen, a fused optimizer's step or a change
        through `.data` is not.
        """
        for _, piece in self.generate_samples(prime, length, temperature, top_k, seed, top_p,
                                              stop_at, num_samples=1, precision=precision):
            yield piece

    def generate_samples(self, prime: str = "", length: int | None = None,
                         temperature: float = 1.0, top_k: int | None = None,
                         seed: int | None = None, top_p: float | None = None,
                         stop_at: str | None = None, num_samples: int = 1,
                         precision: str | None = None) -> Iterator[tuple[int, str]]:
        """`generate` for `num_samples` samples drawn together: yields (sample index, piece).

        Each sample's prime comes first, then every step gives one piece per sample still
        going. One seed gives the same samples.
        """
        length = self._length(length)
        generate.check_sampling(length, temperature, top_k, top_p)
        generate.check_count("num_samples", num_samples)
        precision = self._precision(precision)
        stop = generate.stop_text(stop_at, self.level)
        generator = generate.make_generator(seed)
        context, prime_ids = self._context(prime)
        pieces = [generate.Detokenizer(self.level) for _ in range(num_samples)]
        watches = [generate.StopWatch(stop) for _ in range(num_samples)]
        for index, detokenizer in enumerate(pieces):
            for token in self.vocab.decode(prime_ids):
                yield index, detokenizer.text_of(token)
        going = [True] * num_samples
        for step_ids in generate.sample_batch_ids(self.model, context, length, num_samples,
                                                  temperature, top_k, generator, top_p,
                                                  precision):
            for index, next_id in enumerate(step_ids.tolist()):
                if going[index]:
                    piece = pieces[index].text_of(self.vocab.tokens[next_id])
                    going[index] = not watches[index].add(piece)
                    yield index, piece
            if not any(going):
                return

    def beam_search(self, prime: str = "", length: int | None = None, beam: int = 4,
                    stop_at: str | None = None, precision: str | None = None
                    ) -> list[BeamText]:
        """The `beam` most likely continuations of `prime` (at most `length` tokens), best
        first, ranked by log-probability per token; `stop_at` and `precision` as in
        `generate`.

        A continuation's `logprob` is that of its tokens after the line break and the prime,
        so it equals `score` of a line break, the prime and the continuation, less the prime's
        part.
        """
        length = self._length(length)
        stop = generate.stop_text(stop_at, self.level)
        context, prime_ids = self._context(prime)

        def reached_stop(ids: tuple[int, ...]) -> bool:
            return stop is not None and stop in self._text(ids)

        found = generate.beam_search(self.model, context, length, beam,
                                     reached_stop if stop is not None else None,
                                     self._precision(precision))
        prime_text = self._text(tuple(prime_ids))
        return [BeamText(prime_text, self._text(h.ids, after=prime_ids), h.logprob, len(h.ids))
                for h in found]

    @weights_kept()
    def sample(self, prime: str = "", length: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               on_text: Callable[[str], object] | None = None, *, top_p: float | None = None,
               stop_at: str | None = None, num_samples: int | None = None,
               beam: int | None = None, precision: str | None = None) -> str | list[str]:
        """The prime and `length` sampled tokens as one string; `on_text` sees each piece.

        With `num_samples` K: a list of K such strings, drawn together. With `beam` N: the N
        best beam-search texts (temperature, top-k, top-p and seed play no part). The model's
        weights are held for the whole call (`on_text` must not change them), so its LSTM
        layers pack them once rather than once per token. `precision` as in `generate`.
        """
        if beam is not None:
            if num_samples is not None:
                raise UserError("beam search returns the best --beam texts; --num-samples is "
                                "for random samples (give one of them)")
            return [found.text for found in self.beam_search(prime, length, beam, stop_at,
                                                             precision)]
        if num_samples is not None:
            texts = [""] * num_samples if isinstance(num_samples, int) else []
            for index, piece in self.generate_samples(prime, length, temperature, top_k, seed,
                                                      top_p, stop_at, num_samples, precision):
                texts[index] += piece
            return texts
        out = []
        for piece in self.generate(prime, length, temperature, top_k, seed, top_p, stop_at,
                                   precision):
            out.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(out)

    def _precision(self, asked: str | None) -> str:
        """The precision to run the model in: `asked`, else the run's, else the saved one (see
        `_reuse_precision`)."""
        asked = asked if asked is not None else self.precision
        device = next(self.model.parameters()).device
        check_quantize(self.quantize, device, asked)
        return _reuse_precision(asked, self.config.precision, self.quantize, device)

    def _length(self, length: int | None) -> int:
        return DEFAULT_SAMPLE_LENGTH[self.level] if length is None else length

    def _context(self, prime: str) -> tuple[list[int], list[int]]:
        """The ids to start from (a line break, then the prime) and the prime's own ids."""
        prime_ids = self.encode(prime, where="prime").tolist() if prime else []
        if self.level == "word" and prime and not prime.endswith("\n"):
            prime_ids = prime_ids[:-1]  # the <eos> that tokenising gives the last line
        start = EOS if self.level == "word" else "\n"
        context = ([self.vocab.index[start]] if start in self.vocab else []) + prime_ids
        return context or [0], prime_ids  # no line break known: its most frequent token

    def _text(self, ids: Sequence[int], after: Sequence[int] = ()) -> str:
        """The text of `ids`, spaced as if `after` came just before them."""
        pieces = generate.Detokenizer(self.level)
        for token in self.vocab.decode(list(after)):
            pieces.text_of(token)
        return "".join(pieces.text_of(token) for token in self.vocab.decode(list(ids)))

    def score(self, text: str, per_line: bool = False, precision: str | None = None,
              where: str = "text") -> generate.TextScore:
        """Log-probability of `text` as one stream (its first token is context only).

        Equals `evaluate --stream` on the same text; with `per_line`, each line's share too.
        """
        ids, line_lengths = encode_text(self.vocab, text, self.level, where)
        precision = self._precision(precision)
        if ids.numel() < 2:
            raise UserError(f"{where}: {ids.numel()} token(s) are too few to score (the first "
                            f"is context only)")
        return generate.score_ids(self.model, ids,
                                  line_lengths if per_line else None, precision)

    def score_file(self, path: str | Path, per_line: bool = False,
                   precision: str | None = None) -> generate.TextScore:
        return self.score(read_text(path), per_line, precision, where=str(path))


def _reuse_precision(asked: str | None, saved: str, quantize: str | None,
                     device: torch.device) -> str:
    """The precision to evaluate or score a saved model in, checked: fp32 for an int8 model,
    else the one asked for, else the saved one as `saved_precision` adapts it to `device`."""
    precision = "fp32" if quantize else asked or saved_precision(saved, device)
    check_precision(precision, device)
    return precision


def export(model_path: str | Path, out_dir: str | Path, overwrite: bool = False):
    """`lstmkit export`: model.onnx, vocab.json and a README.md (how to run it with numpy and
    onnxruntime alone) in `out_dir`, from the checkpoint only; files of those names there are
    replaced only with `overwrite`."""
    from lstmkit.lm.export import export_onnx  # torch.onnx loads slowly: only when exporting

    try:
        return export_onnx(model_path, out_dir, overwrite)
    except ImportError as err:
        raise UserError(f"exporting needs the {err.name or 'onnx'} package: pip install "
                        f"'lstmkit[export]'") from None


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000,
          quantize: str | None = None, precision: str | None = None) -> None:
    """`lstmkit serve`: the model over HTTP until interrupted (see lstmkit.lm.serve)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port!r}")
    try:
        from lstmkit.lm import serve as server
    except ImportError as err:
        raise UserError(f"serving needs the {err.name or 'fastapi'} package: pip install "
                        f"'lstmkit[serve]'") from None
    server.serve(load(model_path, "cpu", quantize, precision), host, port)


def load(path: str | Path, device: str = "cpu", quantize: str | None = None,
         precision: str | None = None) -> LanguageModelRun:
    """A saved language model (run directory or checkpoint file), ready to sample and score;
    `quantize` "int8" makes its recurrent and output layers int8 (CPU inference); `precision`
    is what its calls run in where they name none (default: the one it was trained in, where
    this device has it natively)."""
    device_used = resolve_device("cpu" if quantize and device == "auto" else device)
    check_quantize(quantize, device_used, precision)
    return LanguageModelRun(load_lm(path, device_used), quantize, precision)
