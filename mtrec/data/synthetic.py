"""A small synthetic data set with known structure, for tests and smoke runs (no files needed).

Each user has a latent taste: a Dirichlet-distributed weight over the categories. Each item (a
"record") has a main category and, for about a third of items, a second one; its text names them.
A user picks items with probability rising with affinity (taste · item categories), so histories
are informative; the rating is 1 + 4·relative affinity + item quality + user bias + noise,
rounded and clipped to 1-5 (or, implicit, a play count growing with affinity). Friends are
chosen among random candidates by taste similarity (homophily), both directions kept.
Timestamps increase along each user's history. The same options and seed give the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtrec.data.records import Item, RecDataset, User
from mtrec.data.registry import register

# fmt: off
CATEGORY_NAMES = (
    "jazz", "rock", "classical", "folk", "electronic", "blues", "hip-hop", "soul", "country",
    "reggae", "metal", "pop", "punk", "ambient", "funk", "gospel", "latin", "opera",
)
# fmt: on
START_TIME = 1_600_000_000  # 2020-09-13, so the timestamps look like real ones
CANDIDATE_FRIENDS = 30


@register("synthetic")
def load_synthetic(
    root: Path | None = None,
    num_users: int = 200,
    num_items: int = 300,
    num_categories: int = 8,
    interactions_per_user: tuple[int, int] = (15, 40),
    seed: int = 0,
    explicit: bool = True,
    social: bool = True,
) -> RecDataset:
    """Generate the synthetic data set (`root` is ignored: nothing is read).

    Args:
        num_users, num_items, num_categories: sizes.
        interactions_per_user: (min, max) history length, capped at `num_items`.
        seed: random seed; equal options and seed give identical data.
        explicit: 1-5 ratings (True) or implicit play counts (False).
        social: generate friend edges with homophily.
    """
    low, high = _check_sizes(num_users, num_items, num_categories, interactions_per_user)
    rng = np.random.default_rng(seed)
    names = [
        CATEGORY_NAMES[k] if k < len(CATEGORY_NAMES) else f"style {k + 1}" for k in range(num_categories)
    ]
    tastes = rng.dirichlet(np.full(num_categories, 0.5), size=num_users)
    item_cats, items = _items(rng, num_items, names)
    quality = rng.normal(0.0, 0.4, num_items)
    user_idx, item_idx, values, timestamps = _interactions(
        rng, tastes @ item_cats.T, quality, (min(low, num_items), min(high, num_items)), explicit
    )
    src, dst = _friends(rng, tastes) if social else (None, None)
    users = [User(str(u + 1)) for u in range(num_users)]
    options = {
        "num_users": num_users,
        "num_items": num_items,
        "num_categories": num_categories,
        "interactions_per_user": (low, high),
        "seed": seed,
        "explicit": explicit,
        "social": social,
    }
    return RecDataset(
        "synthetic",
        users,
        items,
        user_idx,
        item_idx,
        values,
        timestamps,
        explicit=explicit,
        social_src=src,
        social_dst=dst,
        social_kind="friend",
        categories=names,
        rating_scale=(1.0, 5.0) if explicit else None,
        notes={"generator": options},
    )


def _check_sizes(
    num_users: int, num_items: int, num_categories: int, per_user: tuple[int, int]
) -> tuple[int, int]:
    low, high = (int(v) for v in per_user)
    if min(num_users, num_items, num_categories, low) < 1 or low > high:
        raise ValueError(
            "synthetic: num_users, num_items, num_categories and interactions_per_user must be positive, "
            f"with min <= max; got {num_users}, {num_items}, {num_categories}, {per_user}"
        )
    return low, high


def _items(rng: np.random.Generator, num_items: int, names: list[str]) -> tuple[np.ndarray, list[Item]]:
    """Item-category weights (rows sum to 1) and the Item records."""
    main = rng.integers(0, len(names), num_items)
    second = rng.integers(0, len(names), num_items)
    has_second = (rng.random(num_items) < 1 / 3) & (second != main)
    weights = np.zeros((num_items, len(names)))
    weights[np.arange(num_items), main] = 1.0
    weights[has_second, main[has_second]] = 0.7
    weights[has_second, second[has_second]] = 0.3
    items = []
    for k in range(num_items):
        cats = (names[main[k]], names[second[k]]) if has_second[k] else (names[main[k]],)
        text = f"A {cats[0]} record" + (f" with {cats[1]} influences." if len(cats) > 1 else ".")
        items.append(Item(str(k + 1), f"Item {k + 1}: a {cats[0]} record", text, cats))
    return weights, items


def _interactions(
    rng: np.random.Generator,
    affinity: np.ndarray,
    quality: np.ndarray,
    length: tuple[int, int],
    explicit: bool,
) -> tuple[np.ndarray, ...]:
    """Per user: a history of distinct items drawn by affinity, values and increasing timestamps."""
    users, items, values, times = [], [], [], []
    for u, row in enumerate(affinity):
        relative = row / row.max()  # 1 for the user's favourite kind of item
        p = np.exp(3.0 * relative)
        n = int(rng.integers(length[0], length[1] + 1))
        chosen = rng.choice(len(row), size=n, replace=False, p=p / p.sum())
        noise = rng.normal(0.0, 0.5, n)
        if explicit:
            value = np.clip(
                np.rint(1.0 + 4.0 * relative[chosen] + quality[chosen] + rng.normal(0, 0.3) + noise), 1, 5
            )
        else:
            value = np.maximum(1.0, np.rint(np.exp(1.0 + 3.0 * relative[chosen] + quality[chosen] + noise)))
        start = START_TIME + int(rng.integers(0, 90 * 86400))
        gaps = 1 + rng.exponential(43200.0, n).astype(np.int64)  # at least one second apart
        users.append(np.full(n, u))
        items.append(chosen)
        values.append(value)
        times.append(start + np.cumsum(gaps))
    return tuple(np.concatenate(part) for part in (users, items, values, times))


def _friends(rng: np.random.Generator, tastes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user befriends 1-5 of the most taste-similar of a few random candidates; edges both ways."""
    num_users = len(tastes)
    if num_users < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = set()
    for u in range(num_users):
        # Draw from the other users: indices >= u shift up by one to skip u itself.
        candidates = rng.choice(num_users - 1, size=min(CANDIDATE_FRIENDS, num_users - 1), replace=False)
        candidates[candidates >= u] += 1
        similarity = tastes[candidates] @ tastes[u] + rng.gumbel(0.0, 0.05, len(candidates))
        k = min(int(rng.integers(1, 6)), len(candidates))
        for v in candidates[np.argsort(-similarity)[:k]].tolist():
            pairs.update({(u, v), (v, u)})
    ordered = sorted(pairs)
    return np.array([a for a, _ in ordered], np.int64), np.array([b for _, b in ordered], np.int64)
