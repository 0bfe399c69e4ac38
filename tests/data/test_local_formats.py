"""The local format in each of its forms: CSV, JSONL, Parquet, a `Dataset.save_to_disk` folder per
table, and a saved `DatasetDict` (``hf:<folder>``). Every form of the same tiny data set loads to the
same contents, and a bad row in each form is reported with the file, the line or row, and the field.
Parquet and Arrow go through the `datasets` library; nothing is downloaded (HF_DATASETS_OFFLINE)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from mtrec.data import DataError, load_dataset
from mtrec.data.registry import UnknownDatasetError

TABLES = {
    "items": [
        {"item_id": "b1", "title": "Dune", "text": "A desert planet, a noble family and a spice.",
         "categories": "sci-fi|classic"},
        {"item_id": "b2", "title": "Emma", "text": "Matchmaking in a country village.",
         "categories": "romance|classic"},
        {"item_id": "b3", "title": "Neuromancer", "text": "A hacker's last job.", "categories": "sci-fi"},
    ],
    "interactions": [
        {"user_id": "u1", "item_id": "b1", "rating": 5.0, "timestamp": "2024-01-03T10:00:00"},
        {"user_id": "u1", "item_id": "b3", "rating": 4.0, "timestamp": "2024-01-09T21:15:00"},
        {"user_id": "u2", "item_id": "b2", "rating": 3.5, "timestamp": "1704902400"},
        {"user_id": "u3", "item_id": "b1", "rating": 2.0, "timestamp": "1704902500"},
    ],
    "users": [{"user_id": "u1", "country": "NL"}, {"user_id": "u2", "country": "IE"}],
    "social": [{"source": "u1", "target": "u2", "kind": "trust"}, {"source": "u2", "target": "u1", "kind": "trust"}],
}
FORMATS = ("csv", "jsonl", "parquet", "save_to_disk")


def write_table(folder: Path, name: str, rows: list[dict], fmt: str) -> Path:
    """One table of the local format in form `fmt`; returns the file (or folder) written."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        path = folder / f"{name}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path = folder / name
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_folder(folder: Path, fmt: str, **replace: list[dict]) -> Path:
    for name, rows in {**TABLES, **replace}.items():
        write_table(folder, name, rows, fmt)
    return folder


def check_contents(ds) -> None:
    """The real contents of the tiny data set, whatever form it was read from."""
    assert [u.id for u in ds.users] == ["u1", "u2", "u3"]
    assert [u.attributes for u in ds.users] == [{"country": "NL"}, {"country": "IE"}, {}]
    assert [(it.id, it.title, it.text, it.categories) for it in ds.items] == [
        ("b1", "Dune", "A desert planet, a noble family and a spice.", ("sci-fi", "classic")),
        ("b2", "Emma", "Matchmaking in a country village.", ("romance", "classic")),
        ("b3", "Neuromancer", "A hacker's last job.", ("sci-fi",)),
    ]
    pairs = sorted(zip((ds.users[u].id for u in ds.user_idx), (ds.items[i].id for i in ds.item_idx),
                       ds.values.tolist(), ds.timestamps.tolist()))
    assert pairs == [("u1", "b1", 5.0, 1704276000), ("u1", "b3", 4.0, 1704834900),
                     ("u2", "b2", 3.5, 1704902400), ("u3", "b1", 2.0, 1704902500)]
    assert ds.explicit and ds.rating_scale == (2.0, 5.0)
    assert ds.categories == ("classic", "romance", "sci-fi")
    edges = sorted((ds.users[s].id, ds.users[d].id) for s, d in zip(ds.social_src, ds.social_dst))
    assert edges == [("u1", "u2"), ("u2", "u1")] and ds.social_kind == "trust"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_form_loads_the_same_contents(tmp_path, fmt):
    ds = load_dataset(f"local:{write_folder(tmp_path / fmt, fmt)}")
    check_contents(ds)
    assert ds.name == f"local:{fmt}"


def test_forms_mix_within_one_folder(tmp_path):
    folder = tmp_path / "mixed"
    for name, fmt in zip(TABLES, FORMATS):  # items csv, interactions jsonl, users parquet, social arrow
        write_table(folder, name, TABLES[name], fmt)
    check_contents(load_dataset(f"local:{folder}"))


def test_parquet_keeps_arrow_types(tmp_path):
    """Integer ids, int64 timestamps, list categories and an implicit weight column, as Arrow types."""
    folder = tmp_path / "typed"
    write_table(folder, "items", [{"item_id": 10, "title": "A", "categories": ["x", "y"]},
                                  {"item_id": 2, "title": "B", "categories": []}], "parquet")
    write_table(folder, "interactions", [{"user_id": 7, "item_id": 10, "weight": 3, "timestamp": 100},
                                         {"user_id": 7, "item_id": 2, "weight": 1, "timestamp": 50}], "parquet")
    ds = load_dataset(f"local:{folder}")
    assert [it.id for it in ds.items] == ["2", "10"]  # integer ids sort numerically
    assert [it.categories for it in ds.items] == [(), ("x", "y")]
    assert not ds.explicit and sorted(ds.values.tolist()) == [1.0, 3.0]
    assert sorted(ds.timestamps.tolist()) == [50, 100]


def test_hf_dataset_dict(tmp_path):
    folder = tmp_path / "shop"
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in TABLES.items()}).save_to_disk(
        str(folder)
    )
    ds = load_dataset(f"hf:{folder}")
    check_contents(ds)
    assert ds.name == "hf:shop"
    assert load_dataset(f"local:{folder}").num_interactions == 4  # the same folder, by the other prefix


