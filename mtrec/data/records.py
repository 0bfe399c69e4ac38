"""Typed, frozen records and the `RecDataset` that holds them.

Every loader produces a `RecDataset`. Ids are the data set's own ids as strings (as in its files);
contiguous integer indices are assigned by *sorting* the ids (numerically when every id is an
integer, otherwise as strings), never by order of appearance, so an index cannot leak when an
interaction happened (P5's flaw).

Interactions are stored column-wise (numpy arrays) because the larger data sets hold about a million
of them; `RecDataset.interaction(i)` and `iter_interactions()` give the typed `Interaction` record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np

SocialKind = Literal["friend", "trust"]


@dataclass(frozen=True, slots=True)
class User:
    """A user. `attributes` holds what the data set knows (age, gender, occupation, ...) as text."""

    id: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item: its title, free text (may be empty) and category names.

    `described` is False where the title and text say nothing about the item itself (Ciao's and
    Epinions' "<Category> product <id>"; a local file's ``described`` column): such an item's
    starting row in the item table comes from its categories, never from encoding its text."""

    id: str
    title: str
    text: str = ""
    categories: tuple[str, ...] = ()
    described: bool = True


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item event: an explicit `rating` or an implicit `weight` (e.g. play count).

    `timestamp` is unix seconds, or None where the data set has no time.
    """

    user: str
    item: str
    rating: float | None = None
    weight: float | None = None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class SocialEdge:
    """A directed social relation: `source` is friends with / trusts `target`."""

    source: str
    target: str
    kind: SocialKind = "friend"


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Unique ids in a canonical order: numeric when all are integers, else lexicographic."""
    unique = set(ids)
    if unique and all(_is_int(x) for x in unique):
        return sorted(unique, key=lambda x: (int(x), x))
    return sorted(unique)


def _is_int(text: str) -> bool:
    """An id that `int()` reads back exactly: ASCII-style decimal digits (not "²"), and short enough
    for Python's int-from-string limit."""
    t = text[1:] if text[:1] == "-" else text
    return t.isdecimal() and t.isascii() and len(t) <= 4300


