"""The `lstmkit` command: parses arguments and calls the Python API, nothing more.

User mistakes (UserError, bad options) print one line and exit with status 2. Under torchrun
each rank prints its own errors, labelled with its rank; a rank that loses contact with the
others prints one line and exits with status 1 (torchrun then stops the rest).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import warnings
from collections.abc import Callable, Sequence

from lstmkit.allocator import keep_freed_memory
from lstmkit.classify.cli import add_classify_command
from lstmkit.distributed import lost_contact, rank_label
from lstmkit.errors import LstmkitWarning, UserError, one_line
from lstmkit.lm import api
from lstmkit.reporting import TENSORBOARD_HELP, discard_output
from lstmkit.stopping import StopRequested
from lstmkit.text import without_bom

EXIT_USER_ERROR = 2
EXIT_LOST_CONTACT = 1
_PATH_ERRORS = (errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.EROFS)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (no usage block), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()  # every window reuses the last one's buffers (lstmkit/allocator.py)
    with warnings.catch_warnings():  # restores the usual display when main returns
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        return _dispatch(argv)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args) or 0
    except UserError as err:
        print(f"lstmkit: error: {rank_label()}{one_line(str(err), 2000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        lost = lost_contact(err)
        if lost is None:
            raise
        print(f"lstmkit: error: {lost}", file=sys.stderr)
        return EXIT_LOST_CONTACT
    except StopRequested as stop:  # a signal, answered with a checkpoint where it came
        print(f"lstmkit: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        training = "train" in (getattr(args, "command", None),
                               getattr(args, "classify_command", None))
        print("lstmkit: interrupted" + (" (the last checkpoint, if any, is intact)" if training
                                        else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lstmkit score ... | head`: the reader has all it wants
        discard_output(sys.stdout)
        return 0
    except OSError as err:
        if err.filename is not None and err.errno in _PATH_ERRORS:
            # A path the user gave that a check missed: still one line, not a traceback.
            print(f"lstmkit: error: {rank_label()}{err.filename}: {err.strerror}",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        if err.errno != errno.ENOSPC:
            raise
        discard_output(sys.stdout)  # stdout on a full disk (files are checked where written)
        print(f"lstmkit: error: cannot write the output ({err.strerror})", file=sys.stderr)
        return EXIT_USER_ERROR


def _one_line_warnings(usual: Callable) -> Callable:
    """Our own warnings as one line on stderr; other libraries' keep their `usual` form."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, LstmkitWarning):
            text = str(message).removeprefix("lstmkit: ")
            print(f"lstmkit: warning: {rank_label()}{text}", file=sys.stderr)
        else:
            usual(message, category, filename, lineno, file, line)
    return show


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstmkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_sample(commands)
    _add_score(commands)
    _add_download(commands)
    _add_export(commands)
    _add_serve(commands)
    add_classify_command(commands)
    return parser


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory or checkpoint file")


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train", help="train a language model",
        description="Train a word- or char-level language model on PTB or any UTF-8 text.")
    p.add_argument("--preset", default="small",
                   help=f"one of {', '.join(api.PRESETS)} (default: small)")
    p.add_argument("--config", help="TOML or JSON file of config fields (overrides the preset)")
    p.add_argument("--level", choices=api.LEVELS,
                   help="tokens are words (<eos> per line) or characters (default: word; "
                        "with --resume: the run's)")
    data = p.add_argument_group("data (one of: PTB directory, one text file, three text files)")
    data.add_argument("--data-dir", help="directory with ptb.{train,valid,test}.txt "
                                         "(default: $LSTMKIT_DATA)")
    data.add_argument("--download", action="store_true",
                      help="download PTB into the cache first if --data-dir is not given")
    data.add_argument("--data-file", help="a UTF-8 text file, split contiguously into "
                                          "90%% train, 5%% valid, 5%% test")
    data.add_argument("--train-file", help="UTF-8 training text (with --valid-file, --test-file)")
    data.add_argument("--valid-file", help="UTF-8 validation text")
    data.add_argument("--test-file", help="UTF-8 test text")
    data.add_argument("--vocab-size", type=int, metavar="N",
                      help="cap the vocabulary at N tokens: the most frequent of the training "
                           "text, and <unk> standing in for the rest (default: no cap)")
    p.add_argument("--save-path", help="run directory for checkpoints, metrics and the curve")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --save-path from its {api.MODEL_FILE}")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --save-path that holds a trained model, "
                        "replacing it (without this, that is refused)")
    p.add_argument("--tensorboard", metavar="DIR", help=TENSORBOARD_HELP)
    fields = p.add_argument_group("config fields (override preset and config file; defaults "
                                  "are the small preset's)")
    for name, text in api.flag_helps(api.LMConfig).items():
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}",
                            default=None, metavar="V", help=text)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    source = api.TextSource(args.data_dir, args.download, args.data_file, args.train_file,
                            args.valid_file, args.test_file, args.vocab_size)
    overrides = {name: getattr(args, f"field_{name}") for name in api.field_names(api.LMConfig)
                 if getattr(args, f"field_{name}") is not None}
    api.train(source, preset_name=args.preset, config_file=args.config, overrides=overrides,
              level=args.level, save_path=args.save_path, resume=args.resume,
              overwrite=args.overwrite, tensorboard=args.tensorboard)
    return 0


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="perplexity of a saved model on a PTB split")
    _add_model(p)
    p.add_argument("--data-dir", help="directory with ptb.*.txt (default: $LSTMKIT_DATA)")
    p.add_argument("--split", default="test", choices=api.SPLITS)
    p.add_argument("--stream", action="store_true",
                   help="the tutorial's one unbroken stream (batch 1); default: fast shape")
    p.add_argument("--batch-size", type=int, help="evaluation rows (default: the model's)")
    p.add_argument("--num-steps", type=int, help="window length (default: the model's)")
    p.add_argument("--device", default="auto", choices=api.DEVICES)
    p.add_argument("--precision", choices=api.PRECISIONS)
    _add_quantize(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    result = api.evaluate_ptb(args.model, args.data_dir, args.split, args.batch_size,
                              args.num_steps, args.stream, args.device, args.precision,
                              args.quantize)
    if args.json:
        print(json.dumps({"split": args.split, "perplexity": result.value,
                          "nll": result.nll, "tokens": result.tokens, "shape": result.shape}))
    else:
        print(f"{args.split} perplexity: {result.value:.3f} ({result.shape}, "
              f"{result.tokens} targets)")
    return 0


def _add_sample(commands) -> None:
    p = commands.add_parser(
        "sample", help="generate text from a saved model",
        description="Generate text from a saved word- or char-level model, printing each token "
                    "as it is drawn (the prime first).")
    _add_model(p)
    p.add_argument("--prime", default="", help="text to start from (default: a new line)")
    p.add_argument("--length", type=int, metavar="N",
                   help="tokens to generate (default: 500 characters or 100 words)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="below 1: safer, above 1: wilder; 0: always the most likely (default 1)")
    p.add_argument("--top-k", type=int, metavar="K", help="draw only from the K most likely")
    p.add_argument("--seed", type=int, help="same seed, same text (default: random)")
    p.add_argument("--top-p", type=float, metavar="P",
                   help="draw only from the fewest most likely tokens whose probability "
                        "reaches P (nucleus sampling)")
    p.add_argument("--num-samples", type=int, metavar="K",
                   help="K samples drawn together (one seed gives the same K), each printed "
                        "when done")
    p.add_argument("--beam", type=int, metavar="N",
                   help="beam search instead of sampling: the N most likely texts by "
                        "log-probability per token")
    p.add_argument("--stop-at", metavar="STOP",
                   help="end a text early: eos (end of a sentence; char models: an empty line), "
                        "newline, or any other string (printed)")
    p.add_argument("--device", default="cpu", choices=api.DEVICES,
                   help="where to sample (default cpu: token by token, a GPU gains little)")
    p.add_argument("--precision", choices=api.PRECISIONS,
                   help="precision to run the model in (default: the one it was trained in, "
                        "where this device has it natively)")
    _add_quantize(p)
    p.set_defaults(handler=_run_sample)


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=api.QUANTIZE,
                   help="int8: weights of the recurrent and output layers in 8 bits, for "
                        "faster CPU inference (CPU only)")


def _run_sample(args: argparse.Namespace) -> int:
    run = api.load(args.model, args.device, args.quantize)
    if args.beam is not None or args.num_samples is not None:
        return _print_texts(run, args)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()  # a closed pipe (`| head`) ends the command in `main`

    text = run.sample(args.prime, args.length, args.temperature, args.top_k, args.seed,
                      on_text=write, top_p=args.top_p, stop_at=args.stop_at,
                      precision=args.precision)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def _print_texts(run: api.LanguageModelRun, args: argparse.Namespace) -> int:
    """--beam and --num-samples: each text under a header line, once all are done."""
    if args.beam is not None:
        if args.num_samples is not None:
            raise UserError("--beam gives the best N texts and --num-samples K random ones "
                            "(give one of them)")
        found = run.beam_search(args.prime, args.length, args.beam, args.stop_at,
                                args.precision)
        headers = [f"=== beam {i}/{len(found)}: log-prob {b.logprob:.4f} nats, "
                   f"{b.score:.4f} per token ===" for i, b in enumerate(found, start=1)]
        texts = [b.text for b in found]
    else:
        texts = run.sample(args.prime, args.length, args.temperature, args.top_k, args.seed,
                           top_p=args.top_p, stop_at=args.stop_at, num_samples=args.num_samples,
                           precision=args.precision)
        headers = [f"=== sample {i}/{len(texts)} ===" for i in range(1, len(texts) + 1)]
    for header, text in zip(headers, texts, strict=True):
        print(header)
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
    return 0


def _add_score(commands) -> None:
    p = commands.add_parser(
        "score", help="log-probability and perplexity of a text under a saved model",
        description="Log-probability (nats and bits) and perplexity of a text file under a "
                    "saved model, as one stream (state carried; the first token is context "
                    "only), so the perplexity equals `evaluate --stream` on the same file.")
    _add_model(p)
    p.add_argument("file", metavar="FILE", help="UTF-8 text file to score ('-': stdin)")
    p.add_argument("--per-line", action="store_true",
                   help="also each line's share (given the lines before it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", choices=api.DEVICES)
    p.add_argument("--precision", choices=api.PRECISIONS)
    _add_quantize(p)
    p.set_defaults(handler=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    run = api.load(args.model, args.device, args.quantize)
    if args.file == "-":
        try:
            text = without_bom(sys.stdin.buffer.read()).decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"<stdin>: not valid UTF-8 (offset {err.start})") from None
        score = run.score(text, args.per_line, args.precision, where="<stdin>")
    else:
        score = run.score_file(args.file, args.per_line, args.precision)
    unit = "char" if run.level == "char" else "word"
    if args.json:
        print(json.dumps({"file": args.file, "level": run.level, **score.to_dict()}))
        return 0
    if score.lines is not None:
        print("line\ttokens\tlogprob_nats\tlogprob_bits\tperplexity")
        for number, line in enumerate(score.lines, start=1):
            ppl = f"{line.perplexity:.3f}" if line.perplexity is not None else "-"
            print(f"{number}\t{line.tokens}\t{line.logprob_nats:.4f}\t{line.logprob_bits:.4f}"
                  f"\t{ppl}")
    print(f"{args.file}: {score.tokens} {unit}s scored (the first token is context only), "
          f"log-probability {score.logprob_nats:.4f} nats = {score.logprob_bits:.4f} bits, "
          f"perplexity {score.perplexity:.3f} ({score.bits_per_token:.4f} bits/{unit})")
    return 0


def _add_download(commands) -> None:
    p = commands.add_parser("download", help="download a data set (checksums verified)")
    p.add_argument("dataset", choices=("ptb",))
    p.add_argument("--dest", help="directory to download into (default: the user cache)")
    p.set_defaults(handler=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    path = api.download_ptb(args.dest)
    print(f"PTB ready in {path} (SHA-256 verified)")
    return 0


def _add_export(commands) -> None:
    p = commands.add_parser(
        "export", help="write a saved model as ONNX (runs with onnxruntime, without torch)",
        description="Write model.onnx (one window: ids and state in, logits and state out; "
                    "any batch and length), vocab.json and a README.md showing how to run it "
                    "with numpy and onnxruntime alone.")
    _add_model(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument("--overwrite", action="store_true",
                   help="replace model.onnx, vocab.json and README.md where --out has them "
                        "(default: refuse)")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    exported = api.export(args.model, args.out, args.overwrite)
    print(f"wrote {exported.model}, {exported.vocab.name} and {exported.readme.name} "
          f"(state: {', '.join(exported.state_names)})")
    return 0


def _add_serve(commands) -> None:
    p = commands.add_parser(
        "serve", help="an HTTP API and a web page to sample from and score with a saved model",
        description="Serve a saved language model over HTTP: POST /sample (streams the text as "
                    "server-sent events), POST /score, GET /health, and a page at /.")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--precision", choices=api.PRECISIONS,
                   help="precision to run the model in (default: the one it was trained in, "
                        "where this CPU has it natively)")
    _add_quantize(p)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    api.serve(args.model, args.host, args.port, args.quantize, args.precision)
    return 0
