"""The `lstmkit` command: parses arguments and calls the Python API, nothing more.

User mistakes (UserError, bad options) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from lstmkit import api
from lstmkit.config import PRESETS, LMConfig, apply_overrides, field_names, load_config_file
from lstmkit.config import preset as preset_config
from lstmkit.data.download import download_ptb
from lstmkit.errors import UserError
from lstmkit.runs import MODEL_FILE, load_lm

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (no usage block), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args) or 0
    except UserError as err:
        print(f"lstmkit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lstmkit: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstmkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_download(commands)
    return parser


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a language model",
                            description="Train a word-level LSTM language model (PTB).")
    p.add_argument("--preset", default="small", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--config", help="TOML or JSON file of config fields (overrides the preset)")
    p.add_argument("--data-dir", help="directory with ptb.{train,valid,test}.txt "
                                      "(default: $LSTMKIT_DATA)")
    p.add_argument("--download", action="store_true",
                   help="download PTB into the cache first if --data-dir is not given")
    p.add_argument("--save-path", help="run directory for checkpoints, metrics and the curve")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --save-path from its {MODEL_FILE}")
    fields = p.add_argument_group("config fields (override preset and config file)")
    for name in field_names():
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}",
                            default=None, metavar="V")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    data_dir = args.data_dir
    if data_dir is None and args.download:
        data_dir = download_ptb()
    api.train_ptb(config, data_dir, args.save_path, resume=args.resume)
    return 0


def _train_config(args: argparse.Namespace) -> LMConfig:
    if args.resume:
        if not args.save_path:
            raise UserError("--resume needs --save-path (the run directory to continue)")
        config = load_lm(args.save_path).config  # the run's own config, then overrides
    else:
        config = preset_config(args.preset)
    if args.config:
        config = apply_overrides(config, load_config_file(args.config), args.config)
    flags: dict[str, Any] = {name: getattr(args, f"field_{name}") for name in field_names()
                             if getattr(args, f"field_{name}") is not None}
    return apply_overrides(config, flags, "command line")


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="perplexity of a saved model on a PTB split")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    p.add_argument("--data-dir", help="directory with ptb.*.txt (default: $LSTMKIT_DATA)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--stream", action="store_true",
                   help="the tutorial's one unbroken stream (batch 1); default: fast shape")
    p.add_argument("--batch-size", type=int, help="evaluation rows (default: the model's)")
    p.add_argument("--num-steps", type=int, help="window length (default: the model's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    for name in ("batch_size", "num_steps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    result = api.evaluate_ptb(args.model, args.data_dir, args.split, args.batch_size,
                              args.num_steps, args.stream, args.device, args.precision)
    if args.json:
        print(json.dumps({"split": args.split, "perplexity": result.value,
                          "nll": result.nll, "tokens": result.tokens, "shape": result.shape}))
    else:
        print(f"{args.split} perplexity: {result.value:.3f} ({result.shape}, "
              f"{result.tokens} targets)")
    return 0


def _add_download(commands) -> None:
    p = commands.add_parser("download", help="download a data set (checksums verified)")
    p.add_argument("dataset", choices=("ptb",))
    p.add_argument("--dest", help="directory to download into (default: the user cache)")
    p.set_defaults(handler=_download)


def _download(args: argparse.Namespace) -> int:
    path = download_ptb(args.dest)
    print(f"PTB ready in {path} (SHA-256 verified)")
    return 0
