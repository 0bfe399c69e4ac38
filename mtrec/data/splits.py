"""Per-user splits: leave-one-out (default) and ratio.

Order of a user's interactions:
- data sets with timestamps: chronological; interactions of one user that share a timestamp are
  ordered by item index ascending (indices follow sorted item ids, so this is "item id ascending").
  In MovieLens-100K 415 of 943 users rated their last two items in the same second, so this rule
  decides which item is the test target; it is fixed and documented rather than left to file order.
- data sets without timestamps (Ciao, Epinions) or where they cover a minority (Last.fm): a seeded
  random permutation per user (same seed -> same order).

Leave-one-out: the last interaction is the test target, the second-to-last the validation target,
the rest is training. A user with fewer than 3 interactions keeps all of them in training (no
validation or test target); `Split.too_few_users` counts them.

Ratio: per user, the first ``train`` fraction (in order) is training, then validation, then test;
users with at least 3 interactions get at least one validation and one test interaction.

Cold items (`cold_items`): a seeded 20% of the catalog held out with all its interactions; each
user's newest held-out interaction is the test target, the one before it the validation target,
and histories hold warm (TRAIN) interactions only. `Split.too_few_users` counts the users left
without a test target there.

Short history (`short_history`): leave-one-out, then a seeded 30% of the users keep only their
first 3-5 training interactions (MovieLens-100K has no user with fewer than 20).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from mtrec.data.friends import FriendHoldout
from mtrec.data.records import RecDataset

TRAIN, VALID, TEST = 0, 1, 2
ROLE_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


def ranking_role(role: int | str) -> int:
    """VALID or TEST from ``"valid"``/``"test"`` or the int; TRAIN and unknown names raise ValueError."""
    names = {v: k for k, v in ROLE_NAMES.items()}
    value = names.get(role, role) if isinstance(role, str) else int(role)
    if value not in ROLE_NAMES or value == TRAIN:
        raise ValueError(f"ranking role must be 'valid'/'test' (1/2), got {role!r}")
    return value


MIN_INTERACTIONS = 3


@dataclass(frozen=True, eq=False)
class Split:
    """A split of a data set's interactions, with each user's interactions in order.

    Attributes:
        dataset: the data set split.
        role: per interaction: TRAIN, VALID or TEST.
        seq: interaction indices grouped by user (user index ascending), each user's in order.
        offsets: user ``u``'s sequence is ``seq[offsets[u]:offsets[u + 1]]``.
        position: per interaction, its position in its user's sequence.
        order_rule: ``chronological`` or ``random``.
        too_few_users: users with fewer than 3 interactions (all kept in training).
        seed: seed of the random order (unused when chronological).
        method: ``leave_one_out``, ``ratio`` or ``cold_items``.
        friends: the friend-recommendation protocol's held-out pairs (`mtrec.data.friends`), or None;
            where set, `dataset`'s social graph already lacks them.
        heldout_items: the cold-items protocol's held-out items (`cold_items`), or None. Where set,
            a history (`history`) holds TRAIN interactions only: no prompt shows a held-out item.
        short_users: the short-history protocol's users whose training history was cut
            (`short_history`), or None.
    """

    dataset: RecDataset
    role: np.ndarray
    seq: np.ndarray
    offsets: np.ndarray
    position: np.ndarray
    order_rule: str
    too_few_users: int
    seed: int
    method: str
    friends: FriendHoldout | None = None
    heldout_items: np.ndarray | None = None  # cold-items protocol: [num_items] bool, the held-out items
    short_users: np.ndarray | None = None  # short-history protocol: [num_users] bool, the cut users

    @property
    def train(self) -> np.ndarray:
        return np.flatnonzero(self.role == TRAIN)

    @property
    def valid(self) -> np.ndarray:
        return np.flatnonzero(self.role == VALID)

    @property
    def test(self) -> np.ndarray:
        return np.flatnonzero(self.role == TEST)

    def user_sequence(self, user: int) -> np.ndarray:
        """Interaction indices of `user`, in order (oldest first)."""
        return self.seq[self.offsets[user] : self.offsets[user + 1]]

    def history(self, interaction: int) -> np.ndarray:
        """The interactions of the same user that precede `interaction` in order, oldest first."""
        user = self.dataset.user_idx[interaction]
        start = self.offsets[user]
        earlier = self.seq[start : start + self.position[interaction]]
        return earlier if self.heldout_items is None else earlier[self.role[earlier] == TRAIN]

    def history_mask(self, role: int | str) -> np.ndarray:
        """[interactions] bool: what a model may read as each user's history when ranking the
        `role` (VALID/TEST) targets. Every interaction of an earlier role; in the cold-items
        protocol, the user's warm (TRAIN) interactions before their target only."""
        value = ranking_role(role)
        if self.heldout_items is None:
            return self.role < value
        users = self.dataset.user_idx
        target_at = np.full(self.dataset.num_users, np.iinfo(np.int64).max)
        target_at[users[self.role == value]] = self.position[self.role == value]
        return (self.role == TRAIN) & (self.position < target_at[users])

    def sizes(self) -> dict[str, int]:
        return {name: int((self.role == r).sum()) for r, name in ROLE_NAMES.items()}


