"""One table of bad inputs across every command: each must end in one line `lstmkit: error: ...`
naming the file or option and the reason, exit status 2, no traceback, and nothing lost (every
file that was there is byte for byte the same, and nothing new is left behind).

Faults the machine causes (a full disk) are simulated in-process; two cases also run as real
processes to show that no traceback escapes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from classify_corpus import write_per_class
from conftest import write_ptb_layout
from lstmkit.cli import main

LM = ["--preset", "test", "--hidden-size", "8", "--batch-size", "4", "--num-steps", "5"]
CLASSIFIER = ["--layer-sizes", "8", "--embed-size", "8", "--epochs", "1", "--batch-size", "16"]
NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass(frozen=True)
class Bad:
    """A command line (`{name}` stands for a path of the test world) and what its error says."""
    args: str
    says: str
    fault: str = ""  # a simulated machine fault: see `simulate`
    stdin: bytes | None = None
    tags: tuple[str, ...] = field(default=())


CASES = {
    # --- missing, empty, binary, huge, wrongly encoded files ---
    "missing data file": Bad("train --data-file {w}/absent.txt", "{w}/absent.txt: file not found"),
    "empty data file": Bad("train --data-file {w}/empty.txt", "{w}/empty.txt: file is empty"),
    "blank data file": Bad("train --data-file {w}/blank.txt", "{w}/blank.txt: file is empty"),
    "data file is a directory": Bad("train --data-file {w}", "{w}: is a directory"),
    "binary data file": Bad("train --data-file {w}/binary.bin",
                            "{w}/binary.bin:1: not valid UTF-8 (byte 0x89 at offset 0)"),
    "UTF-16 data file": Bad("train --data-file {w}/utf16.txt",
                            "{w}/utf16.txt:1: not valid UTF-8 (byte 0xff at offset 0)"),
    "Latin-1 line in PTB": Bad("train --data-dir {latin1_ptb}",
                               "{latin1_ptb}/ptb.train.txt:3: not valid UTF-8"),
    "one huge line, word level": Bad(
        "train --data-file {w}/huge-line.txt",
        "{w}/huge-line.txt: 200001 words on 1 line(s) cannot be split 90/5/5 at line "
        "boundaries"),
    "PTB directory missing": Bad("train --data-dir {w}/nowhere",
                                 "{w}/nowhere: data directory not found"),
    "PTB without valid split": Bad("train --data-dir {no_valid_ptb} " + " ".join(LM),
                                   "{no_valid_ptb}/ptb.valid.txt: file not found"),
    "score a binary file": Bad("score --model {lm} {w}/binary.bin",
                               "{w}/binary.bin:1: not valid UTF-8"),
    "score Latin-1 stdin": Bad("score --model {lm} -", "<stdin>: not valid UTF-8 (offset 7)",
                               stdin=b"the caf\xe9 cat\n"),
    "predict a missing file": Bad("classify predict --model {clf} {w}/absent.txt",
                                  "{w}/absent.txt: file not found"),
    "predict a huge line": Bad("classify predict --model {clf} {w}/huge-line.txt",
                               "{w}/huge-line.txt:1: a text of 1,000,000 characters, over the "
                               "limit of 100,000"),
    "classify a huge line": Bad("classify train --data {huge_mr} " + " ".join(CLASSIFIER),
                                "{huge_mr}/rt-polarity.pos:2: a text of 1,200,001 characters"),
    "classify binary table": Bad("classify train --data {w}/binary.tsv",
                                 "{w}/binary.tsv:1: no column 'text' in the header"),
    "classify data missing": Bad("classify train --data {w}/absent", "{w}/absent: data not found"),
    "classify empty dir": Bad("classify train --data {w}/emptydir",
                              "{w}/emptydir: no data found"),
    # --- bad options and values ---
    "no command": Bad("", "the following arguments are required: command"),
    "unknown command": Bad("frobnicate", "invalid choice: 'frobnicate'"),
    "unknown flag": Bad("train --data-dir {ptb} --frobnicate", "unrecognized arguments"),
    "zero hidden size": Bad("train --data-dir {ptb} --hidden-size 0",
                            "command line: config field hidden_size must be positive, got 0"),
    "NaN learning rate": Bad("train --data-dir {ptb} --learning-rate nan",
                             "config field learning_rate must be a positive number, got nan"),
    "learning rate beyond float32": Bad(
        "train --data-dir {ptb} --learning-rate 1e39",
        "config field learning_rate must be at most 3.403e+38 (the largest float32)"),
    "growing lr_decay": Bad("train --data-dir {ptb} --lr-decay 1.5",
                            "config field lr_decay must be in (0, 1]"),
    "unknown on-nan policy": Bad("train --data-dir {ptb} --on-nan explode",
                                 "config field on_nan must be one of stop, rollback"),
    "rollback without a run dir": Bad("train --data-dir {ptb} --on-nan rollback " + " ".join(LM),
                                      "on_nan rollback needs a save path (--save-path)"),
    "a fresh run over a trained model": Bad(
        "train --data-dir {ptb} --save-path {lm} " + " ".join(LM),
        "{lm}: already holds a run (model.safetensors, best.safetensors, metrics.jsonl); "
        "--resume continues it, --overwrite replaces it"),
    "a language model into a classifier's run": Bad(
        "train --data-dir {ptb} --save-path {clf} " + " ".join(LM),
        "{clf}: already holds a run (best.safetensors, metrics.jsonl); --resume continues "
        "it, --overwrite replaces it"),
    "resume and overwrite at once": Bad(
        "train --data-dir {ptb} --save-path {lm} --resume --overwrite",
        "--resume continues the run in --save-path and --overwrite replaces it"),
    "classify: a fresh run over a trained model": Bad(
        "classify train --data {mr} --save-path {clf} " + " ".join(CLASSIFIER),
        "{clf}: already holds a run (best.safetensors, metrics.jsonl); --overwrite replaces "
        "it"),
    "classify: a classifier into a language model's run": Bad(
        "classify train --data {mr} --save-path {lm} " + " ".join(CLASSIFIER),
        "{lm}: already holds a run (model.safetensors, best.safetensors, metrics.jsonl); "
        "--overwrite replaces it"),
    "a seed beyond 2**63": Bad(
        "train --data-dir {ptb} --seed 99999999999999999999999 " + " ".join(LM),
        "config field seed must be in [0, 2**63), got 99999999999999999999999"),
    "classify: a negative seed": Bad("classify train --data {mr} --seed -1 " + " ".join(CLASSIFIER),
                                     "config field seed must be in [0, 2**63), got -1"),
    # With --overwrite, a mistake found before training still leaves the old model intact.
    "windows longer than the data": Bad(
        "train --data-dir {ptb} --save-path {lm} --overwrite --num-steps 100000",
        "training data (320 tokens) is too short for batch_size 20 x num_steps 100000"),
    "eval rows longer than valid": Bad(
        "train --data-dir {ptb} --save-path {lm} --overwrite --eval-batch-size 1000 "
        + " ".join(LM),
        "valid data (320 tokens) is too short for eval_batch_size 1000"),
    "evaluate split that is not one": Bad("evaluate --model {lm} --data-dir {ptb} --split dev",
                                          "argument --split: invalid choice: 'dev'"),
    "sample length not a number": Bad("sample --model {lm} --length ten",
                                      "argument --length: invalid int value: 'ten'"),
    "sample NaN temperature": Bad("sample --model {lm} --temperature nan",
                                  "temperature must be a number >= 0 (0: greedy), got nan"),
    "classify zero epochs": Bad("classify train --data {mr} --epochs 0",
                                "config field epochs must be positive, got 0"),
    "classify fractions over 1": Bad("classify train --data {mr} --valid-fraction 0.6 "
                                     "--test-fraction 0.5", "must leave data to train on"),
    "download unknown data set": Bad("download mnist", "invalid choice: 'mnist'"),
    # --- bad config files ---
    "config not found": Bad("train --data-dir {ptb} --config {w}/absent.toml",
                            "{w}/absent.toml: config file not found"),
    "config invalid TOML": Bad("train --data-dir {ptb} --config {w}/broken.toml",
                               "{w}/broken.toml: invalid TOML"),
    "config invalid JSON": Bad("train --data-dir {ptb} --config {w}/broken.json",
                               "{w}/broken.json:1: invalid JSON"),
    "config unknown field": Bad("train --data-dir {ptb} --config {w}/unknown.toml",
                                "{w}/unknown.toml: unknown config field 'hidden'"),
    "config wrong type": Bad("train --data-dir {ptb} --config {w}/wrong-type.json",
                             "{w}/wrong-type.json: config field hidden_size must be int, "
                             "got 'big'"),
    "config section": Bad("train --data-dir {ptb} --config {w}/nested.toml",
                          "{w}/nested.toml: config file must be a flat table; 'model' is a "
                          "section"),
    "config not a table": Bad("train --data-dir {ptb} --config {w}/list.json",
                              "{w}/list.json: config file must hold a table of fields"),
    "config YAML": Bad("train --data-dir {ptb} --config {w}/run.yaml",
                       "{w}/run.yaml: config file must end in .toml or .json"),
    "config UTF-16": Bad("train --data-dir {ptb} --config {w}/utf16.toml",
                         "{w}/utf16.toml: cannot read config file"),
    "config out of range": Bad("train --data-dir {ptb} --config {w}/keep-prob.toml",
                               "{w}/keep-prob.toml: config field keep_prob must be in (0, 1]"),
    # --- unwritable paths and a full disk ---
    "save path under a file": Bad("train --data-dir {ptb} --save-path {w}/empty.txt/run "
                                  + " ".join(LM), "save path is not writable (Not a directory)"),
    "save path is a file": Bad("train --data-dir {ptb} --save-path {w}/empty.txt " + " ".join(LM),
                               "{w}/empty.txt: save path exists and is not a directory"),
    "classify save path under a file": Bad(
        "classify train --data {mr} --save-path {w}/empty.txt/run " + " ".join(CLASSIFIER),
        "{w}/empty.txt/run: save path is not writable (Not a directory)"),
    "download into a file": Bad("download ptb --dest {w}/empty.txt",
                                "{w}/empty.txt/ptb: cannot create download directory"),
    "disk full writing a checkpoint": Bad(
        "train --resume --save-path {lm} --data-dir {ptb} --max-max-epoch 2 "
        "--checkpoint-every 1", "{lm}/model.safetensors: cannot write (No space left on device)",
        fault="checkpoint"),
    "disk full writing metrics": Bad(
        "train --resume --save-path {lm} --data-dir {ptb} --max-max-epoch 2",
        "{lm}/metrics.jsonl: cannot write (No space left on device)", fault="metrics"),
    # --- mismatched vocabularies ---
    "evaluate on other words": Bad("evaluate --model {lm} --data-dir {other_ptb}",
                                   "{other_ptb}/ptb.test.txt:1: unknown word 'completely'"),
    "score other words": Bad("score --model {lm} {other_ptb}/ptb.test.txt",
                             "{other_ptb}/ptb.test.txt:1: unknown word 'completely'"),
    "prime with an unknown word": Bad("sample --model {lm} --prime zebra",
                                      "prime:1: unknown word 'zebra'"),
    "resume on other data": Bad("train --resume --save-path {lm} --data-dir {other_ptb}",
                                "the checkpoint's vocabulary (8 tokens) does not match the "
                                "data's (4 tokens)"),
    "a save path that is a dangling symlink": Bad(
        "train --data-dir {ptb} --save-path {w}/dangling " + " ".join(LM),
        "{w}/dangling: save path is a symlink to {w}/nowhere, which does not exist"),
    "a model too big for memory": Bad(
        "train --data-dir {ptb} --save-path {w}/huge-run " + " ".join(LM[:2])
        + " --hidden-size 10000000000",
        "cannot build the language model from these sizes: it needs "),
    "a size past 64 bits": Bad(
        "train --data-dir {ptb} --save-path {w}/huge-run " + " ".join(LM[:2])
        + " --hidden-size 99999999999999999999",
        "cannot build the language model from these sizes: a size does not fit in 64 bits"),
    "classify: a classifier too big for memory": Bad(
        "classify train --data {mr} --save-path {w}/huge-clf --layer-sizes 100000000",
        "cannot build the classifier from these sizes: it needs "),
    "classify: valid data that is the training data": Bad(
        "classify train --data {mr} --valid-data {mr} " + " ".join(CLASSIFIER),
        "{mr}: --valid-data is the training data itself"),
    "classify: a text column for a directory": Bad(
        "classify train --data {mr} --text-column review " + " ".join(CLASSIFIER),
        "{mr}: a directory has no columns; --text-column and --label-column apply to a "
        ".tsv/.csv file"),
    "classify: one label only": Bad(
        "classify train --data {w}/one-class.tsv " + " ".join(CLASSIFIER),
        "every training text is positive; a classifier needs texts of both labels"),
    "forget bias nan": Bad("train --data-dir {ptb} --forget-bias nan " + " ".join(LM),
                           "config field forget_bias must be a finite number, got nan"),
    "evaluate the stream with a batch size": Bad(
        "evaluate --model {lm} --data-dir {ptb} --stream --batch-size 3",
        "--batch-size sets the fast shape; --stream is always one row"),
    "resume with another hidden size": Bad(
        "train --resume --save-path {lm} --data-dir {ptb} --hidden-size 16",
        "{lm}/model.safetensors: the run trains with hidden_size 8; it cannot resume with "
        "hidden_size 16"),
    "resume with another batch shape": Bad(
        "train --resume --save-path {lm} --data-dir {ptb} --num-steps 7",
        "the run trains with num_steps 5; it cannot resume with num_steps 7"),
    "resume a char run at word level": Bad(
        "train --resume --save-path {char_lm} --level word --data-file {w}/play.txt",
        "the run is char-level; cannot resume it at the word level"),
    # --- corrupted checkpoints, for every command that loads one ---
    "evaluate a truncated checkpoint": Bad(
        "evaluate --model {w}/truncated.safetensors --data-dir {ptb}",
        "{w}/truncated.safetensors: truncated checkpoint"),
    "sample a flipped byte": Bad("sample --model {w}/flipped.safetensors",
                                 "{w}/flipped.safetensors: corrupted checkpoint (tensor data "
                                 "fails its checksum)"),
    "score a planted pickle": Bad("score --model {w}/pickle.safetensors {w}/play.txt",
                                  "{w}/pickle.safetensors: truncated or not a safetensors "
                                  "checkpoint"),
    "resume a truncated checkpoint": Bad("train --resume --save-path {broken_run} --data-dir {ptb}",
                                         "{broken_run}/model.safetensors: truncated checkpoint"),
    "evaluate a future version": Bad("evaluate --model {w}/v99.safetensors --data-dir {ptb}",
                                     "checkpoint format version 99 is not supported"),
    "evaluate a classifier's run": Bad("evaluate --model {clf} --data-dir {ptb}",
                                       "{clf}/best.safetensors: holds a 'classifier', not a "
                                       "language model"),
    "sample a classifier": Bad("sample --model {clf}/best.safetensors",
                               "{clf}/best.safetensors: holds a 'classifier', not a language "
                               "model"),
    "classify evaluate a truncated one": Bad(
        "classify evaluate --model {w}/truncated.safetensors --data {mr}",
        "{w}/truncated.safetensors: truncated checkpoint"),
    "classify predict a language model": Bad(
        "classify predict --model {lm}/best.safetensors {w}/play.txt",
        "{lm}/best.safetensors: holds a 'language_model', not a classifier"),
    "classify predict a planted pickle": Bad(
        "classify predict --model {w}/pickle.safetensors {w}/play.txt",
        "{w}/pickle.safetensors: truncated or not a safetensors checkpoint"),
}


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Trained runs to load and resume, and a bad file of every kind."""
    w = tmp_path_factory.mktemp("world")
    paths = {"w": w, "ptb": write_ptb_layout(w / "ptb"), "mr": write_per_class(w / "mr", 40)}
    # A word model without <unk>, so words it never saw are errors rather than <unk>.
    paths["lm"], paths["char_lm"], paths["clf"] = w / "lm", w / "char-lm", w / "clf"
    vocab_ptb = w / "no-unk-ptb"
    vocab_ptb.mkdir()
    for split in ("train", "valid", "test"):
        (vocab_ptb / f"ptb.{split}.txt").write_text(" the cat sat on a mat again \n" * 40)
    (w / "play.txt").write_text("ROMEO: the cat sat on a mat\n" * 40)
    assert main(["train", *LM, "--max-max-epoch", "1", "--data-dir", str(vocab_ptb),
                 "--save-path", str(paths["lm"])]) == 0
    assert main(["train", *LM, "--max-max-epoch", "1", "--level", "char", "--data-file",
                 str(w / "play.txt"), "--save-path", str(paths["char_lm"])]) == 0
    assert main(["classify", "train", "--data", str(paths["mr"]), *CLASSIFIER, "--save-path",
                 str(paths["clf"])]) == 0
    paths["ptb"] = vocab_ptb

    (w / "empty.txt").write_bytes(b"")
    (w / "dangling").symlink_to(w / "nowhere")
    (w / "one-class.tsv").write_text("text\tlabel\n" + "a fine film\t1\n" * 30)
    (w / "blank.txt").write_text("\n  \n\t\n")
    (w / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (w / "binary.tsv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (w / "utf16.txt").write_text("the cat sat\n" * 30, encoding="utf-16")
    (w / "huge-line.txt").write_text("word " * 200_000 + "\n")
    (w / "emptydir").mkdir()
    paths["huge_mr"] = write_per_class(w / "huge-mr", 20)
    pos = paths["huge_mr"] / "rt-polarity.pos"
    pos.write_text("fine film\n" + "great " * 200_000 + "!\n" + pos.read_text())
    paths["latin1_ptb"] = _ptb_copy(w / "latin1-ptb", vocab_ptb)
    (paths["latin1_ptb"] / "ptb.train.txt").write_bytes(b" a \n b \n caf\xe9 \n")
    paths["no_valid_ptb"] = _ptb_copy(w / "no-valid-ptb", vocab_ptb)
    (paths["no_valid_ptb"] / "ptb.valid.txt").unlink()
    paths["other_ptb"] = w / "other-ptb"
    paths["other_ptb"].mkdir()
    for split in ("train", "valid", "test"):
        (paths["other_ptb"] / f"ptb.{split}.txt").write_text(" completely different words \n"
                                                              * 40)
    for name, text in {"broken.toml": "hidden_size = = 3\n", "broken.json": "{hidden_size: 3}",
                       "unknown.toml": "hidden = 3\n", "wrong-type.json": '{"hidden_size": "big"}',
                       "nested.toml": "[model]\nhidden_size = 3\n", "list.json": "[1, 2]",
                       "run.yaml": "hidden_size: 3\n", "keep-prob.toml": "keep_prob = 2\n"
                       }.items():
        (w / name).write_text(text)
    (w / "utf16.toml").write_text("hidden_size = 3\n", encoding="utf-16")

    checkpoint = (paths["lm"] / "model.safetensors").read_bytes()
    (w / "truncated.safetensors").write_bytes(checkpoint[: len(checkpoint) // 2])
    flipped = bytearray(checkpoint)
    flipped[-5] ^= 0x10
    (w / "flipped.safetensors").write_bytes(bytes(flipped))
    (w / "pickle.safetensors").write_bytes(pickle.dumps(_Exploit()))
    (w / "v99.safetensors").write_bytes(checkpoint.replace(b'\\"format_version\\": 2',
                                                           b'\\"format_version\\": 99', 1))
    paths["broken_run"] = w / "broken-run"
    shutil.copytree(paths["lm"], paths["broken_run"])
    (paths["broken_run"] / "model.safetensors").write_bytes(checkpoint[:-100])
    return paths


def _ptb_copy(directory: Path, source: Path) -> Path:
    shutil.copytree(source, directory)
    return directory


def simulate(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills up: on the checkpoint's fsync, or on opening the metrics log."""
    def no_space(*args, **kwargs):
        raise NO_SPACE

    if fault == "checkpoint":
        monkeypatch.setattr("lstmkit.checkpoint.os.fsync", no_space)
    elif fault == "metrics":
        def no_space_to_write(path, mode="r", *args, **kwargs):
            if mode.startswith("r") and "+" not in mode:
                return open(path, mode, *args, **kwargs)
            raise NO_SPACE
        monkeypatch.setattr("lstmkit.reporting.open", no_space_to_write, raising=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`, with the SHA-256 of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_loses_nothing(name, world, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(world["w"])  # where a planted pickle would drop its PWNED file
    if case.fault:
        simulate(case.fault, monkeypatch)
    if case.stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    before = snapshot(world["w"])
    code = main(case.args.format(**world).split())
    out, err = capsys.readouterr()
    assert code == 2, (name, out, err)
    assert err == f"lstmkit: error: {err.removeprefix('lstmkit: error: ')}", err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert case.says.format(**world) in err, err
    assert snapshot(world["w"]) == before, f"{name}: files changed, lost or left behind"


def test_there_are_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", ["binary data file", "classify predict a planted pickle"])
def test_a_real_process_prints_the_same_one_line(name, world):
    case = CASES[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lstmkit", *case.args.format(**world).split()],
                          capture_output=True, text=True, env=env, cwd=world["w"], timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("lstmkit: error: ") and done.stderr.count("\n") == 1
    assert case.says.format(**world) in done.stderr
    assert not (world["w"] / "PWNED").exists()
