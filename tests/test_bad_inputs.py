"""One table of bad inputs across every command: each must end in one line `lstmkit: error: ...`
naming the file or option and the reason, exit status 2, no traceback, and nothing lost (every
file that was there is byte for byte the same, and nothing new is left behind).

Faults the machine causes (a full disk) are simulated in-process; two cases also run as real
processes to show that no traceback escapes.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from classify_corpus import write_per_class
from conftest import write_ptb_layout
from lstmkit.checkpoint import load_checkpoint, save_checkpoint
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
    env: dict[str, str] = field(default_factory=dict)  # `{name}`s allowed in values too


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
    "a time budget that leaves no time to train": Bad(
        "train --data-dir {ptb} --save-path {lm} --overwrite --time-budget 0.001s "
        + " ".join(LM),
        "time budget 0.001 s leaves no time to train: the final validation, test and saving "
        "are kept"),
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
    "time budget not a duration": Bad(
        "train --data-dir {ptb} --time-budget soon " + " ".join(LM),
        "config field time_budget must be a positive duration of at most a year like 90s, 60m "
        "or 1.5h, got 'soon'"),
    "weight drop of 1": Bad("train --data-dir {ptb} --weight-drop 1 " + " ".join(LM),
                            "config field weight_drop must be in [0, 1), got 1.0"),
    "negative embedding size": Bad("train --data-dir {ptb} --embedding-size -4 " + " ".join(LM),
                                   "config field embedding_size must be >= 0"),
    "one tied layer of another size": Bad(
        "train --data-dir {ptb} --tie-weights true --num-layers 1 "
        "--embedding-size 6 " + " ".join(LM),
        "config field hidden_size (8) would go unused: with tie_weights and one layer, the "
        "layer has the embedding's size (6)"),
    "tie weights not a boolean": Bad("train --data-dir {ptb} --tie-weights maybe " + " ".join(LM),
                                     "config field tie_weights must be true or false, got "
                                     "'maybe'"),
    "resume with untied weights": Bad(
        "train --resume --save-path {lm} --data-dir {ptb} --tie-weights true",
        "{lm}/model.safetensors: the run trains with tie_weights False; it cannot resume with "
        "tie_weights True"),
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


LONG = "x" * 300  # one path component past the 255 bytes a file name may have
LR_OVERFLOW = "--learning-rate 1e30 --max-grad-norm 1e30"

# Round 4: each class of the "never lose a run" report, several examples each.
ROUND_4 = {
    # 1. --overwrite keeps the old run until the new one has a checkpoint
    "overwrite, then diverge at step 1": Bad(
        f"train --data-dir {{ptb}} --save-path {{lm_copy}} --overwrite {LR_OVERFLOW} "
        + " ".join(LM), "training diverged"),
    "overwrite, then diverge on weights": Bad(
        "train --data-dir {ptb} --save-path {lm_copy} --overwrite --init-scale 1e38 "
        + " ".join(LM), "training diverged"),
    "overwrite a char run, then diverge": Bad(
        f"train --data-file {{w}}/play.txt --level char --save-path {{char_copy}} --overwrite "
        f"{LR_OVERFLOW} " + " ".join(LM), "training diverged"),
    "classify: overwrite, then the disk fills": Bad(
        "classify train --data {mr} --save-path {clf_copy} --overwrite " + " ".join(CLASSIFIER),
        "{clf_copy}/metrics.jsonl: cannot write (No space left on device)", fault="metrics"),
    "overwrite, then the disk fills": Bad(
        "train --data-dir {ptb} --save-path {lm_copy} --overwrite " + " ".join(LM),
        "{lm_copy}/metrics.jsonl: cannot write (No space left on device)", fault="metrics"),
    # 2. one writer per run
    "a second writer, fresh": Bad("train --data-dir {ptb} --save-path {locked} --overwrite "
                                  + " ".join(LM), "{locked}: another lstmkit process (PID ",
                                  fault="locked"),
    "a second writer, resuming": Bad("train --resume --data-dir {ptb} --save-path {locked}",
                                     "{locked}: another lstmkit process (PID ", fault="locked"),
    "classify: a second writer": Bad(
        "classify train --data {mr} --save-path {locked} --overwrite " + " ".join(CLASSIFIER),
        "{locked}: another lstmkit process (PID ", fault="locked"),
    # 3. only our files
    "an empty save path": Bad("train --data-dir {ptb} --save-path <empty> " + " ".join(LM),
                              "--save-path is empty"),
    "classify: an empty save path": Bad(
        "classify train --data {mr} --save-path <empty> " + " ".join(CLASSIFIER),
        "--save-path is empty"),
    "a blank save path": Bad("train --data-dir {ptb} --save-path <blank> " + " ".join(LM),
                             "--save-path is empty"),
    "a fresh run over a user's curve.png": Bad(
        "train --data-dir {ptb} --save-path {user_curve} " + " ".join(LM),
        "{user_curve}: already holds a run (curve.png)"),
    "a fresh run among a user's files": Bad(
        "train --data-dir {ptb} --save-path {user_files} " + " ".join(LM),
        "{user_files}: holds files that are not an lstmkit run's (notes.txt)"),
    "classify: a fresh run among a user's files": Bad(
        "classify train --data {mr} --save-path {user_files} " + " ".join(CLASSIFIER),
        "{user_files}: holds files that are not an lstmkit run's (notes.txt)"),
    "a fresh run in the test world": Bad(
        "train --data-dir {ptb} --save-path {w} " + " ".join(LM),
        "{w}: holds files that are not an lstmkit run's"),
    # 4. the checksum covers the whole file
    **{f"a changed byte in the {part}": Bad(f"sample --model {{w}}/changed-{part}.safetensors",
                                            f"{{w}}/changed-{part}.safetensors: {says}")
       for part, says in (("vocabulary", "corrupted checkpoint (header fails its checksum)"),
                          ("config", "corrupted checkpoint (header fails its checksum)"),
                          ("padding", "corrupted checkpoint (header fails its checksum)"),
                          ("file-hash", "corrupted checkpoint (header fails its checksum)"),
                          ("payload-hash", "corrupted checkpoint (tensor data fails"),
                          ("tensor-entry", "corrupted checkpoint"),
                          ("length", "not a safetensors checkpoint"))},
    "evaluate a changed vocabulary word": Bad(
        "evaluate --model {w}/changed-vocabulary.safetensors --data-dir {ptb}",
        "header fails its checksum"),
    # 5. a path component over 255 bytes, everywhere a path is taken
    "long --data-file": Bad(f"train --data-file {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long --train-file": Bad(f"train --train-file {{w}}/{LONG} --valid-file {{w}}/play.txt "
                             f"--test-file {{w}}/play.txt", f"{{w}}/{LONG}: "),
    "long --save-path": Bad(f"train --data-dir {{ptb}} --save-path {{w}}/{LONG} " + " ".join(LM),
                            f"{{w}}/{LONG}: "),
    "long --model": Bad(f"sample --model {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long evaluate --model": Bad(f"evaluate --model {{w}}/{LONG} --data-dir {{ptb}}",
                                 f"{{w}}/{LONG}: "),
    "long score FILE": Bad(f"score --model {{lm}} {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long --data-dir": Bad(f"train --data-dir {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long LSTMKIT_DATA": Bad("train " + " ".join(LM), f"{{w}}/{LONG}: ",
                             env={"LSTMKIT_DATA": f"{{w}}/{LONG}"}),
    "long classify --data": Bad(f"classify train --data {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long predict FILE": Bad(f"classify predict --model {{clf}} {{w}}/{LONG}", f"{{w}}/{LONG}: "),
    "long classify --model": Bad(f"classify predict --model {{w}}/{LONG} {{w}}/play.txt",
                                 f"{{w}}/{LONG}: "),
    "long download --dest": Bad(f"download ptb --dest {{w}}/{LONG}", f"{{w}}/{LONG}"),
    "long --config": Bad(f"train --data-dir {{ptb}} --config {{w}}/{LONG}.toml",
                         f"{{w}}/{LONG}.toml: "),
    "long --vectors": Bad(f"classify train --data {{mr}} --vectors {{w}}/{LONG} "
                          + " ".join(CLASSIFIER), f"{{w}}/{LONG}: "),
    # 6. special files: never block, never read without end
    "a FIFO as --data-file": Bad("train --data-file {w}/fifo", "{w}/fifo: is a FIFO"),
    "a FIFO as --model": Bad("sample --model {w}/fifo", "{w}/fifo: is a FIFO"),
    "a FIFO as --config": Bad("train --data-dir {ptb} --config {w}/fifo.toml",
                              "{w}/fifo.toml: is a FIFO"),
    "a FIFO to score": Bad("score --model {lm} {w}/fifo", "{w}/fifo: is a FIFO"),
    "a FIFO to predict": Bad("classify predict --model {clf} {w}/fifo", "{w}/fifo: is a FIFO"),
    "a FIFO as classify table": Bad("classify train --data {w}/fifo.tsv",
                                    "{w}/fifo.tsv: is a FIFO"),
    "a FIFO as --vectors": Bad("classify train --data {mr} --vectors {w}/fifo "
                               + " ".join(CLASSIFIER), "{w}/fifo: word-vector file not found"),
    "/dev/zero as --data-file": Bad("train --data-file /dev/zero",
                                    "/dev/zero: is a character device"),
    "/dev/zero as --model": Bad("sample --model /dev/zero", "/dev/zero: is a character device"),
    "/dev/zero to score": Bad("score --model {lm} /dev/zero", "/dev/zero: is a character device"),
    "/dev/zero as a PTB split": Bad("train --train-file /dev/zero --valid-file {w}/play.txt "
                                    "--test-file {w}/play.txt",
                                    "/dev/zero: is a character device"),
    # 7. numbers at the edges
    "a learning rate that overflows the loss": Bad(
        f"train --data-dir {{ptb}} {LR_OVERFLOW} " + " ".join(LM), "training diverged"),
    "a hundred million layers": Bad(
        "train --data-dir {ptb} --save-path {w}/huge-run " + " ".join(LM)
        + " --num-layers 100000000", "cannot build the language model from these sizes: it "
        "needs "),
    "a million layers of 100": Bad(
        "train --data-dir {ptb} " + " ".join(LM) + " --num-layers 1000000 --hidden-size 1000",
        "cannot build the language model from these sizes: it needs "),
    "layers past 64 bits": Bad(
        "train --data-dir {ptb} " + " ".join(LM) + " --num-layers 99999999999999999999",
        "cannot build the language model from these sizes: a size does not fit in 64 bits"),
    "a batch past the data": Bad("train --data-dir {ptb} " + " ".join(LM[:2])
                                 + " --batch-size 100000000000000000000",
                                 "training data (320 tokens) is too short"),
    "a seed of 5000 digits": Bad("train --data-dir {ptb} --seed " + "9" * 5000,
                                 "config field seed must be"),
    # 9. crafted checkpoints (checksums recomputed: the checks behind them must hold)
    **{f"crafted: {name}": Bad(f"{command} --model {{w}}/crafted-{slug}.safetensors"
                               + {"evaluate": " --data-dir {ptb}",
                                  "classify predict": " {w}/play.txt"}.get(command, ""),
                               f"{{w}}/crafted-{slug}.safetensors: {says}")
       for name, slug, command, says in (
           ("string data_offsets", "offsets-str", "sample", "corrupted checkpoint"),
           ("reversed data_offsets", "offsets-reversed", "sample", "corrupted checkpoint"),
           ("three data_offsets", "offsets-three", "evaluate", "corrupted checkpoint"),
           ("data_offsets past the end", "offsets-past", "sample", "truncated checkpoint"),
           ("metadata a list", "metadata-list", "sample",
            "not a safetensors checkpoint (metadata is not a table of strings)"),
           ("lstmkit value a number", "lstmkit-number", "sample",
            "not a safetensors checkpoint (metadata is not a table of strings)"),
           ("document a list", "document-list", "sample", "not an lstmkit checkpoint"),
           ("very deep JSON", "deep", "sample", "corrupted checkpoint (metadata nest"),
           ("config a list", "config-list", "sample",
            "checkpoint metadata is incomplete or invalid (config is missing or not a table)"),
           ("vocabulary shorter than the embedding", "short-vocab", "sample",
            "checkpoint metadata disagrees with itself"),
           ("vocabulary of numbers", "vocab-numbers", "evaluate",
            "checkpoint metadata is incomplete or invalid (vocabulary is not a list of tokens)"),
           ("string hidden size", "hidden-str", "sample",
            "checkpoint metadata is incomplete or invalid (config field hidden_size must be int"),
           ("absurd hidden size", "hidden-huge", "sample",
            "checkpoint metadata disagrees with itself"),
           ("absurd sizes everywhere", "sizes-huge", "sample", "weights do not fit"),
           ("a hundred million layers", "layers-huge", "sample",
            "checkpoint metadata describes 100000000 layers"),
           ("unknown level", "level", "sample", "checkpoint metadata names an unknown level"),
           ("kind a table", "kind", "sample", "holds a {{'a': 1}}, not a language model"),
           ("classifier shape a string", "clf-shape", "classify predict",
            "checkpoint metadata is incomplete or invalid (shape is missing or not a table)"),
       )},
    "crafted: progress of the wrong type": Bad(
        "train --resume --save-path {crafted_progress} --data-dir {ptb}",
        "has no usable training position"),
    "crafted: a history record without its perplexities": Bad(
        "train --resume --save-path {crafted_history} --data-dir {ptb}",
        "has no usable training position, cannot resume from it (config field history "
        "valid_perplexity must be float, got None)"),
    "crafted: optimizer state of the wrong type": Bad(
        "train --resume --save-path {crafted_optimizer} --data-dir {ptb}",
        "unusable optimizer state"),
    "crafted: carried state of the wrong shape": Bad(
        "train --resume --save-path {crafted_carried} --data-dir {ptb}",
        "unusable carried state"),
    # 10. crafted config files
    "config: deep JSON": Bad("train --data-dir {ptb} --config {w}/deep.json",
                             "{w}/deep.json: invalid config file (nested too deeply)"),
    "config: deep TOML": Bad("train --data-dir {ptb} --config {w}/deep.toml",
                             "{w}/deep.toml: invalid config file (nested too deeply)"),
    "config: nested lists": Bad("train --data-dir {ptb} --config {w}/lists.json",
                                "{w}/lists.json: config file nests values more than 8 deep"),
    "config: nested TOML arrays": Bad("train --data-dir {ptb} --config {w}/lists.toml",
                                      "{w}/lists.toml: config file nests values more than"),
    "config: a 5000-digit integer": Bad("train --data-dir {ptb} --config {w}/digits.json",
                                        "{w}/digits.json: invalid JSON"),
    "config: over a megabyte": Bad("train --data-dir {ptb} --config {w}/big.toml",
                                   "over the limit of 1,048,576 for a config file"),
    "config: a 5000-digit TOML integer": Bad("train --data-dir {ptb} --config {w}/digits.toml",
                                             "{w}/digits.toml: invalid TOML"),
}
CASES.update(ROUND_4)


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
    _round_4_world(w, paths, checkpoint)
    return paths


def _round_4_world(w: Path, paths: dict[str, Path], checkpoint: bytes) -> None:
    for name, source in (("lm_copy", "lm"), ("char_copy", "char_lm"), ("clf_copy", "clf"),
                         ("locked", "lm")):
        paths[name] = w / name.replace("_", "-")
        shutil.copytree(paths[source], paths[name])
    paths["user_curve"], paths["user_files"] = w / "user-curve", w / "user-files"
    paths["user_curve"].mkdir()
    (paths["user_curve"] / "curve.png").write_bytes(b"the user's own plot")
    paths["user_files"].mkdir()
    (paths["user_files"] / "notes.txt").write_text("mine\n")
    for name in ("fifo", "fifo.toml", "fifo.tsv"):
        os.mkfifo(w / name)
    (w / "deep.json").write_text('{"hidden_size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (w / "deep.toml").write_text("hidden_size = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (w / "lists.json").write_text('{"hidden_size": ' + "[" * 20 + "]" * 20 + "}")
    (w / "lists.toml").write_text("hidden_size = " + "[" * 20 + "]" * 20 + "\n")
    (w / "digits.json").write_text('{"seed": ' + "9" * 5000 + "}")
    (w / "digits.toml").write_text("seed = " + "9" * 5000 + "\n")
    (w / "big.toml").write_text("# padding\n" * 200_000)
    for part, data in changed_checkpoints(checkpoint).items():
        (w / f"changed-{part}.safetensors").write_bytes(data)
    tensors, meta = load_checkpoint(paths["lm"] / "model.safetensors")
    for slug, data in crafted_headers(checkpoint).items():
        (w / f"crafted-{slug}.safetensors").write_bytes(data)
    for slug, change in crafted_metadata().items():
        save_checkpoint(w / f"crafted-{slug}.safetensors", tensors, change(copy.deepcopy(meta)))
    clf_tensors, clf_meta = load_checkpoint(paths["clf"] / "best.safetensors")
    clf_meta["shape"] = "big"
    save_checkpoint(w / "crafted-clf-shape.safetensors", clf_tensors, clf_meta)
    for name, change in (("progress", lambda m: {**m, "progress": {**m["progress"],
                                                                    "epoch": "one"}}),
                         ("optimizer", lambda m: {**m, "optimizer": {"state": [1, 2],
                                                                     "param_groups": 3}}),
                         ("history", lambda m: {**m, "progress": {
                             **m["progress"], "history": [{"event": "epoch", "epoch": 1,
                                                           "train_perplexity": 9.0}]}})):
        paths[f"crafted_{name}"] = w / f"crafted-{name}-run"
        shutil.copytree(paths["lm"], paths[f"crafted_{name}"])
        save_checkpoint(paths[f"crafted_{name}"] / "model.safetensors", tensors,
                        change(copy.deepcopy(meta)))
    paths["crafted_carried"] = w / "crafted-carried-run"
    shutil.copytree(paths["lm"], paths["crafted_carried"])
    save_checkpoint(paths["crafted_carried"] / "model.safetensors",
                    {**tensors, "carried.0": torch.zeros(3), "carried.1": torch.zeros(3)}, meta)


def changed_checkpoints(checkpoint: bytes) -> dict[str, bytes]:
    """One byte changed in each part of a checkpoint (the file left otherwise as it was)."""
    (size,) = struct.unpack("<Q", checkpoint[:8])
    header = checkpoint[8:8 + size]
    places = {"vocabulary": header.index(b"\\\"cat\\\"") + 3,
              "config": header.index(b"hidden_size") + 2,
              "padding": len(header) - 1,
              "file-hash": header.index(b'"file_sha256":"') + 20,
              "payload-hash": header.index(b'"payload_sha256":"') + 20,
              "tensor-entry": header.index(b'"dtype":"F32"') + 10}
    changed = {}
    for part, offset in places.items():
        data = bytearray(checkpoint)
        data[8 + offset] = ord("\t") if part == "padding" else data[8 + offset] ^ 0x01
        changed[part] = bytes(data)
    length = bytearray(checkpoint)
    length[0] ^= 0x01
    changed["length"] = bytes(length)
    assert checkpoint[8 + places["padding"]] == ord(" ")  # safetensors pads with spaces
    return changed


def rehashed(header: dict, payload: bytes) -> bytes:
    """A checkpoint made of `header` and `payload`, with both checksums correct for them."""
    header = copy.deepcopy(header)
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict):
        metadata["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        metadata["file_sha256"] = "0" * 64
    raw = json.dumps(header, separators=(",", ":")).encode()
    data = struct.pack("<Q", len(raw)) + raw + payload
    if isinstance(metadata, dict):
        digest = hashlib.sha256(data).hexdigest().encode()
        data = data.replace(b'"file_sha256":"' + b"0" * 64, b'"file_sha256":"' + digest, 1)
    return data


def crafted_headers(checkpoint: bytes) -> dict[str, bytes]:
    (size,) = struct.unpack("<Q", checkpoint[:8])
    header, payload = json.loads(checkpoint[8:8 + size]), checkpoint[8 + size:]
    first = next(name for name in header if name != "__metadata__")

    def with_entry(**change) -> dict:
        return {**header, first: {**header[first], **change}}

    document = json.loads(header["__metadata__"]["lstmkit"])
    deep = {**document, "extra": json.loads("[" * 200 + "]" * 200)}
    return {name: rehashed(h, payload) for name, h in {
        "offsets-str": with_entry(data_offsets=["0", "8"]),
        "offsets-reversed": with_entry(data_offsets=[8, 0]),
        "offsets-three": with_entry(data_offsets=[0, 8, 16]),
        "offsets-past": with_entry(data_offsets=[0, len(payload) + 8]),
        "metadata-list": {**header, "__metadata__": [1, 2]},
        "lstmkit-number": {**header, "__metadata__": {**header["__metadata__"], "lstmkit": 3}},
        "document-list": {**header, "__metadata__": {**header["__metadata__"],
                                                     "lstmkit": "[1, 2]"}},
        "deep": {**header, "__metadata__": {**header["__metadata__"],
                                            "lstmkit": json.dumps(deep)}},
    }.items()}


def crafted_metadata() -> dict:
    """Metadata changes, saved with correct checksums by lstmkit itself."""
    def shape(**change):
        return lambda m: {**m, "shape": {**m["shape"], **change}}

    return {
        "config-list": lambda m: {**m, "config": [1, 2]},
        "short-vocab": lambda m: {**m, "vocab": {**m["vocab"], "tokens": m["vocab"]["tokens"][:3]}},
        "vocab-numbers": lambda m: {**m, "vocab": {"tokens": [1, 2, 3], "unk": None}},
        "hidden-str": shape(hidden_size="8"),
        "hidden-huge": shape(hidden_size=10**12),
        "sizes-huge": lambda m: {**m, "shape": {**m["shape"], "hidden_size": 10**6},
                                 "config": {**m["config"], "hidden_size": 10**6}},
        "layers-huge": lambda m: {**m, "shape": {**m["shape"], "num_layers": 10**8},
                                  "config": {**m["config"], "num_layers": 10**8}},
        "level": lambda m: {**m, "level": "byte"},
        "kind": lambda m: {**m, "kind": {"a": 1}},
    }


def _ptb_copy(directory: Path, source: Path) -> Path:
    shutil.copytree(source, directory)
    return directory


def simulate(fault: str, monkeypatch: pytest.MonkeyPatch, world: dict[str, Path]
             ) -> io.TextIOBase | None:
    """A disk that fills up: on the checkpoint's fsync, or on opening the metrics log; or a
    run that another process is writing (its lock held, as a live `train` holds it)."""
    def no_space(*args, **kwargs):
        raise NO_SPACE

    if fault == "locked":
        holder = open(world["locked"] / ".lstmkit.lock", "a+")
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write(f"{os.getpid()}\n")
        holder.flush()
        return holder  # the caller lets go (and removes the file) when the case is done
    if fault == "checkpoint":
        monkeypatch.setattr("lstmkit.checkpoint.os.fsync", no_space)
    elif fault == "metrics":
        def no_space_to_write(path, mode="r", *args, **kwargs):
            if mode.startswith("r") and "+" not in mode:
                return open(path, mode, *args, **kwargs)
            raise NO_SPACE
        monkeypatch.setattr("lstmkit.reporting.open", no_space_to_write, raising=False)
    return None


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`, with the SHA-256 of each regular file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "other" for p in sorted(root.rglob("*"))}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_loses_nothing(name, world, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(world["w"])  # where a planted pickle would drop its PWNED file
    held = simulate(case.fault, monkeypatch, world) if case.fault else None
    try:
        _run_case(name, case, world, capsys, monkeypatch)
    finally:
        if held is not None:
            held.close()
            (world["locked"] / ".lstmkit.lock").unlink()


def _run_case(name: str, case: Bad, world: dict[str, Path], capsys, monkeypatch) -> None:
    if case.stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    for variable, value in case.env.items():
        monkeypatch.setenv(variable, value.format(**world))
    before = snapshot(world["w"])
    argv = [{"<empty>": "", "<blank>": "  "}.get(a, a) for a in case.args.format(**world).split()]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (name, out, err)
    assert err == f"lstmkit: error: {err.removeprefix('lstmkit: error: ')}", err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert case.says.format(**world) in err, err
    assert snapshot(world["w"]) == before, f"{name}: files changed, lost or left behind"


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
