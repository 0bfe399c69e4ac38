"""Small, strict readers shared by every loader.

Everything here turns bad input into a `DataError` that names the file (or ``archive.zip:member``),
the 1-based line where one applies, and what was expected. Parsing uses plain ``str.split`` and the
``csv``/``json`` modules, never pandas, so no third-party traceback reaches the user. Parquet files
and ``datasets`` folders (``Dataset.save_to_disk``) are read through the ``datasets`` library
(`read_arrow_table`); their errors name the 1-based row. Numeric
columns are converted in one fast pass; only when that pass fails do we walk the column again to
find the offending line, so the common case stays fast (a million rows in about a second).
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import NoReturn

import numpy as np

from mtrec.data.errors import DataError

DATA_DIR_HINT = (
    "MTREC_DATA_DIR (or the `root` argument) must point to the folder that holds the data-set folders"
)

# Delimiters we try when a line has the wrong number of fields, to suggest the likely mistake.
_CANDIDATE_DELIMITERS = ("\t", ",", ";", "|", "::", " ")

try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: zipfile cannot raise it either
    LZMAError = zlib.error

# What zipfile raises on a damaged archive besides BadZipFile: offsets out of range (ValueError),
# compressed data cut short or corrupt (EOFError, zlib.error, LZMAError), an entry it cannot read
# (NotImplementedError: unknown method or version; RuntimeError: encrypted).
_DAMAGED_ZIP = (
    zipfile.BadZipFile,
    ValueError,
    EOFError,
    zlib.error,
    LZMAError,
    NotImplementedError,
    RuntimeError,
)


# ---- where a file comes from -----------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A file on disk, or a member of a zip archive (``member`` set).

    ``unit`` is what error positions count: ``line`` in text files, ``row`` in tables read through
    `datasets` (Parquet files, ``save_to_disk`` folders).
    """

    path: Path
    member: str | None = None
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @property
    def filename(self) -> str:
        if self.member:
            return PurePosixPath(self.member).name
        return self.path.name + ("/" if self.path.is_dir() else "")  # a save_to_disk folder

    def read_bytes(self) -> bytes:
        """The raw bytes; a missing file or member is a `DataError`."""
        try:
            if self.member is None:
                return self.path.read_bytes()
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except FileNotFoundError:
            raise DataError(self, f"file not found; {DATA_DIR_HINT}") from None
        except IsADirectoryError:
            raise DataError(self, "expected a file, found a folder") from None
        except KeyError:
            raise DataError(self, "member not found in the archive") from None
        except _DAMAGED_ZIP as exc:
            if self.member is None:
                raise
            raise DataError(
                self.path, f"not a readable zip archive ({str(exc) or type(exc).__name__})"
            ) from None
        except OSError as exc:  # permissions, I/O errors
            if self.member is not None:  # e.g. a damaged directory's seek out of range: its member names
                # cannot be trusted either, so the error names the archive
                raise DataError(self.path, f"cannot read the archive ({exc.strerror or exc})") from None
            raise DataError(self, f"cannot read the file ({exc.strerror or exc})") from None


