"""Downloads against a local HTTP server on 127.0.0.1 serving archives built from tiny fixtures.

No test here reaches the internet: every URL is the local server's (or a closed local port).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
from data_helpers import ML100K_FILES

from mtrec.data import DataError, load_dataset
from mtrec.data import download as dl

FILES = {name: text.encode("latin-1") for name, text in ML100K_FILES.items()}
PUBLISHED = dict(dl.ARCHIVES)  # before any test patches in the fixtures' hashes


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path):
    """(base URL, folder it serves, list of requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    _QuietHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, _QuietHandler.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private cache, no base-URL override from outside, and fixture hashes for movielens-100k."""
    monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)
    hashes = {name: hashlib.sha256(FILES[name]).hexdigest() for name in PUBLISHED["movielens-100k"].files}
    spec = dataclasses.replace(dl.ARCHIVES["movielens-100k"], files=hashes)
    monkeypatch.setitem(dl.ARCHIVES, "movielens-100k", spec)


def _serve_zip(served: Path, files: dict[str, bytes], prefix: str = "ml-100k/") -> Path:
    archive = served / "movielens" / "ml-100k.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return archive


def test_missing_files_without_download_say_where_to_put_what(tmp_path: Path):
    with pytest.raises(DataError) as info:
        dl.ensure_files(tmp_path / "data", "movielens-100k")
    message = str(info.value)
    assert "u.data, u.item, u.user, u.genre" in message and "movielens-100k/" in message
    assert "download=True" in message and "data.download: true" in message
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message


def test_download_extracts_verifies_and_caches(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch):
    base, served, requests = server
    _serve_zip(served, FILES)
    monkeypatch.setenv(dl.BASE_URL_ENV, base)
    ds = load_dataset("movielens-100k", tmp_path / "data", download=True)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (2, 3, 4)
    assert (tmp_path / "data" / "movielens-100k" / "u.data").read_bytes() == FILES["u.data"]
    assert (tmp_path / "cache" / "downloads" / "ml-100k.zip").is_file()
    assert not list((tmp_path / "cache" / "downloads").glob("*.part"))
    assert requests == ["/movielens/ml-100k.zip"]
    # the files are now in place: loading again asks the server for nothing
    load_dataset("movielens-100k", tmp_path / "data", download=True)
    assert len(requests) == 1


def test_only_missing_files_are_extracted_from_a_flat_archive(tmp_path: Path, server):
    base, served, _ = server
    _serve_zip(served, FILES, prefix="")  # archives without a top folder work too
    folder = tmp_path / "data" / "movielens-100k"
    folder.mkdir(parents=True)
    (folder / "u.genre").write_bytes(FILES["u.genre"])
    sources = dl.ensure_files(tmp_path / "data", "movielens-100k", download=True, base_url=base)
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.genre", "u.item", "u.user"]
    assert {name: str(src) for name, src in sources.items()} == {n: str(folder / n) for n in FILES}


def test_hash_mismatch_names_file_and_both_hashes(tmp_path: Path, server):
    base, served, _ = server
    tampered = {**FILES, "u.data": FILES["u.data"] + b"3\t1\t2\t880000400\n"}
    _serve_zip(served, tampered)
    with pytest.raises(DataError) as info:
        dl.ensure_files(tmp_path / "data", "movielens-100k", download=True, base_url=base)
    err = info.value
    expected = hashlib.sha256(FILES["u.data"]).hexdigest()
    actual = hashlib.sha256(tampered["u.data"]).hexdigest()
    assert err.path == str(tmp_path / "data" / "movielens-100k" / "u.data")
    assert f"expected {expected}, got {actual}" in str(err) and "ml-100k.zip:ml-100k/u.data" in str(err)
    assert not (tmp_path / "data" / "movielens-100k" / "u.data").exists()  # nothing bad is left behind
    assert not (tmp_path / "cache" / "downloads" / "ml-100k.zip").exists()  # the next try downloads again


def test_http_error_is_a_data_error(tmp_path: Path, server):
    base, _, _ = server  # serves nothing: 404
    with pytest.raises(DataError) as info:
        dl.ensure_files(tmp_path / "data", "movielens-100k", download=True, base_url=base)
    assert "download failed" in str(info.value) and info.value.path == base + "movielens/ml-100k.zip"
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_unreachable_host_is_a_data_error(tmp_path: Path):
    with socket.socket() as sock:  # a local port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as info:
        dl.ensure_files(
            tmp_path / "data", "movielens-100k", download=True, base_url=f"http://127.0.0.1:{port}"
        )
    assert "download failed" in str(
        info.value
    ) and "put it (or the files it holds) in the data folder" in str(info.value)


def test_base_url_argument_beats_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(dl.BASE_URL_ENV, "http://127.0.0.1:9/mirror/")
    assert dl.archive_url("lastfm-2k") == "http://127.0.0.1:9/mirror/hetrec2011/hetrec2011-lastfm-2k.zip"
    assert (
        dl.archive_url("movielens-1m", "http://127.0.0.1:8/x") == "http://127.0.0.1:8/x/movielens/ml-1m.zip"
    )
    monkeypatch.delenv(dl.BASE_URL_ENV)
    assert dl.archive_url("movielens-1m") == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"


def test_published_hashes_match_the_shared_files():
    # The hashes in ARCHIVES come from the shared READMEs; check them against the files themselves.
    from data_helpers import shared_data_root

    checked = 0
    for spec in PUBLISHED.values():
        for name, expected in spec.files.items():
            path = shared_data_root() / spec.folder / name
            if expected is not None and path.is_file():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, path
                checked += 1
    if not checked:
        pytest.skip("MTREC_DATA_DIR/movielens-100k etc. not found: no shared files to hash")
