"""Checkpoints: safetensors tensors + JSON metadata in one file, written atomically.

A checkpoint is a single `.safetensors` file. Its header's metadata holds one JSON document
(config, vocabulary, position in training, ...) and a SHA-256 of the tensor payload, so a
truncated or corrupted file is refused with a reason instead of loading garbage. Nothing is
unpickled: safetensors holds raw tensor bytes, JSON holds everything else.
One file means one `os.replace`, so a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as save_tensors_to_bytes

from lstmkit.errors import UserError

FORMAT = "lstmkit-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "lstmkit"
_HASH_KEY = "payload_sha256"
_TMP_SUFFIX = ".tmp"

# Test hook (tests/test_crash_resume.py): with LSTMKIT_TEST_KILL_IN_SAVE=N, the Nth atomic write
# of this process SIGKILLs it once the temporary file is complete and synced but not yet renamed:
# the worst moment for a crash, hit on purpose rather than by luck.
KILL_IN_SAVE_ENV = "LSTMKIT_TEST_KILL_IN_SAVE"
_writes_so_far = itertools.count(1)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                    ) -> None:
    """Atomically write `tensors` and JSON-serialisable `meta` to `path`."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    header_meta = {_META_KEY: json.dumps(document)}
    # The payload does not depend on the header, so hash it once and write it with the hash.
    payload = _payload(save_tensors_to_bytes(tensors, metadata=header_meta))
    header_meta[_HASH_KEY] = hashlib.sha256(payload).hexdigest()
    write_atomic(Path(path), save_tensors_to_bytes(tensors, metadata=header_meta))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint onto the CPU; any defect raises UserError naming the file and reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a checkpoint file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    header = _header(data, path)
    metadata = header.get("__metadata__") or {}
    if _META_KEY not in metadata:
        raise UserError(f"{path}: not an lstmkit checkpoint (no lstmkit metadata)")
    try:
        meta = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupted checkpoint (metadata is not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an lstmkit checkpoint")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version!r} is not supported "
                        f"(this lstmkit reads version {FORMAT_VERSION})")
    if hashlib.sha256(_payload(data)).hexdigest() != metadata.get(_HASH_KEY):
        raise UserError(f"{path}: corrupted checkpoint (tensor data fails its checksum)")
    try:
        tensors = load_tensors_from_bytes(data)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise UserError(f"{path}: corrupted checkpoint ({err})") from None
    return tensors, meta


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                 prefix: str = "model.") -> None:
    """Load the `prefix`ed tensors into `model`; a shape or name mismatch is a UserError."""
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the model they describe ({first})") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise UserError(f"{path.parent}: cannot write here ({err.strerror})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _kill_here_if_testing()
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"{path}: cannot write ({err.strerror})") from None
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Delete temporary files that a killed `write_atomic` left beside any of `names`."""
    for name in names:
        for stale in Path(directory).glob(f".{name}.*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _kill_here_if_testing() -> None:
    target = os.environ.get(KILL_IN_SAVE_ENV)
    if target and next(_writes_so_far) == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def _header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise UserError(f"{path}: truncated checkpoint ({len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise UserError(f"{path}: truncated or not a safetensors checkpoint")
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors checkpoint")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if max(ends, default=0) > len(data) - 8 - size:
        raise UserError(f"{path}: truncated checkpoint (tensor data is cut short)")
    return header


def _payload(data: bytes) -> bytes:
    (size,) = struct.unpack("<Q", data[:8])
    return data[8 + size:]