class RecDataset:
    """Users, items, interactions and social edges with contiguous indices and both id maps.

    Args:
        name: data set name (e.g. ``movielens-100k``).
        users: users; their index is the position after sorting by id.
        items: items; same rule.
        user_idx, item_idx: per-interaction indices into ``users`` / ``items``.
        values: per-interaction rating (explicit) or weight (implicit).
        timestamps: per-interaction unix seconds, or None when the data set has no time.
        explicit: True for ratings, False for implicit weights.
        social_src, social_dst: indices of directed social edges.
        social_kind: ``friend`` or ``trust``.
        categories: the category vocabulary (names), in a fixed order.
        rating_scale: (min, max) of ratings for explicit data.
        notes: free-form provenance (raw counts, cleaning applied) printed by ``describe``.
    """

    def __init__(
        self,
        name: str,
        users: Sequence[User],
        items: Sequence[Item],
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        values: np.ndarray,
        timestamps: np.ndarray | None,
        *,
        explicit: bool,
        social_src: np.ndarray | None = None,
        social_dst: np.ndarray | None = None,
        social_kind: SocialKind = "friend",
        categories: Sequence[str] = (),
        rating_scale: tuple[float, float] | None = None,
        notes: Mapping[str, object] | None = None,
    ) -> None:
        self.name = name
        self.users = tuple(sorted(users, key=_id_sort_key([u.id for u in users])))
        self.items = tuple(sorted(items, key=_id_sort_key([i.id for i in items])))
        self.user_index = {u.id: k for k, u in enumerate(self.users)}
        self.item_index = {it.id: k for k, it in enumerate(self.items)}
        if len(self.user_index) != len(self.users):
            raise ValueError(f"{name}: duplicate user ids")
        if len(self.item_index) != len(self.items):
            raise ValueError(f"{name}: duplicate item ids")
        # Callers pass indices into the *given* sequences; remap them to the sorted order.
        user_perm = _perm_to_sorted(users, self.user_index)
        item_perm = _perm_to_sorted(items, self.item_index)
        self.user_idx = user_perm[np.asarray(user_idx, dtype=np.int64)].astype(np.int32)
        self.item_idx = item_perm[np.asarray(item_idx, dtype=np.int64)].astype(np.int32)
        self.values = np.asarray(values, dtype=np.float32)
        self.timestamps = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        n = len(self.user_idx)
        if not (len(self.item_idx) == len(self.values) == n) or (
            self.timestamps is not None and len(self.timestamps) != n
        ):
            raise ValueError(f"{name}: interaction columns differ in length")
        self.explicit = explicit
        src = np.zeros(0, np.int64) if social_src is None else np.asarray(social_src, np.int64)
        dst = np.zeros(0, np.int64) if social_dst is None else np.asarray(social_dst, np.int64)
        self.social_src = user_perm[src].astype(np.int32)
        self.social_dst = user_perm[dst].astype(np.int32)
        self.social_kind = social_kind
        self.categories = tuple(categories)
        self.category_index = {c: k for k, c in enumerate(self.categories)}
        self.rating_scale = rating_scale
        self.notes = dict(notes or {})

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_interactions(self) -> int:
        return len(self.user_idx)

    @property
    def num_social_edges(self) -> int:
        return len(self.social_src)

    @property
    def timed(self) -> bool:
        return self.timestamps is not None

    @property
    def density(self) -> float:
        cells = self.num_users * self.num_items
        return self.num_interactions / cells if cells else math.nan

    # ---- records -----------------------------------------------------------------------------
    def interaction(self, i: int) -> Interaction:
        """The `i`-th interaction as a typed record."""
        value = float(self.values[i])
        return Interaction(
            user=self.users[self.user_idx[i]].id,
            item=self.items[self.item_idx[i]].id,
            rating=value if self.explicit else None,
            weight=None if self.explicit else value,
            timestamp=None if self.timestamps is None else int(self.timestamps[i]),
        )

    def iter_interactions(self) -> Iterator[Interaction]:
        for i in range(self.num_interactions):
            yield self.interaction(i)

    def social_edges(self) -> Iterator[SocialEdge]:
        for s, d in zip(self.social_src, self.social_dst):
            yield SocialEdge(self.users[s].id, self.users[d].id, self.social_kind)

    def item_category_indices(self) -> list[list[int]]:
        """For each item (by index), the indices of its categories in `categories`."""
        return [
            [self.category_index[c] for c in it.categories if c in self.category_index]
            for it in self.items
        ]

    def __repr__(self) -> str:
        return (
            f"RecDataset({self.name!r}, users={self.num_users}, items={self.num_items}, "
            f"interactions={self.num_interactions}, social_edges={self.num_social_edges})"
        )

    @classmethod
    def from_records(
        cls,
        name: str,
        users: Sequence[User],
        items: Sequence[Item],
        interactions: Iterable[Interaction],
        social: Iterable[SocialEdge] = (),
        *,
        categories: Sequence[str] | None = None,
        rating_scale: tuple[float, float] | None = None,
        notes: Mapping[str, object] | None = None,
    ) -> RecDataset:
        """Build from typed records. Every interaction/edge must name a known user and item."""
        uidx = {u.id: k for k, u in enumerate(users)}
        iidx = {it.id: k for k, it in enumerate(items)}
        rows = list(interactions)
        explicit = bool(rows) and rows[0].rating is not None
        timed = bool(rows) and all(r.timestamp is not None for r in rows)
        for r in rows:
            if r.user not in uidx:
                raise KeyError(f"{name}: interaction names unknown user {r.user!r}")
            if r.item not in iidx:
                raise KeyError(f"{name}: interaction names unknown item {r.item!r}")
        edges = list(social)
        for e in edges:
            for uid in (e.source, e.target):
                if uid not in uidx:
                    raise KeyError(f"{name}: social edge names unknown user {uid!r}")
        if categories is None:
            categories = sorted({c for it in items for c in it.categories})
        values = [(r.rating if explicit else r.weight) for r in rows]
        return cls(
            name,
            users,
            items,
            np.array([uidx[r.user] for r in rows], np.int64),
            np.array([iidx[r.item] for r in rows], np.int64),
            np.array(values, np.float32),
            np.array([r.timestamp for r in rows], np.int64) if timed else None,
            explicit=explicit,
            social_src=np.array([uidx[e.source] for e in edges], np.int64),
            social_dst=np.array([uidx[e.target] for e in edges], np.int64),
            social_kind=edges[0].kind if edges else "friend",
            categories=categories,
            rating_scale=rating_scale,
            notes=notes,
        )


def _id_sort_key(ids: list[str]):
    numeric = bool(ids) and all(_is_int(x) for x in ids)
    if numeric:
        return lambda rec: (int(rec.id), rec.id)
    return lambda rec: rec.id


def _perm_to_sorted(records: Sequence, index: dict[str, int]) -> np.ndarray:
    """perm[k] = sorted index of the k-th given record."""
    return np.array([index[r.id] for r in records], dtype=np.int64).reshape(-1)
