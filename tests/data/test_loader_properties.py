"""Property tests (hypothesis): malformed input thrown at every loader.

Each property starts from a tiny valid folder in a data set's own format, lets hypothesis corrupt it
(lines replaced, inserted, deleted or duplicated; fields dropped, added or turned into non-numbers,
negatives, floats, huge integers, unknown ids or other formats' delimiters; bytes that are invalid in
the file's encoding; truncated, empty or missing files; damaged zip archives and .mat files; .mat
variables of the wrong shape or type), and then accepts exactly two outcomes:

- a `RecDataset` whose invariants hold: indices in range, interaction columns of one length, finite
  values, explicit ratings inside the rating scale, categories named by items in the vocabulary; or
- a `DataError` that names a file of the data set (or its folder or archive) and, when the corruption
  sits on one line of a line-oriented file and the error is about that file, that line.

Any other exception (KeyError, ValueError, IndexError, UnicodeDecodeError, BadZipFile, zlib.error,
...) fails the property. The regression tests at the end pin the escapes these properties found.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from data_helpers import ML100K_FILES
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from mtrec.data import DataError, RecDataset, load_dataset

# MTREC_PROPERTY_EXAMPLES=2000 runs a deeper search (minutes); the default keeps the file under ~30 s.
EXAMPLES = int(os.environ.get("MTREC_PROPERTY_EXAMPLES", "60"))
MORE = EXAMPLES * 4 // 3  # for the properties whose examples are cheapest or most varied
PROPERTY = settings(
    deadline=None,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# What a DataError about a corrupted line-oriented file may say without a line number: the file as a whole
# is wrong, or an id used elsewhere is missing from it.
# fmt: off
WHOLE_FILE_REASONS = (
    "file is empty", "file has no data rows", "genre indices are", "no interactions", "is not listed here",
)
# fmt: on


# ---- fixtures: tiny valid folders in each format -------------------------------------------------
@dataclass(frozen=True)
class Lines:
    """How a line-oriented file is read: its encoding, its field delimiter, a header row or not."""

    encoding: str
    delimiter: str
    header: bool = False


@dataclass(frozen=True)
class Fixture:
    """A tiny valid data-set folder: `files` (name -> bytes), the line-oriented ones described in `lines`."""

    dataset: str  # the name given to load_dataset
    folder: str  # the folder under the data root
    files: dict[str, bytes]
    lines: dict[str, Lines]
    archive: str | None = None  # the official archive that may hold the files instead
    unused_dropped: bool = True  # every user and item of a loaded data set has an interaction

    def member(self, name: str) -> str:
        return f"{self.archive.removesuffix('.zip')}/{name}"

    def write(self, root: Path, files: dict[str, bytes | None], zipped: bool = False) -> Path:
        """Write `files` (None: leave the file out) under ``root/folder``, or into the archive there."""
        folder = root / self.folder
        folder.mkdir(parents=True)
        present = {name: data for name, data in files.items() if data is not None}
        if zipped:
            with zipfile.ZipFile(folder / self.archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in present.items():
                    zf.writestr(self.member(name), data)
        else:
            for name, data in present.items():
                (folder / name).write_bytes(data)
        return folder

    def where(self, root: Path, name: str, zipped: bool = False) -> str:
        """How a DataError names file `name`."""
        folder = root / self.folder
        return f"{folder / self.archive}:{self.member(name)}" if zipped else str(folder / name)

    def allowed_paths(self, root: Path, zipped: bool = False) -> set[str]:
        folder = root / self.folder
        paths = {str(folder), *(self.where(root, name, zipped) for name in self.files)}
        return paths | ({str(folder / self.archive)} if self.archive else set())


def _encode(files: dict[str, str], latin1: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {name: text.encode("latin-1" if name in latin1 else "utf-8") for name, text in files.items()}


ML100K = Fixture(
    "movielens-100k",
    "movielens-100k",
    _encode(ML100K_FILES, latin1=("u.item",)),
    {
        "u.data": Lines("utf-8", "\t"),
        "u.item": Lines("latin-1", "|"),
        "u.user": Lines("utf-8", "|"),
        "u.genre": Lines("utf-8", "|"),
    },
    archive="ml-100k.zip",
)

ML1M = Fixture(
    "movielens-1m",
    "movielens-1m",
    _encode(
        {
            "movies.dat": "1::Quiet Harbor (2000)::Drama\n2::Caf\xe9 Noir (1999)::Comedy|Romance\n"
            "3::Unwatched (1998)::Horror\n",
            "users.dat": "1::F::1::10::48067\n2::M::25::16::70072\n3::F::56::0::02139\n",
            "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n3::1::1::978300275\n",
        },
        latin1=("movies.dat",),
    ),
    {
        "movies.dat": Lines("latin-1", "::"),
        "users.dat": Lines("utf-8", "::"),
        "ratings.dat": Lines("utf-8", "::"),
    },
    archive="ml-1m.zip",
)

LASTFM = Fixture(
    "lastfm-2k",
    "lastfm-hetrec2011-2k",
    _encode(
        {
            "artists.dat": "id\tname\turl\tpictureURL\n1\tThe Fog Horns\thttp://x/1\thttp://x/1.jpg\n"
            "2\tNoon\thttp://x/2\thttp://x/2.jpg\n3\tBj\xf6rk-ish\thttp://x/3\thttp://x/3.jpg\n",
            "tags.dat": "tagID\ttagValue\r\n1\tsea shanty\r\n2\tlo-fi\r\n3\tcaf\xe9\r\n",
            "user_artists.dat": "userID\tartistID\tweight\r\n2\t1\t50\r\n2\t2\t7\r\n3\t1\t12\r\n4\t3\t1\r\n",
            "user_friends.dat": "userID\tfriendID\r\n2\t3\r\n3\t2\r\n2\t4\r\n",
            "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\r\n"
            "2\t1\t1\t1\t4\t2009\r\n3\t2\t2\t1\t5\t2010\r\n2\t9\t3\t1\t5\t2010\r\n4\t3\t3\t2\t5\t2010\r\n",
        },
        latin1=("tags.dat",),
    ),
    {
        "artists.dat": Lines("utf-8", "\t", header=True),
        "tags.dat": Lines("latin-1", "\t", header=True),
        "user_artists.dat": Lines("utf-8", "\t", header=True),
        "user_friends.dat": Lines("utf-8", "\t", header=True),
        "user_taggedartists.dat": Lines("utf-8", "\t", header=True),
    },
    archive="hetrec2011-lastfm-2k.zip",
    unused_dropped=False,  # every artist of artists.dat is an item, listened to or not
)

CIAO_RATING = np.array(
    [
        [1, 10, 1, 4, 1],
        [1, 10, 1, 2, 1],
        [2, 11, 2, 0, 1],
        [2, 12, 2, 5, 1],
        [3, 12, 3, 3, 2],
        [3, 10, 1, 1, 0],
    ],
    np.int32,
)
CIAO_TRUST = np.array([[1, 2], [2, 2], [1, 3], [3, 1], [1, 3], [4, 1]], np.uint16)


def _mat(variables: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _ciao_fixture(name: str, catalog: str, columns: int) -> Fixture:
    members = {
        f"{name}/rating.mat": _mat({"rating": CIAO_RATING[:, :columns]}),
        f"{name}/trustnetwork.mat": _mat({"trustnetwork": CIAO_TRUST}),
    }
    return Fixture(
        name,
        "ciao-epinions-tang2012",
        {f"{name}.zip": _zip(members), catalog: b"1 DVDs\r\n2 Books\r\n3 Ciao Caf?\r\n"},
        {catalog: Lines("latin-1", " ")},
    )


CIAO = _ciao_fixture("ciao", "catalog_ciao.txt", 5)
EPINIONS = _ciao_fixture("epinions", "catalog_epinion.txt", 4)


def _ciao_paths(fx: Fixture, root: Path) -> set[str]:
    archive = root / fx.folder / f"{fx.dataset}.zip"
    members = {f"{archive}:{fx.dataset}/{m}" for m in ("rating.mat", "trustnetwork.mat")}
    return fx.allowed_paths(root) | members


LOCAL_CSV = Fixture(
    "local",
    "shop",
    _encode(
        {
            "items.csv": 'item_id,title,text,categories\nb1,Dune,"A desert, a spice.",sci-fi|classic\n'
            "b2,Emma,Village.,romance\nb3,Neuromancer,,sci-fi\n",
            "interactions.csv": "user_id,item_id,rating,timestamp\nu1,b1,5,2024-01-03T10:00:00\n"
            "u1,b3,4,1704902400\nu2,b2,3,1704902400\nu3,b1,1,1704902500\n",
            "users.csv": "user_id,country\nu1,NL\nu2,IE\n",
            "social.csv": "source,target,kind\nu1,u2,friend\nu2,u1,friend\nu3,u1,friend\n",
        }
    ),
    {
        name: Lines("utf-8", ",", header=True)
        for name in ("items.csv", "interactions.csv", "users.csv", "social.csv")
    },
    unused_dropped=False,
)

LOCAL_JSONL = Fixture(
    "local",
    "shop",
    _encode(
        {
            "items.jsonl": '{"item_id": "b1", "title": "Dune", "categories": ["sci-fi", "classic"]}\n'
            '{"item_id": 2, "title": "Emma", "text": "Village.", "categories": "romance"}\n',
            "interactions.jsonl": '{"user_id": "u1", "item_id": "b1", "weight": 3}\n'
            '{"user_id": "u2", "item_id": "2", "weight": 1.5}\n{"user_id": 7, "item_id": 2, "weight": "2"}\n',
            "users.jsonl": '{"user_id": "u1", "age": 30}\n{"user_id": "u2", "country": "IE"}\n',
            "social.jsonl": '{"source": "u1", "target": "u2", "kind": "trust"}\n'
            '{"source": "7", "target": "u1", "kind": "trust"}\n',
        }
    ),
    {
        name: Lines("utf-8", ",")
        for name in ("items.jsonl", "interactions.jsonl", "users.jsonl", "social.jsonl")
    },
    unused_dropped=False,
)


def _load_local(root: Path, fx: Fixture) -> RecDataset:
    ds = load_dataset(f"local:{root / fx.folder}")
    assert all(it.title for it in ds.items), "the local format requires a title"
    return ds


# ---- strategies -----------------------------------------------------------------------------------
DELIMITERS = ("\t", "|", "::", ",", ";", " ")
# Any character but the newline (a corrupted *line* stays one line) and surrogates.
TEXT = st.characters(exclude_characters="\n", exclude_categories=("Cs",))
# fmt: off
ODD_FIELDS = st.sampled_from(
    [
        "", " ", "-1", "0", "-0", "00", "1.5", "4.0", "1e3", "nan", "NaN", "inf", "-inf", "1e400", "1e39",
        "9" * 25, "-" + "9" * 25, "9" * 5000, "\u0661\u0662", "\uff11", "1_0", " 3 ", "0x10", "None",
        "null", "true", "3\x00", "\ufeff1", "\u2028", "\xe9", "\x85", "\\N", '"', "'", '"quoted, text"',
        "[1, 2]", "{}", *DELIMITERS,
    ]
)
# fmt: on
FIELDS = st.one_of(
    ODD_FIELDS,
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.text(TEXT, max_size=12),
)
UNKNOWN_IDS = st.sampled_from(["0", "999", "-1", "1.0", "01", "1 ", " 1", "x", "u9", "b9", "\uff11", ""])


def junk_line(delimiter: str) -> st.SearchStrategy[bytes]:
    """A line (no newline) of unicode text, control characters, fields joined by this or another
    format's delimiter, a very long run of one character, or raw bytes."""
    text = st.one_of(
        st.text(TEXT, max_size=40),
        st.lists(FIELDS, max_size=8).map(delimiter.join),
        st.tuples(st.sampled_from(DELIMITERS), st.lists(FIELDS, max_size=8)).map(lambda t: t[0].join(t[1])),
        st.sampled_from(["x", "9", "|", "\t", "::", "\xe9", ",", '"', "\x00"]).map(lambda s: s * 50_000),
    )
    return text.map(lambda s: s.encode("utf-8")) | st.binary(max_size=24).map(lambda b: b.replace(b"\n", b""))


