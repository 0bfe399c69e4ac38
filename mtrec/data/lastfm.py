"""Last.fm HetRec 2011 (``lastfm-2k``): listening counts, friendships and artist tags.

- Interactions: user_artists.dat, implicit, weight = listening count; no timestamps (the tag
  timestamps date tagging, not listening), so the split layer orders each user's artists by a
  seeded random permutation.
- Items: every artist of artists.dat (UTF-8). Text = the name plus the artist's `top_tags` most
  used tags ("Tags: rock, indie, 80s."), from user_taggedartists.dat joined with tags.dat
  (latin-1). Categories: the artist's tags that are in the category vocabulary, most used first.
- Category vocabulary: the `num_categories` most used tags over all tag assignments (ties by tag id).
- Social: user_friends.dat as directed "friend" edges, both directions kept as given.
- Users: those of user_artists.dat. A friend edge or listening row naming an unknown user or artist
  is an error (the official files have none); tag assignments on artists missing from artists.dat
  (390 artists in the official files) are ignored and counted in ``notes``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrec.data.download import ensure_files
from mtrec.data.errors import DataError
from mtrec.data.readers import Source, read_table
from mtrec.data.records import Item, RecDataset, User, sorted_ids
from mtrec.data.registry import register


@register("lastfm-2k")
def load_lastfm_2k(
    root: Path, download: bool = False, num_categories: int = 50, top_tags: int = 5
) -> RecDataset:
    """Last.fm HetRec 2011 from ``root/lastfm-hetrec2011-2k/`` (or hetrec2011-lastfm-2k.zip there).

    Args:
        root: the data folder.
        download: fetch the official archive when files are missing.
        num_categories: size of the category vocabulary (the most used tags).
        top_tags: how many of an artist's most used tags its text names.
    """
    src = ensure_files(root, "lastfm-2k", download)
    artists = read_table(src["artists.dat"], ("id", "name", "url", "picture URL"), "\t", header=True)
    artists.require_unique("id", "artist id")
    artist_ids = artists.strings("id")
    artist_index = {a: k for k, a in enumerate(artist_ids)}
    listens = read_table(src["user_artists.dat"], ("user id", "artist id", "weight"), "\t", header=True)
    user_ids = sorted_ids(listens.strings("user id"))
    user_index = {u: k for k, u in enumerate(user_ids)}
    item_idx = listens.lookup("artist id", artist_index, "artist id", "artists.dat")
    user_idx = listens.lookup("user id", user_index, "user id", "user_artists.dat")
    weights = listens.floats("weight")
    too_large = np.flatnonzero(np.abs(weights) > np.finfo(np.float32).max)  # RecDataset stores float32
    if len(too_large):
        row = int(too_large[0])
        raise DataError(
            listens.source,
            f"field 'weight' is {listens.strings('weight')[row]!r}; expected a listening count",
            listens.line(row),
        )
    friends = read_table(src["user_friends.dat"], ("user id", "friend id"), "\t", header=True)
    src_idx = friends.lookup("user id", user_index, "user id", "user_artists.dat")
    dst_idx = friends.lookup("friend id", user_index, "user id", "user_artists.dat")
    tags = _artist_tags(src["user_taggedartists.dat"], src["tags.dat"], artist_index)
    vocabulary = _vocabulary(tags.overall, num_categories)
    in_vocabulary = set(vocabulary)
    items = [
        _artist_item(a, name, tags.per_artist.get(k, []), in_vocabulary, top_tags)
        for k, (a, name) in enumerate(zip(artist_ids, artists.strings("name")))
    ]
    cleaning = []
    if tags.skipped_rows:
        cleaning.append(
            f"ignored {tags.skipped_rows:,} tag assignments on {tags.skipped_artists:,} artists "
            f"absent from artists.dat"
        )
    notes = {
        "raw": {"listening rows": len(listens), "artists": len(artist_ids), "friend rows": len(friends)},
        "cleaning": cleaning,
        "categories": f"the {len(vocabulary)} most used tags",
    }
    return RecDataset(
        "lastfm-2k",
        [User(u) for u in user_ids],
        items,
        user_idx,
        item_idx,
        weights,
        None,
        explicit=False,
        social_src=src_idx,
        social_dst=dst_idx,
        social_kind="friend",
        categories=vocabulary,
        notes=notes,
    )


@dataclass
class _TagStats:
    """Tag use, each list most used first: (tag name, count)."""

    per_artist: dict[int, list[tuple[str, int]]]
    overall: list[tuple[str, int]]
    skipped_rows: int  # assignments on artists missing from artists.dat
    skipped_artists: int


def _artist_tags(assignments: Source, tag_file: Source, artist_index: dict[str, int]) -> _TagStats:
    """Count tag assignments per artist (by position in artists.dat) and overall."""
    names_table = read_table(tag_file, ("tag id", "tag"), "\t", encoding="latin-1", header=True)
    tag_ids = names_table.strings("tag id")
    names = [t.strip() for t in names_table.strings("tag")]
    table = read_table(
        assignments, ("user id", "artist id", "tag id", "day", "month", "year"), "\t", header=True
    )
    tag_idx = table.lookup("tag id", {t: k for k, t in enumerate(tag_ids)}, "tag id", "tags.dat")
    per_artist: dict[int, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    skipped_rows, skipped_artists = 0, set()
    for artist, tag in zip(table.strings("artist id"), tag_idx.tolist()):
        k = artist_index.get(artist)
        if k is None:
            skipped_rows += 1
            skipped_artists.add(artist)
        else:
            per_artist[k][tag] += 1
            overall[tag] += 1

    # Ties are broken by the tag's position in tags.dat so that the order never depends on hashing.
    def ranked(counter: Counter) -> list[tuple[str, int]]:
        return [(names[t], c) for t, c in sorted(counter.items(), key=lambda tc: (-tc[1], tc[0]))]

    return _TagStats(
        {k: ranked(c) for k, c in per_artist.items()}, ranked(overall), skipped_rows, len(skipped_artists)
    )


def _vocabulary(overall: list[tuple[str, int]], size: int) -> list[str]:
    """The `size` most used distinct tag names (two tag ids may carry one name)."""
    vocabulary: list[str] = []
    for name, _ in overall:
        if name not in vocabulary:
            vocabulary.append(name)
        if len(vocabulary) == size:
            break
    return vocabulary


def _artist_item(
    artist_id: str, name: str, tags: list[tuple[str, int]], vocabulary: set[str], top: int
) -> Item:
    # dict.fromkeys de-duplicates names while keeping the most-used-first order.
    names = list(dict.fromkeys(t for t, _ in tags))
    text = f"{name}. Tags: {', '.join(names[:top])}." if names else name
    return Item(artist_id, name, text, tuple(t for t in names if t in vocabulary))
