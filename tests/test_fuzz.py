"""Property-based fuzzing of every reader of user input: the checkpoint header and metadata,
config files, the text readers and the command line. Any input either works or raises the
one-line UserError: never another exception, never a hang.

The default suite runs a short fixed-seed pass; `-m slow` runs at least 10,000 inputs per
reader.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmkit.checkpoint import load_checkpoint
from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.data import read_labelled
from lstmkit.cli import build_parser
from lstmkit.errors import UserError
from lstmkit.fields import apply_overrides, field_names
from lstmkit.lm import api
from lstmkit.lm.config import LMConfig, load_config_file, preset
from lstmkit.lm.data import load_text_corpus
from lstmkit.lm.model import LMShape, build_language_model
from lstmkit.lm.runs import load_lm, save_lm_checkpoint
from lstmkit.lm.train import check_model_memory
from lstmkit.text import read_text, read_text_or_latin1
from lstmkit.vocab import Vocab

QUICK = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=10_000, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def works_or_user_error(call) -> None:
    try:
        call()
    except UserError as err:
        assert "\n" not in str(err), str(err)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> bytes:
    directory = tmp_path_factory.mktemp("fuzz-checkpoint")
    config = apply_overrides(preset("test"), {"hidden_size": 4}, "test")
    vocab = Vocab(("the", "cat", "<eos>"))
    path = directory / "model.safetensors"
    save_lm_checkpoint(path, build_language_model(config, len(vocab)), config, vocab)
    return path.read_bytes()


def rehashed(data: bytes) -> bytes:
    """`data` with both checksums recomputed, so that the checks behind them are reached."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        metadata = header["__metadata__"]
        payload = data[8 + size:]
        metadata["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        metadata["file_sha256"] = "0" * 64
    except Exception:  # not parseable: fuzz it as it is
        return data
    raw = json.dumps(header, separators=(",", ":")).encode()
    whole = struct.pack("<Q", len(raw)) + raw + payload
    digest = hashlib.sha256(whole).hexdigest().encode()
    return whole.replace(b'"file_sha256":"' + b"0" * 64, b'"file_sha256":"' + digest, 1)


def json_values(depth: int = 3):
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


def mutate_metadata(data: bytes, key_path: list[str], value) -> bytes:
    """Replace one field of the lstmkit metadata document with `value`, checksums recomputed."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    document = json.loads(header["__metadata__"]["lstmkit"])
    target = document
    for key in key_path[:-1]:
        target = target[key]
    target[key_path[-1]] = value
    header["__metadata__"]["lstmkit"] = json.dumps(document)
    raw = json.dumps(header).encode()
    return rehashed(struct.pack("<Q", len(raw)) + raw + data[8 + size:])


META_FIELDS = [["kind"], ["level"], ["config"], ["vocab"], ["shape"], ["vocab", "tokens"],
               ["vocab", "unk"], ["shape", "vocab_size"], ["shape", "hidden_size"],
               ["shape", "num_layers"], ["shape", "cell"], ["config", "hidden_size"],
               ["config", "keep_prob"], ["format_version"]]


def _load_bytes(tmp: Path, data: bytes) -> None:
    path = tmp / "fuzzed.safetensors"
    path.write_bytes(data)
    works_or_user_error(lambda: load_lm(path))


def _byte_changes():
    return st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                    max_size=4)


def _changed(data: bytes, changes, cut: int | None) -> bytes:
    out = bytearray(data)
    for offset, value in changes:
        out[offset % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


def _checkpoint_bytes_property(checkpoint: bytes, tmp: Path):
    @given(changes=_byte_changes(), cut=st.none() | st.integers(0, 4000),
           rehash=st.booleans())
    def check(changes, cut, rehash):
        data = _changed(checkpoint, changes, cut)
        _load_bytes(tmp, rehashed(data) if rehash else data)
    return check


def _checkpoint_meta_property(checkpoint: bytes, tmp: Path):
    @given(field=st.sampled_from(META_FIELDS), value=json_values())
    def check(field, value):
        _load_bytes(tmp, mutate_metadata(checkpoint, field, value))
    return check


def _config_property(tmp: Path):
    @given(suffix=st.sampled_from([".json", ".toml"]),
           text=st.text(max_size=200) | json_values().map(lambda v: json.dumps({"x": v}))
           | st.dictionaries(st.sampled_from(field_names(LMConfig)), json_values(), max_size=3)
           .map(json.dumps))
    def check(suffix, text):
        path = tmp / f"fuzzed{suffix}"
        path.write_bytes(text.encode("utf-8", "replace"))

        def build():
            config = apply_overrides(preset("test"), load_config_file(path), str(path))
            check_model_memory(config, 10_000)
        works_or_user_error(build)
    return check


def _text_property(tmp: Path):
    @given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
           level=st.sampled_from(["word", "char"]))
    def check(raw, level):
        path = tmp / "fuzzed.txt"
        path.write_bytes(raw)
        works_or_user_error(lambda: read_text(path))
        works_or_user_error(lambda: read_text_or_latin1(path))
        works_or_user_error(lambda: load_text_corpus(level, data_file=path))
        table = tmp / "fuzzed.tsv"
        table.write_bytes(raw)
        works_or_user_error(lambda: read_labelled(table))
    return check


ARG_VALUES = st.sampled_from(["0", "-1", "1", "2", "1e30", "-1e30", "nan", "inf", "", " ",
                              "9" * 30, "lstm", "gru", "true", "x", "1,2", "0.5", "1e-300"])


def _cli_property():
    fields = field_names(LMConfig)

    @given(overrides=st.dictionaries(st.sampled_from(fields), ARG_VALUES | st.text(max_size=6),
                                     max_size=4),
           classifier=st.dictionaries(
               st.sampled_from(list(ClassifierConfig.__dataclass_fields__)),
               ARG_VALUES | st.text(max_size=6), max_size=4))
    def check(overrides, classifier):
        argv = ["train", "--data-dir", "nowhere"]
        for name, value in overrides.items():
            argv += [f"--{name.replace('_', '-')}={value}"]

        def lm():
            args = build_parser().parse_args(argv)
            given_fields = {n: getattr(args, f"field_{n}") for n in fields
                            if getattr(args, f"field_{n}") is not None}
            config = api.apply_overrides(preset("test"), given_fields, "command line")
            check_model_memory(config, 10_000)
            LMShape.of(config, 10_000)

        def clf():
            from lstmkit.fields import apply_overrides as overrides_of
            overrides_of(ClassifierConfig(), classifier, "command line")
        works_or_user_error(lm)
        works_or_user_error(clf)
    return check


READERS = ["checkpoint bytes", "checkpoint metadata", "config file", "text", "command line"]


def _property(name: str, checkpoint: bytes, tmp: Path):
    return {"checkpoint bytes": lambda: _checkpoint_bytes_property(checkpoint, tmp),
            "checkpoint metadata": lambda: _checkpoint_meta_property(checkpoint, tmp),
            "config file": lambda: _config_property(tmp),
            "text": lambda: _text_property(tmp),
            "command line": _cli_property}[name]()


@pytest.mark.parametrize("reader", READERS)
def test_quick_fuzz(reader, checkpoint, tmp_path):
    torch.set_num_threads(1)
    QUICK(_property(reader, checkpoint, tmp_path))()


@pytest.mark.slow
@pytest.mark.parametrize("reader", READERS)
def test_long_fuzz(reader, checkpoint, tmp_path):
    torch.set_num_threads(1)
    LONG(_property(reader, checkpoint, tmp_path))()


def test_a_checkpoint_round_trips(checkpoint, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(checkpoint)
    assert load_checkpoint(path)[1]["format_version"] == 2


def test_a_config_key_with_a_line_break_stays_one_line(checkpoint, tmp_path):
    """Found by the long fuzz run: a key from the file was echoed with its line break."""
    _load_bytes(tmp_path, mutate_metadata(checkpoint, ["config"], {"\n": None}))