@dataclass
class Corruption:
    """One corrupted file: its new bytes (None: removed) and the 1-based line that was corrupted, if one."""

    name: str
    data: bytes | None
    line: int | None
    op: str
    zipped: bool = False

    def __repr__(self) -> str:  # hypothesis prints it: keep very long content short
        shown = self.data if self.data is None or len(self.data) < 400 else self.data[:400] + b"..."
        return (
            f"Corruption({self.name!r}, {self.op!r}, line={self.line}, zipped={self.zipped}, data={shown!r})"
        )


# fmt: off
LINE_OPS = (
    "replace line", "insert line", "delete line", "duplicate line", "replace field", "unknown id",
    "drop field", "add field", "swap delimiter",
)
FILE_OPS = (
    "empty", "blank", "truncate", "random bytes", "insert bytes", "missing", "crlf", "bom", "header only",
)
# fmt: on


@st.composite
def corruptions(draw, fx: Fixture) -> Corruption:
    """Corrupt one line-oriented file of `fx` in one way."""
    name = draw(st.sampled_from(sorted(fx.lines)))
    spec, data = fx.lines[name], fx.files[name]
    op = draw(st.sampled_from(LINE_OPS + FILE_OPS))
    lines = data.split(b"\n")
    n = len(lines) - 1 if lines[-1] == b"" else len(lines)  # lines holding text (not the final "")
    first = 1 if spec.header else 0
    k = draw(st.integers(first, n - 1))
    line: int | None = k + 1
    delimiter = spec.delimiter.encode()
    if op == "replace line":
        lines[k] = draw(junk_line(spec.delimiter))
    elif op == "insert line":
        k = draw(st.integers(0, n))
        lines.insert(k, draw(junk_line(spec.delimiter)))
        line = k + 1 if k >= first else None  # a line put before the header turns the header into data
    elif op == "delete line":
        del lines[k]
        line = None
    elif op == "duplicate line":
        lines.insert(k, lines[k])
        line = None
    elif op in ("replace field", "unknown id", "drop field", "add field", "swap delimiter"):
        fields = lines[k].split(delimiter)
        j = draw(st.integers(0, min(len(fields) - 1, 1) if op == "unknown id" else len(fields) - 1))
        if op == "replace field":
            fields[j] = draw(FIELDS).encode()
        elif op == "unknown id":
            fields[j] = draw(UNKNOWN_IDS).encode()
        elif op == "drop field":
            del fields[j]
        elif op == "add field":
            fields.insert(j, draw(FIELDS).encode())
        if op == "swap delimiter":
            delimiter = draw(st.sampled_from([d for d in DELIMITERS if d != spec.delimiter])).encode()
        lines[k] = delimiter.join(fields)
    else:
        line = None
    if op in LINE_OPS:
        return Corruption(name, b"\n".join(lines), line, op)
    if op == "empty":
        new = b""
    elif op == "blank":
        new = draw(
            st.sampled_from([b" ", b"\n\n", b"\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n", b"\x00", b"\x0c"])
        )
    elif op == "truncate":
        new = data[: draw(st.integers(0, len(data) - 1))]
    elif op == "random bytes":
        new = draw(st.binary(max_size=300))
    elif op == "insert bytes":
        at, inserted = draw(st.integers(0, len(data))), draw(st.binary(min_size=1, max_size=16))
        new = data[:at] + inserted + data[at:]
        line = None if b"\n" in inserted else data.count(b"\n", 0, at) + 1
    elif op == "missing":
        new = None
    elif op == "crlf":
        new = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    elif op == "bom":
        new = b"\xef\xbb\xbf" + data
    else:  # header only (or nothing at all for files without a header)
        new = b"\n".join(lines[:first]) + b"\n"
    return Corruption(name, new, line, op)


