"""One test per kind of bad input: each error names the file, the line where one applies, and
what was expected. All files are tiny and hand-written in the formats' shapes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from data_helpers import ML100K_FILES, write_files

from mtrec.data import DataError, load_dataset

LASTFM_FILES = {
    "artists.dat": "id\tname\turl\tpictureURL\n1\tThe Fog Horns\thttp://x/1\thttp://x/1.jpg\n"
    "2\tNoon\thttp://x/2\thttp://x/2.jpg\n",
    "tags.dat": "tagID\ttagValue\r\n1\tsea shanty\r\n2\tlo-fi\r\n",
    "user_artists.dat": "userID\tartistID\tweight\r\n2\t1\t50\r\n2\t2\t7\r\n3\t1\t12\r\n",
    "user_friends.dat": "userID\tfriendID\r\n2\t3\r\n3\t2\r\n",
    "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\r\n2\t1\t1\t1\t4\t2009\r\n",
}


def _error(name: str, root: Path, **options) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(name, root, **options)
    return info.value


def _lastfm_root(tmp_path: Path, **overrides: str) -> Path:
    write_files(tmp_path / "lastfm-hetrec2011-2k", {**LASTFM_FILES, **overrides})
    return tmp_path


def test_tiny_fixtures_load(ml100k_root, tmp_path):
    ds = load_dataset("movielens-100k", ml100k_root())
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (2, 3, 4)
    assert ds.items[2].categories == ("Action", "Comedy")
    lastfm = load_dataset("lastfm-2k", _lastfm_root(tmp_path / "l"))
    assert (lastfm.num_users, lastfm.num_items, lastfm.num_interactions, lastfm.num_social_edges) == (
        2,
        2,
        3,
        2,
    )
    assert lastfm.items[0].text == "The Fog Horns. Tags: sea shanty."


# ---- delimited files --------------------------------------------------------------------------
def test_malformed_line(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_data="1\t1\t4\t880000000\n1\t2\t3\n"))
    assert err.path.endswith("movielens-100k/u.data") and err.line == 2
    assert "expected 4 tab-separated fields (user id, item id, rating, timestamp), found 3" in str(err)


def test_wrong_delimiter(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_data="1,1,4,880000000\n1,2,3,880000100\n"))
    assert err.path.endswith("u.data") and err.line == 1
    assert str(err).endswith(
        "u.data, line 1: expected 4 tab-separated fields (user id, item id, rating, timestamp), found 1"
        " — is the delimiter ','?"
    )


def test_error_inside_an_archive_names_archive_and_member(tmp_path):
    folder = tmp_path / "movielens-100k"
    folder.mkdir()
    files = {**ML100K_FILES, "u.data": "1\t1\t4\t880000000\n1\t2\n"}
    with zipfile.ZipFile(folder / "ml-100k.zip", "w") as zf:
        for name, text in files.items():
            zf.writestr(f"ml-100k/{name}", text)
    err = _error("movielens-100k", tmp_path)
    assert err.path == f"{folder / 'ml-100k.zip'}:ml-100k/u.data" and err.line == 2
    assert "found 2" in str(err)


def test_bad_number_names_the_field(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_data="1\t1\t4\t880000000\n1\t2\tfive\t880000100\n"))
    assert err.line == 2 and "field 'rating' is 'five'; expected a number" in str(err)


def test_rating_outside_the_scale(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_data="1\t1\t4\t880000000\n1\t2\t7\t880000100\n"))
    assert err.path.endswith("u.data") and err.line == 2 and "rating 7 is outside the scale 1-5" in str(err)


def test_bad_flag_in_item_file(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_item="1|A (1994)|01-Jan-1994||u|0|yes|0\n"))
    assert err.path.endswith("u.item") and err.line == 1
    assert "genre flag 'Action' is 'yes'; expected 0 or 1" in str(err)


def test_unknown_id_in_interaction_file(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_data="1\t1\t4\t880000000\n\n2\t99\t5\t880000200\n"))
    assert err.path.endswith("u.data") and err.line == 3  # the blank line still counts
    assert "unknown item id '99': the valid ids are those listed in u.item" in str(err)


def test_unknown_id_in_social_file(tmp_path):
    root = _lastfm_root(tmp_path, **{"user_friends.dat": "userID\tfriendID\r\n2\t3\r\n3\t77\r\n"})
    err = _error("lastfm-2k", root)
    assert err.path.endswith("user_friends.dat") and err.line == 3
    assert "unknown user id '77': the valid ids are those listed in user_artists.dat" in str(err)


def test_empty_file(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_user=""))
    assert err.path.endswith("u.user") and err.line is None
    assert "file is empty; expected '|'-separated lines (user id, age, gender, occupation, zip code)" in str(
        err
    )


def test_header_only_file(tmp_path):
    err = _error("lastfm-2k", _lastfm_root(tmp_path, **{"user_artists.dat": "userID\tartistID\tweight\r\n"}))
    assert err.path.endswith("user_artists.dat") and "file has no data rows" in str(err)


def test_wrong_encoding(tmp_path):
    # artists.dat is UTF-8: a latin-1 "é" (byte 0xe9) on line 3 is an error that names that line.
    artists = "id\tname\turl\tpictureURL\n1\tThe Fog Horns\tu\tp\n2\tCaf\xe9 Noon\tu\tp\n".encode("latin-1")
    err = _error("lastfm-2k", _lastfm_root(tmp_path, **{"artists.dat": artists}))
    assert err.path.endswith("artists.dat") and err.line == 3
    assert "byte 0xe9 is not valid utf-8; expected utf-8 text" in str(err)


def test_missing_file(ml100k_root):
    err = _error("movielens-100k", ml100k_root(u_genre=None))
    message = str(err)
    assert err.path.endswith("movielens-100k") and "missing u.genre" in message
    assert "u.data, u.item, u.user, u.genre" in message and "ml-100k.zip" in message
    assert "MTREC_DATA_DIR" in message and "download=True" in message


def test_missing_folder(tmp_path):
    err = _error("epinions", tmp_path)
    assert "folder not found" in str(err) and "epinions.zip, catalog_epinion.txt" in str(err)
    assert "MTREC_DATA_DIR" in str(err)


def test_bad_code_in_ml1m_users(tmp_path):
    write_files(
        tmp_path / "movielens-1m",
        {
            "movies.dat": "1::Quiet Harbor (2000)::Drama\n",
            "users.dat": "1::F::1::10::48067\n2::M::33::16::70072\n",
            "ratings.dat": "1::1::5::978300760\n",
        },
    )
    err = _error("movielens-1m", tmp_path)
    assert err.path.endswith("users.dat") and err.line == 2
    assert "field 'age' is '33'; expected one of the codes 1, 18, 25, 35, 45, 50, 56" in str(err)


# ---- Ciao / Epinions .mat files ---------------------------------------------------------------
def _ciao_root(tmp_path: Path, rating: dict, trust: dict) -> Path:
    folder = tmp_path / "ciao-epinions-tang2012"
    folder.mkdir()
    with zipfile.ZipFile(folder / "ciao.zip", "w") as zf:
        for member, variables in (("ciao/rating.mat", rating), ("ciao/trustnetwork.mat", trust)):
            buffer = io.BytesIO()
            scipy.io.savemat(buffer, variables)
            zf.writestr(member, buffer.getvalue())
    (folder / "catalog_ciao.txt").write_bytes(b"1 DVDs\r\n2 Books\r\n")
    return tmp_path


def test_ciao_tiny_archive_is_cleaned(tmp_path):
    rating = np.array([[1, 10, 1, 4, 1], [1, 10, 1, 2, 1], [2, 11, 2, 0, 1], [2, 12, 2, 5, 1]], np.int32)
    trust = np.array([[1, 2], [2, 2], [1, 3]], np.uint16)
    ds = load_dataset("ciao", _ciao_root(tmp_path, {"rating": rating}, {"trustnetwork": trust}))
    assert [(r.user, r.item, r.rating) for r in ds.iter_interactions()] == [
        ("1", "10", 2.0),
        ("2", "12", 5.0),
    ]
    assert list(zip(ds.social_src.tolist(), ds.social_dst.tolist())) == [(0, 1)]
    assert ds.items[1].title == "Books product 12"
    assert len(ds.notes["cleaning"]) == 5


def test_mat_file_without_the_expected_variable(tmp_path):
    root = _ciao_root(tmp_path, {"ratings_typo": np.ones((2, 5))}, {"trustnetwork": np.ones((1, 2))})
    err = _error("ciao", root)
    assert err.path.endswith("ciao.zip:ciao/rating.mat")
    assert "expected a matrix 'rating' with at least 4 columns; variables found: ratings_typo" in str(err)


def test_catalog_line_malformed(tmp_path):
    root = _ciao_root(tmp_path, {"rating": np.ones((1, 5))}, {"trustnetwork": np.ones((1, 2))})
    (root / "ciao-epinions-tang2012" / "catalog_ciao.txt").write_text("1 DVDs\nBooks\n")
    err = _error("ciao", root)
    assert err.path.endswith("catalog_ciao.txt") and err.line == 2
    assert "expected '<category id> <name>'" in str(err)


# ---- local format -----------------------------------------------------------------------------
ITEMS_CSV = "item_id,title,text,categories\nb1,Dune,Spice.,sci-fi\nb2,Emma,Village.,romance\n"


def _local(tmp_path: Path, **files: str) -> DataError:
    folder = tmp_path / "shop"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)
    with pytest.raises(DataError) as info:
        load_dataset(f"local:{folder}")
    return info.value


def test_local_unknown_item_in_interactions(tmp_path):
    err = _local(tmp_path, items_csv=ITEMS_CSV, interactions_csv="user_id,item_id,rating\nu1,b1,5\nu1,b9,4\n")
    assert err.path.endswith("interactions.csv") and err.line == 3
    assert "unknown item_id 'b9': the valid ids are those listed in items.csv" in str(err)


def test_local_unknown_user_in_social_file(tmp_path):
    err = _local(
        tmp_path,
        items_csv=ITEMS_CSV,
        interactions_csv="user_id,item_id,weight\nu1,b1,2\nu2,b2,1\n",
        social_csv="source,target\nu1,u2\nu2,u7\n",
    )
    assert err.path.endswith("social.csv") and err.line == 3
    assert "unknown user (target) 'u7'" in str(err) and "users and interactions files" in str(err)


def test_local_missing_column(tmp_path):
    err = _local(tmp_path, items_csv="item_id,name\nb1,Dune\n", interactions_csv="user_id,item_id,rating\n")
    assert err.path.endswith("items.csv") and err.line == 1
    assert "header lacks the column(s) title; expected columns: item_id, title, text (optional)" in str(err)


def test_local_csv_with_semicolons(tmp_path):
    err = _local(tmp_path, items_csv="item_id;title\nb1;Dune\n")
    assert "the header seems to use ';'; columns must be comma-separated" in str(err)


def test_local_bad_json_line(tmp_path):
    err = _local(tmp_path, items_jsonl='{"item_id": "b1", "title": "Dune"}\n{"item_id": "b2", "title": }\n')
    assert err.path.endswith("items.jsonl") and err.line == 2
    assert "not valid JSON" in str(err) and "expected one JSON object per line" in str(err)


def test_local_both_csv_and_jsonl(tmp_path):
    err = _local(tmp_path, items_csv=ITEMS_CSV, items_jsonl='{"item_id": "b1", "title": "Dune"}\n')
    assert "both items.csv and items.jsonl exist" in str(err)


def test_local_missing_interactions_file(tmp_path):
    err = _local(tmp_path, items_csv=ITEMS_CSV)
    assert "missing interactions.csv|interactions.jsonl" in str(err) and "docs/data-format.md" in str(err)
    assert "MTREC_DATA_DIR" not in str(err)  # a local folder is given directly, not found under the data dir


def test_local_rating_and_weight_together(tmp_path):
    err = _local(tmp_path, items_csv=ITEMS_CSV, interactions_csv="user_id,item_id,rating,weight\nu1,b1,5,3\n")
    assert (
        err.line == 2
        and "exactly one of the columns rating (explicit) or weight (implicit), found both" in str(err)
    )


def test_local_some_rows_without_timestamp(tmp_path):
    err = _local(
        tmp_path,
        items_csv=ITEMS_CSV,
        interactions_csv="user_id,item_id,rating,timestamp\nu1,b1,5,1700000000\nu1,b2,4,\n",
    )
    assert err.line == 3 and "no timestamp, while line 2 has one" in str(err)


def test_local_bad_timestamp(tmp_path):
    err = _local(
        tmp_path,
        items_csv=ITEMS_CSV,
        interactions_csv="user_id,item_id,rating,timestamp\nu1,b1,5,yesterday\n",
    )
    assert err.line == 2 and "expected unix seconds or an ISO 8601 date" in str(err)


def test_local_row_with_too_many_fields(tmp_path):
    err = _local(tmp_path, items_csv="item_id,title\nb1,Dune,extra\n")
    assert err.path.endswith("items.csv") and err.line == 2
    assert "expected 2 comma-separated fields (item_id, title), found 3" in str(err)


def test_local_repeated_item_id(tmp_path):
    err = _local(tmp_path, items_csv="item_id,title\nb1,Dune\nb1,Emma\n")
    assert err.line == 3 and "repeats the item of line 2" in str(err)


def test_local_mixed_social_kinds(tmp_path):
    err = _local(
        tmp_path,
        items_csv=ITEMS_CSV,
        interactions_csv="user_id,item_id,weight\nu1,b1,2\nu2,b2,1\n",
        social_jsonl='{"source": "u1", "target": "u2"}\n{"source": "u2", "target": "u1", "kind": "trust"}\n',
    )
    assert err.line == 2 and "kind 'trust' differs from 'friend' on line 1" in str(err)
