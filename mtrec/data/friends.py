"""The friend-recommendation protocol: held-out social edges, removed everywhere else.

Per user with at least `MIN_EDGES` (3) outgoing edges ("u is friends with / trusts v"), two distinct
neighbours are drawn (seeded): one is that user's validation target, the other the test target. Each
held-out pair is removed from the graph in **both directions** where the graph stores both (Last.fm
stores every friendship twice): `hold_out_friends` returns a copy of the data set whose social edges
lack every held-out pair, and everything downstream (training rows, each prompt's friends and
friends' items, the collaborative friend prior, the baselines) reads only that graph. A run keeps
the held-out pairs in its catalog (`Split.friends`) for evaluation.

Ranking a held-out friend: among every user, leaving out the user themself and the friends the
user already has in the remaining graph (and, for the test target, the validation target).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from mtrec.data.records import RecDataset

MIN_EDGES = 3


@dataclass(frozen=True)
class FriendHoldout:
    """Held-out (user, friend) pairs: one validation and one test pair per eligible user."""

    valid: np.ndarray  # [n, 2] int64: (user, held-out friend)
    test: np.ndarray  # [n, 2]
    seed: int = 0

    def pairs(self, role: str) -> np.ndarray:
        """The (user, friend) pairs of ``"valid"`` or ``"test"``."""
        if role not in ("valid", "test"):
            raise ValueError(f"friend hold-out role must be 'valid' or 'test', got {role!r}")
        return self.valid if role == "valid" else self.test

    @property
    def num_users(self) -> int:
        return len(self.test)


def hold_out_friends(ds: RecDataset, seed: int = 0) -> tuple[RecDataset, FriendHoldout]:
    """A copy of `ds` without the held-out pairs (either direction), and the pairs (module docstring)."""
    src, dst = ds.social_src.astype(np.int64), ds.social_dst.astype(np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    src, dst = src[first], dst[first]  # unique directed edges, by (user, friend)
    offsets = np.zeros(ds.num_users + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=ds.num_users), out=offsets[1:])
    rng = np.random.default_rng([seed, 4481])
    valid, test = [], []
    for u in np.flatnonzero(np.diff(offsets) >= MIN_EDGES).tolist():
        a, b = rng.choice(dst[offsets[u] : offsets[u + 1]], size=2, replace=False).tolist()
        valid.append((u, a))
        test.append((u, b))
    valid_a = np.array(valid, np.int64).reshape(-1, 2)
    test_a = np.array(test, np.int64).reshape(-1, 2)
    held = np.concatenate([valid_a, test_a])
    n = ds.num_users
    gone = np.concatenate([held[:, 0] * n + held[:, 1], held[:, 1] * n + held[:, 0]])
    left = ~np.isin(ds.social_src.astype(np.int64) * n + ds.social_dst.astype(np.int64), gone)
    out = copy.copy(ds)
    out.social_src, out.social_dst = ds.social_src[left], ds.social_dst[left]
    out.notes = {**ds.notes, "friend_holdout": {"seed": seed, "users": len(test_a),
                                                "edges_removed": int((~left).sum())}}
    return out, FriendHoldout(valid_a, test_a, seed)


def friend_lists(ds: RecDataset) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each user's friends in `ds`'s graph: (offsets [users + 1], friends), friends sorted."""
    order = np.lexsort((ds.social_dst, ds.social_src))
    offsets = np.zeros(ds.num_users + 1, np.int64)
    np.cumsum(np.bincount(ds.social_src, minlength=ds.num_users), out=offsets[1:])
    return offsets, ds.social_dst[order].astype(np.int64)


def known_pairs(ds: RecDataset, users: np.ndarray | None = None, extra: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(user, other) pairs a friend ranking leaves out: every edge of the graph, each user with
    themself (`users`: all by default), and the `extra` [n, 2] pairs (the validation targets at test)."""
    users = np.arange(ds.num_users) if users is None else np.asarray(users, np.int64)
    src = [ds.social_src.astype(np.int64), users]
    dst = [ds.social_dst.astype(np.int64), users]
    if extra is not None and len(extra):
        src.append(extra[:, 0])
        dst.append(extra[:, 1])
    return np.concatenate(src), np.concatenate(dst)


def friend_seen(ds: RecDataset, holdout: FriendHoldout | None, role: str, device="cpu"):
    """`mtrec.ranking.Seen` over users for ranking `role`'s held-out friends (module docstring)."""
    from mtrec.ranking import Seen

    extra = holdout.valid if (holdout is not None and role == "test") else None
    src, dst = known_pairs(ds, extra=extra)
    return Seen(src, dst, ds.num_users, ds.num_users, device)