@st.composite
def mutated_bytes(draw, data: bytes) -> bytes:
    """`data` with a few bytes changed, inserted or deleted, or cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        else:
            del out[at:]
    return bytes(out)


# ---- the two outcomes -------------------------------------------------------------------------------
def check_error(
    err: DataError, allowed: set[str], corrupted: str | None = None, line: int | None = None
) -> None:
    """`err` names a file of the data set, starts with it, and names the corrupted line where one applies."""
    message = str(err)
    note(f"DataError: {message[:500]}")
    assert err.path in allowed, f"the error names {err.path!r}, not a file of the data set"
    assert message.startswith(err.path) and err.reason.strip()
    assert err.line is None or (isinstance(err.line, int) and err.line >= 1)
    if line is not None and err.path == corrupted:
        if err.line is None:
            assert any(r in err.reason for r in WHOLE_FILE_REASONS), f"no line number in {message!r}"
        else:
            assert err.line == line or f"line {line}" in err.reason, (
                f"line {line} corrupted, error: {message!r}"
            )


def check_dataset(ds: RecDataset, unused_dropped: bool = False) -> None:
    """The invariants every loaded data set keeps."""
    n = ds.num_interactions
    assert len(ds.user_idx) == len(ds.item_idx) == len(ds.values) == n
    assert ds.timestamps is None or (len(ds.timestamps) == n and ds.timestamps.dtype == np.int64)
    for idx, size in ((ds.user_idx, ds.num_users), (ds.item_idx, ds.num_items)):
        assert n == 0 or (idx.min() >= 0 and idx.max() < size)
    assert len(ds.social_src) == len(ds.social_dst)
    for idx in (ds.social_src, ds.social_dst):
        assert len(idx) == 0 or (idx.min() >= 0 and idx.max() < ds.num_users)
    assert np.isfinite(ds.values).all(), "non-finite ratings or weights"
    if ds.explicit:
        low, high = ds.rating_scale
        assert low <= high
        assert ((ds.values >= np.float32(low)) & (ds.values <= np.float32(high))).all()
    assert len({u.id for u in ds.users}) == ds.num_users and len({i.id for i in ds.items}) == ds.num_items
    assert all(ds.user_index[u.id] == k for k, u in enumerate(ds.users))
    assert all(ds.item_index[it.id] == k for k, it in enumerate(ds.items))
    assert all(c in ds.category_index for it in ds.items for c in it.categories)
    if unused_dropped:
        assert np.bincount(ds.user_idx, minlength=ds.num_users).min(initial=1) > 0
        assert np.bincount(ds.item_idx, minlength=ds.num_items).min(initial=1) > 0
    records = list(ds.iter_interactions())
    assert len(records) == n and len(list(ds.social_edges())) == ds.num_social_edges


def outcome(
    load: Callable[[], RecDataset], check: Callable[[RecDataset], None], on_error: Callable[[DataError], None]
) -> str:
    """Run `load`: check the data set or the DataError; any other exception propagates and fails."""
    try:
        ds = load()
    except DataError as err:
        event("DataError")  # --hypothesis-show-statistics shows how often each outcome came up
        on_error(err)
        return "DataError"
    event("loaded")
    check(ds)
    return "loaded"


def corrupt_and_load(
    fx: Fixture, c: Corruption, load: Callable[[Path], RecDataset], check, allowed=None
) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fx.write(root, {**fx.files, c.name: c.data}, zipped=c.zipped)
        paths = allowed(root) if allowed else fx.allowed_paths(root, c.zipped)
        return outcome(
            lambda: load(root),
            check,
            lambda err: check_error(err, paths, fx.where(root, c.name, c.zipped), c.line),
        )


# ---- the fixtures load ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fx",
    [ML100K, ML1M, LASTFM, CIAO, EPINIONS, LOCAL_CSV, LOCAL_JSONL],
    ids=lambda f: f"{f.dataset}-{f.folder}-{next(iter(f.files))}",
)
def test_fixtures_are_valid(fx: Fixture, tmp_path: Path):
    fx.write(tmp_path, fx.files)
    ds = _load_local(tmp_path, fx) if fx.dataset == "local" else load_dataset(fx.dataset, tmp_path)
    check_dataset(ds, fx.unused_dropped)
    assert ds.num_interactions >= 3
    if fx.archive:  # and from the official archive
        fx.write(tmp_path / "zipped", fx.files, zipped=True)
        assert load_dataset(fx.dataset, tmp_path / "zipped").num_interactions == ds.num_interactions


# ---- MovieLens and Last.fm: corrupt lines and files ------------------------------------------------
def _movielens_check(keep_unrated: bool):
    def check(ds: RecDataset) -> None:
        check_dataset(ds, unused_dropped=not keep_unrated)
        assert ds.explicit and ds.rating_scale == (1.0, 5.0) and ds.timestamps is not None
        assert ds.notes["raw"]["rating rows"] == ds.num_interactions

    return check


@PROPERTY
@given(st.data(), st.booleans(), st.booleans())
def test_movielens_100k_survives_corrupt_files(data, zipped: bool, keep_unrated: bool):
    c = data.draw(corruptions(ML100K))
    c.zipped = zipped
    load = lambda root: load_dataset("movielens-100k", root, keep_unrated=keep_unrated)
    corrupt_and_load(ML100K, c, load, _movielens_check(keep_unrated))


@PROPERTY
@given(st.data(), st.booleans(), st.booleans())
def test_movielens_1m_survives_corrupt_files(data, zipped: bool, keep_unrated: bool):
    c = data.draw(corruptions(ML1M))
    c.zipped = zipped
    load = lambda root: load_dataset("movielens-1m", root, keep_unrated=keep_unrated)
    corrupt_and_load(ML1M, c, load, _movielens_check(keep_unrated))


def _lastfm_check(ds: RecDataset) -> None:
    check_dataset(ds)
    assert not ds.explicit and ds.timestamps is None and ds.social_kind == "friend"
    assert ds.notes["raw"]["listening rows"] == ds.num_interactions
    assert ds.notes["raw"]["friend rows"] == ds.num_social_edges
    assert len(set(ds.categories)) == len(ds.categories) <= 50  # the most used distinct tag names


@PROPERTY
@given(st.data(), st.booleans())
def test_lastfm_survives_corrupt_files(data, zipped: bool):
    c = data.draw(corruptions(LASTFM))
    c.zipped = zipped
    corrupt_and_load(LASTFM, c, lambda root: load_dataset("lastfm-2k", root), _lastfm_check)


# ---- zip archives: damaged bytes ---------------------------------------------------------------------
ARCHIVED = [ML100K, ML1M, LASTFM]


@settings(PROPERTY, max_examples=MORE)
@given(st.sampled_from(ARCHIVED + [CIAO, EPINIONS]), st.data())
def test_damaged_archives_load_or_raise_data_error(fx: Fixture, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if fx.archive:  # the whole data set inside the official archive
            folder = fx.write(root, fx.files, zipped=True)
            archive = folder / fx.archive
            allowed = fx.allowed_paths(root, zipped=True)
        else:  # ciao.zip / epinions.zip with the .mat files
            folder = fx.write(root, fx.files)
            archive = folder / f"{fx.dataset}.zip"
            allowed = _ciao_paths(fx, root)
        if data.draw(st.booleans(), label="stored, not deflated"):
            with zipfile.ZipFile(archive) as zf:
                archive.write_bytes(_zip({m: zf.read(m) for m in zf.namelist()}, zipfile.ZIP_STORED))
        archive.write_bytes(data.draw(mutated_bytes(archive.read_bytes()), label="archive bytes"))
        check = _movielens_check(False) if fx.dataset.startswith("movielens") else check_dataset
        check = _ciao_check if fx in (CIAO, EPINIONS) else check
        outcome(lambda: load_dataset(fx.dataset, root), check, lambda err: check_error(err, allowed))


# ---- Ciao / Epinions: .mat contents, .mat bytes, catalog lines -------------------------------------
def _ciao_check(ds: RecDataset) -> None:
    check_dataset(ds, unused_dropped=True)
    assert ds.explicit and ds.rating_scale == (1.0, 5.0) and ds.social_kind == "trust"
    pairs = ds.user_idx.astype(np.int64) * ds.num_items + ds.item_idx
    assert len(np.unique(pairs)) == len(pairs), "duplicate (user, product) rows survived the cleaning"
    edges = ds.social_src.astype(np.int64) * ds.num_users + ds.social_dst
    assert len(np.unique(edges)) == len(edges) and not (ds.social_src == ds.social_dst).any()
    assert ds.num_interactions <= ds.notes["raw"]["rating rows"]


def _write_ciao(fx: Fixture, root: Path, rating: bytes, trust: bytes, catalog: bytes | None = None) -> None:
    members = {f"{fx.dataset}/rating.mat": rating, f"{fx.dataset}/trustnetwork.mat": trust}
    (catalog_name,) = fx.lines
    fx.write(root, {f"{fx.dataset}.zip": _zip(members), catalog_name: catalog or fx.files[catalog_name]})


MAT_DTYPES = st.sampled_from(
    [np.int32, np.uint16, np.int64, np.uint8, np.int8, np.float64, np.float32, np.uint64]
)
MAT_VALUES = st.one_of(
    st.integers(-3, 14).map(float),
    st.sampled_from([0.5, 4.5, -1.0, 1e10, 2.0**62, np.nan, np.inf, -np.inf, 2.0**64]),
)


@st.composite
def mat_variable(draw, width: int):
    """A plausible matrix (ids 0-5, categories 0-4, ratings 0-6: zeros, repeats, self-loops, unknown
    categories), a matrix of odd values or shape, or a vector, a 3-d array, text or a cell array."""
    kind = draw(
        st.sampled_from(
            ["plausible"] * 6 + ["matrix"] * 3 + ["vector", "3d", "text", "cell", "empty", "bool"]
        )
    )
    if kind == "plausible":
        rows = draw(st.integers(1, 8))
        highs = [5, 5, 4, 6, 3][:width] if width > 2 else [5, 5]
        columns = [draw(st.lists(st.integers(0, high), min_size=rows, max_size=rows)) for high in highs]
        return np.array(columns, draw(st.sampled_from([np.int32, np.uint16, np.float64]))).T
    rows, cols = draw(st.integers(0, 6)), draw(st.integers(max(width - 2, 0), width + 2))
    if kind == "vector":
        return np.arange(draw(st.integers(0, 6)), dtype=np.int32)
    if kind == "3d":
        return np.ones((2, width, 2), np.int32)
    if kind == "text":
        return draw(st.text("abc xyz", max_size=5))
    if kind == "cell":
        return np.array([np.ones(2), "x"], dtype=object)
    if kind == "empty":
        return np.zeros((0, width), np.int32)
    if kind == "bool":
        return np.ones((rows, width), bool)
    dtype = draw(MAT_DTYPES)
    values = draw(st.lists(MAT_VALUES, min_size=rows * cols, max_size=rows * cols))
    matrix = np.array(values, np.float64).reshape(rows, cols)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        matrix = np.nan_to_num(matrix, nan=0.0, posinf=0.0, neginf=0.0)
        matrix = np.where((matrix >= info.min) & (matrix <= info.max / 2), matrix, 0.0)
    return matrix.astype(dtype)


@settings(PROPERTY, max_examples=MORE)
@given(st.sampled_from([CIAO, EPINIONS]), st.data())
def test_ciao_epinions_survive_odd_mat_variables(fx: Fixture, data):
    width = 5 if fx.dataset == "ciao" else 4
    rating_name = data.draw(
        st.sampled_from(["rating"] * 5 + ["ratings", "Rating", "trustnetwork"]), label="name"
    )
    rating = {rating_name: data.draw(mat_variable(width), label="rating")}
    trust = {"trustnetwork": data.draw(mat_variable(2), label="trust")}
    if data.draw(st.booleans(), label="extra variable"):
        rating["notes"] = np.array([[1.5, 2.5]])
    catalog = data.draw(
        st.sampled_from([None, b"0 Z\n1 DVDs\n2 Books\n3 A\n", b"1 DVDs\n", b"0 A\n1 B\n2 C\n3 D\n4 E\n"])
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_ciao(fx, root, _mat(rating), _mat(trust), catalog)
        outcome(
            lambda: load_dataset(fx.dataset, root),
            _ciao_check,
            lambda err: check_error(err, _ciao_paths(fx, root)),
        )


@settings(PROPERTY, max_examples=MORE)
@given(
    st.sampled_from([CIAO, EPINIONS]),
    st.sampled_from(["rating.mat", "trustnetwork.mat"]),
    st.booleans(),
    st.sampled_from([np.int32, np.float64]),  # as in the official files, and MATLAB's default
    st.data(),
)
def test_ciao_epinions_survive_corrupt_mat_bytes(fx: Fixture, member: str, compressed: bool, dtype, data):
    width = 5 if fx.dataset == "ciao" else 4
    good = {
        "rating.mat": {"rating": CIAO_RATING[:, :width].astype(dtype)},
        "trustnetwork.mat": {"trustnetwork": CIAO_TRUST},
    }
    mats = {}
    for name, variables in good.items():
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, variables, do_compression=compressed)
        mats[name] = buffer.getvalue()
    mats[member] = data.draw(mutated_bytes(mats[member]) | st.binary(max_size=200), label=member)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_ciao(fx, root, mats["rating.mat"], mats["trustnetwork.mat"])
        outcome(
            lambda: load_dataset(fx.dataset, root),
            _ciao_check,
            lambda err: check_error(err, _ciao_paths(fx, root)),
        )


@PROPERTY
@given(st.sampled_from([CIAO, EPINIONS]), st.data())
def test_ciao_epinions_survive_corrupt_catalog(fx: Fixture, data):
    c = data.draw(corruptions(fx))
    corrupt_and_load(
        fx, c, lambda root: load_dataset(fx.dataset, root), _ciao_check, lambda root: _ciao_paths(fx, root)
    )


# ---- the local format: corrupt lines and records ----------------------------------------------------
@PROPERTY
@given(st.data())
def test_local_csv_survives_corrupt_files(data):
    c = data.draw(corruptions(LOCAL_CSV))
    if c.data is not None and c.op in LINE_OPS + ("insert bytes",):
        # The csv module also ends a line at a lone "\r", so line numbers would count differently.
        c.data = c.data.replace(b"\r", b"")
    corrupt_and_load(LOCAL_CSV, c, lambda root: _load_local(root, LOCAL_CSV), check_dataset)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    st.sampled_from(["", " ", "5", "1e400", "nan", "2024-13-01", "2024-01-03T10:00:00+01:00", "-" * 3 + "5"]),
)


def _json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)


JSON_VALUES = st.recursive(JSON_SCALARS, _json_containers, max_leaves=6)
JSON_JUNK = st.sampled_from(
    [
        "[" * 100_000 + "]" * 100_000,
        '{"user_id": "u1", "item_id": "b1", "weight": ' + "9" * 5000 + "}",
        "9" * 5000,
        "NaN",
        "{}",
        "[]",
        "null",
        '"text"',
        '{"item_id": "b1", "title": "Dune"',
        '{"user_id": "u1", "item_id": "b1", "weight": 1, "weight": NaN}',
        '{"user_id": "u1", "item_id": "b1", "weight": 1e999}',
        '{"user_id": "u1", "item_id": "b1", "weight": ' + "1" * 400 + "}",
        '{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": 1e300}',
        '{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": "--5"}',
        '{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": ' + "9" * 30 + "}",
    ]
).map(str.encode)


@st.composite
def jsonl_corruptions(draw) -> Corruption:
    """A JSONL file with one line replaced by odd JSON, or one key of one record changed or removed."""
    fx = LOCAL_JSONL
    name = draw(st.sampled_from(sorted(fx.lines)))
    lines = fx.files[name].split(b"\n")[:-1]
    k = draw(st.integers(0, len(lines) - 1))
    op = draw(st.sampled_from(["junk", "set key", "drop key"]))
    if op == "junk":
        lines[k] = draw(JSON_JUNK)
    else:
        record = json.loads(lines[k])
        key = draw(st.sampled_from(sorted(record) + ["rating", "timestamp", "kind", "categories", "text"]))
        if op == "drop key":
            record.pop(key, None)
        else:
            record[key] = draw(JSON_VALUES)
        lines[k] = json.dumps(record).encode()
    return Corruption(name, b"\n".join(lines) + b"\n", k + 1, op)


@PROPERTY
@given(st.data())
def test_local_jsonl_survives_corrupt_files(data):
    c = data.draw(jsonl_corruptions() | corruptions(LOCAL_JSONL))
    corrupt_and_load(LOCAL_JSONL, c, lambda root: _load_local(root, LOCAL_JSONL), check_dataset)


# ---- the local format: generated data sets ----------------------------------------------------------
ID_CHARS = st.characters(categories=("L", "Nd")) | st.sampled_from("-_.:' ")
IDS = st.text(ID_CHARS, min_size=1, max_size=5).map(str.strip).filter(bool)
# Free text: anything but "\r" (the csv module ends lines at a lone "\r") and surrogates.
FREE_TEXT = st.text(st.characters(exclude_characters="\r", exclude_categories=("Cs",)), max_size=12)
DEFECTS = (
    "unknown item",
    "duplicate item",
    "empty title",
    "bad value",
    "bad timestamp",
    "missing timestamp",
    "unknown social user",
    "bad kind",
    "mixed kinds",
    "duplicate user",
)


@dataclass
class LocalData:
    items: list[dict]
    interactions: list[dict]
    users: list[dict] | None
    social: list[dict] | None
    value_field: str
    timed: bool
    defect: tuple[str, int] | None = None  # (file stem, index of the bad row)


@st.composite
def local_data(draw) -> LocalData:
    """A valid data set in the local format, sometimes with one documented defect in one row."""
    item_ids = draw(st.lists(IDS, min_size=1, max_size=5, unique=True))
    items = [
        {
            "item_id": i,
            "title": draw(FREE_TEXT.filter(str.strip)),
            "text": draw(FREE_TEXT),
            "categories": draw(st.lists(st.text(ID_CHARS, min_size=1, max_size=4), max_size=3)),
        }
        for i in item_ids
    ]
    value_field = draw(st.sampled_from(["rating", "weight"]))
    timed = draw(st.booleans())
    user_ids = draw(st.lists(IDS, min_size=1, max_size=4, unique=True))
    values = st.one_of(st.integers(-5, 10), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
    stamps = st.one_of(
        st.integers(-(2**40), 2**40),
        st.datetimes(datetime(1900, 1, 1), datetime(2100, 1, 1)).map(lambda d: d.replace(microsecond=0)),
    )
    interactions = [
        {
            "user_id": draw(st.sampled_from(user_ids)),
            "item_id": draw(st.sampled_from(item_ids)),
            value_field: draw(values),
            **({"timestamp": draw(stamps)} if timed else {}),
        }
        for _ in range(draw(st.integers(1, 6)))
    ]
    users = None
    if draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from(user_ids), unique=True)) + draw(st.lists(IDS, max_size=2))
        users = [{"user_id": u, "age": draw(FREE_TEXT)} for u in dict.fromkeys(listed)] or None
    social = None
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["friend", "trust", None]))
        pool = sorted({r["user_id"] for r in interactions} | {u["user_id"] for u in users or []})
        social = [
            {"source": draw(st.sampled_from(pool)), "target": draw(st.sampled_from(pool)), "kind": kind}
            for _ in range(draw(st.integers(1, 4)))
        ]
    data = LocalData(items, interactions, users, social, value_field, timed)
    if draw(st.integers(0, 2)) == 0:
        _inject_defect(draw, data)
    return data


def _inject_defect(draw, d: LocalData) -> None:
    kind = draw(st.sampled_from(DEFECTS))
    if kind == "unknown item":
        row = draw(st.integers(0, len(d.interactions) - 1))
        d.interactions[row]["item_id"] = "?" + d.interactions[row]["item_id"]
        d.defect = ("interactions", row)
    elif kind == "duplicate item" and len(d.items) > 1:
        row = draw(st.integers(1, len(d.items) - 1))
        d.items[row]["item_id"] = d.items[0]["item_id"]
        d.defect = ("items", row)
    elif kind == "empty title":
        row = draw(st.integers(0, len(d.items) - 1))
        d.items[row]["title"] = draw(st.sampled_from(["", "  "]))
        d.defect = ("items", row)
    elif kind == "bad value":
        row = draw(st.integers(0, len(d.interactions) - 1))
        d.interactions[row][d.value_field] = draw(
            st.sampled_from(["", "five", "nan", "inf", "1e39", "-1e400"])
        )
        d.defect = ("interactions", row)
    elif kind == "bad timestamp" and d.timed:
        row = draw(st.integers(0, len(d.interactions) - 1))
        d.interactions[row]["timestamp"] = draw(
            st.sampled_from(["yesterday", "--5", "1" * 30, "2024-13-01", "\xb2"])
        )
        d.defect = ("interactions", row)
    elif kind == "missing timestamp" and d.timed and len(d.interactions) > 1:
        row = draw(st.integers(1, len(d.interactions) - 1))
        d.interactions[row]["timestamp"] = ""
        d.defect = ("interactions", row)
    elif kind == "unknown social user" and d.social:
        row = draw(st.integers(0, len(d.social) - 1))
        d.social[row][draw(st.sampled_from(["source", "target"]))] = "?stranger"
        d.defect = ("social", row)
    elif kind == "bad kind" and d.social:
        row = draw(st.integers(0, len(d.social) - 1))
        d.social[row]["kind"] = "enemy"
        d.defect = ("social", row)
    elif kind == "mixed kinds" and d.social and len(d.social) > 1:
        kind = d.social[0]["kind"] or "friend"
        for r in d.social:
            r["kind"] = kind
        row = draw(st.integers(1, len(d.social) - 1))
        d.social[row]["kind"] = "trust" if kind == "friend" else "friend"
        d.defect = ("social", row)
    elif kind == "duplicate user" and d.users and len(d.users) > 1:
        row = draw(st.integers(1, len(d.users) - 1))
        d.users[row]["user_id"] = d.users[0]["user_id"]
        d.defect = ("users", row)


def _cell(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "|".join(value)
    return "" if value is None else str(value)


def _write_local(folder: Path, d: LocalData, jsonl: bool) -> dict[str, list[int]]:
    """Write the files; return each file's line number of each row."""
    folder.mkdir()
    line_of = {}
    for stem, rows in (
        ("items", d.items),
        ("interactions", d.interactions),
        ("users", d.users),
        ("social", d.social),
    ):
        if rows is None:
            continue
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        numbers = []
        if jsonl:
            for r in rows:
                numbers.append(out.getvalue().count("\n") + 1)
                record = {
                    k: (v.isoformat() if isinstance(v, datetime) else v)
                    for k, v in r.items()
                    if v is not None
                }
                out.write(json.dumps(record) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for r in rows:
                numbers.append(out.getvalue().count("\n") + 1)
                writer.writerow([_cell(r.get(c)) for c in columns])
        (folder / f"{stem}.{'jsonl' if jsonl else 'csv'}").write_text(out.getvalue(), encoding="utf-8")
        line_of[stem] = numbers
    return line_of


def _categories(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def _unix(value) -> int:
    return calendar.timegm(value.timetuple()) if isinstance(value, datetime) else int(value)


@PROPERTY
@given(local_data(), st.booleans())
def test_local_generated_data_loads_exactly_or_names_the_bad_line(d: LocalData, jsonl: bool):
    note(f"defect: {d.defect}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shop"
        line_of = _write_local(folder, d, jsonl)
        ext = "jsonl" if jsonl else "csv"
        if d.defect is not None:
            stem, row = d.defect
            with pytest.raises(DataError) as info:
                load_dataset(f"local:{folder}")
            err = info.value
            note(str(err))
            assert err.path == str(folder / f"{stem}.{ext}") and err.line == line_of[stem][row], str(err)
            return
        ds = load_dataset(f"local:{folder}")
    check_dataset(ds)
    assert ds.explicit == (d.value_field == "rating")
    got = [
        (r.user, r.item, r.rating if ds.explicit else r.weight, r.timestamp) for r in ds.iter_interactions()
    ]
    expected = [
        (
            r["user_id"],
            r["item_id"],
            float(np.float32(r[d.value_field])),
            _unix(r["timestamp"]) if d.timed else None,
        )
        for r in d.interactions
    ]
    assert got == expected
    assert {it.id: (it.title, it.text, it.categories) for it in ds.items} == {
        it["item_id"]: (it["title"].strip(), it["text"].strip(), _categories(it["categories"]))
        for it in d.items
    }
    user_ids = {r["user_id"] for r in d.interactions} | {u["user_id"] for u in d.users or []}
    assert {u.id for u in ds.users} == user_ids
    edges = [(e.source, e.target, e.kind) for e in ds.social_edges()]
    assert edges == [(e["source"], e["target"], e["kind"] or "friend") for e in d.social or []]
    if ds.explicit:
        values = [r[d.value_field] for r in d.interactions]
        assert ds.rating_scale == (min(values), max(values))


# ---- regressions: the escapes these properties found ---------------------------------------------
def _local_error(tmp_path: Path, **files: bytes) -> DataError:
    folder = tmp_path / "shop"
    folder.mkdir()
    for name, data in files.items():
        (folder / name.replace("_", ".", 1)).write_bytes(data)
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{folder}")
    return info.value


ITEMS = b"item_id,title\nb1,Dune\n"


@pytest.mark.parametrize(
    "interactions, line",
    [
        (b'{"user_id": "u1", "item_id": "b1", "weight": ' + b"9" * 5000 + b"}\n", 1),  # > 4,300 digits
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2),
        (b'{"user_id": "u1", "item_id": "b1", "weight": ' + b"9" * 400 + b"}\n", 1),  # too large for a float
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1e300}\n', 1),  # too large for float32
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": 1e300}\n', 1),
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": ' + b"9" * 30 + b"}\n", 1),
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": "--5"}\n', 1),
        (b'{"user_id": "u1", "item_id": "b1", "weight": 1, "timestamp": "\xc2\xb2"}\n', 1),
    ],
    ids=[
        "digits",
        "nesting",
        "float-overflow",
        "float32",
        "ts-float",
        "ts-int64",
        "ts-dashes",
        "ts-superscript",
    ],
)
def test_local_jsonl_regressions(tmp_path: Path, interactions: bytes, line: int):
    err = _local_error(tmp_path, items_csv=ITEMS, interactions_jsonl=interactions)
    assert err.path.endswith("interactions.jsonl") and err.line == line


