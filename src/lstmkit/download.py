"""Fetching PTB (Mikolov's simple-examples) for users with a network.

The archive itself has no published checksum, so each extracted file is verified against
the SHA-256 of the canonical PTB text (the same bytes the shared data set holds). Files are
extracted to a temporary directory and moved into place only after every checksum passes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lstmkit.errors import UserError
from lstmkit.files import exists, is_file

SCRATCH_PREFIX = ".download-"
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_MEMBERS = {  # path inside the archive -> SHA-256 of the file
    "./simple-examples/data/ptb.train.txt":
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "./simple-examples/data/ptb.valid.txt":
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "./simple-examples/data/ptb.test.txt":
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lstmkit"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_ptb(dest: str | Path | None = None, url: str = PTB_URL,
                 members: dict[str, str] | None = None) -> Path:
    """Download and verify PTB into `dest`/ptb (default: the user cache); returns that dir.

    Already-present files with the right checksum are kept and nothing is fetched.
    """
    members = members or PTB_MEMBERS
    target = Path(dest or default_cache_dir()) / "ptb"
    wanted = {Path(name).name: digest for name, digest in members.items()}
    if all(is_file(target / n, "download directory") and sha256_of(target / n) == d
           for n, d in wanted.items()):
        return target
    created = not exists(target, "download directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{target}: cannot create download directory ({err.strerror})") from None
    for stale in target.glob(f"{SCRATCH_PREFIX}*"):  # left by a download that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(dir=target, prefix=SCRATCH_PREFIX) as scratch:
            archive = Path(scratch) / "archive.tgz"
            _fetch(url, archive)
            extracted = _extract_members(archive, members, Path(scratch))
            for name, path in extracted.items():
                os.replace(path, target / name)
    except BaseException:
        if created and not any(target.iterdir()):
            target.rmdir()  # a failed first download leaves no empty directory behind
        raise
    return target


def _fetch(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
            promised = response.headers.get("Content-Length")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise UserError(f"{url}: download failed ({_first_line(reason)})") from None
    received = path.stat().st_size
    if promised is not None and promised.isdigit() and received < int(promised):
        raise UserError(f"{url}: download incomplete ({received:,} of {int(promised):,} "
                        f"bytes); nothing was installed, try again")


def _extract_members(archive: Path, members: dict[str, str], scratch: Path) -> dict[str, Path]:
    """Extract the wanted files (by name only, never by archive path) and check their sums."""
    out: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name, digest in members.items():
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise UserError(f"{archive.name}: archive lacks {name}") from None
                source = tar.extractfile(member)
                if source is None:
                    raise UserError(f"{archive.name}: {name} is not a regular file")
                path = scratch / Path(name).name
                with source, open(path, "wb") as handle:
                    shutil.copyfileobj(source, handle)
                if sha256_of(path) != digest:
                    raise UserError(f"{name}: checksum mismatch (download corrupted or "
                                    f"not the canonical PTB); nothing was installed")
                out[path.name] = path
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{archive.name}: not a readable .tgz archive "
                        f"({_first_line(err)})") from None
    return out


def _first_line(err: object) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
