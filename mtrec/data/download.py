"""Fetch the official archives of the public data sets, for users whose data folder lacks them.

Nothing is downloaded unless asked (``download=True``, or ``data.download: true`` in a config).
An archive goes to ``<cache>/downloads/`` (see `mtrec.paths.cache_dir`) through a temporary file
renamed on success, so an interrupted download never leaves a truncated archive behind. The files
the loaders need are then extracted into the data folder layout they read
(``<root>/movielens-100k/u.data`` ...), each checked against its published sha256 before it is
written. Tests point ``MTREC_DOWNLOAD_BASE_URL`` (or ``base_url``) at a local server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mtrec.data.errors import DataError
from mtrec.data.readers import Source, find_source, missing_files_error, zip_member
from mtrec.paths import cache_dir

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/"
BASE_URL_ENV = "MTREC_DOWNLOAD_BASE_URL"


@dataclass(frozen=True)
class ArchiveSpec:
    """One official archive.

    Attributes:
        folder: the folder under the data root that the loader reads.
        archive: the archive's file name.
        url_path: its path under the base URL.
        files: each file the loader needs -> sha256 of the extracted file (None: not known).
    """

    folder: str
    archive: str
    url_path: str
    files: Mapping[str, str | None]


# sha256 values are those verified in ../shared/datasets/*/README.md.
ARCHIVES: dict[str, ArchiveSpec] = {
    "movielens-100k": ArchiveSpec(
        "movielens-100k",
        "ml-100k.zip",
        "movielens/ml-100k.zip",
        {
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
        },
    ),
    "movielens-1m": ArchiveSpec(
        "movielens-1m",
        "ml-1m.zip",
        "movielens/ml-1m.zip",
        {
            # No verified copy of ratings.dat was available to hash (only its git blob id,
            # 77a7c4b1...), so its check is skipped rather than guessed.
            "ratings.dat": None,
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        },
    ),
    "lastfm-2k": ArchiveSpec(
        "lastfm-hetrec2011-2k",
        "hetrec2011-lastfm-2k.zip",
        "hetrec2011/hetrec2011-lastfm-2k.zip",
        {
            "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
            "tags.dat": "e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70",
            "user_artists.dat": "001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b",
            "user_friends.dat": "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
            "user_taggedartists.dat": "d31fe938fcfeed6f0059f37a36b156f63674d073fc2553e5cc9dc1595e365bc7",
        },
    ),
}


def archive_url(dataset: str, base_url: str | None = None) -> str:
    """The download URL of `dataset`'s archive: `base_url`, else $MTREC_DOWNLOAD_BASE_URL, else GroupLens."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return base.rstrip("/") + "/" + ARCHIVES[dataset].url_path


def ensure_files(
    root: Path, dataset: str, download: bool = False, base_url: str | None = None
) -> dict[str, Source]:
    """Locate the files `dataset`'s loader needs under `root`, downloading them if asked.

    A file counts as present when extracted in ``root/<folder>/`` or inside the official archive
    placed in that folder.

    Args:
        root: the data folder holding the per-data-set folders.
        dataset: a name in `ARCHIVES`.
        download: fetch and extract the official archive when files are missing.
        base_url: overrides $MTREC_DOWNLOAD_BASE_URL and the official host.

    Returns:
        file name -> where to read it.

    Raises:
        DataError: files missing and `download` False, download failed, or a checksum mismatch.
    """
    spec = ARCHIVES[dataset]
    folder = Path(root) / spec.folder
    found = {name: find_source(folder, name, [spec.archive]) for name in spec.files}
    missing = [name for name, src in found.items() if src is None]
    if not missing:
        return {name: src for name, src in found.items() if src is not None}
    url = archive_url(dataset, base_url)
    if not download:
        hint = (
            f"Or pass download=True (config key `data.download: true`) to fetch {url} and extract it there."
        )
        raise missing_files_error(folder, dataset, missing, list(spec.files), [spec.archive], hint)
    archive = fetch(url, cache_dir() / "downloads" / spec.archive)
    extract(archive, folder, {name: spec.files[name] for name in missing})
    return {name: src or Source(folder / name) for name, src in found.items()}


def fetch(url: str, dest: Path) -> Path:
    """Download `url` to `dest` (kept as a cache: an existing `dest` is reused) with a progress bar."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            url,
            f"download failed ({exc}). Without network access, download {url} elsewhere and put "
            f"it (or the files it holds) in the data folder; {dest.name} may also be placed at {dest}.",
        ) from None
    return dest


def extract(archive: Path, folder: Path, files: Mapping[str, str | None]) -> None:
    """Extract `files` (name -> expected sha256 or None) from `archive` into `folder`.

    Each file is hashed before it is written, so a corrupt or changed archive leaves no bad file;
    the cached archive is then deleted so that the next attempt downloads it afresh.
    """
    if not zipfile.is_zipfile(archive):
        archive.unlink(missing_ok=True)
        raise DataError(archive, "not a readable zip archive (deleted from the cache; retry)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, expected in files.items():
            member = zip_member(archive, name)
            if member is None:
                raise DataError(archive, f"the archive has no file {name}; expected: {', '.join(files)}")
            data = Source(archive, member).read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if expected is not None and actual != expected:
                archive.unlink(missing_ok=True)
                raise DataError(
                    folder / name,
                    f"sha256 mismatch for {archive.name}:{member}: expected {expected}, got {actual}. "
                    f"The archive was deleted from the cache; retry, or place verified files there yourself.",
                )
            _write_atomically(folder / name, data)
    except OSError as exc:  # read-only data folder, disk full, ...
        raise DataError(folder, f"cannot write the extracted files there ({exc})") from None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp_name, path)