def test_local_csv_with_only_a_byte_order_mark(tmp_path: Path):
    err = _local_error(
        tmp_path, items_csv=b"\xef\xbb\xbf", interactions_csv=b"user_id,item_id,rating\nu,b1,1\n"
    )
    assert err.path.endswith("items.csv") and "file is empty" in str(err)


def test_ml1m_fields_ending_and_starting_with_a_colon(tmp_path: Path):
    # "x:" then "::" then ":y" reads "x::::y": joining the lines before splitting shifted the fields.
    files = {
        **ML1M.files,
        "movies.dat": b"1::A (2000)::Drama:\n:2::B::Comedy\n",
        "ratings.dat": b"1::1::5::9\n",
    }
    ML1M.write(tmp_path, files)
    ds = load_dataset("movielens-1m", tmp_path, keep_unrated=True)
    assert {it.id: (it.title, it.categories) for it in ds.items} == {
        "1": ("A (2000)", ("Drama:",)),
        ":2": ("B", ("Comedy",)),
    }


@pytest.mark.parametrize(
    "fx, name, extra",
    [
        (ML100K, "u.item", b"3|Again (1996)|||u|0|0|1\n"),
        (ML100K, "u.user", b"2|45|M|engineer|94110\n"),
        (ML1M, "movies.dat", b"3::Again (1998)::Drama\n"),
        (ML1M, "users.dat", b"3::M::1::1::02139\n"),
        (LASTFM, "artists.dat", b"2\tNoon again\tu\tp\n"),
    ],
)
def test_repeated_ids_name_both_lines(tmp_path: Path, fx: Fixture, name: str, extra: bytes):
    files = {**fx.files, name: fx.files[name] + extra}
    fx.write(tmp_path, files)
    options = {"keep_unrated": True} if fx.dataset.startswith("movielens") else {}
    err = pytest.raises(DataError, load_dataset, fx.dataset, tmp_path, **options).value
    n_lines = files[name].count(b"\n")
    assert err.path.endswith(name) and err.line == n_lines and "line" in err.reason


