"""`lstmkit sample` and `lstmkit score` end to end, and the Python API behind them."""

import json
import os
import subprocess
import sys

import pytest

import lstmkit
from conftest import tree_files, write_plain_text, write_ptb_layout
from lstmkit.cli import main

CHAR = ["--preset", "char", "--level", "char", "--hidden-size", "24", "--batch-size", "4",
        "--num-steps", "20", "--eval-batch-size", "2", "--eval-num-steps", "20",
        "--max-max-epoch", "1"]
WORD = ["--preset", "test", "--hidden-size", "16", "--batch-size", "4", "--num-steps", "5",
        "--max-max-epoch", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One char model (on a play-like text) and one word model (on a PTB-layout corpus)."""
    root = tmp_path_factory.mktemp("runs")
    text = write_plain_text(root / "play.txt")
    ptb = write_ptb_layout(root / "ptb")
    assert main(["train", *CHAR, "--data-file", str(text), "--save-path",
                 str(root / "char")]) == 0
    assert main(["train", *WORD, "--data-dir", str(ptb), "--save-path", str(root / "word")]) == 0
    return {"root": root, "text": text, "ptb": ptb, "char": root / "char", "word": root / "word"}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_char_sample_prints_prime_then_length_characters_and_repeats_under_a_seed(runs, capsys):
    args = ["sample", "--model", runs["char"], "--prime", "ROMEO:", "--length", 120,
            "--seed", 3, "--temperature", 0.8, "--top-k", 5]
    code, first, _ = run_cli(capsys, *args)
    text = lstmkit.load(runs["char"]).sample("ROMEO:", 120, 0.8, 5, seed=3)
    assert code == 0 and text.startswith("ROMEO:") and len(text) == 6 + 120
    assert first in (text, text + "\n") and first.endswith("\n")  # ends a line for the shell
    assert run_cli(capsys, *args)[1] == first
    args[args.index("--seed") + 1] = 4
    assert run_cli(capsys, *args)[1] != first


def test_sample_matches_the_python_api(runs, capsys):
    code, out, _ = run_cli(capsys, "sample", "--model", runs["char"], "--prime", "JULIET:",
                           "--length", 60, "--seed", 11)
    model = lstmkit.load(runs["char"])
    pieces = []
    text = model.sample(prime="JULIET:", length=60, seed=11, on_text=pieces.append)
    assert code == 0 and out.rstrip("\n") == text.rstrip("\n")
    assert len(pieces) == 7 + 60, "one piece per prime character, then one per drawn token"


def test_word_sample_spaces_words_and_prints_eos_as_a_line_break(runs, capsys):
    model = lstmkit.load(runs["word"])
    text = model.sample(prime="the cat", length=40, temperature=0.5, seed=1)
    assert text.startswith("the cat ")
    tokens = text.replace("\n", " <eos> ").split()
    assert len(tokens) == 2 + 40 and "<eos>" not in text
    code, out, _ = run_cli(capsys, "sample", "--model", runs["word"], "--prime", "the cat",
                           "--length", 40, "--temperature", 0.5, "--seed", 1)
    assert code == 0 and out.rstrip("\n") == text.rstrip("\n")


def test_unknown_prime_word_becomes_unk_when_the_vocabulary_has_it(runs):
    text = lstmkit.load(runs["word"]).sample(prime="zebra sees", length=0)
    assert text == "<unk> sees"


def test_greedy_sample_ignores_the_seed(runs):
    model = lstmkit.load(runs["char"])
    assert model.sample("N", 50, temperature=0, seed=1) == model.sample("N", 50, temperature=0,
                                                                        seed=2)


def test_score_equals_evaluate_on_the_same_file(runs, capsys):
    """In fp32 (bf16 rounds the carried state at other chunk boundaries in each command)."""
    test_file = runs["ptb"] / "ptb.test.txt"
    code, out, _ = run_cli(capsys, "score", "--model", runs["word"], test_file, "--json",
                           "--precision", "fp32")
    score = json.loads(out)
    code2, out2, _ = run_cli(capsys, "evaluate", "--model", runs["word"], "--data-dir",
                             runs["ptb"], "--stream", "--json", "--precision", "fp32")
    evaluated = json.loads(out2)
    assert code == code2 == 0
    assert score["tokens"] == evaluated["tokens"]
    assert score["perplexity"] == pytest.approx(evaluated["perplexity"], rel=1e-6)
    assert score["logprob_nats"] == pytest.approx(-evaluated["nll"], rel=1e-6)
    assert score["logprob_bits"] == pytest.approx(score["logprob_nats"] / 0.6931471805599453)


def test_char_score_equals_evaluate_on_ptb_files(tmp_path, capsys):
    ptb = write_ptb_layout(tmp_path / "ptb", sentences=(60, 10, 10))
    run = tmp_path / "run"
    assert main(["train", *CHAR, "--data-dir", str(ptb), "--save-path", str(run)]) == 0
    score = lstmkit.load(run).score_file(ptb / "ptb.valid.txt", precision="fp32")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data-dir", str(ptb), "--split", "valid",
                 "--stream", "--json", "--precision", "fp32"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert score.tokens == evaluated["tokens"] == len((ptb / "ptb.valid.txt").read_text()) - 1
    assert score.perplexity == pytest.approx(evaluated["perplexity"], rel=1e-6)


def test_a_model_trained_in_fp16_scores_and_evaluates_on_the_cpu(runs, tmp_path, capsys):
    """fp16 runs only on CUDA: on the CPU the saved precision gives way to auto."""
    import dataclasses

    from lstmkit.lm.runs import load_lm, save_lm_checkpoint

    loaded = load_lm(runs["word"])
    fp16 = tmp_path / "fp16.safetensors"
    save_lm_checkpoint(fp16, loaded.model, dataclasses.replace(loaded.config, precision="fp16"),
                       loaded.vocab, loaded.level)
    test_file = runs["ptb"] / "ptb.test.txt"
    assert lstmkit.load(fp16).score_file(test_file).perplexity == pytest.approx(
        lstmkit.load(runs["word"]).score_file(test_file, precision="auto").perplexity)
    code, out, err = run_cli(capsys, "evaluate", "--model", fp16, "--data-dir", runs["ptb"],
                             "--stream")
    assert code == 0 and "perplexity" in out, err


def test_per_line_scores_cover_every_line_and_add_up(runs, capsys):
    lines = ["ROMEO:", "the moon doth love,", "", "sweet night,"]
    path = runs["root"] / "few.txt"
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli(capsys, "score", "--model", runs["char"], path, "--per-line",
                           "--json")
    result = json.loads(out)
    assert code == 0 and [r["line"] for r in result["lines"]] == [1, 2, 3, 4]
    assert [r["tokens"] for r in result["lines"]] == [len(lines[0]), *[len(t) + 1
                                                                       for t in lines[1:]]]
    total = sum(r["logprob_nats"] for r in result["lines"])
    assert total == pytest.approx(result["logprob_nats"], rel=1e-9)
    code, table, _ = run_cli(capsys, "score", "--model", runs["char"], path, "--per-line")
    rows = table.splitlines()
    assert rows[0].split("\t") == ["line", "tokens", "logprob_nats", "logprob_bits",
                                   "perplexity"]
    assert len(rows) == 1 + 4 + 1 and rows[-1].startswith(f"{path}: {result['tokens']} chars")
    assert f"perplexity {result['perplexity']:.3f}" in rows[-1]


def test_api_score_of_a_string_equals_score_of_the_file(runs):
    model = lstmkit.load(runs["word"])
    path = runs["ptb"] / "ptb.valid.txt"
    assert model.score(path.read_text()).nll == model.score_file(path).nll


def _bad_cases(runs, tmp):
    empty = tmp / "empty.txt"
    empty.write_text("")
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes(b"ROMEO:\ncaf\xe9\n")
    foreign = tmp / "foreign.txt"
    foreign.write_text("ROMEO:\nmoon \u263e\n")
    char, word = str(runs["char"]), str(runs["word"])
    return [
        (["sample", "--model", char, "--prime", "ROMEO\u263e"],
         "prime:1: unknown character '\u263e'"),
        (["sample", "--model", char, "--temperature", "-1"], "temperature must be a number >= 0"),
        (["sample", "--model", char, "--top-k", "0"], "top-k must be an integer >= 1"),
        (["sample", "--model", char, "--length", "-5"], "sample length must be an integer >= 0"),
        (["sample", "--model", char, "--length", "ten"], "argument --length: invalid int value"),
        (["sample", "--model", char, "--seed", "-2"], "seed must be an integer in [0, 2**63)"),
        (["sample", "--model", str(tmp / "nothing")], "checkpoint not found"),
        (["score", "--model", char, str(tmp / "absent.txt")], "absent.txt: file not found"),
        (["score", "--model", char, str(empty)], "empty.txt: file is empty"),
        (["score", "--model", char, str(latin1)], "latin1.txt:2: not valid UTF-8"),
        (["score", "--model", char, str(foreign)], "foreign.txt:2: unknown character '\u263e'"),
        (["score", "--model", word], "the following arguments are required: FILE"),
        (["train", "--data-file", str(runs["text"]), "--data-dir", str(runs["ptb"])],
         "give PTB (--data-dir/--download) or text files"),
        (["train", "--train-file", str(runs["text"])], "the valid and test files missing"),
        (["train", "--level", "byte", "--data-file", str(runs["text"])],
         "argument --level: invalid choice: 'byte'"),
        (["train", "--data-file", str(runs["text"]), "--optimizer", "adagrad"],
         "optimizer must be one of sgd, adam, got 'adagrad'"),
        (["train", "--data-file", str(runs["text"]), "--vocab-size", "1"],
         "vocab_size must be at least 2"),
        (["train", "--data-file", str(runs["text"]), "--cell", "gru", "--forget-bias", "1"],
         "forget_bias applies to the lstm cell only"),
        (["train", "--resume", "--save-path", char, "--level", "word", "--data-file",
          str(runs["text"])], "the run is char-level; cannot resume it at the word level"),
        (["train", "--resume", "--save-path", char, "--optimizer", "sgd", "--data-file",
          str(runs["text"])], "the run trains with adam; it cannot resume with optimizer sgd"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(runs, tmp_path, capsys):
    for args, fragment in _bad_cases(runs, tmp_path):
        before = tree_files(runs["root"]), tree_files(tmp_path)
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith("lstmkit: error: ") and err.count("\n") == 1, (args, err)
        assert fragment in err, (args, err)
        if args[0] != "train":  # training may have said what data it read
            assert out == "", (args, out)
        assert (tree_files(runs["root"]), tree_files(tmp_path)) == before, args


def test_sample_streams_through_a_pipe_that_closes_early(runs):
    """`lstmkit sample | head -c 20`: tokens arrive as drawn; a closed pipe is no error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "lstmkit", "sample", "--model",
                             str(runs["char"]), "--length", "1000000", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(20)  # arrives long before a million characters could be drawn
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert len(first) == 20
    assert proc.returncode == 0 and err == b""


def test_default_length_is_500_characters_or_100_words(runs):
    assert len(lstmkit.load(runs["char"]).sample(seed=0)) == 500
    words = lstmkit.load(runs["word"]).sample(seed=0)
    assert len(words.replace("\n", " <eos> ").split()) == 100