def zip_member(archive: Path, filename: str) -> str | None:
    """The member of `archive` whose base name is `filename` (shallowest first), or None.

    Matching by base name accepts both ``ml-100k/u.data`` and a flat ``u.data`` layout.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if PurePosixPath(n).name == filename]
    except _DAMAGED_ZIP as exc:
        raise DataError(archive, f"not a readable zip archive ({str(exc) or type(exc).__name__})") from None
    return min(names, key=lambda n: (n.count("/"), n)) if names else None


def find_source(folder: Path, filename: str, archives: Sequence[str] = ()) -> Source | None:
    """`folder/filename` if it exists, else that file inside one of the `archives` in `folder`."""
    path = folder / filename
    if path.is_file():
        return Source(path)
    for name in archives:
        archive = folder / name
        if archive.is_file():
            member = zip_member(archive, filename)
            if member is not None:
                return Source(archive, member)
    return None


def require_sources(
    folder: Path,
    dataset: str,
    required: Sequence[str],
    archives: Sequence[str] = (),
    hint: str = "",
) -> dict[str, Source]:
    """Locate every file in `required` (extracted, or inside one of `archives`) or raise.

    The error lists what is missing, everything the data set needs, and where it must be.
    """
    found = {name: find_source(folder, name, archives) for name in required}
    missing = [name for name, src in found.items() if src is None]
    if missing:
        raise missing_files_error(folder, dataset, missing, required, archives, hint)
    return {name: src for name, src in found.items() if src is not None}


def missing_files_error(
    folder: Path,
    dataset: str,
    missing: Sequence[str],
    required: Sequence[str],
    archives: Sequence[str] = (),
    hint: str = "",
    under_data_dir: bool = True,
) -> DataError:
    """The `DataError` for files a data set needs but the folder lacks.

    `under_data_dir`: the folder lies under the data folder (say how to point MTREC_DATA_DIR at it).
    """
    where = "folder not found" if not folder.is_dir() else f"missing {', '.join(missing)}"
    alt = f" (or the official archive {' / '.join(archives)} in that folder)" if archives else ""
    message = f"{where}. Data set {dataset!r} expects the folder {folder.name}/ to hold: "
    message += f"{', '.join(required)}{alt}."
    if under_data_dir:
        message += f" {DATA_DIR_HINT} (now: {folder.parent})."
    return DataError(folder, message + (f" {hint}" if hint else ""))


# ---- text ------------------------------------------------------------------------------------
def read_text(source: Source, encoding: str = "utf-8", what: str = "") -> str:
    """Decode `source` with `encoding`; newlines become ``\\n``. Empty files are an error.

    Args:
        source: the file.
        encoding: e.g. ``utf-8`` (a byte-order mark is accepted) or ``latin-1``.
        what: a short description of the expected content, used in error messages.
    """
    data = source.read_bytes()
    if not data.strip():
        raise DataError(source, f"file is empty; expected {what or 'data'}")
    codec = "utf-8-sig" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            source,
            f"byte 0x{data[exc.start]:02x} is not valid {encoding}; expected {encoding} text "
            f"(is the file in another encoding, e.g. latin-1 or utf-8?)",
            line,
        ) from None
    # Split on \n only: str.splitlines() would also break latin-1 text at \x85 and \x1c.
    return text.replace("\r\n", "\n")


def describe_delimiter(delimiter: str) -> str:
    """``tab-separated``, ``comma-separated``, ``'::'-separated`` ..."""
    names = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}
    return f"{names[delimiter]}-separated" if delimiter in names else f"{delimiter!r}-separated"


def _show(delimiter: str) -> str:
    return {"\t": "a tab", " ": "a space"}.get(delimiter, repr(delimiter))


def field_count_error(
    source: Source, line_no: int, line: str, delimiter: str, columns: Sequence[str], found: int
) -> DataError:
    """Wrong number of fields on a line, with a guess at the delimiter actually used."""
    message = (
        f"expected {len(columns)} {describe_delimiter(delimiter)} fields ({', '.join(columns)}), "
        f"found {found}"
    )
    for other in _CANDIDATE_DELIMITERS:
        if other != delimiter and other in line and len(line.split(other)) == len(columns):
            message += f" — is the delimiter {_show(other)}?"
            break
    return DataError(source, message, line_no)


# ---- delimited tables ------------------------------------------------------------------------
class Table:
    """Rows of a delimited text file, each with exactly ``len(columns)`` fields.

    ``columns`` are human-readable field names (``"user id"``); they appear in error messages
    and select columns in `strings`, `ints`, `floats` and `lookup`. Fields are kept in one flat
    list (row-major) because slicing a column out of it is far cheaper than transposing rows.
    """

    def __init__(self, source: Source, columns: Sequence[str], fields: list[str], line_nos: Sequence[int]):
        self.source = source
        self.columns = tuple(columns)
        self._fields = fields
        self._line_nos = line_nos

    def __len__(self) -> int:
        return len(self._line_nos)

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, fields) for every data row."""
        w = len(self.columns)
        for row, line_no in enumerate(self._line_nos):
            yield line_no, self._fields[row * w : (row + 1) * w]

    def line(self, row: int) -> int:
        """The 1-based file line of data row `row`."""
        return self._line_nos[row]

    def strings(self, column: str) -> list[str]:
        """One column as strings."""
        return self._fields[self._position(column) :: len(self.columns)]

    def ints(self, column: str) -> np.ndarray:
        """One column as int64; a non-integer field is a `DataError` naming line and column."""
        return self._convert(column, int, np.int64, "an integer")

    def floats(self, column: str) -> np.ndarray:
        """One column as float64; non-numbers and nan/inf are a `DataError`."""
        values = self._convert(column, float, np.float64, "a number")
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            self._raise_bad(column, int(bad[0]), "a finite number")
        return values

    def lookup(self, column: str, index: Mapping[str, int], what: str, defined_in: str) -> np.ndarray:
        """Map the ids in `column` to positions with `index`; an unknown id is a `DataError`.

        Args:
            column: the id column.
            index: id -> position of the known ids.
            what: e.g. ``"item id"``.
            defined_in: the file that defines the valid ids, named in the error.
        """
        values = self.strings(column)
        try:
            return np.fromiter(map(index.__getitem__, values), np.int64, len(values))
        except KeyError:
            row = next(i for i, v in enumerate(values) if v not in index)
            raise unknown_id_error(self.source, self.line(row), what, values[row], defined_in) from None

    def require_unique(self, column: str, what: str | None = None) -> None:
        """A value of `column` seen on an earlier row is a `DataError` naming both lines."""
        values = self.strings(column)
        if len(set(values)) == len(values):
            return
        seen: dict[str, int] = {}
        for row, value in enumerate(values):
            if value in seen:
                raise DataError(
                    self.source,
                    f"{what or column} {value!r} repeats line {self.line(seen[value])}; "
                    f"each {what or column} must be listed once",
                    self.line(row),
                )
            seen[value] = row

    def _position(self, column: str) -> int:
        try:
            return self.columns.index(column)
        except ValueError:
            raise KeyError(f"{self.source}: no column {column!r}; columns: {self.columns}") from None

    def _convert(self, column: str, parse: Callable, dtype, expected: str) -> np.ndarray:
        values = self.strings(column)
        try:
            return np.fromiter(map(parse, values), dtype, len(values))
        except (ValueError, OverflowError):
            # Slow path, only on failure: find the first field that does not convert.
            for row, value in enumerate(values):
                try:
                    np.array(parse(value), dtype)
                except (ValueError, OverflowError):
                    self._raise_bad(column, row, expected)
            raise

    def _raise_bad(self, column: str, row: int, expected: str) -> NoReturn:
        value = self.strings(column)[row]
        raise DataError(self.source, f"field {column!r} is {value!r}; expected {expected}", self.line(row))


