"""Checkpoints: safetensors tensors + JSON metadata in one file, written atomically.

A checkpoint is a single `.safetensors` file. Its header's metadata holds one JSON document
(config, vocabulary, position in training, ...), a SHA-256 of the tensor payload and a SHA-256
of the whole file (computed with its own value as zeros), so a change of any byte, in the
tensors or in the header, is refused with a reason instead of loading garbage. Every part of
the header is bounded and type-checked before use. Nothing is unpickled: safetensors holds raw
tensor bytes, JSON holds everything else.

Format version 1 (lstmkit before the whole-file checksum) covered only the tensor payload: such
files still load, with a warning that their header is unverified, and a resumed run rewrites
its latest checkpoint in version 2.
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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as save_tensors_to_bytes

from lstmkit.errors import LstmkitWarning, UserError
from lstmkit.files import MAX_CHECKPOINT_BYTES, read_regular_file

FORMAT = "lstmkit-checkpoint"
FORMAT_VERSION = 2
LEGACY_VERSION = 1  # payload-only checksum
_META_KEY = "lstmkit"
_HASH_KEY = "payload_sha256"
_FILE_HASH_KEY = "file_sha256"
_FILE_HASH_PLACEHOLDER = "0" * 64
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
MAX_META_DEPTH = 32  # the deepest real document (optimizer param groups) nests 4
_TMP_SUFFIX = ".tmp"

# Test hook (tests/test_crash_resume.py): with LSTMKIT_TEST_KILL_IN_SAVE=N, the Nth checkpoint
# write of this process SIGKILLs it once the temporary file is complete and synced but not yet
# renamed: the worst moment for a crash, hit on purpose rather than by luck.
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
    header_meta[_FILE_HASH_KEY] = _FILE_HASH_PLACEHOLDER
    data = save_tensors_to_bytes(tensors, metadata=header_meta)
    write_atomic(Path(path), _with_file_hash(data), kill_point=True)


def _with_file_hash(data: bytes) -> bytes:
    """`data` with the placeholder replaced by the SHA-256 of `data` as it is (same length, so
    no offset moves)."""
    start, end = _file_hash_span(data)
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:start] + digest + data[end:]


def _file_hash_span(data: bytes) -> tuple[int, int] | None:
    """Where the whole-file hash's 64 hex digits sit in the header; None if not exactly once.

    Inside the JSON-escaped metadata document every quote is escaped, so the unescaped key
    can only be the header's own."""
    (size,) = struct.unpack("<Q", data[:8])
    marker = f'"{_FILE_HASH_KEY}":"'.encode()
    header = data[8:8 + size]
    if header.count(marker) != 1:
        return None
    start = 8 + header.index(marker) + len(marker)
    return start, start + 64


def _whole_file_hash(data: bytes, span: tuple[int, int]) -> str:
    start, end = span
    return hashlib.sha256(data[:start] + _FILE_HASH_PLACEHOLDER.encode() + data[end:]).hexdigest()


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint onto the CPU; any defect raises UserError naming the file and reason."""
    path = Path(path)
    data = read_regular_file(path, "checkpoint", MAX_CHECKPOINT_BYTES)
    header = _header(data, path)
    metadata = _string_table(header.get("__metadata__"), path)
    if _META_KEY not in metadata:
        raise UserError(f"{path}: not an lstmkit checkpoint (no lstmkit metadata)")
    meta = _meta_document(metadata[_META_KEY], path)
    version = meta.get("format_version")
    if version not in (FORMAT_VERSION, LEGACY_VERSION) or isinstance(version, bool):
        raise UserError(f"{path}: checkpoint format version {_shown(version)} is not supported "
                        f"(this lstmkit reads versions {LEGACY_VERSION} and {FORMAT_VERSION})")
    _verify(data, metadata, version, path)
    try:
        tensors = load_tensors_from_bytes(data)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise UserError(f"{path}: corrupted checkpoint ({_shown(str(err))})") from None
    return tensors, meta


def _verify(data: bytes, metadata: dict[str, str], version: int, path: Path) -> None:
    """The payload's checksum, then the whole file's (version 2); version 1 had only the
    first, so its header is loaded unverified, with a warning."""
    if hashlib.sha256(_payload(data)).hexdigest() != metadata.get(_HASH_KEY):
        raise UserError(f"{path}: corrupted checkpoint (tensor data fails its checksum)")
    if version == LEGACY_VERSION and _FILE_HASH_KEY not in metadata:
        warnings.warn(f"{path}: written by an older lstmkit (format version 1): its header "
                      f"(config, vocabulary, position) has no checksum, so it is loaded "
                      f"unverified; saving it again (training on with --resume) adds one",
                      LstmkitWarning, stacklevel=3)
        return
    span = _file_hash_span(data)
    if span is None or _whole_file_hash(data, span) != metadata.get(_FILE_HASH_KEY):
        raise UserError(f"{path}: corrupted checkpoint (header fails its checksum)")


def _string_table(value: Any, path: Path) -> dict[str, str]:
    """safetensors' `__metadata__`: absent, or a table of strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UserError(f"{path}: not a safetensors checkpoint (metadata is not a table of "
                        f"strings)")
    return value


