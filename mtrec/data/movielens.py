"""MovieLens 100K and 1M (GroupLens), from the extracted files or the official zip.

Both are explicit 1-5 star ratings with unix timestamps. Items are movies: title as given, text
"Genres: Action, Comedy. Released 01-Jan-1995.", categories = the genre names (MovieLens 100K's
"unknown" genre is kept as given: it marks two movies). Users carry age, gender, occupation and
zip code as text attributes (ML-1M's age and occupation codes are mapped to the names in its README).

Cleaning: users and movies with no rating are dropped unless ``keep_unrated=True``. That matters
for ML-1M only, whose movies.dat lists 3,883 movies of which 3,706 are rated, the catalog
every published ML-1M result uses; ML-100K has no unrated movie or user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtrec.data.download import ensure_files
from mtrec.data.errors import DataError
from mtrec.data.readers import Source, Table, read_table
from mtrec.data.records import Item, RecDataset, User
from mtrec.data.registry import register

RATING_SCALE = (1.0, 5.0)

# fmt: off
ML1M_AGES = {
    "1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+",
}
ML1M_OCCUPATIONS = dict(enumerate([
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]))
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western",
)
# fmt: on


def movie_text(genres: Sequence[str], released: str) -> str:
    """The item text: its genres and release date (either may be empty)."""
    parts = []
    if genres:
        parts.append(f"Genres: {', '.join(genres)}.")
    if released:
        parts.append(f"Released {released}.")
    return " ".join(parts)


# ---- MovieLens 100K --------------------------------------------------------------------------
@register("movielens-100k")
def load_movielens_100k(root: Path, download: bool = False, keep_unrated: bool = False) -> RecDataset:
    """MovieLens 100K from ``root/movielens-100k/`` (u.data, u.item, u.user, u.genre, or ml-100k.zip).

    Args:
        root: the data folder.
        download: fetch the official archive when the files are missing.
        keep_unrated: keep users/movies without ratings (none in the official files).
    """
    src = ensure_files(root, "movielens-100k", download)
    genres = _read_100k_genres(src["u.genre"])
    items = _read_100k_items(src["u.item"], genres)
    table = read_table(src["u.user"], ("user id", "age", "gender", "occupation", "zip code"), "|")
    table.ints("age")  # catches shifted columns early, with the line
    table.require_unique("user id")
    users = [User(f[0], {"age": f[1], "gender": f[2], "occupation": f[3], "zip": f[4]}) for _, f in table]
    ratings = read_table(src["u.data"], ("user id", "item id", "rating", "timestamp"), "\t")
    return _build("movielens-100k", users, items, ratings, genres, keep_unrated, src["u.user"], src["u.item"])


def _read_100k_genres(source: Source) -> list[str]:
    table = read_table(source, ("genre", "genre index"), "|")
    codes = table.ints("genre index")
    if sorted(codes.tolist()) != list(range(len(codes))):
        raise DataError(
            source, f"genre indices are {codes.tolist()}; expected 0..{len(codes) - 1}, each once"
        )
    names = table.strings("genre")
    return [names[k] for k in np.argsort(codes)]


def _read_100k_items(source: Source, genres: list[str]) -> list[Item]:
    head = ("movie id", "title", "release date", "video release date", "IMDb URL")
    table = read_table(source, head + tuple(f"genre flag {g}" for g in genres), "|", encoding="latin-1")
    table.require_unique("movie id")
    items = []
    for line_no, fields in table:
        flags = fields[len(head) :]
        if not set(flags) <= {"0", "1"}:
            bad = next(k for k, f in enumerate(flags) if f not in ("0", "1"))
            raise DataError(source, f"genre flag {genres[bad]!r} is {flags[bad]!r}; expected 0 or 1", line_no)
        names = tuple(g for g, f in zip(genres, flags) if f == "1")
        items.append(Item(fields[0], fields[1].strip(), movie_text(names, fields[2].strip()), names))
    return items


# ---- MovieLens 1M ----------------------------------------------------------------------------
@register("movielens-1m")
def load_movielens_1m(root: Path, download: bool = False, keep_unrated: bool = False) -> RecDataset:
    """MovieLens 1M from ``root/movielens-1m/`` (ratings.dat, movies.dat, users.dat, or ml-1m.zip).

    Args:
        root: the data folder.
        download: fetch the official archive when the files are missing.
        keep_unrated: keep the movies of movies.dat that nobody rated (177 in the official files).
    """
    src = ensure_files(root, "movielens-1m", download)
    items, genres = _read_1m_movies(src["movies.dat"])
    users = _read_1m_users(src["users.dat"])
    ratings = read_table(src["ratings.dat"], ("user id", "movie id", "rating", "timestamp"), "::")
    return _build(
        "movielens-1m", users, items, ratings, genres, keep_unrated, src["users.dat"], src["movies.dat"]
    )


def _read_1m_movies(source: Source) -> tuple[list[Item], list[str]]:
    table = read_table(source, ("movie id", "title", "genres"), "::", encoding="latin-1")
    table.require_unique("movie id")
    items, extra = [], set()
    for _, (movie_id, title, genre_field) in table:
        names = tuple(g for g in genre_field.split("|") if g)
        extra.update(g for g in names if g not in ML1M_GENRES)
        year = re.search(r"\((\d{4})\)\s*$", title)
        items.append(Item(movie_id, title.strip(), movie_text(names, year.group(1) if year else ""), names))
    # Genres outside the README's list are kept (after the documented ones) rather than rejected.
    return items, list(ML1M_GENRES) + sorted(extra)


def _read_1m_users(source: Source) -> list[User]:
    table = read_table(source, ("user id", "gender", "age", "occupation", "zip code"), "::")
    table.require_unique("user id")
    users = []
    for line_no, (user_id, gender, age, occupation, zip_code) in table:
        if age not in ML1M_AGES:
            raise DataError(
                source, f"field 'age' is {age!r}; expected one of the codes {', '.join(ML1M_AGES)}", line_no
            )
        # ASCII digits only ("²".isdigit() holds, yet int() rejects it), and few (int() limits their number).
        code = occupation.isascii() and occupation.isdigit() and len(occupation) < 10
        job = ML1M_OCCUPATIONS.get(int(occupation)) if code else None
        if job is None:
            raise DataError(source, f"field 'occupation' is {occupation!r}; expected a code 0-20", line_no)
        users.append(
            User(user_id, {"age": ML1M_AGES[age], "gender": gender, "occupation": job, "zip": zip_code})
        )
    return users


# ---- shared ----------------------------------------------------------------------------------
def _build(
    name: str,
    users: list[User],
    items: list[Item],
    ratings: Table,
    genres: Sequence[str],
    keep_unrated: bool,
    user_file: Source,
    item_file: Source,
) -> RecDataset:
    """Interactions from `ratings` (user id, movie/item id, rating, timestamp) -> RecDataset."""
    user_column, item_column = ratings.columns[:2]
    user_idx = ratings.lookup(
        user_column, {u.id: k for k, u in enumerate(users)}, user_column, user_file.filename
    )
    item_idx = ratings.lookup(
        item_column, {it.id: k for k, it in enumerate(items)}, item_column, item_file.filename
    )
    values = ratings.floats("rating")
    out = np.flatnonzero((values < RATING_SCALE[0]) | (values > RATING_SCALE[1]))
    if len(out):
        row = int(out[0])
        raise DataError(ratings.source, f"rating {values[row]:g} is outside the scale 1-5", ratings.line(row))
    timestamps = ratings.ints("timestamp")
    raw = {"rating rows": len(ratings), "users": len(users), "movies": len(items)}
    cleaning = []
    if not keep_unrated:
        users, user_idx, n_users = _drop_unused(users, user_idx)
        items, item_idx, n_items = _drop_unused(items, item_idx)
        if n_users:
            cleaning.append(f"users with no rating: {n_users:,} dropped (keep_unrated=True keeps them)")
        if n_items:
            cleaning.append(f"movies with no rating: {n_items:,} dropped (keep_unrated=True keeps them)")
    return RecDataset(
        name,
        users,
        items,
        user_idx,
        item_idx,
        values,
        timestamps,
        explicit=True,
        categories=genres,
        rating_scale=RATING_SCALE,
        notes={"raw": raw, "cleaning": cleaning},
    )


def _drop_unused(records: list, idx: np.ndarray) -> tuple[list, np.ndarray, int]:
    """Keep the records that `idx` refers to; return them, the remapped `idx`, and how many went."""
    used = np.bincount(idx, minlength=len(records)) > 0
    if used.all():
        return records, idx, 0
    new_position = np.cumsum(used) - 1
    kept = [records[k] for k in np.flatnonzero(used)]
    return kept, new_position[idx], int((~used).sum())
