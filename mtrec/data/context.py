"""Context rules: what a prompt for a target interaction may show. One set of rules for every task.

- A user's own history is what precedes the target in that user's order (`Split.history`). For a
  validation target that is the training interactions; for a test target, training + validation.
- Other users' interactions (friends' or trusted users' items, popularity counts) come from the
  *training* split only and, where the data set is timed, strictly before the target's timestamp.

`ContextIndex` answers those queries quickly for many targets.
"""

from __future__ import annotations

import numpy as np

from mtrec.data.splits import TRAIN, Split


class ContextIndex:
    """Precomputed lookups for own history, social context and popularity under the rules above."""

    def __init__(self, split: Split) -> None:
        self.split = split
        ds = split.dataset
        self.dataset = ds
        # Friends of u: targets of u's outgoing edges ("u is friends with / trusts v").
        order = np.argsort(ds.social_src, kind="stable")
        self._nbr = ds.social_dst[order].astype(np.int64)
        self._nbr_off = np.zeros(ds.num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(ds.social_src, minlength=ds.num_users), out=self._nbr_off[1:])
        # Each user's training interactions in that user's order (oldest first).
        train_seq = split.seq[split.role[split.seq] == TRAIN]
        self._train_seq = train_seq
        self._train_off = np.zeros(ds.num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(ds.user_idx[train_seq], minlength=ds.num_users), out=self._train_off[1:])
        if ds.timed:
            self._train_ts = ds.timestamps[train_seq]
            by_time = np.argsort(ds.timestamps[split.train], kind="stable")
            self._pop_items = ds.item_idx[split.train][by_time]
            self._pop_ts = ds.timestamps[split.train][by_time]

    def friends(self, user: int) -> np.ndarray:
        return self._nbr[self._nbr_off[user] : self._nbr_off[user + 1]]

    def own_history(self, interaction: int) -> np.ndarray:
        """Interactions of the target's user that precede it, newest first."""
        return self.split.history(interaction)[::-1]

    def friend_train_interactions(self, friend: int, before: int | None) -> np.ndarray:
        """A friend's training interactions, oldest first, cut to strictly before `before` when timed."""
        seq = self._train_seq[self._train_off[friend] : self._train_off[friend + 1]]
        if before is not None and self.dataset.timed:
            ts = self._train_ts[self._train_off[friend] : self._train_off[friend + 1]]
            seq = seq[: np.searchsorted(ts, before, side="left")]
        return seq

    def social(self, interaction: int, limit: int | None = None) -> np.ndarray:
        """Friends' training interactions allowed as context for `interaction`, newest first.

        Timed: merged by timestamp (newest first; ties by friend index then position). Untimed:
        round-robin by recency rank within each friend (each friend's newest first), so one very
        active friend does not fill the whole budget.
        """
        ds = self.dataset
        before = int(ds.timestamps[interaction]) if ds.timed else None
        return self.social_for(int(ds.user_idx[interaction]), before, limit)

    def train_interactions(self, user: int) -> np.ndarray:
        """The user's training interactions in the user's order (oldest first)."""
        return self._train_seq[self._train_off[user] : self._train_off[user + 1]]

    def social_for(self, user: int, before: int | None, limit: int | None = None, exclude: int = -1) -> np.ndarray:
        """`social` for a user at time `before` (None: no time cut), leaving out friend `exclude`."""
        ds = self.dataset
        parts = [self.friend_train_interactions(int(f), before) for f in self.friends(user) if f != exclude]
        if limit is not None:  # either order takes at most `limit` of each friend's newest: read no more
            parts = [p[len(p) - limit :] if len(p) > limit else p for p in parts]
        parts = [p for p in parts if len(p)]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        allx = np.concatenate(parts)
        friend_rank = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
        recency = np.concatenate([np.arange(len(p))[::-1] for p in parts])  # 0 = friend's newest
        if ds.timed:
            order = np.lexsort((recency, friend_rank, -ds.timestamps[allx]))
        else:
            order = np.lexsort((friend_rank, recency))
        out = allx[order]
        return out if limit is None else out[:limit]

    def popularity(self, before: int | None = None) -> np.ndarray:
        """Training interaction counts per item, from training interactions strictly before `before` (timed)."""
        ds = self.dataset
        if before is None or not ds.timed:
            return np.bincount(ds.item_idx[self.split.train], minlength=ds.num_items)
        k = np.searchsorted(self._pop_ts, before, side="left")
        return np.bincount(self._pop_items[:k], minlength=ds.num_items)