def user_order(ds: RecDataset, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Interaction indices grouped by user in each user's order, the user offsets, and the rule."""
    if ds.timed:
        # lexsort: last key is primary -> (user, timestamp, item index)
        seq = np.lexsort((ds.item_idx, ds.timestamps, ds.user_idx))
        rule = "chronological"
    else:
        keys = np.random.default_rng(seed).random(ds.num_interactions)
        seq = np.lexsort((keys, ds.user_idx))
        rule = "random"
    counts = np.bincount(ds.user_idx, minlength=ds.num_users)
    offsets = np.zeros(ds.num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return seq.astype(np.int64), offsets, rule


def _build(ds: RecDataset, seed: int, method: str, n_valid_test) -> Split:
    seq, offsets, rule = user_order(ds, seed)
    counts = np.diff(offsets)
    position = np.empty(ds.num_interactions, dtype=np.int64)
    # position within the user's sequence = global rank minus the user's offset
    position[seq] = np.arange(len(seq)) - np.repeat(offsets[:-1], counts)
    n_valid, n_test = n_valid_test(counts)
    too_few = counts < MIN_INTERACTIONS
    n_valid[too_few] = 0
    n_test[too_few] = 0
    user_n = counts[ds.user_idx]
    from_end = user_n - position  # 1 for the last interaction
    u_test = n_test[ds.user_idx]
    u_valid = n_valid[ds.user_idx]
    role = np.full(ds.num_interactions, TRAIN, dtype=np.int8)
    role[from_end <= u_test + u_valid] = VALID
    role[from_end <= u_test] = TEST
    return Split(ds, role, seq, offsets, position, rule, int((too_few & (counts > 0)).sum()), seed, method)


def leave_one_out(ds: RecDataset, seed: int = 0) -> Split:
    """Last interaction -> test, second-to-last -> validation, per user (see module docstring)."""
    return _build(ds, seed, "leave_one_out", lambda c: (np.ones_like(c), np.ones_like(c)))


def ratio_split(ds: RecDataset, valid: float = 0.1, test: float = 0.1, seed: int = 0) -> Split:
    """Per-user ratio split in order: the last `test` fraction -> test, the `valid` before it -> validation."""
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"ratio split needs 0 < valid, test and valid + test < 1; got valid={valid}, test={test}")

    def sizes(c: np.ndarray):
        return np.maximum(1, np.round(c * valid).astype(np.int64)), np.maximum(1, np.round(c * test).astype(np.int64))

    return _build(ds, seed, "ratio", sizes)


COLD_FRACTION = 0.2


def cold_items(ds: RecDataset, fraction: float = COLD_FRACTION, seed: int = 0) -> Split:
    """The cold-items protocol: a seeded `fraction` of the catalog is held out with all its
    interactions. Per user, the newest interaction with a held-out item is the TEST target and the
    one before it the VALID target; the user's other held-out interactions are dropped from the data
    set, and every warm interaction is TRAIN. A user without a warm interaction keeps no target.

    Nothing of a held-out item can reach training: no TRAIN row names one, a history (`Split.history`)
    holds TRAIN interactions only (so no prompt, training or evaluation, shows a held-out item), and
    the heads' priors give held-out items exactly zero biases, offsets and factors
    (`mtrec.model.build.build_heads`). Users are ordered as in `leave_one_out` (`user_order`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"cold_items needs 0 < fraction < 1, got {fraction}")
    rng = np.random.default_rng([seed, 7741])
    held = np.zeros(ds.num_items, bool)
    held[rng.choice(ds.num_items, size=max(1, round(fraction * ds.num_items)), replace=False)] = True
    seq, _, rule = user_order(ds, seed)
    users = ds.user_idx[seq].astype(np.int64)
    is_held = held[ds.item_idx[seq]]
    warm_users = np.zeros(ds.num_users, bool)
    warm_users[users[~is_held]] = True
    h_seq, h_users = seq[is_held], users[is_held]  # each user's held-out interactions, oldest first
    from_end = np.searchsorted(h_users, h_users, side="right") - np.arange(len(h_seq))
    ok = warm_users[h_users]
    test, valid = h_seq[(from_end == 1) & ok], h_seq[(from_end == 2) & ok]
    keep = ~held[ds.item_idx]
    keep[test] = keep[valid] = True
    role = np.full(ds.num_interactions, TRAIN, np.int8)
    role[valid], role[test] = VALID, TEST
    note = {"seed": seed, "fraction": fraction, "items": int(held.sum()), "interactions_dropped": int((~keep).sum())}
    out, role, seq, offsets, position = _keep_only(ds, seq, role, keep, {"cold_items": note})
    counts = np.diff(offsets)
    too_few = int(((counts > 0) & ~np.isin(np.arange(ds.num_users), out.user_idx[role == TEST])).sum())
    return Split(out, role, seq, offsets, position, rule, too_few, seed, "cold_items", heldout_items=held)


def _keep_only(ds: RecDataset, seq: np.ndarray, role: np.ndarray, keep: np.ndarray, notes: dict):
    """A copy of `ds` with the interactions where `keep` only (users, items and the graph unchanged),
    and the kept interactions' roles, user order (`seq` restricted: an untimed order is not redrawn),
    offsets and positions."""
    kept = np.flatnonzero(keep)
    out = copy.copy(ds)
    out.user_idx, out.item_idx, out.values = ds.user_idx[kept], ds.item_idx[kept], ds.values[kept]
    out.timestamps = None if ds.timestamps is None else ds.timestamps[kept]
    out.notes = {**ds.notes, **notes}
    new_index = np.full(ds.num_interactions, -1, np.int64)
    new_index[kept] = np.arange(len(kept))
    seq = new_index[seq[keep[seq]]]
    counts = np.bincount(out.user_idx, minlength=ds.num_users)
    offsets = np.zeros(ds.num_users + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    position = np.empty(len(kept), np.int64)
    position[seq] = np.arange(len(seq)) - np.repeat(offsets[:-1], counts)
    return out, role[kept], seq, offsets, position


SHORT_FRACTION, SHORT_KEEP = 0.3, (3, 5)


def short_history(ds: RecDataset, fraction: float = SHORT_FRACTION, seed: int = 0,
                  keep: tuple[int, int] = SHORT_KEEP) -> Split:
    """The short-history protocol: leave-one-out, then for a seeded `fraction` of the users with a
    test target only their first k training interactions are kept (k drawn per user from `keep`,
    inclusive; the rest of their training rows are dropped, their validation and test targets
    kept). `Split.short_users` marks them, so that they are reported apart from the others."""
    lo, hi = keep
    if not (0 < fraction < 1 and 1 <= lo <= hi):
        raise ValueError(f"short_history needs 0 < fraction < 1 and 1 <= keep[0] <= keep[1], got {fraction}, {keep}")
    base = leave_one_out(ds, seed)
    rng = np.random.default_rng([seed, 5519])
    eligible = np.unique(ds.user_idx[base.role == TEST]).astype(np.int64)
    chosen = np.sort(rng.choice(eligible, size=max(1, round(fraction * len(eligible))), replace=False))
    short = np.zeros(ds.num_users, bool)
    short[chosen] = True
    k = np.zeros(ds.num_users, np.int64)
    k[chosen] = rng.integers(lo, hi + 1, len(chosen))
    u = ds.user_idx.astype(np.int64)
    drop = short[u] & (base.role == TRAIN) & (base.position >= k[u])  # training rows come first in the order
    note = {"seed": seed, "fraction": fraction, "keep": [lo, hi], "users": int(short.sum()),
            "interactions_dropped": int(drop.sum())}
    out, role, seq, offsets, position = _keep_only(ds, base.seq, base.role, ~drop, {"short_history": note})
    return Split(out, role, seq, offsets, position, base.order_rule, base.too_few_users, seed, "short_history",
                 short_users=short)


def make_split(ds: RecDataset, method: str = "leave_one_out", seed: int = 0, **kw) -> Split:
    """Split by name: ``leave_one_out``, ``ratio`` (with ``valid=``, ``test=`` fractions),
    ``cold_items`` (with ``fraction=``) or ``short_history`` (with ``fraction=``, ``keep=``)."""
    if method == "leave_one_out":
        return leave_one_out(ds, seed=seed)
    if method == "ratio":
        return ratio_split(ds, seed=seed, **kw)
    if method == "cold_items":
        return cold_items(ds, seed=seed, **kw)
    if method == "short_history":
        return short_history(ds, seed=seed, **kw)
    raise ValueError(f"unknown split method {method!r}; expected one of {', '.join(SPLIT_METHODS)}")


SPLIT_METHODS = ("leave_one_out", "ratio", "cold_items", "short_history")