def read_table(
    source: Source,
    columns: Sequence[str],
    delimiter: str,
    encoding: str = "utf-8",
    header: bool = False,
) -> Table:
    """Read a delimited text file whose every non-blank line has ``len(columns)`` fields.

    Args:
        source: the file.
        columns: human-readable names of the fields, in file order.
        delimiter: the field separator (``"\\t"``, ``"|"``, ``"::"`` ...).
        encoding: text encoding of the file.
        header: skip the first non-blank line (a header row).
    """
    what = f"{describe_delimiter(delimiter)} lines ({', '.join(columns)})"
    lines = read_text(source, encoding, what).split("\n")
    line_nos: Sequence[int] = range(1, len(lines) + 1)
    if "" in lines or any(line.isspace() for line in lines if delimiter not in line):
        keep = [k for k, line in enumerate(lines) if line and not line.isspace()]
        lines, line_nos = [lines[k] for k in keep], [k + 1 for k in keep]
    if header:
        lines, line_nos = lines[1:], line_nos[1:]
    if not lines:
        raise DataError(source, f"file has no data rows; expected {what}")
    width = len(columns)
    counts = [line.count(delimiter) for line in lines]
    if counts.count(width - 1) != len(counts):
        k = next(k for k, c in enumerate(counts) if c != width - 1)
        raise field_count_error(source, line_nos[k], lines[k], delimiter, columns, counts[k] + 1)
    if len(delimiter) == 1:
        fields = delimiter.join(lines).split(delimiter)
    else:  # joining first would let "x:" + "::" + ":y" split as "x", "", "y"
        fields = list(chain.from_iterable(line.split(delimiter) for line in lines))
    return Table(source, columns, fields, line_nos)


def unknown_id_error(
    source: Source | str, line: int | None, what: str, value: str, defined_in: str
) -> DataError:
    """An id that the defining file does not list."""
    return DataError(
        source, f"unknown {what} {value!r}: the valid ids are those listed in {defined_in}", line
    )


