"""Loaders on the real data sets (counts checked against the data sets' READMEs), the ML-1M
fixture, the local format and the synthetic generator."""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_helpers import FIXTURES, load_shared, require_folder

from mtrec.data import RecDataset, available, load_dataset
from mtrec.data.__main__ import main as cli_main


def _pairs(ds: RecDataset) -> np.ndarray:
    return ds.user_idx.astype(np.int64) * ds.num_items + ds.item_idx


# ---- MovieLens 100K ---------------------------------------------------------------------------
def test_movielens_100k_counts_and_records():
    ds = load_shared("movielens-100k", "movielens-100k")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100_000)
    assert ds.explicit and ds.rating_scale == (1.0, 5.0)
    assert sorted(np.unique(ds.values).tolist()) == [1, 2, 3, 4, 5]
    assert ds.timed and ds.timestamps.min() > 8e8
    assert len(ds.categories) == 19 and ds.categories[:2] == ("unknown", "Action")
    toy = ds.items[ds.item_index["1"]]
    assert toy.title == "Toy Story (1995)"
    assert toy.categories == ("Animation", "Children's", "Comedy")
    assert toy.text == "Genres: Animation, Children's, Comedy. Released 01-Jan-1995."
    assert dict(ds.users[ds.user_index["1"]].attributes) == {
        "age": "24",
        "gender": "M",
        "occupation": "technician",
        "zip": "85711",
    }
    # u.item is latin-1: an accented title must come through intact
    assert any("é" in it.title for it in ds.items)
    assert ds.num_social_edges == 0 and ds.notes["cleaning"] == []


def test_movielens_100k_loads_fast():
    root = require_folder("movielens-100k").parent
    start = time.perf_counter()
    load_dataset("movielens-100k", root)
    assert time.perf_counter() - start < 3.0  # about 0.15 s on a quiet 2-core machine


def test_movielens_100k_from_official_zip(tmp_path: Path):
    folder = require_folder("movielens-100k")
    archive = tmp_path / "movielens-100k" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.user", "u.genre"):
            zf.write(folder / name, f"ml-100k/{name}")
    ds = load_dataset("movielens-100k", tmp_path)
    reference = load_shared("movielens-100k", "movielens-100k")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100_000)
    assert np.array_equal(ds.values, reference.values) and ds.items == reference.items


# ---- MovieLens 1M -----------------------------------------------------------------------------
@pytest.fixture
def ml1m_fixture_root(tmp_path: Path) -> Path:
    """The hand-written ML-1M sample in the original format. Stored as *.dat.txt so that no file in
    the repository is named like a real data set file; copied under the loader's names here."""
    folder = tmp_path / "movielens-1m"
    folder.mkdir()
    for src in (FIXTURES / "movielens-1m").glob("*.dat.txt"):
        (folder / src.name.removesuffix(".txt")).write_bytes(src.read_bytes())
    return tmp_path


def test_movielens_1m_fixture(ml1m_fixture_root):
    ds = load_dataset("movielens-1m", ml1m_fixture_root)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (4, 5, 12)
    assert ds.notes["raw"] == {"rating rows": 12, "users": 4, "movies": 6}
    assert ds.notes["cleaning"] == ["movies with no rating: 1 dropped (keep_unrated=True keeps them)"]
    assert dict(ds.users[ds.user_index["4"]].attributes) == {
        "age": "45-49",
        "gender": "F",
        "occupation": "executive/managerial",
        "zip": "02460",
    }
    assert ds.items[ds.item_index["3"]].title == "Café Marlow (1999)"  # latin-1 in the file
    rocket = ds.items[ds.item_index["2"]]
    assert rocket.categories == ("Adventure", "Children's", "Sci-Fi")
    assert rocket.text == "Genres: Adventure, Children's, Sci-Fi. Released 1997."
    assert len(ds.categories) == 18 and ds.timed
    first = ds.interaction(0)
    assert (first.user, first.item, first.rating, first.timestamp) == ("1", "1", 5.0, 978300760)
    assert load_dataset("movielens-1m", ml1m_fixture_root, keep_unrated=True).num_items == 6