def test_ml1m_occupation_code_too_long(tmp_path: Path):
    ML1M.write(tmp_path, {**ML1M.files, "users.dat": b"1::F::1::" + b"1" * 5000 + b"::48067\n"})
    err = pytest.raises(DataError, load_dataset, "movielens-1m", tmp_path).value
    assert err.path.endswith("users.dat") and err.line == 1 and "occupation" in err.reason


@pytest.mark.parametrize("code", [b"9" * 30, b"9" * 5000, b"\xb2"])
def test_ciao_catalog_odd_category_ids(tmp_path: Path, code: bytes):
    catalog = b"1 DVDs\n2 Books\n3 Other\n" + code + b" More\n"
    _write_ciao(CIAO, tmp_path, _mat({"rating": CIAO_RATING}), _mat({"trustnetwork": CIAO_TRUST}), catalog)
    err = pytest.raises(DataError, load_dataset, "ciao", tmp_path).value
    assert err.path.endswith("catalog_ciao.txt") and err.line == 4


@pytest.mark.parametrize(
    "rating", [np.zeros((0, 5), np.int32), np.array([[1, 10, 1, 0, 1]], np.int32)], ids=["none", "all-zero"]
)
def test_ciao_without_valid_ratings(tmp_path: Path, rating: np.ndarray):
    _write_ciao(CIAO, tmp_path, _mat({"rating": rating}), _mat({"trustnetwork": CIAO_TRUST}))
    err = pytest.raises(DataError, load_dataset, "ciao", tmp_path).value
    assert err.path.endswith("ciao.zip:ciao/rating.mat") and "no rating" in err.reason


