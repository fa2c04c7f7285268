"""`--tensorboard DIR`: the numbers of metrics.jsonl as TensorBoard scalars, read back here."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from classify_corpus import write_per_class
from lstmkit.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_tensorboard = pytest.mark.skipif(find_spec("tensorboard") is None,
                                       reason="--tensorboard needs the tensorboard package")

LM = ["--preset", "test", "--hidden-size", "8", "--batch-size", "4", "--num-steps", "5"]
WINDOWS = 87  # of the generated corpus at batch 4 x 5 steps
CLASSIFIER = ["--layer-sizes", "8", "--embed-size", "8", "--batch-size", "16", "--epochs", "2"]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def records(run: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["event"] == event]


@needs_tensorboard
def test_language_model_scalars_are_those_of_the_metrics_log(ptb_dir, tmp_path):
    run, board = tmp_path / "run", tmp_path / "board"
    assert main(["train", *LM, "--max-max-epoch", "2", "--data-dir", str(ptb_dir),
                 "--save-path", str(run), "--tensorboard", str(board)]) == 0
    logged = scalars(board)
    epochs = records(run, "epoch")
    for name in ("train_perplexity", "valid_perplexity", "learning_rate"):
        assert logged[f"epoch/{name}"] == [
            (e["epoch"] * WINDOWS, pytest.approx(e[name], rel=1e-6)) for e in epochs]
    progress = records(run, "progress")
    assert [step for step, _ in logged["progress/words_per_sec"]] == [
        (r["epoch"] - 1) * WINDOWS + r["step"] for r in progress]
    assert [v for _, v in logged["progress/words_per_sec"]] == pytest.approx(
        [r["words_per_sec"] for r in progress], rel=1e-6)
    [test] = records(run, "test")
    assert logged["test/test_perplexity"] == [(2 * WINDOWS, pytest.approx(
        test["test_perplexity"], rel=1e-6))]


@needs_tensorboard
def test_classifier_scalars_are_those_of_the_metrics_log(tmp_path):
    data = write_per_class(tmp_path / "mr", count=60)
    run, board = tmp_path / "run", tmp_path / "board"
    assert main(["classify", "train", "--data", str(data), "--save-path", str(run),
                 *CLASSIFIER, "--tensorboard", str(board)]) == 0
    logged = scalars(board)
    batches = 6  # 96 training texts, 16 a batch
    epochs = records(run, "epoch")
    for name in ("train_loss", "train_accuracy", "valid_accuracy"):
        assert logged[f"epoch/{name}"] == [
            (e["epoch"] * batches, pytest.approx(e[name], rel=1e-6)) for e in epochs]
    assert len(logged["progress/texts_per_sec"]) == len(records(run, "progress"))
    assert not any(tag.startswith("setup/") for tag in logged)


def test_without_the_package_the_flag_is_one_line_and_leaves_nothing(ptb_dir, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["train", *LM, "--data-dir", str(ptb_dir), "--save-path", str(tmp_path / "run"),
                 "--tensorboard", str(tmp_path / "board")]) == 2
    assert capsys.readouterr().err == (
        "lstmkit: error: --tensorboard needs the tensorboard package (pip install "
        "'lstmkit[tensorboard]')\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "board").exists()
