"""Shared fixtures: the real data (when present) and small corpora generated per test."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data, or skip the test when that data set is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present at {path}")
    return path


def write_ptb_layout(directory: Path, seed: int = 0, sentences: tuple[int, int, int] = (300, 40, 40)
                     ) -> Path:
    """A tiny PTB-style corpus from a toy grammar: learnable, with <unk> in the vocabulary."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the bank", "my friend", "<unk>"]
    verbs = ["sees", "buys", "likes", "sells", "finds"]
    objects = ["the fish", "a stock", "the house", "some bread", "<unk> shares"]
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), sentences, strict=True):
        lines = [f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
                 for _ in range(count)]
        (directory / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture
def ptb_dir(tmp_path: Path) -> Path:
    return write_ptb_layout(tmp_path / "ptb")


def write_plain_text(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A small play-like UTF-8 text (speaker lines and verse) for char- and word-level models."""
    rng = random.Random(seed)
    speakers = ["ROMEO:", "JULIET:", "NURSE:"]
    words = ["love", "night", "the", "sweet", "doth", "thou", "art", "my", "fair", "moon"]
    out = []
    for i in range(lines):
        if i % 4 == 0:
            out.append(rng.choice(speakers))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 7))) + ",")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write_plain_text(tmp_path / "play.txt")


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is fastest, and more only contend on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say where data is; a developer's LSTMKIT_DATA must not leak in."""
    monkeypatch.delenv("LSTMKIT_DATA", raising=False)


_RESUMING = re.compile(r"^Resuming .* at epoch (\d+), step (\d+)$", re.MULTILINE)
_PROGRESS_LINE = re.compile(r"^\d\.\d{3} perplexity: ", re.MULTILINE)


def resumed_at(output: str) -> tuple[int, int]:
    """(epoch, step) of the one "Resuming ... at epoch E, step S" line of a training's output:
    a resume that silently started afresh would end the same, but says no such line."""
    found = _RESUMING.findall(output)
    assert len(found) == 1, f"not one 'Resuming' line in:\n{output}"
    return int(found[0][0]), int(found[0][1])


def progress_lines(output: str) -> int:
    """The language-model trainer's in-epoch progress lines in `output`."""
    return len(_PROGRESS_LINE.findall(output))


def report_points(step: int, windows: int, epochs: int) -> int:
    """Progress lines a run resumed at `step` of its epoch prints until `epochs` more epochs
    (that one included) end: one at every tenth of an epoch it crosses."""
    return 10 - step * 10 // windows + (epochs - 1) * 10


@pytest.fixture
def training_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at every SGD step the test's process takes."""
    import torch

    step, taken = torch.optim.SGD.step, []

    def counted(self, *args, **kwargs):
        taken.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    return taken


@pytest.fixture
def kept_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each LSTM call since ran inside a `weights_kept` block (auto decides by it)."""
    from lstmkit.nn import recurrent
    seen: list[bool] = []
    original = recurrent.uses_native_lstm

    def recording(rnn, device, lstm_impl, bf16, training, kept, one_step=False):
        seen.append(kept)
        return original(rnn, device, lstm_impl, bf16, training, kept, one_step)

    monkeypatch.setattr(recurrent, "uses_native_lstm", recording)
    return seen


def tree_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


os.environ.setdefault("CI", "1")  # no progress bars in test output
