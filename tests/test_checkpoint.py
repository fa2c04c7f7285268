import json
import pickle
import struct

import pytest
import torch

from lstmkit.checkpoint import load_checkpoint, save_checkpoint
from lstmkit.errors import UserError


def saved(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"w": torch.arange(12.0).view(3, 4), "b": torch.ones(2)},
                    {"kind": "demo", "epoch": 3})
    return path


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    tensors, meta = load_checkpoint(saved(tmp_path))
    assert torch.equal(tensors["w"], torch.arange(12.0).view(3, 4))
    assert meta["kind"] == "demo" and meta["epoch"] == 3 and meta["format_version"] == 2


def test_write_leaves_no_temporary_files(tmp_path):
    saved(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


def test_truncated_file_is_refused(tmp_path):
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"ck\.safetensors: truncated checkpoint"):
        load_checkpoint(path)


def test_flipped_byte_in_tensor_data_fails_the_checksum(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupted checkpoint .tensor data fails its checksum"):
        load_checkpoint(path)


def test_wrong_format_version_is_refused(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    meta = json.loads(header["__metadata__"]["lstmkit"])
    meta["format_version"] = 99
    header["__metadata__"]["lstmkit"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])
    with pytest.raises(UserError, match="format version 99 is not supported"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_planted_pickle_named_like_a_checkpoint_is_refused_without_running(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UserError, match=r"model\.safetensors: (truncated|not a safetensors)"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_unwritable_destination_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot write here"):
        save_checkpoint(tmp_path / "no" / "dir" / "ck.safetensors", {"a": torch.ones(1)}, {})