def test_ciao_negative_ids_do_not_merge_rows(tmp_path: Path):
    # Keys built as user * (max product + 1) + product collided: (1, -1) and (0, 0) were one pair.
    rating = np.array([[1, -1, 1, 4, 1], [0, 0, 1, 3, 1], [1, -1, 1, 2, 1]], np.int32)
    _write_ciao(CIAO, tmp_path, _mat({"rating": rating}), _mat({"trustnetwork": np.array([[0, 1], [0, 1]])}))
    ds = load_dataset("ciao", tmp_path)
    assert sorted((r.user, r.item, r.rating) for r in ds.iter_interactions()) == [
        ("0", "0", 3.0),
        ("1", "-1", 2.0),
    ]
    assert ds.num_social_edges == 1


def test_ciao_non_integer_mat_values(tmp_path: Path):
    rating = CIAO_RATING.astype(np.float64)
    rating[1, 3] = np.nan
    _write_ciao(CIAO, tmp_path, _mat({"rating": rating}), _mat({"trustnetwork": CIAO_TRUST}))
    err = pytest.raises(DataError, load_dataset, "ciao", tmp_path).value
    assert err.path.endswith("ciao/rating.mat") and "integers" in err.reason


def test_ciao_mat_with_a_bad_data_type_code(tmp_path: Path):
    # scipy's reader indexes its type table with this code unchecked: the process died (SIGSEGV).
    mat = bytearray(_mat({"rating": CIAO_RATING}))
    real_part = mat.rindex(np.int32(5).tobytes() + np.uint32(CIAO_RATING.size * 4).tobytes())
    mat[real_part : real_part + 4] = np.uint32(0xFD05).tobytes()
    _write_ciao(CIAO, tmp_path, bytes(mat), _mat({"trustnetwork": CIAO_TRUST}))
    err = pytest.raises(DataError, load_dataset, "ciao", tmp_path).value
    assert err.path.endswith("ciao/rating.mat") and "not a readable MATLAB .mat file" in err.reason


@pytest.mark.parametrize("user_id", ["\xb2", "9" * 5000], ids=["superscript", "5000-digits"])
def test_odd_numeric_looking_ids_sort_as_strings(tmp_path: Path, user_id: str):
    files = {
        **ML100K.files,
        "u.user": f"{user_id}|31|F|writer|10001\n2|45|M|x|1\n".encode(),
        "u.data": f"{user_id}\t1\t4\t8\n".encode(),
    }
    ML100K.write(tmp_path, files)
    check_dataset(load_dataset("movielens-100k", tmp_path))