def test_hf_dataset_dict_with_other_splits(tmp_path):
    folder = tmp_path / "splits"
    table = datasets.Dataset.from_list(TABLES["interactions"])
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(folder))
    with pytest.raises(DataError) as info:
        load_dataset(f"hf:{folder}")
    assert info.value.path.endswith("dataset_dict.json")
    assert "'train', 'test'" in str(info.value) and "items, interactions (required)" in str(info.value)


def test_single_saved_dataset_is_not_a_data_set(tmp_path):
    folder = tmp_path / "one"
    datasets.Dataset.from_list(TABLES["interactions"]).save_to_disk(str(folder))
    with pytest.raises(DataError, match="single Dataset.*DatasetDict with the splits items and interactions"):
        load_dataset(f"hf:{folder}")


# ---- bad rows: file, line or row, field ------------------------------------------------------
BAD_RATING = [*TABLES["interactions"][:2], {**TABLES["interactions"][2], "rating": "lots"}, TABLES["interactions"][3]]


@pytest.mark.parametrize(("fmt", "where"), [("csv", ("interactions.csv", "line", 4)),
                                            ("jsonl", ("interactions.jsonl", "line", 3)),
                                            ("parquet", ("interactions.parquet", "row", 3)),
                                            ("save_to_disk", ("interactions", "row", 3))])
def test_bad_row_names_file_row_and_field(tmp_path, fmt, where):
    name, unit, position = where
    rows = BAD_RATING
    if fmt in ("parquet", "save_to_disk"):  # an Arrow column has one type: all ratings as text
        rows = [{**r, "rating": str(r["rating"])} for r in rows]
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{write_folder(tmp_path / fmt, fmt, interactions=rows)}")
    err = info.value
    assert Path(err.path).name == name and err.line == position and err.unit == unit
    assert str(err).startswith(f"{err.path}, {unit} {position}: field 'rating' is 'lots'; expected a number")


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_table_null_and_unknown_id(tmp_path, fmt):
    items = [*TABLES["items"][:2], {**TABLES["items"][2], "title": None}]
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{write_folder(tmp_path / 'null', fmt, items=items)}")
    assert info.value.line == 3 and "no value in column(s) title" in str(info.value)
    rows = [*TABLES["interactions"], {**TABLES["interactions"][0], "item_id": "b9"}]
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{write_folder(tmp_path / 'unknown', fmt, interactions=rows)}")
    assert info.value.line == 5 and "unknown item_id 'b9'" in str(info.value)
    assert "listed in items" in str(info.value)


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_table_missing_column(tmp_path, fmt):
    rows = [{k: v for k, v in r.items() if k != "item_id"} for r in TABLES["interactions"]]
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{write_folder(tmp_path / fmt, fmt, interactions=rows)}")
    assert info.value.line is None
    assert "lacks the column(s) item_id; expected columns: user_id, item_id, rating (optional)" in str(info.value)
    assert "found: user_id, rating, timestamp" in str(info.value)


def test_unreadable_parquet_and_folder(tmp_path):
    folder = write_folder(tmp_path / "bad", "csv")
    (folder / "users.csv").unlink()
    (folder / "users.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{folder}")
    assert info.value.path.endswith("users.parquet") and "not readable as a Parquet file" in str(info.value)
    (folder / "users.parquet").unlink()
    (folder / "users").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' Dataset.save_to_disk"):
        load_dataset(f"local:{folder}")


def test_two_forms_of_one_table(tmp_path):
    folder = write_folder(tmp_path / "two", "csv")
    write_table(folder, "items", TABLES["items"], "parquet")
    with pytest.raises(DataError, match="both items.csv and items.parquet exist; keep one of them"):
        load_dataset(f"local:{folder}")


def test_missing_table_lists_every_form(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DataError, match=r"missing items.csv\|items.jsonl\|items.parquet\|items/"):
        load_dataset(f"local:{folder}")


def test_unknown_name_lists_the_choices():
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("movielens100k")
    message = str(info.value)
    assert message.startswith("unknown data set 'movielens100k' (did you mean 'movielens-100k'?); choose from:")
    assert "movielens-100k" in message and "local:<folder>" in message and "hf:<folder>" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, DataError)
    for name in ("local", "local:", "hf:"):
        with pytest.raises(UnknownDatasetError):
            load_dataset(name)


def test_new_reader_reads_the_csv_form_like_before(tmp_path):
    """CSV and JSONL still go through the strict stdlib readers: same values as the table forms."""
    a = load_dataset(f"local:{write_folder(tmp_path / 'c', 'csv')}")
    b = load_dataset(f"local:{write_folder(tmp_path / 'p', 'parquet')}")
    for field in ("user_idx", "item_idx", "values", "timestamps", "social_src", "social_dst"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ---- described: items whose title and text say nothing about them ----------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_described_column(tmp_path, fmt):
    values = ["false", "", "1"] if fmt == "csv" else [False, None, 1]
    items = [{**row, "described": v} for row, v in zip(TABLES["items"], values)]
    ds = load_dataset(f"local:{write_folder(tmp_path / fmt, fmt, items=items)}")
    assert [it.described for it in ds.items] == [False, True, True]
    assert all(it.described for it in load_dataset(f"local:{write_folder(tmp_path / 'plain', fmt)}").items)


def test_bad_described_value_names_file_line_and_field(tmp_path):
    items = [*TABLES["items"][:2], {**TABLES["items"][2], "described": "maybe"}]
    items = [{**r, "described": r.get("described", "")} for r in items]
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{write_folder(tmp_path / 'csv', 'csv', items=items)}")
    err = info.value
    assert Path(err.path).name == "items.csv" and err.line == 4
    assert "field 'described' is 'maybe'; expected true or false" in str(err)
