"""End to end through the `lstmkit` command, on a small generated PTB-layout corpus."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import progress_lines, resumed_at, tree_files
from lstmkit.cli import main
from lstmkit.device import cpu_has_native_bf16
from lstmkit.lm.runs import load_lm
from lstmkit.reporting import Console

FAST = ["--preset", "test", "--hidden-size", "16", "--batch-size", "4", "--num-steps", "5"]
WINDOWS = 87  # of the generated corpus at batch 4 x 5 steps


def train(ptb_dir, run, *extra):
    return main(["train", *FAST, "--data-dir", str(ptb_dir), "--save-path", str(run), *extra])


def test_evaluate_of_a_saved_run_repeats_the_test_perplexities_in_its_metrics_log(
        ptb_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--max-max-epoch", "2") == 0
    out = capsys.readouterr().out
    assert out.count("perplexity:") == 20, "ten progress lines per epoch"
    assert "Epoch: 2 Learning rate: 0.500" in out and "seed 0:" in out
    assert {"model.safetensors", "best.safetensors", "metrics.jsonl", "curve.png"} <= set(
        tree_files(run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [e["learning_rate"] for e in epochs] == [1.0, 0.5]
    assert epochs[1]["train_perplexity"] < epochs[0]["train_perplexity"]
    test = records[-1]
    assert test["event"] == "test" and test["shape"] == "one stream, batch 1"

    assert main(["evaluate", "--model", str(run), "--data-dir", str(ptb_dir), "--stream",
                 "--json"]) == 0
    stream = json.loads(capsys.readouterr().out)
    assert stream["perplexity"] == pytest.approx(test["test_perplexity"], abs=1e-6)
    assert main(["evaluate", "--model", str(run), "--data-dir", str(ptb_dir), "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["perplexity"] == pytest.approx(test["test_perplexity_fast"], abs=1e-6)


def test_resume_continues_to_the_same_parameters_as_one_run(ptb_dir, tmp_path, capsys,
                                                           training_steps):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(ptb_dir, straight, "--max-max-epoch", "3") == 0
    assert train(ptb_dir, resumed, "--max-max-epoch", "1") == 0
    capsys.readouterr()
    training_steps.clear()
    assert main(["train", "--resume", "--save-path", str(resumed), "--data-dir", str(ptb_dir),
                 "--max-max-epoch", "3"]) == 0
    out = capsys.readouterr().out
    assert resumed_at(out) == (2, 0)
    assert len(training_steps) == 2 * WINDOWS, "epochs 2 and 3 only"
    assert progress_lines(out) == 20 and "Epoch: 1 " not in out
    a, b = load_lm(straight).model.state_dict(), load_lm(resumed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "metrics.jsonl").read_text().count('"event": "epoch"') == 3
    epochs = lambda run: [json.loads(line)["valid_perplexity"]  # noqa: E731
                          for line in (run / "metrics.jsonl").read_text().splitlines()
                          if '"event": "epoch"' in line]
    assert epochs(straight) == epochs(resumed)


class _Stop(Exception):
    pass


class _Recorder(Console):
    """Keeps the lines; raises _Stop at line `stop_at` (0: never)."""

    def __init__(self, stop_at: int = 0) -> None:
        super().__init__(enabled=False)
        self.lines: list[str] = []
        self.stop_at = stop_at

    def say(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) == self.stop_at:
            raise _Stop


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mid_epoch_checkpoint_resumes_exactly(ptb_dir, tmp_path, training_steps, precision):
    """A run stopped after a mid-epoch checkpoint ends where an uninterrupted one does, and
    the resumed process trains only the windows after that checkpoint (in bf16, the resumed
    run casts the weights' bf16 copies that the other's SGD step kept)."""
    from lstmkit.fields import apply_overrides
    from lstmkit.lm import api
    from lstmkit.lm.config import preset

    config = apply_overrides(preset("test"), {"hidden_size": 16, "batch_size": 4, "num_steps": 5,
                                              "keep_prob": 0.7, "max_max_epoch": 2,
                                              "checkpoint_every": 7, "precision": precision},
                             "test")
    api.train_ptb(config, ptb_dir, tmp_path / "straight", console=Console(enabled=False))
    # Line 10: the sixth progress line of epoch 1 (step 53), after its step-49 checkpoint.
    with pytest.raises(_Stop):
        api.train_ptb(config, ptb_dir, tmp_path / "resumed", console=_Recorder(stop_at=10))
    training_steps.clear()
    resumed = _Recorder()
    api.train_ptb(config, ptb_dir, tmp_path / "resumed", resume=True, console=resumed)
    out = "\n".join(resumed.lines)
    assert resumed_at(out) == (1, 49)
    assert len(training_steps) == (WINDOWS - 49) + WINDOWS
    assert progress_lines(out) == 5 + 10, "the tenths at steps 53 to 87, then epoch 2's"
    a = load_lm(tmp_path / "straight").model.state_dict()
    b = load_lm(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda run: [re.sub(r'"words_per_sec": [0-9.e+-]+', "", line)  # noqa: E731
                         for line in (run / "metrics.jsonl").read_text().splitlines()
                         if '"event": "setup"' not in line]
    assert strip(tmp_path / "straight") == strip(tmp_path / "resumed")
    starts = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()
              if '"event": "setup"' in line]
    assert [(s["resumed"], s["epoch"], s["step"]) for s in starts] == [(False, 1, 0),
                                                                       (True, 1, 49)]
    weights = {s["weights"] for s in starts}
    assert weights == {"fp32"} if precision == "fp32" else \
        weights <= {f"bf16 copies kept by the SGD step for lstmkit's layers ({how})"
                    for how in ("native", "fallback")}


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 runs its LSTM in fp32 on this CPU "
                    "(no native bf16): there is no bf16 state to carry")
def test_a_mid_epoch_checkpoint_of_a_bf16_run_resumes_in_fp32(ptb_dir, tmp_path):
    """oneDNN's LSTM under bf16 autocast carries its state in bf16; an fp32 layer takes it
    (cast) when the run goes on in fp32, from where it stopped."""
    from lstmkit.fields import apply_overrides
    from lstmkit.lm import api
    from lstmkit.lm.config import preset

    config = apply_overrides(preset("test"), {"hidden_size": 16, "batch_size": 4, "num_steps": 5,
                                              "max_max_epoch": 1, "checkpoint_every": 7,
                                              "precision": "bf16", "lstm_impl": "onednn"}, "test")
    with pytest.raises(_Stop):  # after the step-49 checkpoint, as above
        api.train_ptb(config, ptb_dir, tmp_path / "run", console=_Recorder(stop_at=10))
    assert load_lm(tmp_path / "run").tensors["carried.0"].dtype == torch.bfloat16
    resumed = _Recorder()
    fp32 = dataclasses.replace(config, precision="fp32")
    result = api.train_ptb(fp32, ptb_dir, tmp_path / "run", resume=True, console=resumed)
    assert resumed_at("\n".join(resumed.lines)) == (1, 49)
    assert math.isfinite(result.test_perplexity)


def _bad(tmp_path, ptb_dir):
    """(arguments, expected fragment of the one-line error) for each kind of bad input."""
    nodata = tmp_path / "nodata"
    nodata.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ptb.train.txt").write_text("")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "ptb.train.txt").write_bytes(b" ok \n\xff\xfe bad \n")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"ptb.{split}.txt").write_text(" completely different words \n" * 30)
    run = tmp_path / "good-run"
    d = ["--data-dir", str(ptb_dir)]
    return run, [
        (["train", "--data-dir", str(tmp_path / "nope")], "data directory not found"),
        (["train", "--data-dir", str(nodata)], "no ptb.train.txt here"),
        (["train", "--data-dir", str(empty)], "ptb.train.txt: file is empty"),
        (["train", "--data-dir", str(binary)], "ptb.train.txt:2: not valid UTF-8"),
        (["train", *d, "--hidden-size", "-3"], "hidden_size must be positive, got -3"),
        (["train", *d, "--keep-prob", "0"], "keep_prob must be in (0, 1], got 0.0"),
        (["train", *d, "--keep-prob", "1.01"], "keep_prob must be in (0, 1], got 1.01"),
        (["train", *d, "--batch-size", "ten"], "batch_size must be int, got 'ten'"),
        (["train", *d, "--preset", "huge"], "unknown preset 'huge'"),
        (["train", *d, "--config", str(tmp_path / "absent.toml")], "config file not found"),
        (["train", *d, *FAST, "--save-path", str(blocker / "sub")], "save path is not writable"),
        (["train", *d, *FAST, "--save-path", str(blocker)], "exists and is not a directory"),
        (["train", *d, "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["train", *d, "--resume"], "--resume needs --save-path"),
        (["train", *d, "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["evaluate", "--model", str(run), "--data-dir", str(other)],
         "ptb.test.txt:1: unknown word 'completely'"),
        (["evaluate", "--model", str(tmp_path / "nothing"), "--data-dir", str(ptb_dir)],
         "checkpoint not found"),
        (["evaluate", "--model", str(run), "--data-dir", str(ptb_dir), "--batch-size", "-1"],
         "--batch-size must be positive"),
        (["train", "--resume", "--save-path", str(run), "--data-dir", str(other)],
         "checkpoint's vocabulary (7 tokens) does not match the data's (4 tokens)"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(ptb_dir, tmp_path, capsys):
    run, cases = _bad(tmp_path, ptb_dir)
    # A model whose vocabulary lacks <unk>: unknown words in evaluation are then errors.
    for split in ("train", "valid", "test"):
        (ptb_dir / f"ptb.{split}.txt").write_text(" the cat sat on a mat \n" * 20)
    assert train(ptb_dir, run) == 0
    capsys.readouterr()
    for args, fragment in cases:
        before = tree_files(tmp_path)
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("lstmkit: error: ") and err.count("\n") == 1, (args, err)
        assert fragment in err, (args, err)
        assert tree_files(tmp_path) == before, f"{args} left files behind"


def test_real_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "lstmkit", "train", "--data-dir",
                           str(tmp_path / "missing")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr == f"lstmkit: error: {tmp_path / 'missing'}: data directory not found\n"


def _metrics_without_clock(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("words_per_sec", None)  # the one field that depends on the clock
    return records


def test_same_seed_gives_an_identical_metrics_log_and_another_seed_does_not(ptb_dir, tmp_path):
    dropout = ["--keep-prob", "0.7", "--max-max-epoch", "2"]  # dropout draws from the RNG
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert train(ptb_dir, tmp_path / name, *dropout, "--seed", seed) == 0
    a, b, c = (_metrics_without_clock(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c


def test_bf16_where_it_is_emulated_warns_in_one_line_and_its_checkpoint_evaluates_in_fp32(
        ptb_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lstmkit.device.cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("lstmkit.nn.recurrent.cpu_has_native_bf16", lambda: False)
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--max-max-epoch", "1", "--precision", "bf16") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lstmkit: warning: precision bf16 ")

    evaluate = ["evaluate", "--model", str(run), "--data-dir", str(ptb_dir), "--json"]
    assert main(evaluate) == 0  # the checkpoint says bf16; this CPU would only crawl in it
    saved = capsys.readouterr()
    assert main([*evaluate, "--precision", "fp32"]) == 0
    assert json.loads(saved.out) == json.loads(capsys.readouterr().out)
    assert "warning" not in saved.err


def test_overwrite_starts_afresh_where_a_plain_rerun_is_refused(ptb_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--max-max-epoch", "1") == 0
    first = (run / "model.safetensors").read_bytes()
    assert train(ptb_dir, run, "--max-max-epoch", "1", "--seed", "1") == 2
    assert "already holds a run (model.safetensors" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == first
    assert train(ptb_dir, run, "--max-max-epoch", "1", "--seed", "1", "--overwrite") == 0
    assert (run / "model.safetensors").read_bytes() != first
    assert (run / "metrics.jsonl").read_text().count('"event": "epoch"') == 1


def test_a_metrics_log_changed_since_the_checkpoint_stops_resume_until_moved_away(
        ptb_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--max-max-epoch", "1") == 0
    (run / "metrics.jsonl").write_text("")  # emptied by hand: once padded with NUL bytes
    resume = ["train", "--resume", "--save-path", str(run), "--data-dir", str(ptb_dir),
              "--max-max-epoch", "2"]
    assert main(resume) == 2
    assert capsys.readouterr().err.startswith(
        f"lstmkit: error: {run / 'metrics.jsonl'}: does not match the checkpoint")
    assert (run / "metrics.jsonl").read_text() == ""
    (run / "metrics.jsonl").unlink()
    assert main(resume) == 0
    assert resumed_at(capsys.readouterr().out) == (2, 0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [2]


def _lstmkit(*args, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lstmkit", *map(str, args)], env=env,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_training_outlives_a_reader_that_goes_away(ptb_dir, tmp_path):
    run = tmp_path / "run"
    proc = _lstmkit("train", *FAST, "--max-max-epoch", "2", "--data-dir", ptb_dir,
                    "--save-path", run, stdout=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # `lstmkit train ... | head -1`
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert "Traceback" not in proc.stderr.read()
    assert load_lm(run).progress.epoch == 3, "both epochs trained and checkpointed"


def test_output_to_a_closed_pipe_or_a_full_disk_is_one_line_at_most(ptb_dir, tmp_path):
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--max-max-epoch", "1") == 0
    text = ptb_dir / "ptb.train.txt"
    proc = _lstmkit("score", "--model", run, "--per-line", text, stdout=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # `lstmkit score ... | head -1`
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == ""
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            proc = _lstmkit("score", "--model", run, text, stdout=full)
            assert proc.wait(timeout=120) == 2
            assert proc.stderr.read() == ("lstmkit: error: cannot write the output (No space "
                                          "left on device)\n")


def test_ctrl_c_mentions_checkpoints_only_where_there_are_some(ptb_dir, tmp_path, capsys,
                                                               monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lstmkit.lm.api.download_ptb", interrupt)
    assert main(["download", "ptb", "--dest", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "lstmkit: interrupted\n"
    monkeypatch.setattr("lstmkit.lm.api.train_language_model", interrupt)
    assert train(ptb_dir, tmp_path / "run") == 130
    assert capsys.readouterr().err == (
        "lstmkit: interrupted (the last checkpoint, if any, is intact)\n")


def test_a_run_no_better_than_word_frequencies_is_warned_about_each_epoch(ptb_dir, tmp_path,
                                                                          capsys):
    """A network that does not use its input (here one that barely moves from its start, a
    near-uniform guess) is flagged after each epoch, on the console and in the metrics log;
    training goes on. A run that learns is not flagged."""
    run = tmp_path / "run"
    assert train(ptb_dir, run, "--learning-rate", "1e-9", "--max-max-epoch", "2") == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("lstmkit: warning:")]
    assert len(said) == 2 and said[0].startswith(
        "lstmkit: warning: epoch 1's valid perplexity ") and \
        "the training text's word frequencies alone" in said[0]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    warned = [r for r in records if r["event"] == "warning"]
    assert [r["epoch"] for r in warned] == [1, 2]
    assert all(r["valid_perplexity"] >= r["unigram_perplexity"] > 1 for r in warned)
    assert records[-1]["event"] == "test", "the run went on to its end"

    assert train(ptb_dir, tmp_path / "learns", "--max-max-epoch", "2") == 0
    assert "warning" not in capsys.readouterr().out
