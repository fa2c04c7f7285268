import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from conftest import shared_data
from lstmkit.download import PTB_MEMBERS, download_ptb
from lstmkit.errors import UserError


def make_archive(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.as_uri()


def sums(files):
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


FILES = {f"./simple-examples/data/ptb.{s}.txt": f" {s} words \n".encode()
         for s in ("train", "valid", "test")}


def test_download_extracts_and_verifies(tmp_path):
    url = make_archive(tmp_path / "simple-examples.tgz", FILES)
    target = download_ptb(tmp_path / "cache", url=url, members=sums(FILES))
    assert (target / "ptb.valid.txt").read_bytes() == b" valid words \n"
    assert sorted(p.name for p in target.iterdir()) == [
        "ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]


def test_checksum_mismatch_installs_nothing(tmp_path):
    url = make_archive(tmp_path / "a.tgz", FILES)
    wrong = dict.fromkeys(FILES, "0" * 64)
    with pytest.raises(UserError, match="checksum mismatch"):
        download_ptb(tmp_path / "cache", url=url, members=wrong)
    assert not (tmp_path / "cache" / "ptb").exists(), "no empty directory left behind"


def test_not_an_archive_and_unreachable_url(tmp_path):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(UserError, match=r"not a readable \.tgz archive"):
        download_ptb(tmp_path / "c", url=bad.as_uri(), members=sums(FILES))
    with pytest.raises(UserError, match="download failed"):
        download_ptb(tmp_path / "c", url=(tmp_path / "absent.tgz").as_uri(), members=sums(FILES))


def test_canonical_checksums_accept_the_real_ptb_files(tmp_path):
    ptb = shared_data("ptb")
    files = {name: (ptb / name.rsplit("/", 1)[1]).read_bytes() for name in PTB_MEMBERS}
    url = make_archive(tmp_path / "simple-examples.tgz", files)
    target = download_ptb(tmp_path / "cache", url=url)  # the real PTB_MEMBERS sums
    assert (target / "ptb.train.txt").stat().st_size == 5_101_618
    # A second call finds verified files and fetches nothing (the URL is now dead).
    assert download_ptb(tmp_path / "cache", url="file:///nonexistent") == target


def test_not_an_archive_is_one_line(tmp_path):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 100)  # a gzip magic, then nothing readable
    with pytest.raises(UserError) as caught:
        download_ptb(tmp_path / "c", url=bad.as_uri(), members=sums(FILES))
    assert "\n" not in str(caught.value) and "not a readable .tgz archive" in str(caught.value)


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises 10 MB, sends 1 KB and hangs up: a download cut off midway."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        self.wfile.write(b"x" * 1024)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_cut_off_midway_says_so_and_installs_nothing(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _ShortBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/simple-examples.tgz"
        with pytest.raises(UserError, match=r"download incomplete \(1,024 of 10,000,000 bytes\)"):
            download_ptb(tmp_path / "c", url=url, members=sums(FILES))
    finally:
        server.shutdown()
    assert not (tmp_path / "c" / "ptb").exists()


def test_scratch_left_by_a_killed_download_is_removed_by_the_next(tmp_path):
    stale = tmp_path / "cache" / "ptb" / ".download-killed"
    stale.mkdir(parents=True)
    (stale / "archive.tgz").write_bytes(b"half")
    url = make_archive(tmp_path / "simple-examples.tgz", FILES)
    target = download_ptb(tmp_path / "cache", url=url, members=sums(FILES))
    assert sorted(p.name for p in target.iterdir()) == [
        "ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
