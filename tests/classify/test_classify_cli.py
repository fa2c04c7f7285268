"""End to end through `lstmkit classify`, on small generated corpora."""

from __future__ import annotations

import io
import json

import pytest
import torch

from classify_corpus import write_aligned, write_per_class, write_table
from conftest import tree_files
from lstmkit.classify.runs import load_classifier
from lstmkit.cli import main

FAST = ["--layer-sizes", "16,8", "--embed-size", "16", "--batch-size", "16", "--epochs", "4",
        "--learning-rate", "0.01", "--embed-dropout", "0", "--dropout", "0.1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(data, run, *extra):
    return main(["classify", "train", "--data", str(data), "--save-path", str(run), *FAST,
                 *extra])


def epochs_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"event": "epoch"' in line]


def test_train_reports_epochs_keeps_best_valid_and_evaluate_reproduces_test(tmp_path, capsys):
    data, run = write_per_class(tmp_path / "mr", count=100), tmp_path / "run"
    assert train(data, run, "--seed", "3") == 0
    out = capsys.readouterr().out
    assert "seed 3:" in out and "seeded 80/10/10 train/valid/test split of 200 texts" in out
    assert out.count("Train Loss:") == 4 and "Valid Accuracy:" in out
    assert tree_files(run) == {"best.safetensors", "metrics.jsonl", "curve.png"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs, test = epochs_of(run), records[-1]
    best = max(epochs, key=lambda e: (e["valid_accuracy"], -e["epoch"]))
    assert test["event"] == "test" and test["best_epoch"] == best["epoch"]
    assert test["test_accuracy"] >= 0.9, "one sentiment word per text is easy to learn"
    assert load_classifier(run).meta["epoch"] == best["epoch"]

    assert main(["classify", "evaluate", "--model", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(test["test_accuracy"], abs=1e-9)
    assert result["count"] == 20 and result["texts"].startswith("the test part (20 texts)")
    assert main(["classify", "evaluate", "--model", str(run), "--data", str(data),
                 "--split", "all"]) == 0
    assert "(all 200 texts of" in capsys.readouterr().out


def test_progress_is_reported_ten_times_an_epoch_on_the_console_and_in_the_log(tmp_path,
                                                                               capsys):
    data, run = write_per_class(tmp_path / "mr", count=100), tmp_path / "run"
    assert train(data, run, "--batch-size", "8", "--epochs", "2") == 0  # 20 batches an epoch
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " texts/s" in line]
    assert len(lines) == 20 and lines[0].startswith("0.100 loss: ")
    assert lines[9].startswith("1.000 loss: ") and "accuracy: " in lines[9]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in records if r["event"] == "progress"]
    assert [(r["epoch"], r["step"]) for r in progress] == [
        (epoch, step) for epoch in (1, 2) for step in range(2, 21, 2)]
    assert {"train_loss", "train_accuracy", "texts_per_sec", "fraction"} <= set(progress[0])
    epoch_one = epochs_of(run)[0]
    assert progress[9]["train_loss"] == pytest.approx(epoch_one["train_loss"])
    assert progress[9]["train_accuracy"] == pytest.approx(epoch_one["train_accuracy"])


def test_same_seed_same_result_other_seed_other_split(tmp_path):
    data = write_per_class(tmp_path / "mr", count=60)
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert train(data, tmp_path / name, "--seed", seed, "--epochs", "2") == 0
    assert epochs_of(tmp_path / "a") == [
        {**e, "seconds": a["seconds"]} for e, a in zip(epochs_of(tmp_path / "b"),
                                                        epochs_of(tmp_path / "a"), strict=True)]
    assert ([e["valid_accuracy"] for e in epochs_of(tmp_path / "a")]
            != [e["valid_accuracy"] for e in epochs_of(tmp_path / "c")]
            or epochs_of(tmp_path / "a")[0]["train_loss"]
            != epochs_of(tmp_path / "c")[0]["train_loss"])


@pytest.mark.parametrize("extra", [["--cell", "gru"], ["--cell", "rnn"], ["--recipe", "tutorial"],
                                   ["--bidirectional", "true"], ["--packed", "false"]])
def test_cells_recipes_and_variants_train(tmp_path, capsys, extra):
    data = write_table(tmp_path / "d.tsv", count=40)
    extra = [*extra, "--embed-size", "16"] if extra[0] == "--recipe" else extra
    assert main(["classify", "train", "--data", str(data), *FAST[:-6], *extra,
                 "--epochs", "1"]) == 0
    assert "Test Accuracy:" in capsys.readouterr().out


def test_tutorial_recipe_uses_mse_and_adadelta(tmp_path):
    run = tmp_path / "run"
    assert main(["classify", "train", "--data", str(write_aligned(tmp_path / "al", count=30)),
                 "--recipe", "tutorial", "--embed-size", "8", "--epochs", "1",
                 "--save-path", str(run)]) == 0
    config = load_classifier(run).config
    assert (config.loss, config.optimizer, config.layer_sizes) == ("mse", "adadelta", (128, 64))


def test_predict_prints_one_probability_per_line_from_file_and_stdin(tmp_path, capsys,
                                                                     monkeypatch):
    run = tmp_path / "run"
    assert train(write_per_class(tmp_path / "mr", count=100), run) == 0
    capsys.readouterr()
    lines = tmp_path / "new.txt"
    lines.write_text("a brilliant and moving film\n\nthe plot was tedious and dull\n",
                     encoding="utf-8")
    assert main(["classify", "predict", "--model", str(run), str(lines)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3
    first, _, last = (float(p) for p in printed)
    assert first > 0.5 > last

    monkeypatch.setattr("sys.stdin", io.StringIO("a brilliant and moving film\n"))
    assert main(["classify", "predict", "--model", str(run / "best.safetensors"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "a brilliant and moving film" and record["label"] == "positive"
    assert record["probability"] == pytest.approx(first, abs=5e-5)


def test_pretrained_vectors_set_the_embedding_size_and_rows(tmp_path, capsys):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("great 0.5 0.5 0.5 0.5\ndull -0.5 -0.5 -0.5 -0.5\n", encoding="utf-8")
    run = tmp_path / "run"
    assert train(write_per_class(tmp_path / "mr", count=30), run, "--vectors", str(vectors),
                 "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "embed_size set to 4" in out and "pretrained vectors: 2 of" in out
    assert load_classifier(run).model.embedding.weight.shape[1] == 4


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: (d / "empty.tsv").write_text(""), ["--data", "{d}/empty.tsv"],
     "{d}/empty.tsv: file is empty"),
    (lambda d: (d / "t.csv").write_text("text,label\nok,1\nhmm,maybe\n"), ["--data", "{d}/t.csv"],
     "{d}/t.csv:3: label 'maybe' is neither positive (1, positive, pos) nor negative "
     "(0, negative, neg)"),
    (lambda d: (d / "t.tsv").write_text("text\tstars\nok\t1\n"), ["--data", "{d}/t.tsv"],
     "{d}/t.tsv:1: no column 'label' in the header (columns: text, stars)"),
    (lambda d: ((d / "reviews.txt").write_text("a\nb\n"), (d / "labels.txt").write_text("1\n")),
     ["--data", "{d}"],
     "{d}/reviews.txt:2: has no matching line in {d}/labels.txt (2 reviews but 1 labels)"),
    (lambda d: None, ["--data", "{d}/nothing"], "{d}/nothing: data not found"),
    (lambda d: write_table(d / "ok.tsv"), ["--data", "{d}/ok.tsv", "--cell", "transformer"],
     "command line: config field cell must be one of lstm, gru, rnn, got 'transformer'"),
    (lambda d: write_table(d / "ok.tsv"), ["--data", "{d}/ok.tsv", "--layer-sizes", "128,x"],
     "command line: config field layer_sizes must be comma-separated sizes like 128,64, "
     "got '128,x'"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_no_run_dir(tmp_path, capsys, setup, args,
                                                               message):
    setup(tmp_path)
    before = tree_files(tmp_path)
    run = tmp_path / "run"
    code = main(["classify", "train", *[a.format(d=tmp_path) for a in args],
                 "--save-path", str(run)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"lstmkit: error: {message.format(d=tmp_path)}\n"
    assert tree_files(tmp_path) == before


def test_evaluate_refuses_other_data_for_a_seeded_split(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(write_per_class(tmp_path / "mr", count=30), run, "--epochs", "1") == 0
    other = write_table(tmp_path / "other.tsv", count=30, seed=5)
    capsys.readouterr()
    assert main(["classify", "evaluate", "--model", str(run), "--data", str(other),
                 "--split", "test"]) == 2
    assert capsys.readouterr().err.startswith(f"lstmkit: error: {other}: not the data ")
    assert main(["classify", "evaluate", "--model", str(run), "--data", str(other)]) == 0
    assert f"(all 60 texts of {other})" in capsys.readouterr().out


def test_predict_on_a_language_model_checkpoint_is_refused(tmp_path, capsys):
    from lstmkit.checkpoint import save_checkpoint

    path = tmp_path / "lm.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1)}, {"kind": "language_model"})
    assert main(["classify", "predict", "--model", str(path), str(path)]) == 2
    assert capsys.readouterr().err == (f"lstmkit: error: {path}: holds a 'language_model', not a "
                                       f"classifier\n")


def test_predict_reads_latin1_stdin_and_says_so(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(write_per_class(tmp_path / "mr", count=30), run, "--epochs", "1") == 0
    capsys.readouterr()
    stdin = io.TextIOWrapper(io.BytesIO("great\nun film tr\xe8s dull\n".encode("latin-1")))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["classify", "predict", "--model", str(run)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert captured.err == ("lstmkit: note: <stdin>:2: not valid UTF-8, read the whole input "
                            "as Latin-1\n")


def test_malformed_vectors_file_exits_2_and_leaves_no_run_dir(tmp_path, capsys):
    data = write_per_class(tmp_path / "mr", count=20)
    vectors = tmp_path / "glove.txt"
    vectors.write_text("great 1 2 3\ndull 1 2\n", encoding="utf-8")
    assert train(data, tmp_path / "run", "--vectors", str(vectors)) == 2
    assert capsys.readouterr().err == (f"lstmkit: error: {vectors}:2: 2 numbers after the word, "
                                       f"expected 3\n")
    assert not (tmp_path / "run").exists()
