"""mtrec's local format: a user's own data in one folder (see docs/data-format.md).

Tables, each in one of these forms (never two for one table):

- ``<table>.csv`` (comma-separated, header row, UTF-8) or ``<table>.jsonl`` (one JSON object per
  line), read by mtrec's strict readers (errors name the line);
- ``<table>.parquet``, or a folder ``<table>/`` written by ``datasets.Dataset.save_to_disk``, read
  through the ``datasets`` library (errors name the 1-based row). A ``DatasetDict`` saved with
  ``save_to_disk`` is such a folder: its splits are the tables (``hf:<folder>`` says so by name).

- ``items``: item_id, title, [text], [categories] (``|``-separated; a list in JSONL), [described]
  (``false`` where title and text say nothing about the item, e.g. a placeholder title)
- ``interactions``: user_id, item_id, and exactly one of rating (explicit) / weight (implicit);
  [timestamp] (unix seconds or ISO 8601; when the column exists every row needs one)
- ``users`` (optional): user_id plus any attribute columns, kept as text
- ``social`` (optional): source, target, [kind] (``friend`` or ``trust``; one kind per data set)

Users named in interactions but absent from the users file are created without attributes.
Repeated (user, item) rows are kept: they are separate events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mtrec.data.errors import DataError
from mtrec.data.readers import (
    Source,
    is_arrow_folder,
    iter_csv_records,
    iter_jsonl_records,
    iter_table_records,
    missing_files_error,
    read_arrow_table,
    unknown_id_error,
)
from mtrec.data.records import Item, RecDataset, User
from mtrec.data.registry import register

ITEM_COLUMNS = (("item_id", "title"), ("text", "categories", "described"))
INTERACTION_COLUMNS = (("user_id", "item_id"), ("rating", "weight", "timestamp"))
USER_COLUMNS = (("user_id",), ())
SOCIAL_COLUMNS = (("source", "target"), ("kind",))
SOCIAL_KINDS = ("friend", "trust")
TABLES = ("items", "interactions", "users", "social")
FORMATS = (".csv", ".jsonl", ".parquet", "/")  # "/": a save_to_disk folder named after the table
DATASET_DICT_FILE = "dataset_dict.json"  # what DatasetDict.save_to_disk writes beside its splits


@register("local")
def load_local(
    folder: Path, rating_scale: tuple[float, float] | None = None, name: str | None = None
) -> RecDataset:
    """Load a folder in the local format (``local:<folder>``, or ``hf:<folder>`` for a DatasetDict).

    Args:
        folder: the folder holding the items/interactions[/users][/social] tables, each a .csv,
            .jsonl or .parquet file or a save_to_disk folder (a saved DatasetDict's splits are such
            folders).
        rating_scale: (min, max) of explicit ratings; default: the smallest and largest rating seen.
        name: the data set's name; default ``local:<folder name>``.
    """
    folder = Path(folder)
    _check_layout(folder)
    items, items_src = _read_items(folder)
    users, users_src = _read_users(folder)
    columns, explicit = _read_interactions(folder, items, users, items_src)
    user_list = list(users.values())
    user_index = {u.id: k for k, u in enumerate(user_list)}
    src, dst, kind = _read_social(folder, user_index)
    values = np.asarray(columns["value"], np.float64)
    if explicit and rating_scale is None and len(values):
        rating_scale = (float(values.min()), float(values.max()))
    return RecDataset(
        name or f"local:{folder.name}",
        user_list,
        items,
        np.fromiter((user_index[u] for u in columns["user"]), np.int64, len(values)),
        np.asarray(columns["item"], np.int64),
        values,
        columns["timestamp"],
        explicit=explicit,
        social_src=src,
        social_dst=dst,
        social_kind=kind,
        categories=sorted({c for it in items for c in it.categories}),
        rating_scale=rating_scale if explicit else None,
        notes={"source": str(folder), "users file": str(users_src) if users_src else "none"},
    )


def _forms(stem: str) -> str:
    return "|".join(f"{stem}{ext}" for ext in FORMATS)


def _check_layout(folder: Path) -> None:
    """A saved DatasetDict must hold only mtrec's tables; a single saved Dataset is not a data set."""
    if is_arrow_folder(folder):
        raise DataError(
            folder,
            "holds a single Dataset (save_to_disk); expected a DatasetDict with the splits items and "
            "interactions (optional: users, social), e.g. DatasetDict({'items': ..., 'interactions': ...})"
            ".save_to_disk(folder). See docs/data-format.md for the format.",
        )
    marker = folder / DATASET_DICT_FILE
    if marker.is_file():
        try:
            splits = json.loads(marker.read_text(encoding="utf-8"))["splits"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise DataError(marker, 'not a readable DatasetDict index; expected {"splits": [...]}') from None
        unknown = [str(s) for s in splits if s not in TABLES]
        if unknown:
            raise DataError(
                marker,
                f"split(s) {', '.join(map(repr, unknown))} are not mtrec tables; the splits must be named "
                f"{', '.join(TABLES[:2])} (required) and {', '.join(TABLES[2:])} (optional)",
            )


def _open(folder: Path, stem: str, columns: tuple, required: bool) -> tuple[Source, Iterator] | None:
    """The records of table `stem` in `folder` (None if optional and absent), in whichever of the
    forms in ``FORMATS`` it is given."""
    found = [folder / f"{stem}{ext}" for ext in FORMATS[:-1] if (folder / f"{stem}{ext}").is_file()]
    found += [folder / stem] if (folder / stem).is_dir() else []
    if len(found) > 1:
        names = [f.name + ("/" if f.is_dir() else "") for f in found]
        both = f"both {names[0]} and {names[1]}" if len(names) == 2 else ", ".join(names) + " all"
        raise DataError(folder, f"{both} exist; keep one of them")
    if not found:
        if required:
            raise missing_files_error(
                folder,
                "local",
                [_forms(stem)],
                [_forms("items"), _forms("interactions")],
                hint="See docs/data-format.md for the format.",
                under_data_dir=False,
            )
        return None
    path = found[0]
    if path.suffix == ".csv" or path.suffix == ".jsonl":
        source = Source(path)
        reader = iter_csv_records if path.suffix == ".csv" else iter_jsonl_records
        return source, reader(source, *columns)
    source = Source(path, unit="row")
    if path.is_dir() and not is_arrow_folder(path):
        raise DataError(
            source, "is a folder, but not one written by datasets' Dataset.save_to_disk (no state.json)"
        )
    return source, iter_table_records(source, read_arrow_table(source), *columns)


def _read_items(folder: Path) -> tuple[list[Item], Source]:
    source, records = _open(folder, "items", ITEM_COLUMNS, required=True)
    items, seen = [], {}
    for line, row in records:
        item_id = _id(row["item_id"], "item_id", source, line)
        if item_id in seen:
            raise DataError(
                source, f"item_id {item_id!r} repeats the item of {source.unit} {seen[item_id]}", line
            )
        seen[item_id] = line
        title = _text(row["title"])
        if not title:
            raise DataError(source, "empty title; every item needs a title", line)
        items.append(
            Item(item_id, title, _text(row.get("text")), _categories(row.get("categories"), source, line),
                 _described(row.get("described"), source, line))
        )
    return items, source


def _read_users(folder: Path) -> tuple[dict[str, User], Source | None]:
    opened = _open(folder, "users", USER_COLUMNS, required=False)
    if opened is None:
        return {}, None
    source, records = opened
    users: dict[str, User] = {}
    for line, row in records:
        user_id = _id(row["user_id"], "user_id", source, line)
        if user_id in users:
            raise DataError(source, f"user_id {user_id!r} appears twice", line)
        attributes = {k: _text(v) for k, v in row.items() if k != "user_id" and v not in (None, "")}
        users[user_id] = User(user_id, attributes)
    return users, source


def _read_interactions(
    folder: Path, items: list[Item], users: dict[str, User], items_src: Source
) -> tuple[dict, bool]:
    """Interaction columns (user ids, item positions, values, timestamps); adds unseen users to `users`."""
    source, records = _open(folder, "interactions", INTERACTION_COLUMNS, required=True)
    item_index = {it.id: k for k, it in enumerate(items)}
    cols: dict[str, list] = {"user": [], "item": [], "value": [], "timestamp": []}
    value_field = None
    untimed_line = timed_line = None  # first line without / with a timestamp
    for line, row in records:
        value_field = value_field or _value_field(row, source, line)  # fixed by the first row
        user_id, item_id = (
            _id(row["user_id"], "user_id", source, line),
            _id(row["item_id"], "item_id", source, line),
        )
        if item_id not in item_index:
            raise unknown_id_error(source, line, "item_id", item_id, items_src.filename)
        if user_id not in users:
            users[user_id] = User(user_id)
        cols["user"].append(user_id)
        cols["item"].append(item_index[item_id])
        cols["value"].append(_number(row.get(value_field), value_field, source, line))
        if row.get("timestamp") in (None, ""):
            untimed_line = untimed_line or line
        else:
            timed_line = timed_line or line
            cols["timestamp"].append(_timestamp(row["timestamp"], source, line))
    if value_field is None:
        raise DataError(source, "no interactions; expected at least one row")
    if timed_line and untimed_line:
        raise DataError(
            source,
            f"no timestamp, while {source.unit} {timed_line} has one; give every row a timestamp or none",
            untimed_line,
        )
    cols["timestamp"] = np.asarray(cols["timestamp"], np.int64) if timed_line else None
    return cols, value_field == "rating"


def _value_field(row: dict, source: Source, line: int) -> str:
    present = [f for f in ("rating", "weight") if f in row]
    if len(present) != 1:
        found = "both" if present else "neither"
        raise DataError(
            source,
            f"expected exactly one of the columns rating (explicit) or weight (implicit), found {found}",
            line,
        )
    return present[0]


def _read_social(folder: Path, user_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, str]:
    opened = _open(folder, "social", SOCIAL_COLUMNS, required=False)
    if opened is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), "friend"
    source, records = opened
    src, dst, kind, kind_line = [], [], None, 0
    for line, row in records:
        this_kind = _text(row.get("kind")) or "friend"
        if this_kind not in SOCIAL_KINDS:
            raise DataError(source, f"kind {this_kind!r}; expected one of {', '.join(SOCIAL_KINDS)}", line)
        if kind is not None and this_kind != kind:
            raise DataError(
                source,
                f"kind {this_kind!r} differs from {kind!r} on {source.unit} {kind_line}; "
                f"a data set holds one kind of social relation",
                line,
            )
        kind, kind_line = this_kind, kind_line or line
        for field, out in (("source", src), ("target", dst)):
            user_id = _id(row[field], field, source, line)
            if user_id not in user_index:
                raise unknown_id_error(
                    source, line, f"user ({field})", user_id, "the users and interactions files"
                )
            out.append(user_index[user_id])
    return np.asarray(src, np.int64), np.asarray(dst, np.int64), kind or "friend"