def test_movielens_1m_real_movies_and_users(tmp_path: Path):
    # ratings.dat is not in the shared folder: pair the real movies.dat/users.dat with a tiny one.
    folder = require_folder("movielens-1m")
    (tmp_path / "movielens-1m").mkdir()
    for name in ("movies.dat", "users.dat"):
        (tmp_path / "movielens-1m" / name).symlink_to(folder / name)
    (tmp_path / "movielens-1m" / "ratings.dat").write_text(
        "1::1193::5::978300760\n6040::3952::2::956703932\n"
    )
    ds = load_dataset("movielens-1m", tmp_path, keep_unrated=True)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (6040, 3883, 2)
    assert len(ds.categories) == 18  # every genre is one of the README's 18
    assert dict(ds.users[0].attributes) == {
        "age": "Under 18",
        "gender": "F",
        "occupation": "K-12 student",
        "zip": "48067",
    }


# ---- Last.fm ----------------------------------------------------------------------------------
def test_lastfm_2k_counts_and_records():
    ds = load_shared("lastfm-2k", "lastfm-hetrec2011-2k")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (1892, 17_632, 92_834)
    assert ds.num_social_edges == 25_434 and ds.social_kind == "friend"
    edges = set(zip(ds.social_src.tolist(), ds.social_dst.tolist()))
    assert all((b, a) in edges for a, b in edges)  # 12,717 friendships, both directions given
    assert not ds.explicit and ds.timestamps is None and ds.rating_scale is None
    assert ds.values.min() >= 1 and ds.values.max() == 352_698
    assert len(np.unique(_pairs(ds))) == ds.num_interactions
    assert len(ds.categories) == 50 and ds.categories[:3] == ("rock", "pop", "alternative")
    metallica = ds.items[ds.item_index["707"]]
    assert metallica.title == "Metallica" and metallica.text.startswith("Metallica. Tags: ")
    assert len(metallica.text.split("Tags: ")[1].split(", ")) == 5
    assert set(metallica.categories) <= set(ds.categories) and "metal" in metallica.categories
    assert ds.notes["cleaning"] == ["ignored 1,538 tag assignments on 390 artists absent from artists.dat"]


def test_lastfm_category_vocabulary_size_is_an_option():
    require_folder("lastfm-hetrec2011-2k")
    ds = load_dataset("lastfm-2k", num_categories=10)
    assert len(ds.categories) == 10
    assert all(set(it.categories) <= set(ds.categories) for it in ds.items)


# ---- Ciao / Epinions --------------------------------------------------------------------------
def test_ciao_raw_and_cleaned_counts():
    ds = load_shared("ciao", "ciao-epinions-tang2012")
    assert ds.notes["raw"] == {
        "rating rows": 284_086,
        "users": 7375,
        "products": 105_114,
        "categories": 28,
        "trust rows": 111_781,
    }
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (7375, 105_096, 282_619)
    assert ds.num_social_edges == 111_781 and ds.social_kind == "trust"
    assert set(np.unique(ds.values).tolist()) == {1, 2, 3, 4, 5} and ds.timestamps is None
    assert len(np.unique(_pairs(ds))) == ds.num_interactions  # duplicates resolved
    assert len(ds.categories) == 28 and "Ciao Café" in ds.categories
    assert ds.notes["cleaning"][:2] == [
        "dropped 34 ratings outside 1-5 (value 0)",
        (
            "1,249 (user, product) pairs occur more than once (455 with differing ratings): "
            "kept the last row in file order, dropped 1,433 rows"
        ),
    ]
    assert sum(len(it.categories) > 1 for it in ds.items) == 99
    item = ds.items[ds.item_index["1"]]
    assert item.title == "DVDs product 1" and item.categories == ("DVDs",)


