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
"""

from __future__ import annotations

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
        method: ``leave_one_out`` or ``ratio``.
        friends: the friend-recommendation protocol's held-out pairs (`mtrec.data.friends`), or None;
            where set, `dataset`'s social graph already lacks them.
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
        return self.seq[start : start + self.position[interaction]]

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


def make_split(ds: RecDataset, method: str = "leave_one_out", seed: int = 0, **kw) -> Split:
    """Split by name: ``leave_one_out`` or ``ratio`` (with ``valid=``, ``test=`` fractions)."""
    if method == "leave_one_out":
        return leave_one_out(ds, seed=seed)
    if method == "ratio":
        return ratio_split(ds, seed=seed, **kw)
    raise ValueError(f"unknown split method {method!r}; expected 'leave_one_out' or 'ratio'")
