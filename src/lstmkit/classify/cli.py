"""`lstmkit classify train|evaluate|predict`: parses arguments and calls classify.api."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lstmkit.classify import api
from lstmkit.classify.config import RECIPES, ClassifierConfig, recipe
from lstmkit.classify.data import decode_lines_to_score, read_lines_to_score
from lstmkit.fields import apply_overrides, field_names, flag_helps
from lstmkit.reporting import TENSORBOARD_HELP

_DATA_HELP = ("a directory with rt-polarity.pos + rt-polarity.neg (or *.pos + *.neg), a "
              "directory with reviews.txt + labels.txt, or a .tsv/.csv file with a header")


def add_classify_command(commands) -> None:
    """Register `classify` and its subcommands on the top-level parser's subparsers."""
    p = commands.add_parser("classify", help="sentence (sentiment) classifier",
                            description="LSTM sentence classifier: train, evaluate "
                                        "and predict on binary-labelled texts.")
    sub = p.add_subparsers(dest="classify_command", metavar="{train,evaluate,predict}",
                           required=True)  # subcommand parsers share p's class
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)


def _add_data_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help=_DATA_HELP)
    p.add_argument("--text-column", default="text", help="column of the text in a table")
    p.add_argument("--label-column", default="label",
                   help="column of the label in a table (1/0, positive/negative, pos/neg)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a classifier",
                       description="Train; per epoch print train loss, train accuracy and "
                                   "valid accuracy; keep the best-valid weights; report test "
                                   "accuracy.")
    _add_data_arguments(p, required=True)
    p.add_argument("--valid-data", help="explicit valid data (same formats); default: a seeded "
                                        "part of --data")
    p.add_argument("--test-data", help="explicit test data; default: a seeded part of --data")
    p.add_argument("--vectors", help="pretrained word vectors (GloVe / word2vec text file)")
    p.add_argument("--recipe", default="default", choices=tuple(RECIPES),
                   help="default: best valid accuracy on MR; tutorial: MSE + Adadelta")
    p.add_argument("--save-path", help="run directory for best.safetensors, metrics, curve")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model already in --save-path (without this, refused)")
    p.add_argument("--tensorboard", metavar="DIR", help=TENSORBOARD_HELP)
    fields = p.add_argument_group("config fields (override the recipe; defaults are the "
                                  "default recipe's)")
    for name, text in flag_helps(ClassifierConfig).items():
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}", default=None,
                            metavar="V", help=text)
    p.set_defaults(handler=_run_classify_train)


def _run_classify_train(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {name: getattr(args, f"field_{name}")
                             for name in field_names(ClassifierConfig)
                             if getattr(args, f"field_{name}") is not None}
    config = apply_overrides(recipe(args.recipe), flags, "command line")
    api.train(config, args.data, args.save_path, args.valid_data, args.test_data, args.vectors,
              args.text_column, args.label_column, overwrite=args.overwrite,
              tensorboard=args.tensorboard)
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a saved classifier")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    _add_data_arguments(p, required=True)
    p.add_argument("--split", default="auto", choices=("auto", "all", "train", "valid", "test"),
                   help="auto: the test part when --data is what the model was split from, "
                        "else all of it")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_classify_evaluate)


def _run_classify_evaluate(args: argparse.Namespace) -> int:
    result = api.evaluate(args.model, args.data, args.split, args.text_column,
                          args.label_column, args.device)
    if args.json:
        print(json.dumps({"accuracy": result.score.accuracy, "loss": result.score.loss,
                          "count": result.score.count, "texts": result.what}))
    else:
        print(f"Accuracy: {result.score.accuracy:.4f} ({result.what})")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="P(positive) for each line of a file or stdin")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    p.add_argument("input", nargs="?", default="-", help="text file, one text a line "
                                                         "(default or -: stdin)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true",
                   help="one JSON object a line: text, probability, label")
    p.set_defaults(handler=_run_classify_predict)


def _run_classify_predict(args: argparse.Namespace) -> int:
    if args.input == "-":
        stream = getattr(sys.stdin, "buffer", None)  # bytes, so Latin-1 input cannot crash
        raw = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        lines, note = decode_lines_to_score(raw, "<stdin>")
    else:
        lines, note = read_lines_to_score(args.input)
    if note:
        print(f"lstmkit: note: {note}", file=sys.stderr)
    for line, probability in zip(lines, api.predict(args.model, lines, args.device),
                                 strict=True):
        if args.json:
            label = "positive" if probability >= 0.5 else "negative"
            print(json.dumps({"text": line, "probability": probability, "label": label}))
        else:
            print(f"{probability:.4f}")
    return 0