# ---- records with named columns (CSV with header, JSON lines) --------------------------------
def iter_csv_records(
    source: Source, required: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row dict) for a comma-separated file with a header row.

    The header must name every column in `required`; extra columns are kept in the dict.
    Quoted fields may hold commas and newlines (the ``csv`` module's rules).
    """
    text = read_text(source, "utf-8", f"a CSV file with a header row ({', '.join(required)})")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise DataError(source, f"not valid CSV ({exc}); expected a header row", 1) from None
    except StopIteration:  # nothing but a byte-order mark
        raise DataError(
            source, f"file is empty; expected a CSV file with a header row ({', '.join(required)})"
        ) from None
    _check_header(source, header, required, optional)
    start = reader.line_num + 1
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                if len(fields) != len(header):
                    raise field_count_error(source, start, ",".join(fields), ",", header, len(fields))
                yield start, dict(zip(header, fields))
            start = reader.line_num + 1
    except csv.Error as exc:  # e.g. a quote left open until the end of the file
        raise DataError(source, f"not valid CSV ({exc}); expected comma-separated fields", start) from None


def _check_header(
    source: Source, header: Sequence[str], required: Sequence[str], optional: Sequence[str]
) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        expected = ", ".join(list(required) + [f"{c} (optional)" for c in optional])
        used = [d for d in _CANDIDATE_DELIMITERS if len(header) == 1 and d != "," and d in header[0]]
        hint = f" — the header seems to use {_show(used[0])}; columns must be comma-separated" if used else ""
        raise DataError(
            source,
            f"header lacks the column(s) {', '.join(missing)}; expected columns: {expected}; "
            f"found: {', '.join(header)}{hint}",
            1,
        )


def iter_jsonl_records(
    source: Source, required: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, object]]]:
    """(line number, object) for a JSON-lines file: one JSON object per non-blank line.

    Every object must have the keys in `required` (a null value counts as missing).
    """
    text = read_text(source, "utf-8", "one JSON object per line")
    expected = ", ".join(list(required) + [f"{c} (optional)" for c in optional])
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                source,
                f"not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line",
                line_no,
            ) from None
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            reason = str(exc).split(";")[0]
            raise DataError(
                source, f"not readable JSON ({reason}); expected one JSON object per line", line_no
            ) from None
        except RecursionError:
            raise DataError(
                source, "not readable JSON (nested too deeply); expected one JSON object per line", line_no
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                source, f"expected a JSON object with keys {expected}, found {type(record).__name__}", line_no
            )
        missing = [k for k in required if record.get(k) is None]
        if missing:
            raise DataError(
                source, f"missing key(s) {', '.join(missing)}; expected keys: {expected}", line_no
            )
        yield line_no, record


# ---- tables read through `datasets` (Parquet files, save_to_disk folders) --------------------
ARROW_STATE_FILE = "state.json"  # what Dataset.save_to_disk writes beside its .arrow files
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")  # a pandas index that to_parquet stored as a column


def is_arrow_folder(path: Path) -> bool:
    """Whether `path` is a folder written by ``datasets.Dataset.save_to_disk``."""
    return path.is_dir() and (path / ARROW_STATE_FILE).is_file()


def read_arrow_table(source: Source):
    """A Parquet file or a ``Dataset.save_to_disk`` folder as a ``datasets.Dataset``, read offline.

    Parquet goes through ``load_dataset("parquet", data_files=...)`` with a throw-away cache (the
    table is kept in memory, so no copy of the user's data stays in the Hugging Face cache); a folder
    through ``load_from_disk`` (memory-mapped). Anything unreadable is a `DataError` naming the file.
    """
    import datasets  # here, not at the top: only Parquet / Arrow input pays its ~2 s import

    path = source.path
    kind = "a folder written by datasets' Dataset.save_to_disk" if path.is_dir() else "a Parquet file"
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # no "Generating train split" bar for a table of the user's
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="mtrec-parquet-") as cache:
                table = datasets.load_dataset(
                    "parquet", data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
    except Exception as exc:  # noqa: BLE001 - user data: any failure of the reader is bad input
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        cause = exc.__cause__ or exc.__context__  # datasets wraps pyarrow's error: show that one
        if cause is not None and str(cause).strip():
            reason = str(cause).strip().splitlines()[0][:300]
        raise DataError(source, f"not readable as {kind} ({type(exc).__name__}: {reason})") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if not isinstance(table, datasets.Dataset):
        raise DataError(
            source, f"holds a {type(table).__name__} (several tables); expected one table here"
        )
    return table


def iter_table_records(
    source: Source, table, required: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, object]]]:
    """(1-based row, row dict) for a ``datasets.Dataset``, with the rules of `iter_jsonl_records`:
    every column in `required` must exist and hold a value (null counts as missing) in every row;
    extra columns are kept in the dict. Values keep their Arrow types (ints, floats, strings, lists).
    """
    expected = ", ".join(list(required) + [f"{c} (optional)" for c in optional])
    names = [n for n in table.column_names if not _PANDAS_INDEX.fullmatch(n)]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            source,
            f"lacks the column(s) {', '.join(missing)}; expected columns: {expected}; "
            f"found: {', '.join(names)}",
        )
    columns = table.select_columns(names).to_dict()  # columnar: ~100x faster than iterating rows
    for row, values in enumerate(zip(*(columns[n] for n in names)), 1):
        record = dict(zip(names, values))
        empty = [k for k in required if record[k] is None]
        if empty:
            raise DataError(
                source, f"no value in column(s) {', '.join(empty)}; expected columns: {expected}", row
            )
        yield row, record
