"""`lstmkit export`: onnxruntime reproduces PyTorch's logits and state from the files alone."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import lstmkit
from lstmkit.cli import main
from lstmkit.lm.export import export_onnx
from tiny_runs import save_tiny_run

ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent: pip install 'lstmkit[export]'")


def run_window(session, ids: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
    logits, *next_state = session.run(None, {"ids": ids, **state})
    return logits, dict(zip(state, next_state, strict=True))


@pytest.mark.parametrize("level, cell, lstm_impl", [
    ("word", "lstm", "auto"), ("word", "gru", "auto"), ("word", "rnn", "auto"),
    ("char", "lstm", "auto"), ("char", "gru", "auto"), ("char", "rnn", "auto"),
    ("word", "lstm", "native")])  # a run trained with lstmkit's own layer exports nn.LSTM's
def test_onnxruntime_logits_and_state_equal_pytorchs(tmp_path, level, cell, lstm_impl):
    # A run that is only a checkpoint: exporting reads no training data.
    run = save_tiny_run(tmp_path / "run", level, cell, hidden=16, layers=2, lstm_impl=lstm_impl)
    exported = export_onnx(run, tmp_path / "onnx")
    model = lstmkit.load(run).model
    session = ort.InferenceSession(str(exported.model), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    vocab_size = model.shape.vocab_size
    state = model.zero_state(3)
    onnx_state = {name: s.numpy() for name, s in zip(exported.state_names, state, strict=True)}
    # Two windows of different lengths, then another batch size: the axes are dynamic and
    # the carried state is the model's.
    for batch, length in ((3, 9), (3, 4), (5, 1)):
        if batch != state[0].size(1):  # a new batch starts from some non-zero state
            state = tuple(torch.rand(s.size(0), batch, s.size(2), generator=generator)
                          for s in state)
            onnx_state = {name: s.numpy() for name, s in zip(onnx_state, state, strict=True)}
        ids = torch.randint(vocab_size, (batch, length), generator=generator)
        with torch.no_grad():
            logits, state = model(ids, state)
        onnx_logits, onnx_state = run_window(session, ids.numpy(), onnx_state)
        assert onnx_logits.shape == (batch, length, vocab_size)
        np.testing.assert_allclose(onnx_logits, logits.numpy(), rtol=0, atol=1e-4)
        for ours, theirs in zip(state, onnx_state.values(), strict=True):
            np.testing.assert_allclose(theirs, ours.numpy(), rtol=0, atol=1e-4)


def test_the_readme_runs_with_numpy_and_onnxruntime_alone(tmp_path):
    run = save_tiny_run(tmp_path / "run", "word", "lstm")
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["tokens"][0] == "<eos>" and vocab["start_token"] == "<eos>"
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    # torch and lstmkit cannot be imported: the snippet must not need them.
    blocked = "import sys\nsys.modules['torch'] = None\nsys.modules['lstmkit'] = None\n"
    result = subprocess.run([sys.executable, "-c", blocked + code], cwd=out, text=True,
                            capture_output=True, env=os.environ.copy(), timeout=120)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert len(words) == 40 and set(words) <= set(vocab["tokens"])


def test_export_to_a_file_path_is_a_user_error(tmp_path, capsys):
    run = save_tiny_run(tmp_path / "run", "char", "gru")
    (tmp_path / "taken").write_text("x")
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_export_replaces_earlier_files_only_with_overwrite(tmp_path, capsys):
    run = save_tiny_run(tmp_path / "run", "word", "lstm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("a project's own readme")
    assert main(["export", "--model", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: already holds README.md; --overwrite replaces them" in err
    assert sorted(p.name for p in out.iterdir()) == ["README.md"], "nothing written"
    assert (out / "README.md").read_text() == "a project's own readme"
    assert main(["export", "--model", str(run), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.onnx", "vocab.json"]
    assert "onnxruntime" in (out / "README.md").read_text()