def test_epinions_raw_and_cleaned_counts():
    require_folder("ciao-epinions-tang2012")
    start = time.perf_counter()
    ds = load_shared("epinions", "ciao-epinions-tang2012")
    elapsed = time.perf_counter() - start
    assert ds.notes["raw"] == {
        "rating rows": 922_267,
        "users": 22_164,
        "products": 296_277,
        "categories": 27,
        "trust rows": 355_754,
    }
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (22_164, 296_277, 912_441)
    assert ds.num_social_edges == 355_407
    assert not (ds.social_src == ds.social_dst).any()
    assert (
        len(np.unique(ds.social_src.astype(np.int64) * ds.num_users + ds.social_dst)) == ds.num_social_edges
    )
    assert len(np.unique(_pairs(ds))) == ds.num_interactions
    assert len(ds.categories) == 27
    assert elapsed < 20.0  # about 2.5 s on a quiet 2-core machine


# ---- local format -----------------------------------------------------------------------------
def _write_local(ds: RecDataset, folder: Path, form: str) -> None:
    """Write `ds` in the local format (`form` = csv or jsonl)."""
    folder.mkdir(parents=True)
    value = "rating" if ds.explicit else "weight"
    tables = {
        "items": [
            {"item_id": it.id, "title": it.title, "text": it.text, "categories": "|".join(it.categories)}
            for it in ds.items
        ],
        "interactions": [
            {
                "user_id": r.user,
                "item_id": r.item,
                value: r.rating if ds.explicit else r.weight,
                "timestamp": r.timestamp,
            }
            for r in ds.iter_interactions()
        ],
        "users": [{"user_id": u.id, **u.attributes} for u in ds.users],
        "social": [{"source": e.source, "target": e.target, "kind": e.kind} for e in ds.social_edges()],
    }
    for stem, rows in tables.items():
        if form == "jsonl":
            (folder / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import csv

            with open(folder / f"{stem}.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


@pytest.mark.parametrize("form", ["csv", "jsonl"])
def test_local_format_round_trip(tmp_path: Path, form: str):
    original = load_dataset("synthetic", num_users=30, num_items=40, seed=3)
    _write_local(original, tmp_path / "shop", form)
    ds = load_dataset(f"local:{tmp_path / 'shop'}")
    assert ds.items == original.items and ds.users == original.users
    assert list(ds.iter_interactions()) == list(original.iter_interactions())
    assert list(ds.social_edges()) == list(original.social_edges())
    assert ds.categories == tuple(sorted(original.categories)) and ds.rating_scale == (1.0, 5.0)


def test_local_format_documented_example(tmp_path: Path):
    folder = tmp_path / "my-shop"
    folder.mkdir()
    (folder / "items.csv").write_text(
        "item_id,title,text,categories\n"
        'b1,Dune,"A desert planet, a noble family and a spice.",sci-fi|classic\n'
        "b2,Emma,Matchmaking in a country village.,romance|classic\n"
        "b3,Neuromancer,A hacker's last job.,sci-fi\n"
    )
    (folder / "interactions.csv").write_text(
        "user_id,item_id,rating,timestamp\n"
        "u1,b1,5,2024-01-03T10:00:00\nu1,b3,4,2024-01-09T21:15:00\nu2,b2,3,1704902400\n"
    )
    (folder / "social.jsonl").write_text(
        '{"source": "u1", "target": "u2", "kind": "friend"}\n'
        '{"source": "u2", "target": "u1", "kind": "friend"}\n'
    )
    ds = load_dataset(f"local:{folder}")
    assert (ds.num_users, ds.num_items, ds.num_interactions, ds.num_social_edges) == (2, 3, 3, 2)
    assert ds.items[0].text == "A desert planet, a noble family and a spice."
    assert ds.items[0].categories == ("sci-fi", "classic")
    assert ds.interaction(0).timestamp == 1704276000  # 2024-01-03T10:00:00Z
    assert ds.users[0].attributes == {}  # no users file: created without attributes
    assert ds.categories == ("classic", "romance", "sci-fi")


# ---- synthetic --------------------------------------------------------------------------------
def _same(a: RecDataset, b: RecDataset) -> bool:
    return (
        a.items == b.items
        and a.users == b.users
        and all(
            np.array_equal(x, y)
            for x, y in [
                (a.user_idx, b.user_idx),
                (a.item_idx, b.item_idx),
                (a.values, b.values),
                (a.timestamps, b.timestamps),
                (a.social_src, b.social_src),
                (a.social_dst, b.social_dst),
            ]
        )
    )


def test_synthetic_is_deterministic_by_seed():
    a, b = load_dataset("synthetic", seed=7), load_dataset("synthetic", seed=7)
    assert _same(a, b)
    assert not _same(a, load_dataset("synthetic", seed=8))


def test_synthetic_shape_and_structure():
    ds = load_dataset("synthetic")
    assert (ds.num_users, ds.num_items, len(ds.categories)) == (200, 300, 8)
    per_user = np.bincount(ds.user_idx, minlength=ds.num_users)
    assert per_user.min() >= 15 and per_user.max() <= 40
    assert set(np.unique(ds.values).tolist()) <= {1, 2, 3, 4, 5}
    assert ds.items[16].title.startswith("Item 17: a ") and ds.items[16].categories[0] in ds.items[16].text
    # timestamps strictly increase along each user's history
    order = np.lexsort((ds.timestamps, ds.user_idx))
    same_user = ds.user_idx[order][1:] == ds.user_idx[order][:-1]
    assert (np.diff(ds.timestamps[order])[same_user] > 0).all()
    assert len(np.unique(_pairs(ds))) == ds.num_interactions


def test_synthetic_friends_share_tastes():
    ds = load_dataset("synthetic", num_users=300)
    # a user's taste profile as seen in the data: the category mix of what they consumed
    cats = {c: k for k, c in enumerate(ds.categories)}
    profile = np.zeros((ds.num_users, len(cats)))
    for u, i in zip(ds.user_idx, ds.item_idx):
        profile[u, cats[ds.items[i].categories[0]]] += 1
    profile /= np.linalg.norm(profile, axis=1, keepdims=True)
    friends = (profile[ds.social_src] * profile[ds.social_dst]).sum(1).mean()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, ds.num_users, (2, 5000))
    strangers = (profile[a] * profile[b]).sum(1).mean()
    assert friends > strangers + 0.1


def test_synthetic_implicit_and_without_social():
    ds = load_dataset("synthetic", explicit=False, social=False, num_users=20)
    assert not ds.explicit and ds.rating_scale is None and ds.values.min() >= 1
    assert ds.num_social_edges == 0


# ---- registry and describe --------------------------------------------------------------------
def test_every_loader_is_registered():
    assert set(available()) >= {
        "movielens-100k",
        "movielens-1m",
        "lastfm-2k",
        "ciao",
        "epinions",
        "local",
        "synthetic",
    }


def _rows(out: str) -> dict[str, str]:
    """label -> value of the "  label   value" lines of `describe`."""
    rows = (re.match(r"  (\S.*?)\s{2,}(\S.*)$", line) for line in out.splitlines())
    return {m.group(1): m.group(2) for m in rows if m}


def test_describe_prints_sizes_and_split(capsys):
    root = require_folder("movielens-100k").parent
    assert cli_main(["describe", "movielens-100k", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert {k: rows[k] for k in ("users", "items", "interactions", "density", "ratings", "categories")} == {
        "users": "943",
        "items": "1,682",
        "interactions": "100,000",
        "density": "6.305%",
        "ratings": "explicit 1-5",
        "categories": "19",
    }
    assert "leave-one-out split (chronological)" in out
    assert (rows["train"], rows["valid"], rows["test"]) == ("98,114", "943", "943")
    numbers = [line for line in out.splitlines() if re.search(r"  [\d,.]+%?$", line)]
    assert len({len(line) for line in numbers}) == 1  # numbers right-aligned in one column


def test_describe_shows_cleaning_notes(capsys):
    require_folder("ciao-epinions-tang2012")
    assert cli_main(["describe", "ciao"]) == 0
    out = capsys.readouterr().out
    assert "raw counts (before cleaning)" in out and "284,086" in out
    assert "  - dropped 34 ratings outside 1-5 (value 0)" in out
    assert "random order, seed 0" in out and "7,375" in out


def test_describe_reports_bad_data_without_traceback(tmp_path: Path, capsys):
    assert cli_main(["describe", "movielens-100k", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "u.data" in err and "download=True" in err
    assert Counter(err)["\n"] == 1