# ---- field conversion ------------------------------------------------------------------------
def _text(value: object) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value)


def _id(value: object, field: str, source: Source, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(source, f"field {field!r} is {value!r}; expected an id (text or integer)", line)
    text = _text(value)
    if not text:
        raise DataError(source, f"field {field!r} is empty; expected an id", line)
    return text


FLOAT32_MAX = float(np.finfo(np.float32).max)  # RecDataset stores values as float32
INT64_RANGE = (-(2**63), 2**63 - 1)  # and timestamps as int64


def _number(value: object, field: str, source: Source, line: int) -> float:
    try:
        number = float(value) if not isinstance(value, bool) and value not in (None, "") else math.nan
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer beyond float
        number = math.nan
    if not math.isfinite(number):
        raise DataError(source, f"field {field!r} is {value!r}; expected a number", line)
    if abs(number) > FLOAT32_MAX:
        raise DataError(
            source, f"field {field!r} is {value!r}; expected a number between -3.4e38 and 3.4e38", line
        )
    return number


def _timestamp(value: object, source: Source, line: int) -> int:
    """Unix seconds (an integer) or an ISO 8601 date/time (naive times are taken as UTC)."""
    text = _text(value)
    digits = text.removeprefix("-")
    if isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif digits.isdecimal():  # not isdigit(): int() rejects "²"
        seconds = int(text) if len(digits.lstrip("0")) <= 19 else INT64_RANGE[1] + 1  # int() limits digits
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise DataError(
                source, f"field 'timestamp' is {value!r}; expected unix seconds or an ISO 8601 date", line
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = int(moment.timestamp())
    if not INT64_RANGE[0] <= seconds <= INT64_RANGE[1]:
        raise DataError(source, f"field 'timestamp' is {value!r}; expected unix seconds within 64 bits", line)
    return seconds


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _described(value: object, source: Source, line: int) -> bool:
    """The optional ``described`` field: true (the default, also for an empty cell) or false."""
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise DataError(source, f"field 'described' is {value!r}; expected true or false (1/0, yes/no)", line)


def _categories(value: object, source: Source, line: int) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = value.split("|")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise DataError(
            source, f"field 'categories' is {value!r}; expected names separated by '|' (or a JSON list)", line
        )
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
