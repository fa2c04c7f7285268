"""ONNX export of a saved language model, to run it where neither torch nor lstmkit is.

`model.onnx` is one window of the model: token ids [B, T] and the recurrent state in, the
logits [B, T, V] and the state after the window out; batch and length are free (dynamic
axes), so one file serves scoring (a long window), sampling (windows of one token carrying the
state) and batches. `vocab.json` maps ids to tokens and says how the state is shaped;
`README.md` shows how to sample with numpy and onnxruntime alone.

Dropout is left out (evaluation mode). The exporter is PyTorch's TorchScript-based one, which
turns nn.LSTM/GRU/RNN into ONNX's own LSTM/GRU/RNN operators.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lstmkit.checkpoint import write_atomic
from lstmkit.errors import UserError
from lstmkit.lm.model import LanguageModel
from lstmkit.lm.runs import LoadedLM, load_lm
from lstmkit.nn.recurrent import is_lstm
from lstmkit.vocab import EOS

MODEL_ONNX = "model.onnx"
VOCAB_JSON = "vocab.json"
README = "README.md"
OPSET = 17


@dataclass(frozen=True)
class Exported:
    """What `export_onnx` wrote."""
    directory: Path
    model: Path
    vocab: Path
    readme: Path
    state_names: tuple[str, ...]


class _Window(nn.Module):
    """The model as ONNX sees it: (ids, *state) -> (logits, *next state), state as loose
    tensors [num_layers, B, H] since ONNX has no tuples."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, next_state = self.model(ids, tuple(state))
        return (logits, *next_state)


def state_names(model: LanguageModel) -> tuple[str, ...]:
    """ONNX input names of the state: h (and c for an LSTM); outputs add `_out`."""
    return ("h", "c") if is_lstm(model.rnn) else ("h",)


def export_onnx(model_path: str | Path, out_dir: str | Path, overwrite: bool = False
                ) -> Exported:
    """Write model.onnx, vocab.json and README.md for the run (or checkpoint) `model_path`;
    files of those names already in `out_dir` are replaced only with `overwrite`.

    Only the checkpoint is read: its config and vocabulary are inside, no data is needed. All
    three are made in memory before any is written, each written atomically.
    """
    out = _check_output_directory(Path(out_dir), overwrite)
    loaded = load_lm(model_path, "cpu")
    model = loaded.model.eval()
    model.lstm_impl = "onednn"  # nn.LSTM, which the exporter turns into ONNX's LSTM operator
    names = state_names(model)
    files = {MODEL_ONNX: _onnx_bytes(model, names),
             VOCAB_JSON: (json.dumps(_vocab_document(loaded, names), indent=1) + "\n").encode(),
             README: _readme(loaded, names).encode()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the directory ({err.strerror})") from None
    for name, data in files.items():
        write_atomic(out / name, data)
    return Exported(out, out / MODEL_ONNX, out / VOCAB_JSON, out / README, names)


def _check_output_directory(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a directory")
    held = [name for name in (MODEL_ONNX, VOCAB_JSON, README) if (out / name).exists()]
    if held and not overwrite:
        raise UserError(f"--out {out}: already holds {', '.join(held)}; --overwrite replaces "
                        f"them (or choose another directory)")
    return out


def _onnx_bytes(model: LanguageModel, names: tuple[str, ...]) -> bytes:
    ids = torch.zeros(2, 3, dtype=torch.long)
    state = model.zero_state(2)
    outputs = ("logits", *(f"{name}_out" for name in names))
    dynamic = {"ids": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"}}
    dynamic.update({name: {1: "batch"} for name in (*names, *outputs[1:])})
    with warnings.catch_warnings():
        # The exporter warns that an RNN with batch_first and a dynamic batch is traced with
        # the example's batch in some shapes; the dynamic axes above make every shape free.
        warnings.simplefilter("ignore")
        onnx = io.BytesIO()
        torch.onnx.export(_Window(model), (ids, *state), onnx, input_names=["ids", *names],
                          output_names=list(outputs), dynamic_axes=dynamic, opset_version=OPSET,
                          dynamo=False)
    return onnx.getvalue()


def _vocab_document(loaded: LoadedLM, names: tuple[str, ...]) -> dict:
    shape = loaded.model.shape
    start = EOS if loaded.level == "word" else "\n"
    return {
        "level": loaded.level,
        "tokens": list(loaded.vocab.tokens),
        "unk": loaded.vocab.unk,
        "start_token": start if start in loaded.vocab else loaded.vocab.tokens[0],
        "cell": shape.cell,
        "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "state_size": shape.state_size,
        "inputs": {"ids": ["batch", "length"],
                   **{name: [shape.num_layers, "batch", shape.state_size] for name in names}},
        "outputs": {"logits": ["batch", "length", shape.vocab_size],
                    **{f"{name}_out": [shape.num_layers, "batch", shape.state_size]
                       for name in names}},
    }


def _readme(loaded: LoadedLM, names: tuple[str, ...]) -> str:
    join = '""' if loaded.level == "char" else '" "'
    return f"""# {loaded.path.parent.name or loaded.path.name}: an lstmkit language model in ONNX

A {loaded.level}-level {loaded.model.shape.cell.upper()} language model
({loaded.model.shape.num_layers} layers, state width {loaded.model.shape.state_size}, \
{len(loaded.vocab):,} tokens), exported by `lstmkit export`.

- `{MODEL_ONNX}`: one window. Inputs `ids` (int64 [batch, length]) and the state
  {", ".join(f"`{n}`" for n in names)} (float32 [layers, batch, state width], zeros to start);
  outputs `logits` (float32 [batch, length, vocabulary]: the next token after each position)
  and the state after the window, {", ".join(f"`{n}_out`" for n in names)}, to feed to the next.
- `{VOCAB_JSON}`: `tokens` (id -> token), `start_token` (what training text lines follow:
  start from it), and the shapes above.

It needs only numpy and onnxruntime (`pip install numpy onnxruntime`). Sample 40 tokens:

```python
import json

import numpy as np
import onnxruntime as ort

vocab = json.load(open("{VOCAB_JSON}", encoding="utf-8"))
tokens = vocab["tokens"]
session = ort.InferenceSession("{MODEL_ONNX}", providers=["CPUExecutionProvider"])
state_names = [name for name in vocab["inputs"] if name != "ids"]
state = {{name: np.zeros((vocab["num_layers"], 1, vocab["state_size"]), np.float32)
         for name in state_names}}
rng = np.random.default_rng(0)
ids = np.array([[tokens.index(vocab["start_token"])]], dtype=np.int64)
out = []
for _ in range(40):
    logits, *next_state = session.run(None, {{"ids": ids, **state}})
    state = dict(zip(state_names, next_state))
    z = logits[0, -1].astype(np.float64) / 0.8  # temperature 0.8
    p = np.exp(z - z.max())
    next_id = rng.choice(len(p), p=p / p.sum())
    out.append(tokens[next_id])
    ids = np.array([[next_id]], dtype=np.int64)
print({join}.join(out))
```

To score a text, run its ids as one window (`ids` [1, T]) and take
`log_softmax(logits)[0, t, ids[0, t + 1]]`; for word models split lines on whitespace and end
each with `<eos>` (unknown words become `{loaded.vocab.unk}`).
"""