def _meta_document(text: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except RecursionError:
        raise UserError(f"{path}: corrupted checkpoint (metadata nested too deeply)") from None
    except ValueError:  # JSONDecodeError, or an integer past Python's digit limit
        raise UserError(f"{path}: corrupted checkpoint (metadata is not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an lstmkit checkpoint")
    _check_depth(meta, MAX_META_DEPTH, path)
    return meta


def _check_depth(value: Any, limit: int, path: Path) -> None:
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            raise UserError(f"{path}: corrupted checkpoint (metadata nests more than {limit} "
                            f"deep)")
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."


def meta_table(meta: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """A part of the metadata that must be a JSON object."""
    value = meta.get(key)
    if not isinstance(value, dict):
        raise UserError(f"{path}: {key} is missing or not a table")
    return value


def check_weights_fit(build: Callable[[], torch.nn.Module], tensors: dict[str, torch.Tensor],
                      path: Path, prefix: str = "model.") -> None:
    """The weights the metadata describes are the ones the file holds, compared on torch's
    "meta" device (no memory) before the model is built for real: no size in the metadata can
    ask for more than the file has. `build` makes the model from the metadata."""
    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise UserError(f"{path}: checkpoint metadata describes a model that cannot be built "
                        f"({_shown(str(err).splitlines()[0] if str(err) else type(err).__name__)})"
                        ) from None
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    found = {name[len(prefix):]: tuple(t.shape) for name, t in tensors.items()
             if name.startswith(prefix)}
    if expected != found:
        differing = sorted(set(expected) ^ set(found)) or sorted(
            name for name in expected if expected[name] != found[name])
        raise UserError(f"{path}: weights do not fit the model the metadata describes "
                        f"(first difference: {_shown(differing[0])})")


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                 prefix: str = "model.") -> None:
    """Load the `prefix`ed tensors into `model`; a shape or name mismatch is a UserError."""
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the model they describe ({first})") from None


def write_atomic(path: Path, data: bytes, kill_point: bool = False) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it. `kill_point`: a
    checkpoint's write, which the test hook above counts."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise UserError(f"{path.parent}: cannot write here ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600: the usual ones
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if kill_point:
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


# Read once, at import: reading it means setting it, which would race with any other thread
# creating a file at that moment (a TensorBoard writer's).
_UMASK = _umask()


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
    if size > len(data) - 8 or size > MAX_HEADER_BYTES:
        raise UserError(f"{path}: truncated or not a safetensors checkpoint")
    try:
        header = json.loads(data[8:8 + size])
    except RecursionError:
        raise UserError(f"{path}: not a safetensors checkpoint (header nested too deeply)"
                        ) from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors checkpoint")
    payload_size = len(data) - 8 - size
    for name, entry in header.items():
        if name != "__metadata__":
            _check_tensor_entry(name, entry, payload_size, path)
    return header


def _check_tensor_entry(name: str, entry: Any, payload_size: int, path: Path) -> None:
    """A tensor's header entry: a dtype name, a shape of sizes, and offsets inside the payload."""
    def is_size(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63

    ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
          and isinstance(entry.get("shape"), list) and len(entry["shape"]) <= 16
          and all(is_size(v) for v in entry["shape"])
          and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
          and all(is_size(v) for v in entry["data_offsets"])
          and entry["data_offsets"][0] <= entry["data_offsets"][1])
    if not ok:
        raise UserError(f"{path}: corrupted checkpoint (the header entry of tensor "
                        f"{_shown(name)} is malformed)")
    if entry["data_offsets"][1] > payload_size:
        raise UserError(f"{path}: truncated checkpoint (tensor data is cut short)")


def _payload(data: bytes) -> bytes:
    (size,) = struct.unpack("<Q", data[:8])
    return data[8 + size:]
