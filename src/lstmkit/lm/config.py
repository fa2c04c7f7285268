"""Language-model configuration: one frozen dataclass, the tutorial's presets, validated overrides.

Field names follow the TensorFlow PTB tutorial (`init_scale`, `keep_prob`, `max_max_epoch`, ...)
so that its users recognise every knob. Precedence when building a config:
preset < config file (TOML or JSON, flat table) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmkit.device import DEVICES, PRECISIONS
from lstmkit.errors import UserError
from lstmkit.fields import check_seed, check_types, described
from lstmkit.files import MAX_CONFIG_BYTES, read_regular_file
from lstmkit.nn.recurrent import CELLS, LSTM_IMPLS

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("epochs", "linear", "cosine")
INITS = ("uniform", "tutorial", "zaremba", "awd")
ON_NAN = ("stop", "rollback")
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class LMConfig:
    # --- the tutorial's hyperparameters (its preset table, see PRESETS) ---
    init_scale: float = described(0.1, "weights start uniform in [-V, V]")
    learning_rate: float = described(
        1.0, "learning rate of the first epochs; SGD: 1.0, Adam: about 0.002")
    max_grad_norm: float = described(5.0, "clip the gradient's global norm to V")
    num_layers: int = described(2, "stacked recurrent layers")
    num_steps: int = described(20, "time steps a training window unrolls (truncated BPTT)")
    hidden_size: int = described(200, "units per layer, and the embedding size")
    max_epoch: int = described(4, "epochs at the initial learning rate before it decays")
    max_max_epoch: int = described(13, "epochs to train")
    keep_prob: float = described(
        1.0, "probability of keeping a unit in dropout between layers; 1: no dropout")
    lr_decay: float = described(0.5, "learning rate factor per epoch after max_epoch")
    batch_size: int = described(20, "rows trained side by side")
    # --- optimizer: the tutorial's plain SGD; Adam (learning_rate ~0.002) suits char models ---
    optimizer: str = described("sgd", "the tutorial's plain SGD, or Adam", OPTIMIZERS)
    # --- model variants ---
    cell: str = described("lstm", "recurrent cell", CELLS)
    # 0 is the tutorial's choice; 1.0 is the common alternative
    forget_bias: float = described(0.0, "added to the LSTM forget gate's initial bias")
    init: str = described(
        "uniform", "uniform: every weight starts in [-init_scale, init_scale], of the LSTM's two "
        "bias vectors only the first (so the gate bias is uniform too); tutorial: the same, "
        "both LSTM biases 0 (the TF tutorial's BasicLSTMCell); zaremba: the same, both LSTM "
        "biases uniform (Zaremba's Torch code); the three draw the same weights. awd: "
        "AWD-LSTM's: embedding and output weights in [-init_scale, init_scale], output bias 0, "
        "a recurrent layer of H units in [-1/sqrt(H), 1/sqrt(H)]", INITS)
    lstm_impl: str = described(
        "auto", "the LSTM layer: lstmkit's own (native), oneDNN's nn.LSTM (onednn), or auto: "
        "ours where it measured faster (bf16 with its compiled kernel: training, and "
        "evaluation passes, scoring and sampling; other calls without gradients with AMX, or "
        "from hidden 1024)",
        LSTM_IMPLS)
    # --- AWD-LSTM's regularisers (Merity et al. 2017) and schedule; all off by default, so the
    # tutorial's presets are unchanged. docs/regularisers.md says what each does. ---
    tie_weights: bool = described(
        False, "the output layer reuses the embedding matrix (Inan et al. 2016; Press & Wolf "
        "2017)")
    embedding_size: int = described(
        0, "embedding size; 0: hidden_size. With tie_weights the top layer has this size too "
        "(AWD-LSTM: 400 under layers of 1150)")
    locked_dropout_input: float = described(
        0.0, "variational dropout on the embedding output: one mask per row, the same at every "
        "time step")
    locked_dropout_hidden: float = described(
        0.0, "variational dropout between recurrent layers")
    locked_dropout_output: float = described(
        0.0, "variational dropout on the top layer's output")
    embedding_dropout: float = described(
        0.0, "drop whole word types from the embedding, one draw per window")
    weight_drop: float = described(
        0.0, "DropConnect on the hidden-to-hidden weights, one mask per window")
    ar: float = described(
        0.0, "activation regularisation: weight of the mean square of the top layer's dropped "
        "output")
    tar: float = described(
        0.0, "temporal activation regularisation: weight of the mean square change of the top "
        "layer's output from one step to the next")
    weight_decay: float = described(0.0, "L2 weight decay of the optimizer")
    asgd_nonmono: int = described(
        0, "NT-ASGD: average the weights from the check at which valid perplexity has not "
        "improved on the best before the last N checks; 0: never average")
    variable_bptt: bool = described(
        False, "random window lengths around num_steps (half of it with probability 0.05; "
        "standard deviation 5, at least 5, at most num_steps + 20)")
    lr_schedule: str = described(
        "epochs", "epochs: constant for max_epoch epochs then lr_decay per epoch (the "
        "tutorial's); linear or cosine: decay to 0 at the end of training (max_max_epoch, or "
        "the time budget)", LR_SCHEDULES)
    time_budget: str = described(
        "", "stop training in time to evaluate, test and save within this wall time (like "
        "90s, 60m, 1.5h; continued by --resume); empty: no budget")
    # --- evaluation shape: fast default; the tutorial's stream is batch 1 (see evaluate.py) ---
    eval_batch_size: int = described(10, "rows of the valid/test evaluation")
    eval_num_steps: int = described(50, "window length of the valid/test evaluation")
    # --- run control ---
    seed: int = described(0, "seeds the weights and dropout: same seed, same run")
    # The run header says what "auto" resolved to (device.py).
    precision: str = described(
        "auto", "arithmetic precision; auto: bf16 where the CPU has native bf16, else fp32",
        PRECISIONS)
    device: str = described("auto", "where to train; auto: cuda if present, else cpu", DEVICES)
    checkpoint_every: int = described(
        0, "also checkpoint every N training steps; 0: at epoch ends only")
    # Rollback: see train.py, ROLLBACK_LR_FACTOR.
    on_nan: str = described(
        "stop", "on a NaN/inf loss or gradient: stop (the last checkpoint is intact), or roll "
        "back to the last checkpoint and halve the learning rate", ON_NAN)

    def __post_init__(self) -> None:
        check_types(self)
        positive = ("num_layers", "num_steps", "hidden_size", "batch_size", "max_max_epoch",
                    "eval_batch_size", "eval_num_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"config field {name} must be positive, got {getattr(self, name)}")
        for name in ("init_scale", "learning_rate", "max_grad_norm", "lr_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"config field {name} must be a positive number, got {value}")
        for name in ("init_scale", "learning_rate"):  # they become float32 in the weights
            if getattr(self, name) > FLOAT32_MAX:
                raise UserError(f"config field {name} must be at most {FLOAT32_MAX:.4g} (the "
                                f"largest float32), got {getattr(self, name)}")
        if self.lr_decay > 1:
            raise UserError(f"config field lr_decay must be in (0, 1] (the rate only ever "
                            f"decays), got {self.lr_decay}")
        if self.max_epoch < 0 or self.checkpoint_every < 0:
            name = "max_epoch" if self.max_epoch < 0 else "checkpoint_every"
            raise UserError(f"config field {name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 < self.keep_prob <= 1.0):
            raise UserError(f"config field keep_prob must be in (0, 1], got {self.keep_prob}")
        if not math.isfinite(self.forget_bias):
            raise UserError(f"config field forget_bias must be a finite number, got "
                            f"{self.forget_bias}")
        if self.forget_bias and self.cell != "lstm":
            raise UserError(f"config field forget_bias applies to the lstm cell only "
                            f"(cell is {self.cell}); leave it at 0")
        if self.init in ("tutorial", "zaremba") and self.cell != "lstm":
            raise UserError(f"config field init {self.init!r} says how the LSTM's biases "
                            f"start; it applies to the lstm cell only (cell is {self.cell}): "
                            f"use uniform")
        check_seed(self.seed)
        self._check_regularisers()

    def _check_regularisers(self) -> None:
        for name in ("locked_dropout_input", "locked_dropout_hidden", "locked_dropout_output",
                     "embedding_dropout", "weight_drop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"config field {name} must be in [0, 1), got {value}")
        for name in ("ar", "tar", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"config field {name} must be a number >= 0, got {value}")
        if self.embedding_size < 0:
            raise UserError(f"config field embedding_size must be >= 0 (0: hidden_size), got "
                            f"{self.embedding_size}")
        if self.asgd_nonmono < 0:
            raise UserError(f"config field asgd_nonmono must be >= 0, got {self.asgd_nonmono}")
        budget_seconds(self.time_budget)

    def check_new_run(self) -> None:
        """What only a new run refuses (a saved model of this config still loads)."""
        if self.tie_weights and self.num_layers == 1 \
                and self.embedding_size not in (0, self.hidden_size):
            # The one layer feeds the tied decoder, so it takes the embedding's size.
            raise UserError(f"config field hidden_size ({self.hidden_size}) would go unused: "
                            f"with tie_weights and one layer, the layer has the embedding's "
                            f"size ({self.embedding_size}); set embedding_size to 0 or to "
                            f"hidden_size, or use more layers")

    @property
    def budget_seconds(self) -> float | None:
        """The time budget in seconds; None without one."""
        return budget_seconds(self.time_budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def learning_rate_for_epoch(self, epoch: int) -> float:
        """Learning rate of 1-based `epoch`: constant for `max_epoch` epochs, then decayed."""
        return self.learning_rate * self.lr_decay ** max(epoch - self.max_epoch, 0)


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(init_scale=0.1, learning_rate=1.0, max_grad_norm=5.0, num_layers=2, num_steps=20,
                  hidden_size=200, max_epoch=4, max_max_epoch=13, keep_prob=1.0, lr_decay=0.5,
                  batch_size=20),
    "medium": dict(init_scale=0.05, learning_rate=1.0, max_grad_norm=5.0, num_layers=2,
                   num_steps=35, hidden_size=650, max_epoch=6, max_max_epoch=39, keep_prob=0.5,
                   lr_decay=0.8, batch_size=20),
    "large": dict(init_scale=0.04, learning_rate=1.0, max_grad_norm=10.0, num_layers=2,
                  num_steps=35, hidden_size=1500, max_epoch=14, max_max_epoch=55, keep_prob=0.35,
                  lr_decay=1 / 1.15, batch_size=20),
    # Not a tutorial preset: a model for an hour of two CPU cores (results/ptb-cpu-hour/, where
    # its rates were chosen on valid perplexity): medium's size with tied weights, AWD-LSTM's
    # regularisers (lighter than its own: an hour is about 20 epochs, not 500) and a cosine
    # decay of the learning rate to 0 at the end of the budget. Its rates are in lstmkit's
    # cost, summed over the window's steps: AWD-LSTM's per-token weight decay 1.2e-6 is
    # 35 x 1.2e-6 here.
    "cpu-hour": dict(init_scale=0.05, learning_rate=1.0, max_grad_norm=5.0, num_layers=2,
                     num_steps=35, hidden_size=650, max_epoch=0, max_max_epoch=1000,
                     keep_prob=1.0, lr_decay=1.0, batch_size=20, tie_weights=True,
                     locked_dropout_input=0.25, locked_dropout_hidden=0.2,
                     locked_dropout_output=0.3, embedding_dropout=0.05, weight_drop=0.2,
                     ar=2.0, tar=1.0, weight_decay=4.2e-5, variable_bptt=True,
                     lr_schedule="cosine", time_budget="60m"),
    # Not a tutorial preset: AWD-LSTM's PTB model and training (Merity et al. 2017, without its
    # finetuning stage): 3 layers of 1150 under a tied 400-unit embedding, SGD at a constant
    # rate for 500 epochs, NT-ASGD after 5 checks without improvement. Its rates in lstmkit's
    # cost, summed over the 70 steps of a window: learning rate 30 / 70, clipping 0.25 x 70,
    # weight decay 1.2e-6 x 70; its initialisation (init awd).
    # 24.2M parameters and 500 epochs: a machine with time (or a GPU) for this.
    "awd": dict(init="awd", init_scale=0.1, learning_rate=30 / 70, max_grad_norm=0.25 * 70,
                num_layers=3, num_steps=70, hidden_size=1150, max_epoch=500, max_max_epoch=500,
                keep_prob=1.0, lr_decay=1.0, batch_size=20, tie_weights=True, embedding_size=400,
                locked_dropout_input=0.4, locked_dropout_hidden=0.25, locked_dropout_output=0.4,
                embedding_dropout=0.1, weight_drop=0.5, ar=2.0, tar=1.0, weight_decay=1.2e-6 * 70,
                asgd_nonmono=5, variable_bptt=True),
    "test": dict(init_scale=0.1, learning_rate=1.0, max_grad_norm=1.0, num_layers=1, num_steps=2,
                 hidden_size=2, max_epoch=1, max_max_epoch=1, keep_prob=1.0, lr_decay=0.5,
                 batch_size=20),
    # Not a tutorial preset: a character-level model (char-rnn's 2 x 512 LSTM over windows of
    # 100 characters) trained with Adam, meant to reach < 1.5 nats/char valid on
    # tinyshakespeare in under half an hour on two CPU cores. Batch 32 rather than 64: on a
    # CPU the time per character barely changes, and twice the updates per epoch matter more.
    "char": dict(init_scale=0.08, learning_rate=0.002, optimizer="adam", max_grad_norm=5.0,
                 num_layers=2, num_steps=100, hidden_size=512, max_epoch=5, max_max_epoch=8,
                 keep_prob=0.9, lr_decay=0.7, batch_size=32, eval_num_steps=100),
}


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_BUDGET_SECONDS = 366 * 24 * 3600.0


def budget_seconds(text: str) -> float | None:
    """'90s', '60m', '1.5h' or a plain number of seconds, as seconds; '' is no budget."""
    text = text.strip().lower()
    if not text:
        return None
    unit = _UNITS.get(text[-1])
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_BUDGET_SECONDS):
        raise UserError(f"config field time_budget must be a positive duration of at most a "
                        f"year like 90s, 60m or 1.5h, got {text[:40]!r}")
    return seconds


def preset(name: str) -> LMConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return LMConfig(**PRESETS[name])


MAX_CONFIG_DEPTH = 8  # a flat table of numbers, strings and (for sizes) lists of numbers


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat table of config fields from a .toml or .json file.

    The file must be a regular file of at most 1 MiB, and its values nest at most
    MAX_CONFIG_DEPTH deep: anything else is refused before any value is used."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise UserError(f"{path}: config file must end in .toml or .json")
    raw = read_regular_file(path, "config file", MAX_CONFIG_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: cannot read config file (not valid UTF-8 at offset "
                        f"{err.start})") from None
    data = _parse_json(path, text) if suffix == ".json" else _parse_toml(path, text)
    if not isinstance(data, dict):
        raise UserError(f"{path}: config file must hold a table of fields")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{path}: config file must be a flat table; {nested[0]!r} is a section")
    check_depth(data, MAX_CONFIG_DEPTH, f"{path}: config file")
    return data


def _parse_json(path: Path, text: str) -> Any:
    return _parse(path, "JSON", json.loads, text, json.JSONDecodeError)


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return _parse(path, "TOML", tomllib.loads, text, tomllib.TOMLDecodeError)


def _parse(path: Path, kind: str, loads: Any, text: str, decode_error: type) -> Any:
    """`loads(text)`, each way it can fail given as one line naming `path`."""
    try:
        return loads(text)
    except decode_error as err:
        line = getattr(err, "lineno", None)
        where = f"{path}:{line}" if kind == "JSON" and line else str(path)
        return _refuse(f"{where}: invalid {kind} ({getattr(err, 'msg', None) or err})")
    except RecursionError:
        return _refuse(f"{path}: invalid config file (nested too deeply)")
    except ValueError as err:  # an integer of more digits than Python converts
        return _refuse(f"{path}: invalid {kind} ({_reason(err)[:120]})")


def _refuse(message: str) -> Any:
    raise UserError(message) from None


def check_depth(value: Any, limit: int, where: str) -> None:
    """Refuse lists and tables nested deeper than `limit` (walked without recursion)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            raise UserError(f"{where} nests values more than {limit} deep")
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend((v, depth + 1) for v in item)


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)
